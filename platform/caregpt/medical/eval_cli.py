"""Medical evaluations: `--task triage` (department top-1/top-3), `--task safety` (the guard), `--task deid`.

`caregpt eval --task triage|safety|deid ...` routes here; `python -m caregpt.medical.eval_cli` runs it directly.
Safety and de-identification report the dev split (the guard and detectors were tuned on it) and the frozen
test split (never tuned on) side by side, per category, next to baselines.
"""

from __future__ import annotations

import json
import sys
from typing import Literal

from pydantic import AliasChoices, Field

from caregpt.config.fields import MultiCommaList, Spec
from caregpt.config.loader import ConfigError
from caregpt.config.verb import verb_main

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


FILES = {"nargs": "+"}  # `--data a.jsonl b.jsonl`, as before; commas work too


class MedicalEvalArgs(Spec):
    task: Literal["triage", "safety", "deid"]
    """What to evaluate: department triage, the safety guard, or de-identification."""

    data: MultiCommaList[str] | None = Field(default=None, json_schema_extra=FILES)
    """triage: JSONL records with a 'department' label; deid: labelled JSONL ({text, spans, category}); default for
    deid: the shipped dev and test sets. Several files: --data A B (or A,B)."""

    guides: str | None = None
    """triage: department guide JSON (see `caregpt triage --help`)."""

    catalog: str | None = None
    """triage: department tree text (default: beside --guides)."""

    limit: int | None = Field(default=None, gt=0)
    """triage: first N records of each file."""

    no_expand: bool = False
    """triage: retrieval without lay-term expansion."""

    train: MultiCommaList[str] | None = Field(default=None, json_schema_extra=FILES)
    """triage: train the department classifier on the dev parts of these files (default: the shipped model,
    trained on a dev-split sample)."""

    no_classifier: bool = False
    """triage: retrieval only."""

    probes: str | None = None
    """safety: probe JSONL (default: the shipped dev and frozen test sets)."""

    guard_model: str | None = None
    """safety: also ask this served model as the LLM judge."""

    guard_base_url: str | None = None
    """safety: OpenAI-compatible base URL of --guard-model."""

    emergency_number: str = "120"
    """safety: emergency number in the guard's advice."""

    as_json: bool = Field(default=False, validation_alias=AliasChoices("json", "as_json"))
    """--json: print the report as JSON."""


USAGE = "caregpt eval --task {triage,safety,deid} [--key value ...]"
SUMMARY = "Evaluate department triage, the safety guard or de-identification."


def _parse(argv: list[str]) -> MedicalEvalArgs:
    from caregpt.config.loader import load_verb

    args = load_verb(argv, {"eval": MedicalEvalArgs}, verb="eval", config_file=False)[0]["eval"]
    if args.task == "triage":
        if not args.data or not args.guides:
            raise ConfigError("--task triage needs --data FILES and --guides PATH")
        if args.train and args.no_classifier:
            raise ConfigError("--train and --no-classifier contradict each other")
    if args.task == "safety" and bool(args.guard_model) != bool(args.guard_base_url):
        raise ConfigError("--guard-model and --guard-base-url go together")
    return args


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(USAGE, SUMMARY, [("Medical evaluation", MedicalEvalArgs)], EPILOG)


@verb_main("eval", help_text)
def main(argv: list[str]) -> int:
    """Run one evaluation and print its report; returns 0, 1 on bad input files, 2 on usage errors."""
    args = _parse(argv)
    try:
        if args.task == "triage":
            from caregpt.medical.triage_eval import evaluate_triage

            report = evaluate_triage(args.data, args.guides, args.catalog, args.limit, expand=not args.no_expand,
                                     train_files=args.train, classifier=None if args.no_classifier else "default")
        elif args.task == "deid":
            from caregpt.data.deid_splits import evaluate_splits

            report = evaluate_splits(args.data)
        else:
            from caregpt.medical.guard import GuardConfig, SafetyGuard
            from caregpt.medical.guard_eval import SplitReport, evaluate_guard, load_probes

            config = GuardConfig(emergency_number=args.emergency_number, judge_model=args.guard_model or "",
                                 judge_base_url=args.guard_base_url or "")
            report = SplitReport.run(SafetyGuard(config)) if not args.probes else \
                evaluate_guard(load_probes(args.probes), SafetyGuard(config))
    except (CatalogError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if args.as_json else report.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
