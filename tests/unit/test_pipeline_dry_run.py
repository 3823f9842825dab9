"""`caregpt run --dry-run`: prints the resolved plan, honours --only, refuses unknown step names; runs nothing.
Which finished steps a rerun may skip."""

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


def test_a_rerun_skips_finished_steps_but_never_a_kept_running_deploy(tmp_path):
    """A deploy step with keep_running leaves a server, not files: the server ended with the process that started
    it, so a second `make demo` must serve again instead of pointing at a dead address (it did)."""
    import json

    from caregpt.pipeline.run import MARKERS, _finished
    from caregpt.pipeline.plan import plan
    from caregpt.pipeline.spec import load_pipeline

    path = _pipeline(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["steps"].append({"name": "deploy", "uses": "deploy", "from": "sft", "with": {"keep_running": True}})
    spec["steps"].append({"name": "smoke", "uses": "deploy", "from": "sft", "with": {"keep_running": False}})
    path.write_text(yaml.safe_dump(spec))
    steps = plan(load_pipeline(path))
    run_dir = tmp_path / "run"
    (run_dir / MARKERS).mkdir(parents=True)
    for step in steps:
        (run_dir / MARKERS / f"{step.name}.json").write_text(json.dumps({"fingerprint": step.fingerprint, "metrics": {}}))
    reusable = {step.name: _finished(run_dir, step) is not None for step in steps}
    assert reusable == {"model": True, "sft": True, "deploy": False, "smoke": True}
