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

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from caregpt.data.deid import DEFAULT_FIELDS, deidentify_record
from caregpt.data.deid_detect import TYPES

MAX_SHOWN = 10


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caregpt data deid",
        description="Detect and mask personal identifiers (names in clinical context, resident ID numbers with checksum, "
        "phones, e-mails, addresses, medical record / insurance numbers, exact dates) with typed placeholders such as "
        "[姓名1], consistent within each record. Or, with --evaluate, print precision and recall per type on a labelled set.",
    )
    parser.add_argument("--input", help="jsonl file to de-identify (one record per line)")
    parser.add_argument("--output", help="where the masked jsonl goes (must differ from --input)")
    parser.add_argument("--fields", default=None, help=f"comma-separated text fields to mask (default: {','.join(DEFAULT_FIELDS)}); "
                        "lists (history, [chosen, rejected]) and message lists (conversations: value / content) are walked")
    parser.add_argument("--types", default=",".join(TYPES), help=f"identifier types to mask (default: all: {','.join(TYPES)})")
    parser.add_argument("--no-numbers", "--no_numbers", action="store_true", help="plain placeholders ([姓名]) instead of numbered ones ([姓名1])")
    parser.add_argument("--report", help="write a JSON report (records, records changed, counts per type, invalid lines) here")
    parser.add_argument("--keep-invalid", "--keep_invalid", action="store_true", help="copy lines that are not JSON objects unchanged instead of dropping them")
    parser.add_argument("--evaluate", nargs="?", const="", default=None, metavar="LABELLED",
                        help="evaluate on a labelled jsonl (default: the shipped synthetic set) and print precision / recall per type")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.evaluate is not None:
        from caregpt.data.deid_eval import main as evaluate_main

        return evaluate_main(["--data", args.evaluate] if args.evaluate else [])
    if not args.input or not args.output:
        print("caregpt data deid: error: --input and --output are required (or use --evaluate)", file=sys.stderr)
        return 2
    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        print(f"caregpt data deid: error: input file not found: {source}", file=sys.stderr)
        return 2
    if source.resolve() == target.resolve():
        print("caregpt data deid: error: --output must differ from --input (the original is kept for audit)", file=sys.stderr)
        return 2
    types = tuple(t.strip().upper() for t in args.types.split(",") if t.strip())
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        print(f"caregpt data deid: error: unknown type {unknown[0]!r} in --types; valid: {','.join(TYPES)}", file=sys.stderr)
        return 2
    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None
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
