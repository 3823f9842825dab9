"""`caregpt tune CONFIG.yaml [--key value ...] [--tune.KEY value ...]`.

The YAML is a training config plus a `tune:` section; flags override training keys as in
`caregpt train`, and `--tune.KEY value` overrides a scalar tune key (num_samples, metric, name...).
Running the same command again after an interruption resumes the experiment.
"""

from __future__ import annotations

import logging
import sys

from caregpt.config.verb import verb_main
from caregpt.tune.space import SPACE_TYPES, TUNE_KEYS

logger = logging.getLogger(__name__)

USAGE = "usage: caregpt tune CONFIG.yaml [--key value ...] [--tune.KEY value ...]"

EXAMPLE = """\
example (jobs/configs/tune_sft_tiny_cpu.yaml):
  stage: sft              # the base training config: every key of `caregpt train`
  val_size: 0.2           # eval_loss needs a held-out split
  eval_steps: 8           # how often the metric reaches Tune (and ASHA)
  ...
  tune:
    search_space:
      lora_rank: {type: grid, values: [4, 16]}
      learning_rate: {type: grid, values: [3.0e-4, 3.0e-3]}
      alpha_over_rank: 2
      lora_dropout: {type: choice, values: [0.0, 0.1]}
    metric: eval_loss
    max_concurrent_trials: 2
    scheduler: {type: asha, grace_period: 8, reduction_factor: 2}"""


SUMMARY = (
    "Search hyperparameters of a training stage with Ray Tune. Every trial is a full Ray Train run of the stage "
    "(workers and resources per trial as in `caregpt train`) on data tokenized once; the metric is reported at "
    "every evaluation and ASHA stops weak trials early. Results go to the base config's output_dir: "
    "tune_results.csv/.md (trial, values, metric, steps, state), best_config.yaml (run it with `caregpt train`), "
    "tune_metric.png (metric against step per trial) and trials/ID/ (each finished trial's adapter or model). "
    "The same command again resumes an interrupted experiment: finished trials are kept, the others run again; "
    "--overwrite_output_dir starts over. Keys that do not shape the model (operational, data, budget) cannot be searched."
)


def help_text() -> str:
    from caregpt.config.help import render_help

    lines = ["tune keys (under `tune:` in the YAML, or --tune.KEY value for the scalar ones):"]
    lines += [f"  {key:<22}{text}" for key, text in TUNE_KEYS.items()]
    lines += ["", "search_space types: " + ", ".join(f"{k} ({'/'.join(v)})" for k, v in SPACE_TYPES.items()) + "; randint/lograndint include high."]
    lines += ["", EXAMPLE, "", "Training keys: see `caregpt train --help`."]
    return render_help(USAGE.removeprefix("usage: "), SUMMARY, [], "\n".join(lines))


@verb_main("tune", help_text, log=True)
def main(argv: list[str]) -> int:
    if not argv:  # a tune run needs its CONFIG.yaml: say what to pass, as a usage error
        print(help_text())
        return 2
    from caregpt.tune.space import load_from_argv

    config, base_values, spec = load_from_argv(argv)  # every YAML problem surfaces before Ray starts
    from caregpt.console import quiet_at_terminal
    from caregpt.tune.run import run_tune

    with quiet_at_terminal(config.train.output_dir):
        outcome = run_tune(base_values, spec)
    summary = outcome.summary
    print(f"\ntune experiment: {outcome.experiment_path}\n")
    print(summary.format(spec.metric))
    print(f"\nresults table: {summary.table_csv} (and {summary.table_md.name})")
    if summary.plot:
        print(f"metric plot:   {summary.plot}")
    if summary.best is None:
        print(f"no trial reported {spec.metric}: see the errors in the Ray Tune logs under {outcome.experiment_path}", file=sys.stderr)
        return 130 if any(r.state == "unfinished" for r in summary.rows) else 1
    print(f"best trial:    {summary.best.trial_id} ({spec.metric} {summary.best.metric:.6g}); adapter/model: {summary.best.output_dir or 'not kept'}")
    print(f"best config:   {summary.best_config}\nretrain it:    caregpt train {summary.best_config}")
    errored = [r.trial_id for r in summary.rows if r.state == "error"]
    if errored:
        print(f"{len(errored)} trial(s) failed: {', '.join(errored)} (run the same command again to retry them)", file=sys.stderr)
    unfinished = [r.trial_id for r in summary.rows if r.state == "unfinished"]
    if unfinished:
        print(f"interrupted with {len(unfinished)} trial(s) unfinished: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
