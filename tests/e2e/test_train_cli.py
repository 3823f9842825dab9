"""`caregpt train` as users run it: the CareGPT README's commands, and resuming after the driver died."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CAREGPT = str(Path(sys.executable).parent / "caregpt")

# The README's LLaMA-2 SFT command; only the program name, the paths and the run length differ.
SEED_SFT = """--stage sft --model_name_or_path {model} --do_train --dataset mm,hm --dataset_dir {data}
    --template llama2 --finetuning_type lora --quantization_bit 4 --lora_target q_proj,v_proj
    --output_dir {out} --overwrite_cache --per_device_train_batch_size 4 --gradient_accumulation_steps 4
    --lr_scheduler_type cosine --logging_steps 1 --save_steps 1000 --learning_rate 5e-5 --num_train_epochs 3.0
    --plot_loss --fp16 --max_samples 16 --cutoff_len 128"""


def _registry(tmp_path: Path, test_data: Path) -> Path:
    """CareGPT's registry names (mm = multi-turn medical, hm = huatuo-style QA) mapped onto the test data."""
    root = tmp_path / "data"
    root.mkdir()
    columns = {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}
    (root / "dataset_info.json").write_text(json.dumps({
        "mm": {"file_name": str(test_data / "sft_cmtmedqa_multiturn.jsonl"), "columns": columns},
        "hm": {"file_name": str(test_data / "sft_toyhom_im_department.jsonl"), "columns": {**columns, "history": ""}},
    }))
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "CAREGPT_PROGRESS": "0"}


def test_seed_qlora_multi_dataset_command_runs(tiny_model, test_data, tmp_path):
    out = tmp_path / "sft"
    argv = shlex.split(SEED_SFT.format(model=tiny_model, data=_registry(tmp_path, test_data), out=out))
    done = subprocess.run([CAREGPT, "train", *argv], capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["records_used"] == 32  # 16 from each of mm and hm
    assert results["step"] == 6  # 32 records / (4 x 4) per step x 3 epochs
    assert (out / "adapter_model.safetensors").is_file() and (out / "training_loss.png").is_file()
    config = (out / "caregpt_config.yaml").read_text()
    assert "quantization_bit: 4" in config and "template: llama2" in config


def _registered(storage: Path) -> int:
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (ValueError, KeyError):
            return 0
    return 0


def test_rerun_after_the_driver_died_resumes(tiny_model, test_data, tmp_path):
    out = tmp_path / "run"
    argv = [CAREGPT, "train", "--model_name_or_path", tiny_model, "--dataset", str(test_data / "sft_toyhom_im_department.jsonl"),
            "--template", "chatml", "--cutoff_len", "256", "--finetuning_type", "full", "--max_samples", "160",
            "--per_device_train_batch_size", "8", "--max_steps", "16", "--save_steps", "4", "--logging_steps", "1",
            "--learning_rate", "1e-3", "--output_dir", str(out)]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and _registered(out / "ray_storage") < 1 and driver.poll() is None:
        time.sleep(0.3)
    assert driver.poll() is None, "the first run finished before it could be interrupted"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded Ray it started die together
    driver.wait(timeout=60)
    assert not (out / "all_results.json").exists()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=_env())
    assert again.returncode == 0, again.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["step"] == 16
    assert results["resumed_from_step"] >= 4  # continued from the first run's checkpoint, not from 0
    steps = [json.loads(line)["step"] for line in (out / "trainer_log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 17))
