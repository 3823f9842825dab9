"""benchmarks/gpu_check.py at --smoke sizes: the GPU readiness script runs end to end without Ray, TRL or DeepSpeed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_smoke_runs_the_stage_and_engine_with_ray_trl_deepspeed_blocked(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["without"] == ["ray", "trl", "deepspeed"]  # blocked for the whole run, as on the GPU image
    sft = result["sft"]
    assert sft["tokens_per_s"] > 0 and math.isfinite(sft["loss"]) and sft["steps_timed"] == 2
    assert sft["flops_per_token"] > 6 * 2 * 64 * 64  # at least the weights of two layers' attention projections
    engine = result["engine"]
    assert engine["tokens"] == [8, 32 * 8]  # every answer ran to its token budget, eos ignored
    assert engine["c32_tokens_per_s"] > engine["c1_tokens_per_s"]  # batching 32 streams beats one
    if result["qlora"] is not None:  # bitsandbytes importable: the 4-bit LoRA stage trained too
        assert math.isfinite(result["qlora"]["loss"])
    assert "[gpu_check] sft: fp32 packed SFT" in run.stdout and "[gpu_check] engine: " in run.stdout
