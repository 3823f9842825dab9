"""The pipeline's final report: every step's status, time, key metrics and files, as JSON and Markdown."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# files a step may leave in its output_dir whose numbers belong in the report
METRIC_FILES = ("all_results.json", "predict_results.json", "eval_results.json", "choice_results.json", "caregpt_export.json",
                "prepare_manifest.json", "deploy_result.json", "eval_report.json")
SHOWN = ("train_loss", "eval_loss", "step", "tokens_seen", "records_used", "records_rejected", "bleu-4", "rouge-1", "rouge-2",
         "rouge-l", "predict_bleu-4", "predict_rouge-l", "accuracy", "rewards/accuracies", "ttft_seconds", "answer_chars")


def _numbers(data: Any) -> dict[str, Any]:
    """Top-level numbers, plus those under `metrics` / `counts` (an eval report); never the echoed config."""
    out: dict[str, Any] = {}
    if not isinstance(data, dict):
        return out
    for section in (data, data.get("metrics"), data.get("counts")):
        if isinstance(section, dict):
            out.update({k: v for k, v in section.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def collect_metrics(output_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Numeric results the step wrote, and its plots / reports (paths)."""
    metrics: dict[str, Any] = {}
    output_dir = Path(output_dir)
    for name in METRIC_FILES:
        path = output_dir / name
        if path.is_file():
            try:
                metrics.update(_numbers(json.loads(path.read_text(encoding="utf-8"))))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    files = sorted(str(p) for pattern in ("*.png", "*.md") for p in output_dir.glob(pattern)) if output_dir.is_dir() else []
    return metrics, files


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(spec, records) -> tuple[Path, Path]:
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"pipeline": spec.name, "run_dir": str(run_dir), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "steps": [asdict(r) for r in records]}
    json_path = run_dir / "pipeline_report.json"
    json_path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    lines = [f"# Pipeline `{spec.name}`", "", f"Run directory: `{run_dir}`", "",
             "| step | uses | status | seconds | key metrics |", "|---|---|---|---:|---|"]
    for r in records:
        shown = ", ".join(f"{k} {_fmt(r.metrics[k])}" for k in SHOWN if k in r.metrics)
        status = r.status + (f": {r.error[:120]}" if r.error else "")
        lines.append(f"| {r.name} | {r.uses} | {status} | {r.seconds:.0f} | {shown} |")
    plots = [f for r in records for f in r.files if f.endswith(".png")]
    if plots:
        lines += ["", "## Plots", ""] + [f"- `{p}`" for p in plots]
    md_path = run_dir / "pipeline_report.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path
