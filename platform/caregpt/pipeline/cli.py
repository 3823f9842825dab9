"""`caregpt run PIPELINE.yaml`: the whole recipe (data, pt, sft, rm, dpo/ppo, tune, eval, export, deploy)."""

from __future__ import annotations

import argparse
import os
import sys

from caregpt.config.loader import ConfigError
from caregpt.pipeline.spec import KIND_HELP

EPILOG = "step kinds (`uses:`):\n" + "\n".join(f"  {k:<10} {v}" for k, v in KIND_HELP.items()) + """

Every step writes under run_dir/<step name>. `from: STEP` starts a step from an earlier step's model
(and adapter); `${steps.NAME.output_dir}` (or .model_name_or_path, .checkpoint_dir) refers to an earlier
output inside any value. Running the same command again skips finished steps and resumes an interrupted
training step from its checkpoint. See jobs/configs/pipeline_demo.yaml."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="caregpt run", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="the pipeline YAML (run_dir, defaults, steps)")
    parser.add_argument("--only", default=None, help="comma-separated step names to run (others are left as they are)")
    parser.add_argument("--from", dest="force_from", default=None, metavar="STEP",
                        help="run this step and every later one again, even if finished")
    parser.add_argument("--dry-run", action="store_true", help="resolve and validate every step, print the plan, run nothing")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and the libraries' logs here (default: they go to run_dir/logs/, named at the end)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from caregpt.pipeline.plan import plan
    from caregpt.pipeline.spec import load_pipeline

    spec = load_pipeline(args.pipeline)
    if args.dry_run:
        for i, step in enumerate(plan(spec), 1):
            print(f"{i}. {step.name} ({step.uses}) -> {step.output_dir}")
            for key, value in step.values.items():
                if key != "output_dir":
                    print(f"     {key}: {value}")
        return 0
    from caregpt.pipeline.run import run_pipeline

    from caregpt.console import default_log_path, quiet_internals

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    if args.verbose:
        os.environ["CAREGPT_VERBOSE"] = "1"
    try:
        plan(spec)  # a bad pipeline fails here, before any log file or Ray
    except ValueError as exc:
        raise exc if isinstance(exc, ConfigError) else ConfigError(str(exc)) from None
    log = None if args.verbose else quiet_internals(default_log_path(spec.run_dir))
    try:
        records = run_pipeline(spec, only=only, force_from=args.force_from)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
    finally:
        if log is not None:
            log.restore()  # an error's traceback reaches the terminal
            print(f"Ray and library logs of this run: {log.path}  (--verbose shows them here)")
    print(f"\npipeline {spec.name!r} finished: report {spec.run_dir}/pipeline_report.md")
    for r in records:
        print(f"  {r.name:<12} {r.status:<8} {r.seconds:7.0f}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
