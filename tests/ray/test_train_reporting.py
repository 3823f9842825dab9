"""What a training run reports: honest throughput, and report_to tensorboard leaving readable event files.

The run is also the suite's pretraining (pt stage) run: its loss must go down.

One real Ray Train run of the pt stage with packing: every sequence is exactly cutoff_len real tokens, so
the work per optimizer step is constant (a steady run) and every logged rate should sit near the run average.
Logging every 4 steps keeps each interval long enough (~10 s here) that a busy shared machine does not swamp it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caregpt.config.loader import ConfigError, load_config
from caregpt.train.launch import run_training
from tests.conftest import TEST_REGISTRY

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def steady_run(ray_local, tiny_model, test_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reporting") / "pt"
    config = load_config(None, {
        "stage": "pt", "model_name_or_path": tiny_model, "dataset": "medicalgpt_pt", "dataset_dir": str(test_data),
        "dataset_info": str(TEST_REGISTRY), "finetuning_type": "full", "packing": "true", "cutoff_len": "128",
        "per_device_train_batch_size": "8", "max_steps": "24", "logging_steps": "4", "save_steps": "100",
        "learning_rate": "1e-3", "report_to": "tensorboard", "output_dir": str(out),
    })
    run_training(config)
    return out


def test_logged_rate_stays_near_the_run_average(steady_run):
    results = json.loads((steady_run / "all_results.json").read_text())
    average = results["tokens_per_second"]
    log = [json.loads(line) for line in (steady_run / "trainer_log.jsonl").read_text().splitlines() if '"loss"' in line]
    rates = [entry["tokens_per_second"] for entry in log]
    assert len(rates) == 6 and average > 0
    # intervals partition the run: tokens of each over its rate add up to the run's wall time, nothing excluded,
    # and the run average (tokens over that wall time) is what all_results.json reports, not the last interval
    seen = [0] + [e["tokens_seen"] for e in log]
    wall = sum((seen[i + 1] - seen[i]) / rate for i, rate in enumerate(rates))
    assert results["tokens_seen"] == seen[-1] > 0.95 * 24 * 8 * 128  # packed rows: (nearly) all cutoff_len real tokens
    assert abs(seen[-1] / wall - average) / average < 1e-3, (seen[-1] / wall, average)
    for step, rate in zip((e["step"] for e in log), rates):
        assert 0.65 * average <= rate <= 1.35 * average, f"step {step}: {rate:.0f} tok/s vs run average {average:.0f} (all: {rates})"


def test_pretraining_loss_goes_down(steady_run):
    losses = [json.loads(line)["loss"] for line in (steady_run / "trainer_log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses


def test_tensorboard_event_files_hold_the_loss(steady_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((steady_run / "runs").rglob("events.out.tfevents.*"))
    assert events, f"no event files under {steady_run / 'runs'}"
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    losses = board.Scalars("train/loss")
    assert [s.step for s in losses] == [4, 8, 12, 16, 20, 24]
    logged = [json.loads(line)["loss"] for line in (steady_run / "trainer_log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [round(s.value, 4) for s in losses] == [round(v, 4) for v in logged]


def test_loggers_are_honoured_or_refused(tiny_model):
    import importlib.util

    from caregpt.train.launch import check_loggers

    for name in ("wandb", "mlflow"):
        config = load_config(None, {"model_name_or_path": tiny_model, "report_to": name})
        if importlib.util.find_spec(name) is None:  # refused before Ray starts, with the fix
            with pytest.raises(ConfigError, match=rf"report_to={name} needs {name}, which is not installed: pip install {name}"):
                check_loggers(config)
        else:
            check_loggers(config)
    check_loggers(load_config(None, {"model_name_or_path": tiny_model, "report_to": "tensorboard"}))
    with pytest.raises(ConfigError, match=r"report_to.*must be one of|invalid report_to"):
        load_config(None, {"report_to": "comet"})
