"""The training progress on the console: a line per fifth of the run, evals, the last step once."""

from __future__ import annotations

from caregpt.train.trainer import PROGRESS_PARTS, RayReportCallback


def _shown(callback: RayReportCallback, total: int, every: int) -> list[int]:
    steps = [s for s in range(every, total + 1, every)] + [total]  # the end-of-training summary logs the last step again
    return [s for s in steps if callback._worth_a_line(s, total, {"loss": 1.0})]


def test_a_line_per_fifth_and_the_last_step_once(monkeypatch):
    monkeypatch.delenv("CAREGPT_VERBOSE", raising=False)
    shown = _shown(RayReportCallback(trainer=None), total=120, every=5)
    assert shown == [5, 25, 50, 75, 100, 120]
    assert len(shown) <= PROGRESS_PARTS + 1
    evals = RayReportCallback(trainer=None)
    assert evals._worth_a_line(7, 120, {"eval_loss": 2.0}) and evals._worth_a_line(8, 120, {"eval_loss": 2.0})
    assert RayReportCallback(trainer=None)._worth_a_line(3, 0, {"loss": 1.0})  # unknown total: every line


def test_verbose_shows_every_logging_step(monkeypatch):
    monkeypatch.setenv("CAREGPT_VERBOSE", "1")
    assert _shown(RayReportCallback(trainer=None), total=60, every=5) == [*range(5, 61, 5), 60]
