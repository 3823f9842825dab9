"""Triage accuracy on department-labelled dialogue data: top-1 and top-3 against the catalog.

Each record's patient text (earlier user turns of `history`, then `instruction` and `input`) is
triaged; the record's `department` label is turned into the catalog departments that count as right
by department_map.py. Records whose label has no catalog counterpart are counted per label and
reported, not scored. The report also gives the accuracy of a uniform random guess under the same
mapping, so a wide mapping entry (a whole catalog group) cannot pass for skill.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from caregpt.medical.catalog import load_catalog
from caregpt.medical.department_map import DEPARTMENT_MAP, UNMAPPED, resolve_targets
from caregpt.medical.triage import DepartmentTriage


@dataclass
class FileResult:
    file: str
    records: int = 0
    scored: int = 0
    top1: int = 0
    top3: int = 0
    chance_top1: float = 0.0  # expected hits of a uniform random ranking, summed over scored records
    chance_top3: float = 0.0
    unmapped: dict = field(default_factory=dict)  # label -> count (label without a catalog counterpart)
    unknown: dict = field(default_factory=dict)  # label -> count (label in neither table: extend department_map.py)
    no_text: int = 0
    per_label: dict = field(default_factory=dict)  # label -> [scored, top1, top3]

    def rate(self, hits: float) -> float:
        return hits / self.scored if self.scored else 0.0


@dataclass
class TriageReport:
    files: list[FileResult]
    expand: bool

    def to_dict(self) -> dict:
        out = {"expand": self.expand, "files": []}
        for f in self.files:
            row = asdict(f)
            row.update(top1_accuracy=f.rate(f.top1), top3_accuracy=f.rate(f.top3),
                       chance_top1_accuracy=f.rate(f.chance_top1), chance_top3_accuracy=f.rate(f.chance_top3))
            out["files"].append(row)
        return out

    def format(self) -> str:
        lines = [f"triage by retrieval{' with lay-term expansion' if self.expand else ''} (random guess in brackets)"]
        for f in self.files:
            lines.append(
                f"{Path(f.file).name}: scored {f.scored}/{f.records}  top-1 {f.rate(f.top1):.1%} "
                f"[{f.rate(f.chance_top1):.1%}]  top-3 {f.rate(f.top3):.1%} [{f.rate(f.chance_top3):.1%}]"
            )
            for label, (n, t1, t3) in sorted(f.per_label.items(), key=lambda item: -item[1][0]):
                lines.append(f"    {label:<8} n={n:<5} top-1 {t1 / n:6.1%}  top-3 {t3 / n:6.1%}")
            if f.unmapped:
                why = ", ".join(f"{label or '(empty)'} {n} ({UNMAPPED.get(label, '')})" for label, n in sorted(f.unmapped.items()))
                lines.append(f"    not scored, no catalog counterpart: {why}")
            if f.unknown:
                lines.append(f"    not scored, label missing from department_map.py: {f.unknown}")
            if f.no_text:
                lines.append(f"    not scored, no patient text: {f.no_text}")
        return "\n".join(lines)


def patient_text(record: dict) -> str:
    """The patient's words of an alpaca-with-history record: earlier user turns, then instruction and input."""
    turns = [h[0] for h in record.get("history") or [] if isinstance(h, (list, tuple)) and h and isinstance(h[0], str)]
    turns += [record.get(key) for key in ("instruction", "input") if isinstance(record.get(key), str)]
    return "\n".join(t for t in turns if t.strip())


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{number}: invalid JSON (expected one JSON record per line)") from None


def _chance(accepted: int, total: int, k: int) -> float:
    """Probability that a uniform random top-k list of `total` departments contains one of `accepted`."""
    if accepted <= 0:
        return 0.0
    return 1.0 - math.comb(total - accepted, k) / math.comb(total, k)


def evaluate_triage(
    data_files: Sequence[str | Path],
    guides: str | Path,
    catalog_path: str | Path | None = None,
    limit: int | None = None,
    expand: bool = True,
    encoder=None,
    mapping: dict = DEPARTMENT_MAP,
) -> TriageReport:
    """Top-1 / top-3 accuracy of retrieval triage on each file (the first `limit` records of each, if given)."""
    catalog = load_catalog(guides, catalog_path)
    triage = DepartmentTriage(catalog, encoder=encoder, expand=expand)
    total = len(catalog.departments)
    results = []
    for data_file in data_files:
        path = Path(data_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: data file not found (expected JSONL with a 'department' field)")
        result = FileResult(str(path))
        unmapped, unknown, per_label = Counter(), Counter(), {}
        for number, record in _records(path):
            if limit is not None and result.records >= limit:
                break
            result.records += 1
            label = str(record.get("department") or "").strip()
            accepted = resolve_targets(label, catalog, mapping)
            if accepted is None:
                (unmapped if label in UNMAPPED else unknown)[label] += 1
                continue
            text = patient_text(record)
            if not text:
                result.no_text += 1
                continue
            top = [r.department for r in triage.recommend(text, k=3).recommendations]
            hit1, hit3 = bool(top) and top[0] in accepted, bool(set(top) & accepted)
            result.scored += 1
            result.top1 += hit1
            result.top3 += hit3
            result.chance_top1 += _chance(len(accepted), total, 1)
            result.chance_top3 += _chance(len(accepted), total, 3)
            counts = per_label.setdefault(label, [0, 0, 0])
            counts[0] += 1
            counts[1] += hit1
            counts[2] += hit3
        result.unmapped, result.unknown, result.per_label = dict(unmapped), dict(unknown), per_label
        results.append(result)
    return TriageReport(results, expand)
