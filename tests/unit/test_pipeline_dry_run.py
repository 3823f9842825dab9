"""`caregpt run --dry-run`: prints the resolved plan, honours --only, refuses unknown step names; runs nothing."""

from __future__ import annotations

import yaml

from caregpt.pipeline.cli import main
from tests.conftest import SAMPLE_DATA


def _pipeline(tmp_path):
    spec = {
        "name": "mini", "run_dir": str(tmp_path / "run"),
        "defaults": {"dataset_dir": str(SAMPLE_DATA), "template": "chatml", "cutoff_len": 128},
        "steps": [
            {"name": "model", "uses": "new-model", "with": {"preset": "tiny", "corpus": [str(SAMPLE_DATA / "medical_pt.txt")]}},
            {"name": "sft", "uses": "sft", "from": "model", "with": {"dataset": "medical_sft", "max_steps": 2}},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_dry_run_prints_only_the_selected_steps(tmp_path, capsys):
    path = _pipeline(tmp_path)
    assert main([str(path), "--dry-run"]) == 0
    both = capsys.readouterr().out
    assert "1. model (new-model)" in both and "2. sft (sft)" in both
    assert main([str(path), "--dry-run", "--only", "sft"]) == 0
    only = capsys.readouterr().out
    assert "2. sft (sft)" in only and "model (new-model)" not in only
    assert not (tmp_path / "run").exists()  # nothing ran


def test_dry_run_refuses_an_unknown_step(tmp_path, capsys):
    assert main([str(_pipeline(tmp_path)), "--dry-run", "--only", "sfft"]) == 2
    assert "no step named 'sfft'; steps: model, sft" in capsys.readouterr().err
