"""`caregpt run PIPELINE.yaml`: steps in order, outputs feeding the next, resume after a kill, errors up front."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import SAMPLE_DATA

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CAREGPT = str(Path(sys.executable).parent / "caregpt")


def _env() -> dict[str, str]:
    return {**os.environ, "CAREGPT_PROGRESS": "0", "CAREGPT_DASHBOARD": "0"}


def _pipeline(tmp_path: Path, test_data: Path, steps: list[dict] | None = None) -> Path:
    corpus = [str(test_data / "pretrain_medicalgpt_fever.txt"), str(SAMPLE_DATA / "medical_sft.jsonl")]
    spec = {
        "name": "mini",
        "run_dir": str(tmp_path / "run"),
        "defaults": {"dataset_dir": str(SAMPLE_DATA), "template": "chatml", "cutoff_len": 128, "logging_steps": 1},
        "steps": steps or [
            {"name": "model", "uses": "new-model", "with": {"preset": "tiny", "corpus": corpus}},
            {"name": "sft", "uses": "sft", "from": "model",
             "with": {"dataset": "medical_sft", "finetuning_type": "full", "max_steps": 14, "save_steps": 3,
                      "per_device_train_batch_size": 8, "learning_rate": 1e-3}},
            {"name": "dpo", "uses": "dpo", "from": "sft",
             "with": {"dataset": "medical_pref", "finetuning_type": "lora", "max_steps": 3, "per_device_train_batch_size": 4,
                      "learning_rate": 5e-3, "save_steps": 50}},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def _checkpoints(storage: Path) -> int:
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (ValueError, KeyError):
            return 0
    return 0


def test_killed_mid_sft_resumes_at_sft(test_data, tmp_path):
    """SIGKILL to the driver and its embedded Ray mid-SFT, then the same command again: the steps that finished
    are skipped and SFT continues from its last checkpoint (run_training's resume: a `caregpt train` rerun alike)."""
    path = _pipeline(tmp_path, test_data)
    run = tmp_path / "run"
    driver = subprocess.Popen([CAREGPT, "run", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=_env(), start_new_session=True)
    deadline = time.time() + 500
    while time.time() < deadline and _checkpoints(run / "sft" / "ray_storage") < 1 and driver.poll() is None:
        time.sleep(0.3)
    assert driver.poll() is None, "the pipeline finished before it could be interrupted"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    model_marker = run / ".pipeline" / "model.json"
    assert model_marker.is_file() and not (run / ".pipeline" / "sft.json").exists()
    model_mtime = (run / "model" / "model.safetensors").stat().st_mtime_ns

    again = subprocess.run([CAREGPT, "run", str(path)], capture_output=True, text=True, timeout=900, env=_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "model (new-model): finished earlier, skipped" in again.stdout
    # the terminal gets the pipeline's own lines; Ray's logs go to the file named at the end
    for noise in ("TrainingReport", "logging_progress", "core_worker.cc", "Started a local Ray instance"):
        assert noise not in again.stdout + again.stderr, noise
    log_file = Path(again.stdout.rsplit("Ray and library logs of this run: ", 1)[1].split()[0])
    assert log_file.parent == run / "logs" and "Reporting training result" in log_file.read_text(errors="replace")
    assert len(again.stdout.splitlines()) <= 40, again.stdout
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == model_mtime  # not rebuilt
    sft = json.loads((run / "sft" / "all_results.json").read_text())
    assert sft["step"] == 14 and sft["resumed_from_step"] >= 3  # continued from the killed run's checkpoint
    steps = [json.loads(line)["step"] for line in (run / "sft" / "trainer_log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 15))
    # dpo started from the sft model and wrote a LoRA adapter
    dpo_config = yaml.safe_load((run / "dpo" / "caregpt_config.yaml").read_text())
    assert dpo_config["model_name_or_path"] == str(run / "sft") and (run / "dpo" / "adapter_model.safetensors").is_file()
    report = json.loads((run / "pipeline_report.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("model", "skipped"), ("sft", "ran"), ("dpo", "ran")]
    assert report["steps"][1]["metrics"]["train_loss"] > 0
    assert "| sft | sft | ran |" in (run / "pipeline_report.md").read_text()

    third = subprocess.run([CAREGPT, "run", str(path)], capture_output=True, text=True, timeout=300, env=_env())
    assert third.returncode == 0 and third.stdout.count("finished earlier, skipped") == 3, third.stdout[-2000:]
    third_log = Path(third.stdout.rsplit("Ray and library logs of this run: ", 1)[1].split()[0])
    assert "starting an embedded local Ray" in log_file.read_text(errors="replace")
    assert "starting an embedded local Ray" not in third_log.read_text(errors="replace")  # nothing to run, no Ray started


@pytest.mark.parametrize("steps, message", [
    ([{"name": "a", "uses": "sfft"}], r"unknown step kind uses='sfft'; did you mean 'sft'"),
    ([{"name": "a", "uses": "sft", "from": "b"}, {"name": "b", "uses": "new-model"}], r"from='b' comes later"),
    ([{"name": "a", "uses": "export", "from": "nothing"}], r"from='nothing' is not a step"),
    ([{"name": "m", "uses": "new-model"}, {"name": "s", "uses": "sft", "with": {"model_name_or_path": "${steps.m.checkpoint_dir}"}}],
     r"step 'm' has no output 'checkpoint_dir'"),
    ([{"name": "m", "uses": "new-model"}, {"name": "s", "uses": "sft", "from": "m", "with": {"lora_rnak": 8}}],
     r"step 2 \('s', uses sft\): unknown config key 'lora_rnak'.*did you mean 'lora_rank'"),
])
def test_bad_pipelines_fail_before_anything_runs(test_data, tmp_path, steps, message):
    import re

    path = _pipeline(tmp_path, test_data, steps)
    done = subprocess.run([CAREGPT, "run", str(path)], capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.search(message, done.stderr), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / ".pipeline").exists()  # nothing ran, not even Ray
