"""`caregpt run PIPELINE.yaml`: the whole recipe (data, pt, sft, rm, dpo/ppo, tune, eval, export, deploy)."""

from __future__ import annotations

import os

from pydantic import AliasChoices, Field

from caregpt.config.fields import CommaList, Spec
from caregpt.config.loader import ConfigError
from caregpt.config.verb import verb_main
from caregpt.pipeline.spec import KIND_HELP

EPILOG = "step kinds (`uses:`):\n" + "\n".join(f"  {k:<10} {v}" for k, v in KIND_HELP.items()) + """

Every step writes under run_dir/<step name>. `from: STEP` starts a step from an earlier step's model
(and adapter); `${steps.NAME.output_dir}` (or .model_name_or_path, .checkpoint_dir) refers to an earlier
output inside any value. Running the same command again skips finished steps and resumes an interrupted
training step from its checkpoint. See jobs/configs/pipeline_demo.yaml."""


class RunArgs(Spec):
    only: CommaList[str] | None = None
    """Step names to run, comma separated (the others are left as they are)."""

    force_from: str | None = Field(default=None, validation_alias=AliasChoices("from", "force_from"))
    """--from STEP: run this step and every later one again, even if finished."""

    dry_run: bool = False
    """Resolve and validate every step, print the plan, run nothing."""

    verbose: bool = False
    """Show Ray's and the libraries' logs here (default: they go to run_dir/logs/, named at the end)."""


USAGE = "caregpt run PIPELINE.yaml [--only STEP[,STEP]] [--from STEP] [--dry-run] [--verbose]"


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(USAGE, (__doc__ or "").strip() + " PIPELINE.yaml holds run_dir, defaults and steps.", [("Run", RunArgs)], EPILOG)


@verb_main("run", help_text)
def main(argv: list[str]) -> int:
    from caregpt.config.loader import load_verb

    parts, positional, _ = load_verb(argv, {"run": RunArgs}, verb="run", positional=1, config_file=False)
    pipeline = positional[0] if positional else None
    if not pipeline:
        raise ConfigError("the pipeline YAML is required: caregpt run PIPELINE.yaml (see jobs/configs/pipeline_demo.yaml)")
    args = parts["run"]

    from caregpt.pipeline.plan import plan
    from caregpt.pipeline.spec import load_pipeline

    spec = load_pipeline(pipeline)
    if args.dry_run:
        steps = plan(spec)
        names = [s.name for s in steps]
        for name in (args.only or []) + ([args.force_from] if args.force_from else []):
            if name not in names:
                raise ConfigError(f"no step named {name!r}; steps: {', '.join(names)}")
        for i, step in enumerate(steps, 1):
            if args.only and step.name not in args.only:
                continue  # --only: the plan of the steps that would run
            print(f"{i}. {step.name} ({step.uses}) -> {step.output_dir}")
            for key, value in step.values.items():
                if key != "output_dir":
                    print(f"     {key}: {value}")
        return 0
    from caregpt.pipeline.run import run_pipeline

    from caregpt.console import default_log_path, quiet_internals

    only = args.only or None
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
