"""Medical evaluations: `--task triage` (department top-1/top-3), `--task safety` (the guard), `--task deid`.

`caregpt eval --task triage|safety|deid ...` routes here; `python -m caregpt.medical.eval_cli` runs it directly.
Safety and de-identification report the dev split (the guard and detectors were tuned on it) and the frozen
test split (never tuned on) side by side, per category, next to baselines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from caregpt.medical.catalog import CatalogError

EPILOG = """\
examples:
  caregpt eval --task triage --guides ../shared/data/hospital_guide_departments.json \\
      --data ../shared/data/sft_toyhom_im_department.jsonl ../shared/data/sft_cmtmedqa_multiturn.jsonl
      # each file's dev and test parts; the shipped classifier saw a sample of dev parts only
  caregpt eval --task triage --guides ... --data FILES --train FILES   # classifier trained on FILES' dev parts
  caregpt eval --task safety                       # shipped dev + frozen test sets, per category, with baselines
  caregpt eval --task safety --probes my_probes.jsonl
  caregpt eval --task deid                         # shipped PHI dev + frozen test sets
  caregpt eval --task deid --data my_labelled.jsonl"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caregpt eval", description="Evaluate department triage or the safety guard.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, choices=("triage", "safety", "deid"))
    parser.add_argument("--data", nargs="+", metavar="FILE", help="triage: JSONL records with a 'department' label; "
                        "deid: labelled JSONL ({text, spans, category}); default for deid: the shipped dev and test sets")
    parser.add_argument("--guides", metavar="PATH", help="triage: department guide JSON (see `caregpt triage --help`)")
    parser.add_argument("--catalog", metavar="PATH", help="triage: department tree text (default: beside --guides)")
    parser.add_argument("--limit", type=int, help="triage: first N records of each file")
    parser.add_argument("--no-expand", action="store_true", help="triage: retrieval without lay-term expansion")
    parser.add_argument("--train", nargs="+", metavar="FILE", help="triage: train the department classifier on the dev "
                        "parts of these files (default: the shipped model, trained on a dev-split sample)")
    parser.add_argument("--no-classifier", action="store_true", help="triage: retrieval only")
    parser.add_argument("--probes", metavar="FILE", help="safety: probe JSONL (default: the shipped dev and frozen test sets)")
    parser.add_argument("--guard-model", metavar="MODEL", help="safety: also ask this served model as the LLM judge")
    parser.add_argument("--guard-base-url", metavar="URL", help="safety: OpenAI-compatible base URL of --guard-model")
    parser.add_argument("--emergency-number", default="120", help="safety: emergency number in the guard's advice")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one evaluation and print its report; returns 0, 1 on bad input files, 2 on usage errors."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.task == "triage":
            if not args.data or not args.guides:
                parser.error("--task triage needs --data FILES and --guides PATH")
            from caregpt.medical.triage_eval import evaluate_triage

            if args.train and args.no_classifier:
                parser.error("--train and --no-classifier contradict each other")
            report = evaluate_triage(args.data, args.guides, args.catalog, args.limit, expand=not args.no_expand,
                                     train_files=args.train, classifier=None if args.no_classifier else "default")
        elif args.task == "deid":
            from caregpt.data.deid_splits import evaluate_splits

            report = evaluate_splits(args.data)
        else:
            if bool(args.guard_model) != bool(args.guard_base_url):
                parser.error("--guard-model and --guard-base-url go together")
            from caregpt.medical.guard import GuardConfig, SafetyGuard
            from caregpt.medical.guard_eval import SplitReport, evaluate_guard, load_probes

            config = GuardConfig(emergency_number=args.emergency_number, judge_model=args.guard_model or "",
                                 judge_base_url=args.guard_base_url or "")
            report = SplitReport.run(SafetyGuard(config)) if not args.probes else \
                evaluate_guard(load_probes(args.probes), SafetyGuard(config))
    except (CatalogError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if args.json else report.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
