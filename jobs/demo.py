"""The end-to-end demo on an embedded local Ray and a tiny model built from the shipped sample data.

    make demo            (or: python jobs/demo.py --workdir .demo)

It is the pipeline jobs/configs/pipeline_demo.yaml (what `caregpt run` runs): build a tiny model ->
continued pretraining (pt) -> supervised fine-tuning (sft) -> DPO on preference pairs -> export (merge the
adapter) -> batch prediction with BLEU/ROUGE -> a multiple-choice exam -> serve with Ray Serve and print one
streamed answer to a medical question -> shut down. Run it again: finished steps are skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "jobs" / "configs" / "pipeline_demo.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".demo", help="where the model, data and outputs go (default: .demo)")
    parser.add_argument("--fresh", action="store_true", help="delete the workdir first")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    os.chdir(REPO)  # the pipeline's data paths are relative to the repository root

    from caregpt.pipeline.run import run_pipeline
    from caregpt.pipeline.spec import load_pipeline
    from caregpt.resources import SAMPLE_DATA_DIR

    spec = load_pipeline(PIPELINE)
    spec.run_dir = str(work)
    spec.defaults["dataset_dir"] = str(SAMPLE_DATA_DIR)
    start = time.perf_counter()
    records = run_pipeline(spec)
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s. Steps:")
    for r in records:
        print(f"  {r.name:<8} {r.status:<8} {r.seconds:6.0f}s")
    print(f"Report: {work / 'pipeline_report.md'}")
    print("A model of one million parameters trained for minutes: expect the style of an answer, not reliable medicine.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
