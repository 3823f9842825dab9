"""The `caregpt` console script as a user runs it: help, exit codes, clear one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_DATA

pytestmark = pytest.mark.e2e
CAREGPT = str(Path(sys.executable).parent / "caregpt")


def run(*args: str, timeout: int = 240, ray_address: str | None = None) -> subprocess.CompletedProcess:
    """The console script; with ray_address it joins that Ray (RAY_ADDRESS) instead of starting its own."""
    env = {**os.environ, "CAREGPT_PROGRESS": "0"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.run([CAREGPT, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_help_lists_verbs_and_every_option():
    top = run("--help")
    assert top.returncode == 0 and "train" in top.stdout and "data" in top.stdout and "new-model" in top.stdout
    train = run("train", "--help")
    assert train.returncode == 0
    for option in ("--lora_target", "--quantization_bit", "--cutoff_len", "--num_workers", "--deepspeed", "--storage_path", "--max_failures"):
        assert option in train.stdout
    assert "Module names that get LoRA adapters" in train.stdout  # docstrings become help text


def test_unknown_verb_and_key_fail_fast_with_a_hint():
    verb = run("trian")
    assert verb.returncode == 2 and "did you mean 'train'" in verb.stderr
    key = run("data", "check", "--datset", "x")
    assert key.returncode == 2 and "did you mean 'dataset'" in key.stderr
    assert "Traceback" not in key.stderr


def test_new_model_then_data_check_on_sample_data(tmp_path, ray_address):
    model = tmp_path / "m"
    built = run("new-model", "--preset", "tiny", "--corpus", f"{SAMPLE_DATA / 'medical_pt.txt'},{SAMPLE_DATA / 'medical_sft.jsonl'}", "--output_dir", str(model))
    assert built.returncode == 0, built.stderr
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    checked = run("data", "check", "--dataset", "medical_sft,medical_sharegpt", "--dataset_dir", str(SAMPLE_DATA),
                  "--model_name_or_path", str(model), "--template", "chatml", "--cutoff_len", "128", "--json", ray_address=ray_address)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    counts = {d["name"]: (d["records"], d["invalid"]) for d in report["datasets"]}
    assert counts == {"medical_sft": (160, 0), "medical_sharegpt": (24, 0)}
    assert all(d["lengths"]["max"] > 0 for d in report["datasets"])


def test_data_check_exits_1_and_points_at_the_bad_line(tmp_path, ray_address):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "头痛", "output": "休息"}\n{"instruction": "咳嗽"}\n', encoding="utf-8")
    checked = run("data", "check", "--dataset", str(bad), "--dataset_dir", str(tmp_path), ray_address=ray_address)
    assert checked.returncode == 1
    assert f"{bad}:2: missing field 'output'" in checked.stdout
