"""Medical evaluations: `--task triage` (department top-1/top-3) and `--task safety` (guard probes).

`caregpt eval --task triage|safety ...` routes here; `python -m caregpt.medical.eval_cli` runs it directly.
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
  caregpt eval --task safety                       # the shipped probe set
  caregpt eval --task safety --probes my_probes.jsonl"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caregpt eval", description="Evaluate department triage or the safety guard.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, choices=("triage", "safety"))
    parser.add_argument("--data", nargs="+", metavar="FILE", help="triage: JSONL records with a 'department' label")
    parser.add_argument("--guides", metavar="PATH", help="triage: department guide JSON (see `caregpt triage --help`)")
    parser.add_argument("--catalog", metavar="PATH", help="triage: department tree text (default: beside --guides)")
    parser.add_argument("--limit", type=int, help="triage: first N records of each file")
    parser.add_argument("--no-expand", action="store_true", help="triage: retrieval without lay-term expansion")
    parser.add_argument("--probes", metavar="FILE", help="safety: probe JSONL (default: the shipped set)")
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

            report = evaluate_triage(args.data, args.guides, args.catalog, args.limit, expand=not args.no_expand)
        else:
            from caregpt.medical.guard import GuardConfig, SafetyGuard
            from caregpt.medical.guard_eval import evaluate_guard, load_probes

            guard = SafetyGuard(GuardConfig(emergency_number=args.emergency_number))
            report = evaluate_guard(load_probes(args.probes), guard)
    except (CatalogError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if args.json else report.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
