"""Precision and recall of de-identification per identifier type on a labelled set.

    python -m caregpt.data.deid_eval [--data FILE] [--json] [--show-errors N]
    caregpt data deid --evaluate [FILE]

Each labelled line is {"text": ..., "spans": [{"start", "end", "type"}]}; each sentence is one record.
Strict: a predicted span counts only when start, end and type equal a labelled span. Overlap: the same type and
any overlap (a span one character too long still hides the identifier). Exit code 1 when a recall target is
missed (ID, PHONE, EMAIL >= 0.95; NAME >= 0.85, strict).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from pydantic import AliasChoices, Field

from caregpt.config.specs import Spec
from caregpt.data.deid_detect import TYPES, detect

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "resources" / "deid_eval" / "deid_labelled.jsonl"
RECALL_TARGETS = {"ID": 0.95, "PHONE": 0.95, "EMAIL": 0.95, "NAME": 0.85}


def load_labelled(path: str | Path) -> list[dict]:
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, spans = row["text"], row["spans"]
            for span in spans:
                if text[span["start"]:span["end"]] != span.get("text", text[span["start"]:span["end"]]) or span["type"] not in TYPES:
                    raise ValueError(f"span {span} does not match the text or has an unknown type")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a labelled sentence ({exc}); expected {{\"text\", \"spans\": [{{start, end, type}}]}}") from None
        rows.append(row)
    return rows


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def evaluate(rows: list[dict]) -> dict:
    """Per type: gold, predicted, strict and overlap precision / recall, plus the misses and false alarms."""
    stats = {t: Counter() for t in TYPES}
    errors: list[dict] = []
    for row in rows:
        # the same two passes as masking a record: names found with context are found again without it
        first = detect(row["text"])
        names = {s.text for s in first if s.type == "NAME" and (len(s.text) >= 2 or s.text.isascii())}
        predicted = detect(row["text"], known_names=names)
        gold = [(g["start"], g["end"], g["type"]) for g in row["spans"]]
        pred = [(p.start, p.end, p.type) for p in predicted]
        for kind in TYPES:
            g = [(s, e) for s, e, t in gold if t == kind]
            p = [(s, e) for s, e, t in pred if t == kind]
            stats[kind]["gold"] += len(g)
            stats[kind]["pred"] += len(p)
            stats[kind]["tp_strict"] += len(set(g) & set(p))
            stats[kind]["gold_found"] += sum(any(_overlaps(x, y) for y in p) for x in g)
            stats[kind]["pred_right"] += sum(any(_overlaps(y, x) for x in g) for y in p)
        missed = [row["text"][s:e] + f" ({t})" for s, e, t in gold if (s, e, t) not in pred]
        extra = [row["text"][s:e] + f" ({t})" for s, e, t in pred if (s, e, t) not in gold]
        if missed or extra:
            errors.append({"id": row.get("id", ""), "missed": missed, "false": extra})
    table = {}
    for kind, c in stats.items():
        def ratio(a: int, b: int) -> float:
            return round(a / b, 4) if b else 1.0

        table[kind] = {
            "gold": c["gold"], "predicted": c["pred"],
            "precision": ratio(c["tp_strict"], c["pred"]), "recall": ratio(c["tp_strict"], c["gold"]),
            "precision_overlap": ratio(c["pred_right"], c["pred"]), "recall_overlap": ratio(c["gold_found"], c["gold"]),
        }
    return {"sentences": len(rows), "types": table, "errors": errors}


def format_table(result: dict) -> str:
    lines = [f"de-identification on {result['sentences']} labelled sentences (strict = exact span and type; overlap = same type, any overlap)",
             f"{'type':<8}{'gold':>6}{'pred':>6}{'precision':>11}{'recall':>9}{'P overlap':>11}{'R overlap':>11}{'target R':>10}"]
    for kind, row in result["types"].items():
        target = RECALL_TARGETS.get(kind)
        mark = "" if target is None else (f"{target:.2f} ok" if row["recall"] >= target else f"{target:.2f} MISSED")
        lines.append(f"{kind:<8}{row['gold']:>6}{row['predicted']:>6}{row['precision']:>11.3f}{row['recall']:>9.3f}"
                     f"{row['precision_overlap']:>11.3f}{row['recall_overlap']:>11.3f}{mark:>10}")
    return "\n".join(lines)


def targets_met(result: dict) -> bool:
    return all(result["types"][k]["recall"] >= v for k, v in RECALL_TARGETS.items())


class DeidEvalArgs(Spec):
    data: str = str(DEFAULT_DATA)
    """Labelled jsonl (default: the shipped set)."""

    as_json: bool = Field(default=False, validation_alias=AliasChoices("json", "as_json"))
    """--json: print the result as JSON."""

    show_errors: int = Field(default=0, ge=0)
    """Also print the first N sentences with a missed or false span (prints sentence text: synthetic data only)."""


def main(argv: list[str] | None = None) -> int:
    from caregpt.config.help import render_help
    from caregpt.config.loader import ConfigError, load_verb

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(render_help("python -m caregpt.data.deid_eval [--data LABELLED.jsonl] [--json] [--show_errors N]",
                          "Precision and recall of de-identification per type.", [("Evaluation", DeidEvalArgs)]))
        return 0
    try:
        args = load_verb(argv, {"deid_eval": DeidEvalArgs}, verb="data deid", config_file=False)[0]["deid_eval"]
        result = evaluate(load_labelled(args.data))
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError: bad options exit 2 too
        print(f"deid evaluate: error: {exc}", file=sys.stderr)
        return 2
    if args.as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "errors"}, ensure_ascii=False, indent=2))
    else:
        print(format_table(result))
    for error in result["errors"][: args.show_errors]:
        print(json.dumps(error, ensure_ascii=False))
    return 0 if targets_met(result) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
