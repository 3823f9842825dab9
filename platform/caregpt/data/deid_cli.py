"""`caregpt data deid`: mask personal identifiers in a jsonl dataset, or measure the masking on a labelled set.

    caregpt data deid --input raw.jsonl --output clean.jsonl [--fields instruction,input,output,history] [--report report.json]
    caregpt data deid --evaluate [LABELLED.jsonl]

Records are read line by line and written in the same format (alpaca with history, preference [chosen, rejected],
sharegpt conversations, {"text"} / {"content"}); only text fields change. Lines that are not JSON objects are
reported with file:line and copied unchanged only when --keep-invalid is given (the default leaves them out, so
nothing unmasked slips through). The report holds counts, never text.
Exit codes: 0 done; 1 some lines were invalid; 2 bad arguments or unreadable files.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from pydantic import field_validator

from caregpt.config.fields import CommaList, Spec
from caregpt.config.loader import ConfigError
from caregpt.config.verb import verb_main

from caregpt.data.deid import DEFAULT_FIELDS, deidentify_record
from caregpt.data.deid_detect import TYPES

MAX_SHOWN = 10


class DeidArgs(Spec):
    input: str | None = None
    """jsonl file to de-identify (one record per line)."""

    output: str | None = None
    """Where the masked jsonl goes (must differ from --input)."""

    fields: CommaList[str] | None = None
    """Comma-separated text fields to mask (default: instruction,input,output,history...); lists (history, [chosen,
    rejected]) and message lists (conversations: value / content) are walked."""

    types: CommaList[str] = list(TYPES)
    """Identifier types to mask, comma separated (default: all)."""

    no_numbers: bool = False
    """Plain placeholders ([姓名]) instead of numbered ones ([姓名1])."""

    report: str | None = None
    """Write a JSON report (records, records changed, counts per type, invalid lines) here."""

    keep_invalid: bool = False
    """Copy lines that are not JSON objects unchanged instead of dropping them."""

    evaluate: str | None = None
    """--evaluate [LABELLED.jsonl]: print precision / recall per type on a labelled jsonl (bare: the shipped
    synthetic set)."""

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        value = [t.upper() for t in value]
        unknown = [t for t in value if t not in TYPES]
        if unknown:
            raise ValueError(f"unknown type {unknown[0]!r}; valid: {','.join(TYPES)}")
        return value


USAGE = "caregpt data deid --input RAW.jsonl --output CLEAN.jsonl [--key value ...] | --evaluate [LABELLED.jsonl]"
SUMMARY = (
    "Detect and mask personal identifiers (names in clinical context, resident ID numbers with checksum, phones, e-mails, "
    "addresses, medical record / insurance numbers, exact dates) with typed placeholders such as [姓名1], consistent within "
    "each record. Or, with --evaluate, print precision and recall per type on a labelled set."
)


def deidentify_file(source: Path, target: Path, fields: list[str] | None, types: tuple[str, ...], numbered: bool, keep_invalid: bool) -> dict:
    counts: Counter = Counter()
    records = changed = 0
    invalid: list[str] = []
    tmp = target.with_name(target.name + ".tmp")
    with open(source, encoding="utf-8") as reader, open(tmp, "w", encoding="utf-8") as writer:
        for number, line in enumerate(reader, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except (json.JSONDecodeError, ValueError) as exc:
                invalid.append(f"{source}:{number}: {exc}")
                if keep_invalid:
                    writer.write(line if line.endswith("\n") else line + "\n")
                continue
            clean, found = deidentify_record(record, fields, numbered=numbered, types=types)
            records += 1
            changed += bool(found)
            counts.update(found)
            writer.write(json.dumps(clean, ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    return {"input": str(source), "output": str(target), "records": records, "records_changed": changed,
            "masked": {t: counts.get(t, 0) for t in types}, "invalid_lines": len(invalid), "invalid_examples": invalid[:MAX_SHOWN]}


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(USAGE, SUMMARY + "\n\n" + (__doc__ or "").split("\n\n", 2)[2].strip(), [("De-identification", DeidArgs)])


@verb_main("data deid", help_text)
def main(argv: list[str]) -> int:
    from caregpt.config.loader import load_verb

    args = load_verb(argv, {"deid": DeidArgs}, verb="data deid", config_file=False)[0]["deid"]
    if args.evaluate is not None:
        from caregpt.data.deid_eval import main as evaluate_main

        # a bare --evaluate arrives as the switch value "true": the shipped set
        return evaluate_main(["--data", args.evaluate] if args.evaluate not in ("", "true") else [])
    if not args.input or not args.output:
        raise ConfigError("--input and --output are required (or use --evaluate)")
    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise ConfigError(f"input file not found: {source}")
    if source.resolve() == target.resolve():
        raise ConfigError("--output must differ from --input (the original is kept for audit)")
    types = tuple(args.types)
    fields = args.fields or None
    target.parent.mkdir(parents=True, exist_ok=True)
    report = deidentify_file(source, target, fields, types, not args.no_numbers, args.keep_invalid)
    if args.report:
        Path(args.report).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    masked = ", ".join(f"{k} {v}" for k, v in report["masked"].items() if v) or "nothing"
    print(f"de-identified {report['records']} records ({report['records_changed']} changed) -> {target}; masked: {masked}")
    for example in report["invalid_examples"]:
        print(f"  invalid: {example}", file=sys.stderr)
    if report["invalid_lines"]:
        kept = "copied unchanged" if args.keep_invalid else "left out"
        print(f"  {report['invalid_lines']} invalid lines {kept}", file=sys.stderr)
    return 1 if report["invalid_lines"] else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
