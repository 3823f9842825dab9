"""Loss curves from trainer_log.jsonl, for `plot_loss: true`.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot: no display is needed on a
cluster node, and no process-wide backend or figure registry is touched (this may run in a Ray worker).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

# Weight of the past in the moving average: per-step loss from small batches is noisy enough
# that the trend is hard to see in the raw curve; 0.9 averages over roughly the last 10 logs.
EMA_WEIGHT = 0.9


def read_trainer_log(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per line, each with a "step"; blank lines are skipped."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}, line {lineno}: expected a JSON object with a 'step' key")
            records.append(record)
    return records


def ema(values: list[float], weight: float = EMA_WEIGHT) -> list[float]:
    # seeded with the first value, not 0, so the smoothed curve does not start far below the raw one
    smoothed: list[float] = []
    for value in values:
        smoothed.append(value if not smoothed else weight * smoothed[-1] + (1 - weight) * value)
    return smoothed


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = []
    for record in records:
        value = record.get(key)
        # bool is an int to Python; NaN / inf would poison every later point of the average
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            points.append((float(record["step"]), float(value)))
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]


def plot_loss(
    log_path: str | Path,
    output_dir: str | Path,
    keys: Iterable[str] = ("loss", "eval_loss"),
    title: str | None = None,
) -> list[Path]:
    """Write output_dir/training_{key}.png (raw + EMA-smoothed, against step) for each key in the log.

    The title defaults to the run name, the folder that holds the log. Keys with no numeric value
    are skipped; with none at all, a warning is logged and [] returned.
    """
    # a lone string would otherwise be iterated character by character
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    log_path = Path(log_path)
    records = read_trainer_log(log_path)
    run_name = title or log_path.resolve().parent.name
    output_dir = Path(output_dir)
    written = []
    for key in keys:
        steps, values = _series(records, key)
        if not values:
            continue
        fig = Figure(figsize=(8, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        (raw,) = ax.plot(steps, values, alpha=0.35, linewidth=1, label="raw")
        ax.plot(steps, ema(values), color=raw.get_color(), linewidth=2, label=f"smoothed (EMA {EMA_WEIGHT})")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{run_name}: {key}")
        ax.grid(alpha=0.3)
        ax.legend()
        output_dir.mkdir(parents=True, exist_ok=True)
        # keys such as "eval/loss" must not turn into sub-folders
        out = output_dir / f"training_{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.png"
        fig.savefig(out, format="png")
        written.append(out)
    if not written:
        logger.warning("no %s values in %s: nothing to plot", "/".join(keys), log_path)
    return written
