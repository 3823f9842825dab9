"""`caregpt tune`: hyperparameter search over a training stage with Ray Tune, each trial a Ray Train run.

space.py parses and validates the `tune:` section (no Ray needed), run.py runs the experiment,
report.py writes the results table, best_config.yaml and the metric plot, cli.py is the command.
"""

from caregpt.tune.space import TuneSpec, load_tune_config, parse_tune, trial_values

__all__ = ["TuneSpec", "load_tune_config", "parse_tune", "trial_values"]
