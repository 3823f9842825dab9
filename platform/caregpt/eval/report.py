"""Eval run reports: one JSON (for machines) + one Markdown page (for people) per run, and a
side-by-side comparison of several runs (`caregpt eval compare RUN_DIR...`).

A run directory holds ``eval_report.json``::

    {"task": "choice", "created": "...", "caregpt_version": "...", "duration_s": 12.3,
     "metrics": {"accuracy": 41.2, "accuracy/解剖学": 38.5, ...},   # flat name -> number
     "counts": {"items": 1815, "correct": 748, ...},
     "config": {...what was run...}, "details": {...task-specific: per-subject tables, unparsed ids...}}

Every metric is "higher is better" (accuracy, BLEU, ROUGE), which is what the comparison's bold
marks rely on.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from caregpt import __version__
from caregpt.config.loader import ConfigError

REPORT_JSON = "eval_report.json"
REPORT_MD = "eval_report.md"
MAX_LISTED_IDS = 50


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The human page of one report."""
    lines = [f"# Eval report: {report['task']}", "",
             f"{report.get('created', '')} · caregpt {report.get('caregpt_version', '?')} · "
             f"{report.get('duration_s', 0):.1f} s", "", "## Metrics", ""]
    lines += _table(["metric", "value"], [[k, v] for k, v in report["metrics"].items()])
    lines += ["", "## Counts", ""]
    lines += _table(["count", "value"], [[k, v] for k, v in report.get("counts", {}).items()])
    details = report.get("details") or {}
    subjects = details.get("subjects")
    if subjects:
        lines += ["", "## Per subject", ""]
        lines += _table(["subject", "accuracy", "correct", "total", "unparsed"],
                        [[name, s["accuracy"], s["correct"], s["total"], s["unparsed"]] for name, s in subjects.items()])
    unparsed = details.get("unparsed_ids")
    if unparsed is not None:
        lines += ["", f"## Unparsed items ({len(unparsed)})", ""]
        shown = unparsed[:MAX_LISTED_IDS]
        lines.append(", ".join(f"`{i}`" for i in shown) + (f" … and {len(unparsed) - len(shown)} more" if len(unparsed) > len(shown) else "")
                     if unparsed else "none")
    lines += ["", "## Config", ""]
    lines += _table(["key", "value"], [[k, v] for k, v in report.get("config", {}).items()])
    return "\n".join(lines) + "\n"


def write_report(output_dir: str | Path, *, task: str, metrics: dict[str, float], counts: dict[str, int],
                 config: dict[str, Any], details: dict[str, Any] | None = None, started: float | None = None) -> dict[str, Any]:
    """Write eval_report.json and eval_report.md into output_dir; returns the report."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "task": task,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "caregpt_version": __version__,
        "duration_s": round(time.time() - started, 2) if started else 0.0,
        "metrics": metrics,
        "counts": counts,
        "config": config,
        "details": details or {},
    }
    (out / REPORT_JSON).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    (out / REPORT_MD).write_text(markdown(report), encoding="utf-8")
    return report


def load_report(run: str | Path) -> dict[str, Any]:
    """The report of a run directory (or of an eval_report.json path); ConfigError if there is none."""
    path = Path(run)
    path = path / REPORT_JSON if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"{run}: no {REPORT_JSON} found; pass directories written by `caregpt eval` (its --output_dir)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ConfigError(f"{path}: not an eval report (no 'metrics' object)")
    return report


def _labels(runs: list[str]) -> list[str]:
    # the folder name reads best; fall back to the full path where two runs share a name
    names = [Path(r).name if Path(r).name != REPORT_JSON else Path(r).parent.name for r in runs]
    return [name if names.count(name) == 1 else str(run) for name, run in zip(names, runs)]


_SHOWN_CONFIG = ("data", "predictions", "model_name_or_path", "checkpoint_dir", "template", "method", "n_shot")


def compare(run_dirs: list[str | Path]) -> str:
    """A Markdown table with one column per run and one row per metric (best value per row in bold)."""
    if not run_dirs:
        raise ConfigError("compare needs at least one run directory: caregpt eval compare RUN_DIR [RUN_DIR ...]")
    runs = [str(r) for r in run_dirs]
    reports = [load_report(r) for r in runs]
    header = ["", *_labels(runs)]
    rows: list[list[Any]] = [["task", *(r["task"] for r in reports)]]
    for key in _SHOWN_CONFIG:
        if any(key in r.get("config", {}) for r in reports):
            rows.append([key, *(r.get("config", {}).get(key) for r in reports)])
    count_keys = list(dict.fromkeys(k for r in reports for k in r.get("counts", {})))
    rows += [[k, *(r.get("counts", {}).get(k) for r in reports)] for k in count_keys]
    metric_keys = list(dict.fromkeys(k for r in reports for k in r["metrics"]))
    for key in metric_keys:
        values = [r["metrics"].get(key) for r in reports]
        numbers = [v for v in values if isinstance(v, (int, float))]
        best = max(numbers) if len(numbers) > 1 else None
        rows.append([key, *(f"**{_cell(v)}**" if best is not None and v == best else v for v in values)])
    return "\n".join(_table(header, rows)) + "\n"
