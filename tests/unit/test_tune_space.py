"""The `tune:` section: parsing every search type, derived lora_alpha, and errors that name the key (no Ray)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from caregpt.config.loader import ConfigError, load_config
from caregpt.tune.report import TrialRow, best_config_values, pick_best, plot_metric, write_best_config, write_table
from caregpt.tune.space import load_from_argv, load_tune_config, trial_values

BASE = {"stage": "sft", "finetuning_type": "lora", "val_size": 0.25, "eval_steps": 2, "max_steps": 6, "output_dir": "outputs/t"}


def _load(tmp_path: Path, tune: dict, overrides: dict | None = None, **base):
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({**BASE, **base, "tune": tune}))
    return load_tune_config(str(path), overrides)


def _space(tmp_path, search_space, **tune):
    return _load(tmp_path, {"search_space": search_space, **tune})[2]


def test_every_search_type_parses(tmp_path):
    spec = _space(tmp_path, {
        "lora_rank": {"type": "grid", "values": [4, 8]},
        "lora_target": {"type": "choice", "values": [["q_proj", "v_proj"], "all"]},
        "lora_dropout": {"type": "uniform", "low": 0.0, "high": 0.2},
        "learning_rate": {"type": "loguniform", "low": "1e-5", "high": "1e-3"},  # YAML 1.1 reads 1e-5 as text
        "per_device_train_batch_size": {"type": "randint", "low": 2, "high": 4},
        "gradient_accumulation_steps": {"type": "lograndint", "low": 1, "high": 8},
    })
    p = spec.search_space
    assert (p["lora_rank"].type, p["lora_rank"].values) == ("grid", [4, 8])
    # list-valued keys become `a,b` text: Tune would walk a list as a nested search space
    assert p["lora_target"].values == ["q_proj,v_proj", "all"]
    assert (p["lora_dropout"].low, p["lora_dropout"].high) == (0.0, 0.2)
    assert (p["learning_rate"].low, p["learning_rate"].high) == (1e-5, 1e-3)
    assert (p["per_device_train_batch_size"].low, p["per_device_train_batch_size"].high) == (2, 4)
    assert p["gradient_accumulation_steps"].type == "lograndint"
    assert spec.metric == "eval_loss" and spec.mode == "min" and spec.scheduler == "asha" and spec.search_alg == "random"
    assert spec.trial_count() == 2


def test_bare_list_is_a_grid_and_grid_counts_multiply(tmp_path):
    spec = _space(tmp_path, {"lora_rank": [4, 8], "learning_rate": ["2e-4", "2e-3"]}, num_samples=3)
    assert spec.search_space["learning_rate"].type == "grid"
    assert spec.search_space["learning_rate"].values == [2e-4, 2e-3]  # numbers, not YAML's text
    assert spec.grid_size() == 4 and spec.trial_count() == 12


def test_tune_settings_and_command_line_overrides(tmp_path):
    config, base, spec = _load(
        tmp_path,
        {"search_space": {"lora_rank": [4, 8]}, "metric": "eval_loss", "mode": "min", "max_concurrent_trials": 2,
         "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3}, "name": "exp", "max_failures": 1},
        {"tune.num_samples": "2", "tune.storage_path": "/tmp/st", "learning_rate": "1e-3"},
    )
    assert (spec.num_samples, spec.max_concurrent_trials, spec.max_failures, spec.name, spec.storage_path) == (2, 2, 1, "exp", "/tmp/st")
    assert (spec.grace_period, spec.reduction_factor) == (2, 3.0)
    assert config.train.learning_rate == 1e-3 and base["learning_rate"] == "1e-3"
    assert "tune" not in base


def test_fifo_scheduler_as_a_word(tmp_path):
    assert _space(tmp_path, {"lora_rank": [4, 8]}, scheduler="fifo").scheduler == "fifo"


def test_alpha_over_rank_derives_lora_alpha(tmp_path):
    spec = _space(tmp_path, {"lora_rank": [4, 16], "alpha_over_rank": 2})
    assert spec.alpha_over_rank == 2.0 and "alpha_over_rank" not in spec.search_space
    values = trial_values({"lora_rank": 8, "learning_rate": 1e-3}, {"lora_rank": 16, "alpha_over_rank": 2.0})
    assert values["lora_alpha"] == 32.0 and values["lora_rank"] == 16 and "alpha_over_rank" not in values
    # a rank that is not searched comes from the base config, and the ratio may itself be searched
    searched = _space(tmp_path, {"alpha_over_rank": {"type": "choice", "values": [1, 4]}})
    assert searched.search_space["alpha_over_rank"].values == [1, 4]
    assert trial_values({"lora_rank": 8}, {"alpha_over_rank": 4})["lora_alpha"] == 32.0
    assert trial_values({}, {"alpha_over_rank": 0.5})["lora_alpha"] == 4.0  # default lora_rank 8


@pytest.mark.parametrize(
    "search_space, tune, message",
    [
        ({"lora_rnak": [4, 8]}, {}, r"unknown config key 'lora_rnak'; did you mean 'lora_rank'"),
        ({"cutoff_len": [128, 256]}, {}, r"cutoff_len cannot be searched: it changes the tokenized data"),
        ({"val_size": [0.1, 0.2]}, {}, r"val_size cannot be searched"),
        ({"num_workers": [1, 2]}, {}, r"num_workers cannot be searched"),
        ({"lora_rank": {"type": "gird", "values": [4]}}, {}, r"lora_rank: type 'gird' is not one of .*did you mean 'grid'"),
        ({"lora_rank": {"type": "choice", "valeus": [4]}}, {}, r"unknown field 'valeus'; did you mean 'values'"),
        ({"lora_rank": {"type": "randint", "low": 4}}, {}, r"lora_rank: type randint takes low and high; missing high"),
        ({"lora_rank": {"type": "choice", "values": [4], "low": 1}}, {}, r"remove low"),
        ({"lora_rank": {"type": "choice", "values": []}}, {}, r"lora_rank.values must be a non-empty list"),
        ({"lora_rank": [4, 4]}, {}, r"repeats a value"),
        ({"lora_rank": [4, 0]}, {}, r"tune.search_space.lora_rank value 0: invalid lora_rank=0"),
        ({"lora_rank": {"type": "uniform", "low": 4, "high": 16}}, {}, r"lora_rank is an integer key; use type randint or lograndint"),
        ({"learning_rate": {"type": "loguniform", "low": 0, "high": 1e-3}}, {}, r"loguniform needs low > 0"),
        ({"learning_rate": {"type": "uniform", "low": 1e-3, "high": 1e-4}}, {}, r"low \(0.001\) must be below high"),
        ({"learning_rate": {"type": "uniform", "low": "fast", "high": 1e-4}}, {}, r"learning_rate.low must be a number"),
        ({"lora_rank": {"type": "randint", "low": 2.5, "high": 8}}, {}, r"whole-number low and high"),
        ({"lora_dropout": ["lots"]}, {}, r"lora_dropout value 'lots'"),
        ({"alpha_over_rank": -1}, {}, r"alpha_over_rank must be a positive number"),
        ({"alpha_over_rank": 2, "lora_alpha": [8, 16]}, {}, r"search one of lora_alpha and alpha_over_rank"),
        ({"lora_rank": 8}, {}, r"lora_rank: expected \{type"),
        ({"lora_rank": [4, 8]}, {"metrc": "eval_loss"}, r"unknown tune key 'metrc'; did you mean 'metric'"),
        ({"lora_rank": [4, 8]}, {"mode": "minimum"}, r"tune.mode must be min or max"),
        ({"lora_rank": [4, 8]}, {"num_samples": 0}, r"tune.num_samples must be an integer >= 1"),
        ({"lora_rank": [4, 8]}, {"max_concurrent_trials": "two"}, r"tune.max_concurrent_trials must be an integer"),
        ({"lora_rank": [4, 8]}, {"scheduler": {"type": "hyperband"}}, r"tune.scheduler.type must be one of asha, fifo"),
        ({"lora_rank": [4, 8]}, {"scheduler": {"type": "asha", "reduction_factor": 1}}, r"reduction_factor must be > 1"),
        ({"lora_rank": [4, 8]}, {"scheduler": {"grace": 2}}, r"unknown field 'grace'; fields are type, grace_period, reduction_factor"),
        ({"lora_rank": [4, 8]}, {"scheduler": {"grace_perod": 2}}, r"unknown field 'grace_perod'; did you mean 'grace_period'"),
        ({"lora_rank": [4, 8]}, {"search_alg": "optuna"}, r"search_alg=optuna cannot run grid keys \(lora_rank\)"),
        ({"lora_rank": [4, 8]}, {"search_alg": "bayes"}, r"tune.search_alg must be one of random, optuna, hyperopt"),
        ({"lora_rank": [4, 8]}, {"name": "a/b"}, r"tune.name must be a plain folder name"),
        ({}, {}, r"tune.search_space is required"),
    ],
)
def test_errors_name_the_key_and_a_fix(tmp_path, search_space, tune, message):
    with pytest.raises(ConfigError, match=message):
        _space(tmp_path, search_space, **tune)


def test_eval_metric_needs_a_held_out_split(tmp_path):
    with pytest.raises(ConfigError, match=r"tune.metric=eval_loss is measured on held-out data, but val_size is 0"):
        _load(tmp_path, {"search_space": {"lora_rank": [4, 8]}}, val_size=0)
    # a training metric needs no split
    assert _load(tmp_path, {"search_space": {"lora_rank": [4, 8]}, "metric": "loss"}, val_size=0)[2].metric == "loss"


def test_lora_keys_need_lora_finetuning(tmp_path):
    with pytest.raises(ConfigError, match=r"lora_rank only act with finetuning_type lora"):
        _load(tmp_path, {"search_space": {"lora_rank": [4, 8]}}, finetuning_type="full")


def test_base_config_errors_come_first_and_argv_needs_one_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate'"):
        _load(tmp_path, {"search_space": {"lora_rank": [4, 8]}}, lerning_rate=1e-3)
    with pytest.raises(ConfigError, match=r"exactly one CONFIG.yaml"):
        load_from_argv(["--lora_rank", "8"])


def test_param_space_maps_types_to_ray_tune(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    from caregpt.tune.run import param_space

    spec = _space(tmp_path, {
        "lora_rank": {"type": "randint", "low": 4, "high": 8},
        "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
        "lora_dropout": {"type": "choice", "values": [0.0, 0.1]},
        "weight_decay": [0.0, 0.01],
        "alpha_over_rank": 2,
    })
    space = param_space(spec)
    assert isinstance(space["lora_rank"], Integer) and (space["lora_rank"].lower, space["lora_rank"].upper) == (4, 9)  # high inclusive
    assert isinstance(space["learning_rate"], Float) and isinstance(space["lora_dropout"], Categorical)
    assert space["weight_decay"] == {"grid_search": [0.0, 0.01]} and space["alpha_over_rank"] == 2.0


def test_budget_steps_from_data_size(tmp_path):
    from caregpt.tune.run import budget_steps

    config, _, spec = _load(tmp_path, {"search_space": {"per_device_train_batch_size": [2, 4]}}, max_steps=-1, num_train_epochs=2)
    # 64 rows, 16 held out -> 48 train rows; the smallest searched batch (2) gives the most steps
    assert budget_steps(config, spec, 64) == 48
    assert budget_steps(load_config(None, {"max_steps": "6"}), spec, 64) == 6


def _rows():
    return [
        TrialRow("a_00000", {"lora_rank": 4, "learning_rate": 2e-4}, 8.34, 6, "finished", "/x/a_00000", [(2, 8.35), (4, 8.345), (6, 8.34)]),
        TrialRow("a_00001", {"lora_rank": 16, "learning_rate": 2e-3}, 8.20, 2, "stopped early", None, [(2, 8.20)]),
        TrialRow("a_00002", {"lora_rank": 16, "learning_rate": 2e-4}, 8.30, 6, "finished", "/x/a_00002", [(2, 8.33), (6, 8.30)]),
        TrialRow("a_00003", {"lora_rank": 4, "learning_rate": 2e-3}, None, None, "error", None, []),
    ]


def test_best_is_the_best_trial_that_trained_to_the_end(tmp_path):
    rows = _rows()
    assert pick_best(rows, "min").trial_id == "a_00002"  # a_00001 is lower but stopped after 2 steps
    assert pick_best(rows, "max").trial_id == "a_00000"
    assert pick_best([rows[1], rows[3]], "min").trial_id == "a_00001"  # none finished: the best reported
    assert pick_best([rows[3]], "min") is None


def test_table_best_config_and_plot_are_written(tmp_path):
    rows = _rows()
    best = pick_best(rows, "min")
    csv_path, md_path = write_table(rows, "eval_loss", best, tmp_path)
    table = list(csv.DictReader(csv_path.open()))
    assert [r["state"] for r in table] == ["finished", "stopped early", "finished", "error"]
    assert table[2]["best"] == "1" and table[2]["eval_loss"] == "8.3" and table[2]["lora_rank"] == "16"
    assert "a_00002 (best)" in md_path.read_text()
    spec = _space(tmp_path, {"lora_rank": [4, 16], "learning_rate": [2e-4, 2e-3]})
    base = {**BASE, "lora_rank": 8, "overwrite_output_dir": True}
    values = best_config_values(base, best, tmp_path)
    assert values["lora_rank"] == 16 and values["learning_rate"] == 2e-4 and "overwrite_output_dir" not in values
    path = write_best_config(base, best, spec, tmp_path)
    text = path.read_text()
    assert f"caregpt train {path}" in text and "/x/a_00002" in text
    config = load_config(path)  # ready to run: every key valid, comments ignored
    assert config.finetune.lora_rank == 16 and config.train.output_dir == str(tmp_path / "best")
    plot = plot_metric(rows, "eval_loss", best, tmp_path)
    assert plot.is_file() and plot.stat().st_size > 10_000
    assert plot_metric([rows[3]], "eval_loss", None, tmp_path / "none") is None


def test_asha_counts_optimizer_steps_and_lets_full_trials_finish(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from caregpt.tune.run import make_scheduler, make_searcher

    config, _, spec = _load(tmp_path, {"search_space": {"lora_rank": [4, 8]}, "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}})
    asha = make_scheduler(config, spec, 6)
    assert isinstance(asha, ASHAScheduler)
    # rungs in optimizer steps (not in reports); a trial reaching max_t is not stopped before its final report
    assert (asha._time_attr, asha._max_t, asha._stop_last_trials) == ("step", 6, False)
    spec.grace_period = None  # default: the first evaluation (eval_steps=2)
    assert [milestone for milestone, _ in make_scheduler(config, spec, 6)._brackets[0]._rungs] == [4, 2]
    spec.scheduler = "fifo"
    assert isinstance(make_scheduler(config, spec, 6), FIFOScheduler)
    assert make_searcher(spec) is None  # random: Tune's grid + random variant generator


def test_optional_search_algorithms_say_what_to_install(tmp_path):
    import importlib.util

    from caregpt.tune.run import make_searcher

    spec = _space(tmp_path, {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, search_alg="optuna", num_samples=4)
    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ConfigError, match=r"search_alg=optuna needs its package: pip install optuna"):
            make_searcher(spec)
    else:
        assert type(make_searcher(spec)).__name__ == "OptunaSearch"


def test_a_restart_must_continue_the_same_experiment(tmp_path):
    from caregpt.tune.run import SPEC_FILE, _check_same_experiment

    experiment = tmp_path / "ray_tune" / "exp"
    recorded = {"experiment_path": str(experiment), "base": {"lora_rank": 8}, "tune": {"num_samples": 1}}
    _check_same_experiment(tmp_path, recorded, overwrite=False)
    assert (tmp_path / SPEC_FILE).is_file()
    changed = {**recorded, "tune": {"num_samples": 2}}
    _check_same_experiment(tmp_path, changed, overwrite=False)  # nothing ran yet: the new settings simply apply
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    with pytest.raises(ConfigError, match=r"different settings \(tune changed\).*--overwrite_output_dir"):
        _check_same_experiment(tmp_path, recorded, overwrite=False)
    (tmp_path / "trials").mkdir()
    _check_same_experiment(tmp_path, recorded, overwrite=True)  # start over: the old experiment goes
    assert not experiment.exists() and not (tmp_path / "trials").exists()
