"""What a tune experiment leaves behind: the results table, the best config as a YAML and a plot.

Everything is read back from the experiment folder with Ray Tune's ExperimentAnalysis, so the
reports describe every trial the experiment holds, including those finished before a restart.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from caregpt.tune.space import TuneSpec, trial_values

logger = logging.getLogger(__name__)

TABLE_CSV, TABLE_MD, BEST_YAML, PLOT = "tune_results.csv", "tune_results.md", "best_config.yaml", "tune_metric.png"
# never carried into the best config: they describe the search, not the run to reproduce
DROPPED_KEYS = ("overwrite_output_dir",)


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    metric: float | None
    steps: int | None
    state: str  # finished | stopped early | error | unfinished
    output_dir: str | None  # the adapter / model of a finished trial
    history: list[tuple[float, float]] = field(default_factory=list)  # (step, metric) at every report


@dataclass
class Summary:
    rows: list[TrialRow]
    best: TrialRow | None
    table_csv: Path
    table_md: Path
    best_config: Path | None
    plot: Path | None

    def format(self, metric: str) -> str:
        return _markdown(self.rows, metric, self.best)


def _state(trial) -> str:
    if trial.status == "ERROR":
        return "error"
    if trial.status == "TERMINATED":
        # the final report of a trial that trained to the end carries `final`; ASHA-stopped ones never do
        return "finished" if trial.last_result.get("final") else "stopped early"
    return "unfinished"


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def collect_rows(experiment_path: str, spec: TuneSpec, base_values: dict[str, Any], trials_dir: Path) -> list[TrialRow]:
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(experiment_path, default_metric=spec.metric, default_mode=spec.mode)
    frames = analysis.trial_dataframes
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        params = {k: v for k, v in trial.config.items() if k in spec.search_space or k == "alpha_over_rank"}
        if "alpha_over_rank" in params:
            params["lora_alpha"] = trial_values(base_values, trial.config).get("lora_alpha")
        history: list[tuple[float, float]] = []
        frame = frames.get(trial.trial_id)
        if frame is not None and spec.metric in frame and "step" in frame:
            history = [(float(s), float(m)) for s, m in zip(frame["step"], frame[spec.metric]) if _finite(m) is not None]
        out = trials_dir / trial.trial_id
        state = _state(trial)
        rows.append(TrialRow(
            trial_id=trial.trial_id,
            params=params,
            metric=_finite(trial.last_result.get(spec.metric)),
            steps=int(trial.last_result["step"]) if "step" in trial.last_result else None,
            state=state,
            output_dir=str(out) if state == "finished" and out.is_dir() else None,
            history=history,
        ))
    return rows


def pick_best(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The best last value among trials that trained to the end (a stopped trial's value is from fewer steps)."""
    scored = [r for r in rows if r.metric is not None and r.state == "finished"] or [r for r in rows if r.metric is not None]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda r: r.metric)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if value and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.4f}".rstrip("0").rstrip(".")
    return "" if value is None else str(value)


def _columns(rows: list[TrialRow]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.params if k not in keys]
    return keys


def _markdown(rows: list[TrialRow], metric: str, best: TrialRow | None) -> str:
    params = _columns(rows)
    header = ["trial", *params, metric, "steps", "state"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        mark = " (best)" if best is not None and r.trial_id == best.trial_id else ""
        cells = [r.trial_id + mark, *(_fmt(r.params.get(k)) for k in params), _fmt(r.metric), _fmt(r.steps), r.state]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(rows: list[TrialRow], metric: str, best: TrialRow | None, output_dir: Path) -> tuple[Path, Path]:
    params = _columns(rows)
    csv_path, md_path = output_dir / TABLE_CSV, output_dir / TABLE_MD
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial_id", *params, metric, "steps", "state", "output_dir", "best"])
        for r in rows:
            is_best = best is not None and r.trial_id == best.trial_id
            writer.writerow([r.trial_id, *(r.params.get(k, "") for k in params), "" if r.metric is None else r.metric, r.steps or "", r.state, r.output_dir or "", int(is_best)])
    md_path.write_text(_markdown(rows, metric, best) + "\n", encoding="utf-8")
    return csv_path, md_path


def best_config_values(base_values: dict[str, Any], best: TrialRow, output_dir: Path) -> dict[str, Any]:
    """The base config with the best trial's values: what `caregpt train` needs to retrain it."""
    params = {k: v for k, v in best.params.items() if k != "lora_alpha" or "alpha_over_rank" not in best.params}
    values = {k: v for k, v in trial_values(base_values, params).items() if k not in DROPPED_KEYS}
    values["output_dir"] = str(output_dir / "best")
    return values


def write_best_config(base_values: dict[str, Any], best: TrialRow, spec: TuneSpec, output_dir: Path) -> Path:
    path = output_dir / BEST_YAML
    values = best_config_values(base_values, best, output_dir)
    header = [
        f"# Best trial {best.trial_id} of the tune experiment in {output_dir}: {spec.metric} = {_fmt(best.metric)} after {best.steps} steps ({best.state}).",
        f"# Its adapter / model: {best.output_dir or 'not kept (the trial did not train to the end)'}",
        f"# Searched values: {', '.join(f'{k}={_fmt(v)}' for k, v in best.params.items())}",
        f"# Retrain it:  caregpt train {path}",
    ]
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(values, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def plot_metric(rows: list[TrialRow], metric: str, best: TrialRow | None, output_dir: Path) -> Path | None:
    """tune_metric.png: the metric against the optimizer step, one line per trial (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = [r for r in rows if r.history]
    if not drawn:
        logger.warning("no %s values were reported: no plot", metric)
        return None
    fig = Figure(figsize=(9, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in drawn:
        steps, values = zip(*sorted(r.history))
        label = f"{r.trial_id} " + " ".join(f"{k}={_fmt(v)}" for k, v in r.params.items()) + ("" if r.state == "finished" else f" [{r.state}]")
        is_best = best is not None and r.trial_id == best.trial_id
        ax.plot(steps, values, marker="o", linewidth=2.5 if is_best else 1.2, linestyle="-" if r.state == "finished" else "--", label=label + (" (best)" if is_best else ""))
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{output_dir.name}: {metric} per trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = output_dir / PLOT
    fig.savefig(path, format="png")
    return path


def write_reports(experiment_path: str, spec: TuneSpec, base_values: dict[str, Any], output_dir: Path) -> Summary:
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(experiment_path, spec, base_values, output_dir / "trials")
    best = pick_best(rows, spec.mode)
    table_csv, table_md = write_table(rows, spec.metric, best, output_dir)
    best_path = write_best_config(base_values, best, spec, output_dir) if best is not None else None
    plot = plot_metric(rows, spec.metric, best, output_dir)
    return Summary(rows=rows, best=best, table_csv=table_csv, table_md=table_md, best_config=best_path, plot=plot)
