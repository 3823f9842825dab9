"""Training on a real local Ray Train with the tiny model and the test data."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from caregpt.config.loader import ConfigError, load_config
from caregpt.train.launch import run_training
from tests.conftest import TEST_REGISTRY

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path, model, test_data, **overrides):
    values = {
        "model_name_or_path": model,
        "dataset": "toyhom_sft",
        "dataset_dir": str(test_data),
        "dataset_info": str(TEST_REGISTRY),
        "template": "chatml",
        "cutoff_len": 128,
        "max_samples": 96,
        "per_device_train_batch_size": 4,
        "max_steps": 6,
        "logging_steps": 1,
        "save_steps": 100,
        "learning_rate": 2e-3,
        "output_dir": str(tmp_path / "out"),
        # one tokenized copy per data shape, shared by the tests of this module
        "tokenized_path": str(tmp_path.parent / "tok-{}-{}-{}-{}-{}".format(*(overrides.get(k, "") for k in ("stage", "dataset", "cutoff_len", "max_samples", "packing")))),
    }
    values.update(overrides)
    return load_config(None, {k: str(v) for k, v in values.items()})


def _log(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "trainer_log.jsonl").read_text().splitlines() if line.strip()]


def _losses(output_dir) -> list[float]:
    return [entry["loss"] for entry in _log(output_dir) if "loss" in entry]


# One worker, 2 micro-batches of 2 accumulated per step: the full SFT run below, and the reference the two
# DeepSpeed workers (1 micro-batch of 2 each, the same global batch of 4) must match step for step.
FULL_SFT = dict(finetuning_type="full", max_steps=24, logging_steps=2, per_device_train_batch_size=2)


@pytest.fixture(scope="module")
def full_sft(ray_local, tiny_model, test_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("full-sft")
    return run_training(_config(root, tiny_model, test_data, plot_loss="true", num_workers=1, gradient_accumulation_steps=2, **FULL_SFT))


def test_full_sft_loss_goes_down_and_outputs_are_complete(full_sft):
    outcome = full_sft
    out = outcome.output_dir
    losses = _losses(out)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja", "caregpt_config.yaml", "trainer_log.jsonl", "all_results.json", "training_loss.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin"))
    results = json.loads((out / "all_results.json").read_text())
    assert results["step"] == 24 and results["records_used"] == 96 and results["records_rejected"] == 0
    assert results["tokens_seen"] > 0 and results["resumed_from_step"] == 0
    assert outcome.metrics["train_loss"] == pytest.approx(results["train_loss"])


def test_freeze_trains_only_the_last_blocks(ray_local, tiny_model, test_data, tmp_path):
    """Freeze tuning (num_layer_trainable=1): the last block changes, everything below it stays the base model's.
    LoRA and QLoRA (quantization_bit 4) train in most other tests here and in tests/e2e/test_seed_commands.py."""
    from safetensors.torch import load_file

    outcome = run_training(_config(tmp_path, tiny_model, test_data, finetuning_type="freeze", num_layer_trainable=1))
    losses = _losses(outcome.output_dir)
    assert len(losses) == 6 and all(loss == loss and loss > 0 for loss in losses)  # finite, no NaN
    base, tuned = load_file(Path(tiny_model) / "model.safetensors"), load_file(outcome.output_dir / "model.safetensors")
    last = max(int(name.split(".")[2]) for name in base if name.startswith("model.layers."))
    changed = {name for name in base if not base[name].equal(tuned[name])}
    assert changed and all(name.startswith(f"model.layers.{last}.") for name in changed), sorted(changed)


def test_two_deepspeed_zero2_workers_match_one_worker_at_the_same_global_batch(full_sft, tiny_model, test_data, tmp_path):
    """Data parallelism is exact: 2 workers x 1 micro-batch (DeepSpeed ZeRO-2: gradients and optimizer state
    sharded) give the losses of 1 worker x 2 accumulated micro-batches. Plain DDP across workers and nodes is
    tests/e2e/test_local_cluster.py's SPREAD run and PPO's two-worker run (tests/ray/test_ppo.py).
    The one-worker side is the full SFT run above (it was a 4-step run of its own; now all 12 logged losses match)."""
    one = full_sft
    two = run_training(_config(tmp_path / "two", tiny_model, test_data, num_workers=2, gradient_accumulation_steps=1, deepspeed=2, **FULL_SFT))
    a, b = _losses(one.output_dir), _losses(two.output_dir)
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert abs(x - y) < 0.02 * abs(x), (a, b)
    assert (two.output_dir / "model.safetensors").is_file()  # ZeRO-2 shards are gathered into one model


def _registered_checkpoints(storage: Path) -> int:
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (ValueError, KeyError):
            return 0  # being written right now
    return 0


def test_worker_killed_halfway_resumes_from_last_checkpoint(ray_local, tiny_model, test_data, tmp_path):
    import ray.util.state

    config = _config(tmp_path, tiny_model, test_data, finetuning_type="full", max_steps=24, save_steps=6, max_failures=1, cutoff_len=256, per_device_train_batch_size=8, max_samples=160)
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.setdefault("outcome", run_training(config)), daemon=True)
    thread.start()
    storage = Path(config.train.output_dir) / "ray_storage"
    deadline = time.time() + 300
    while time.time() < deadline and not _registered_checkpoints(storage):
        time.sleep(0.2)  # the kill must come after Ray Train registered a checkpoint, not just wrote one
    assert _registered_checkpoints(storage), "no checkpoint was registered"
    address = ray_local.get_runtime_context().gcs_address  # other Ray instances may share this machine
    workers = ray.util.state.list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert workers, "no live training worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=600)
    outcome = holder["outcome"]
    steps = [entry["step"] for entry in _log(outcome.output_dir) if "loss" in entry]
    assert steps == list(range(1, 25)), steps  # no gap, no repeat, no restart from 0
    assert outcome.metrics["step"] == 24
    assert outcome.metrics["resumed_from_step"] in (6, 12, 18)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model_name_or_path": "/nonexistent/model"}, "does not exist"),
        ({"lora_target": "q_prj"}, "matches no module"),
        ({"dataset": "medicalgpt_pt"}, "needs instruction data"),
        ({"cutoff_len": 99999}, "max_position_embeddings"),
    ],
)
def test_bad_input_fails_before_any_worker(tiny_model, test_data, tmp_path, overrides, message):
    config = _config(tmp_path, tiny_model, test_data, **overrides)
    start = time.time()
    with pytest.raises(ConfigError, match=message):
        run_training(config)
    assert time.time() - start < 30
    assert not (tmp_path / "out" / "ray_storage").exists()


def test_packing_then_a_new_lora_on_top_of_the_first(ray_local, tiny_model, test_data, tmp_path):
    first = run_training(_config(tmp_path / "a", tiny_model, test_data, finetuning_type="lora", lora_target="all", packing="true", cutoff_len=256, max_steps=4))
    results = json.loads((first.output_dir / "all_results.json").read_text())
    assert results["train_samples"] < 96  # rows hold several packed samples
    # CareGPT's DPO-after-SFT pattern: merge the SFT adapter, train a fresh one
    second = run_training(_config(tmp_path / "b", tiny_model, test_data, finetuning_type="lora", lora_target="all", checkpoint_dir=str(first.output_dir), resume_lora_training="false", max_steps=2))
    assert (second.output_dir / "adapter_model.safetensors").is_file()
    assert len(_losses(second.output_dir)) == 2
