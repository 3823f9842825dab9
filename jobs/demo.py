"""The end-to-end demo on an embedded local Ray and a tiny model built from the shipped sample data.

    make demo            (or: python jobs/demo.py --workdir .demo [--verbose])

It is the pipeline jobs/configs/pipeline_demo.yaml (what `caregpt run` runs): build a tiny model ->
continued pretraining (pt) -> supervised fine-tuning (sft) -> DPO on preference pairs -> export (merge the
adapter) -> batch prediction with BLEU/ROUGE -> a multiple-choice exam -> serve with Ray Serve and print one
streamed answer. The last screen asks the served API three questions that show its medical layer: the
safety guard on an emergency, department triage, and a knowledge-base answer with citations (the
knowledge base is CareGPT's hospital guides, ingested first). Run it again: finished steps are skipped.

The terminal shows the demo's own progress; Ray's, Serve's and the libraries' logs go to a file named at
the end (--verbose shows them instead).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "jobs" / "configs" / "pipeline_demo.yaml"
# CareGPT's hospital guides (MIT), as committed with the tests: tests/data/SOURCES.md
GUIDES = REPO / "tests" / "data" / "hospital_guide_departments.json"
KB_NAME = "guides"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".demo", help="where the model, data, outputs and logs go (default: .demo)")
    parser.add_argument("--fresh", action="store_true", help="delete the workdir first")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and the libraries' logs here instead of in a file")
    parser.add_argument("--guides", default=str(GUIDES), help="hospital guide JSON for triage and the knowledge base "
                        "(default: the copy under tests/data)")
    return parser


def _prepare(work: Path, guides: Path):
    """The pipeline spec with the demo's paths, and the knowledge base the deploy step serves."""
    from caregpt.kb.ingest import ingest
    from caregpt.pipeline.spec import load_pipeline
    from caregpt.resources import SAMPLE_DATA_DIR

    kb_dir = work / "kb" / KB_NAME
    report = ingest(kb_dir, [guides])
    print(f"[demo] knowledge base {KB_NAME!r}: {report.summary()}")
    spec = load_pipeline(PIPELINE)
    spec.run_dir = str(work / "run")
    spec.defaults["dataset_dir"] = str(SAMPLE_DATA_DIR)
    deploy = next(step for step in spec.steps if step.uses == "deploy")
    # the served API keeps running for the last screen, with the medical layer switched on
    # (two passages: the tiny model's context is 1,024 tokens)
    deploy.with_.update(keep_running=True, knowledge_bases={KB_NAME: str(kb_dir)}, rag_top_k=2, triage_guides=str(guides))
    return spec, deploy.name


def run(args: argparse.Namespace, work: Path) -> int:
    from caregpt._extras import require

    require("bm25s", extra="kb", purpose="the demo's knowledge base and triage")
    from caregpt.pipeline.run import run_pipeline

    from jobs.demo_medical import show_medical_layer

    guides = Path(args.guides).resolve()
    spec, deploy_step = _prepare(work, guides)
    start = time.perf_counter()
    try:
        records = run_pipeline(spec)
        print(f"\nPipeline finished in {time.perf_counter() - start:.0f} s: "
              + ", ".join(f"{r.name} {r.status} {r.seconds:.0f}s" for r in records))
        print(f"Report: {Path(spec.run_dir) / 'pipeline_report.md'}")
        served = json.loads((Path(spec.run_dir) / deploy_step / "deploy_result.json").read_text(encoding="utf-8"))
        show_medical_layer(served["base_url"], served["model"], KB_NAME, guides)
    finally:
        _shutdown()
    return 0


def _shutdown() -> None:
    import ray

    if ray.is_initialized():
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = Path(args.workdir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    os.chdir(REPO)  # the pipeline's data paths are relative to the repository root
    sys.path.insert(0, str(REPO))  # jobs.demo_medical
    from caregpt.console import default_log_path, quiet_internals

    from caregpt._extras import MissingExtra

    if args.verbose:
        os.environ["CAREGPT_VERBOSE"] = "1"
    log = None if args.verbose else quiet_internals(default_log_path(work))
    try:
        return run(args, work)
    except MissingExtra as exc:
        print(f"demo: {exc}")
        return 1
    except BaseException:  # noqa: BLE001 -- say it on the terminal; Ray's side of the story is in the log
        if log is None:
            raise
        traceback.print_exc(file=log.console)
        return 1
    finally:
        if log is not None:
            log.restore()
            print(f"Ray, Serve and library logs of this run: {log.path}  (--verbose shows them here)")


if __name__ == "__main__":
    sys.exit(main())
