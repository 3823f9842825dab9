"""`caregpt data check`: per-dataset counts, the first invalid records with file:line, token lengths.

Training calls the same validation before any worker starts and refuses invalid data with this
report unless `skip_invalid` is on. Every record is accounted for: records = valid + invalid.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from caregpt.config.specs import RunConfig
from caregpt.data.pipeline import DataPlan, build_records, plan_data, tokenize_records

MAX_EXAMPLES = 5


class InvalidDataError(ValueError):
    """Raised when training meets invalid records and skip_invalid is off; str() is the report."""


@dataclass
class DatasetReport:
    name: str
    records: int = 0
    valid: int = 0
    invalid: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # (file:line, reason)
    lengths: dict[str, float] = field(default_factory=dict)  # min / mean / p50 / p95 / max tokens
    over_cutoff: int = 0
    trainable_tokens: int = 0


@dataclass
class DataReport:
    kind: str
    cutoff_len: int
    datasets: list[DatasetReport]

    @property
    def invalid(self) -> int:
        return sum(d.invalid for d in self.datasets)

    @property
    def records(self) -> int:
        return sum(d.records for d in self.datasets)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "cutoff_len": self.cutoff_len, "records": self.records, "invalid": self.invalid, "datasets": [asdict(d) for d in self.datasets]}

    def format(self) -> str:
        lines = [f"{'dataset':<24}{'records':>9}{'valid':>9}{'invalid':>9}{'>cutoff':>9}  tokens min/mean/p50/p95/max"]
        for d in self.datasets:
            stats = "/".join(f"{d.lengths[k]:.0f}" for k in ("min", "mean", "p50", "p95", "max")) if d.lengths else "-"
            lines.append(f"{d.name:<24}{d.records:>9}{d.valid:>9}{d.invalid:>9}{d.over_cutoff:>9}  {stats}")
        for d in self.datasets:
            for loc, reason in d.examples:
                lines.append(f"  invalid {loc}: {reason}")
            if d.invalid > len(d.examples):
                lines.append(f"  ... and {d.invalid - len(d.examples)} more invalid record(s) in {d.name}")
        over = sum(d.over_cutoff for d in self.datasets)
        if over:
            action = "split into several sequences" if self.kind == "text" else "truncated (oldest turns dropped first)"
            lines.append(f"{over} record(s) exceed cutoff_len={self.cutoff_len} tokens and will be {action}.")
        return "\n".join(lines)


def _error_summary(table: pa.Table) -> pa.Table:
    """Per-batch partial counts; only a handful of examples ever travel to the driver."""
    names = table["dataset"].to_pylist()
    errors = table["error"].to_pylist()
    locs = table["loc"].to_pylist()
    summary: dict[str, dict[str, Any]] = {}
    for name, error, loc in zip(names, errors, locs):
        entry = summary.setdefault(name, {"records": 0, "invalid": 0, "examples": []})
        entry["records"] += 1
        if error:
            entry["invalid"] += 1
            if len(entry["examples"]) < MAX_EXAMPLES:
                entry["examples"].append([loc, error])
    return pa.table({"dataset": list(summary), "summary": [json.dumps(v, ensure_ascii=False) for v in summary.values()]})


def _length_summary(table: pa.Table) -> pa.Table:
    from caregpt.data.templates import IGNORE_INDEX

    label_column = "labels" if "labels" in table.column_names else "chosen_labels"
    labels = table[label_column].combine_chunks()
    flat = labels.flatten().to_numpy(zero_copy_only=False)
    offsets = labels.offsets.to_numpy()
    trainable = np.add.reduceat((flat != IGNORE_INDEX).astype(np.int64), offsets[:-1]) if len(flat) else np.zeros(len(table), np.int64)
    # reduceat repeats a value for empty rows; labels are never empty here, so this stays exact
    return pa.table({"dataset": table["dataset"], "raw_length": table["raw_length"], "trainable": pa.array(trainable, pa.int64())})


def count_records(records, plan: DataPlan) -> DataReport:
    """One streaming pass over the records (no tokenization): counts and first invalid examples."""
    reports = {a.name: DatasetReport(a.name) for a in plan.attrs}
    for batch in records.map_batches(_error_summary, batch_format="pyarrow").iter_batches(batch_format="pyarrow"):
        for name, text in zip(batch["dataset"].to_pylist(), batch["summary"].to_pylist()):
            part = json.loads(text)
            report = reports[name]
            report.records += part["records"]
            report.invalid += part["invalid"]
            room = MAX_EXAMPLES - len(report.examples)
            report.examples.extend(tuple(x) for x in part["examples"][:room])
    for report in reports.values():
        report.valid = report.records - report.invalid
    return DataReport(kind=plan.kind, cutoff_len=0, datasets=list(reports.values()))


def add_length_stats(report: DataReport, tokens, cutoff_len: int) -> None:
    lengths: dict[str, list[np.ndarray]] = {d.name: [] for d in report.datasets}
    trainable: dict[str, int] = {d.name: 0 for d in report.datasets}
    for batch in tokens.map_batches(_length_summary, batch_format="pyarrow").iter_batches(batch_format="numpy", batch_size=None):
        for name in np.unique(batch["dataset"]):
            mask = batch["dataset"] == name
            raw = batch["raw_length"][mask]
            lengths[str(name)].append(raw[raw >= 0])
            trainable[str(name)] += int(batch["trainable"][mask].sum())
    report.cutoff_len = cutoff_len
    for d in report.datasets:
        if not lengths[d.name]:
            continue
        # for text, a long document arrives as several chunks that each carry the document's length
        values = np.concatenate(lengths[d.name])
        d.lengths = {
            "min": float(values.min()),
            "mean": float(values.mean()),
            "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)),
            "max": float(values.max()),
        }
        d.over_cutoff = int((values > cutoff_len).sum())
        d.trainable_tokens = trainable[d.name]


def check_data(config: RunConfig, tokenizer_path: str | None, num_workers: int | None = None) -> DataReport:
    """The full report: counts and invalid examples, then token statistics when a tokenizer is given."""
    plan = plan_data(config)
    # two streaming passes (counts, then tokens) rather than materialising: a corpus may not fit in memory
    records = build_records(config, plan)
    report = count_records(records, plan)
    report.cutoff_len = config.data.cutoff_len
    if tokenizer_path and report.records > report.invalid:
        unpacked = config.model_copy(deep=True)
        unpacked.data.packing = False  # statistics are about records, not packed rows
        add_length_stats(report, tokenize_records(records, unpacked, plan, tokenizer_path, num_workers), config.data.cutoff_len)
    return report


def require_valid(report: DataReport, skip_invalid: bool) -> None:
    if report.invalid and not skip_invalid:
        raise InvalidDataError(
            f"{report.invalid} of {report.records} records are invalid; fix them or set skip_invalid: true "
            f"to train on the valid ones (the skipped records are counted in the run's metrics).\n{report.format()}"
        )
