"""Loss plots: real PNGs for the keys the log has, none for the others, and readable log errors."""

from __future__ import annotations

import json
import logging
import math

import pytest
from PIL import Image

from caregpt.train.plotting import ema, plot_loss, read_trainer_log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_log(path, records, blank_every=0):
    lines = []
    for i, record in enumerate(records):
        lines.append(json.dumps(record))
        if blank_every and i % blank_every == 0:
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _synthetic_records():
    records = []
    for step in range(1, 101):
        # a decaying loss with deterministic "noise", as from small batches
        loss = 2.0 * math.exp(-step / 40) + 0.3 * math.sin(step * 1.7)
        records.append({"step": step, "loss": loss, "learning_rate": 1e-4})
        if step % 25 == 0:
            records.append({"step": step, "eval_loss": 1.5 - step / 200, "epoch": step / 100})
    return records


def test_read_trainer_log_skips_blank_lines(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    _write_log(log, _synthetic_records(), blank_every=10)
    records = read_trainer_log(log)
    assert len(records) == 104 and records[0]["step"] == 1 and "eval_loss" in records[25]


def test_plot_loss_writes_valid_pngs_for_present_keys(tmp_path):
    run = tmp_path / "sft-demo"
    run.mkdir()
    log = run / "trainer_log.jsonl"
    _write_log(log, _synthetic_records())
    out = tmp_path / "plots"

    written = plot_loss(log, out, keys=("loss", "eval_loss", "grad_norm"))

    # grad_norm never appears in the log, so it gets no file
    assert written == [out / "training_loss.png", out / "training_eval_loss.png"]
    assert sorted(p.name for p in out.iterdir()) == ["training_eval_loss.png", "training_loss.png"]
    for png in written:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(png) as image:
            image.load()  # decodes every chunk, so a truncated file fails here
            assert image.format == "PNG"
            assert image.size == (800, 500)  # figsize 8 x 5 inches at 100 dpi
            # not a blank canvas: the curves put more than a handful of colours on it
            assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 10


def test_plot_loss_default_keys_with_a_title(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    _write_log(log, [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    written = plot_loss(log, tmp_path, title="my run")
    assert [p.name for p in written] == ["training_loss.png"]


def test_plot_loss_without_any_key_warns(tmp_path, caplog):
    log = tmp_path / "trainer_log.jsonl"
    _write_log(log, [{"step": 1, "learning_rate": 1e-4}, {"step": 2, "loss": None}])
    with caplog.at_level(logging.WARNING, logger="caregpt.train.plotting"):
        assert plot_loss(log, tmp_path / "plots") == []
    assert "no loss/eval_loss values" in caplog.text
    assert not (tmp_path / "plots").exists()


def test_bad_line_is_named(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"trainer_log.jsonl, line 3: not valid JSON"):
        read_trainer_log(log)
    with pytest.raises(ValueError, match="line 3"):
        plot_loss(log, tmp_path)

    log.write_text('{"step": 1}\n{"loss": 2.0}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: expected a JSON object with a 'step' key"):
        read_trainer_log(log)


def test_ema_starts_at_first_value_and_smooths():
    assert ema([]) == []
    smoothed = ema([1.0, 0.0, 0.0], weight=0.5)
    assert smoothed == [1.0, 0.5, 0.25]
