"""Triage accuracy on department-labelled dialogue data: top-1 and top-3 against the catalog, next to baselines.

Each record's patient text (earlier user turns of `history`, then `instruction` and `input`) is triaged; the
record's `department` label is turned into the catalog departments that count as right by department_map.py.
Records whose label has no catalog counterpart are counted per label and reported, not scored.

Every file is reported on its dev part and its test part (triage_classifier.split_of: a stable third by id is
test). The classifier is the shipped one (trained on a dev-split sample) or one trained on `train_files`' dev
parts only, so the test parts are never trained on. Beside the fused triage the report gives:
- retrieval alone (no classifier);
- the constant baseline: always the same three departments, the most common ones of that very part (the best
  any constant answer can do there: it is fitted on the part it is scored on);
- a uniform random guess under the same mapping, so a wide mapping entry cannot pass for skill.
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
from caregpt.medical.triage_classifier import patient_text, split_of, train_from_files

__all__ = ["FileResult", "TriageReport", "evaluate_triage", "patient_text"]


@dataclass
class FileResult:
    file: str
    split: str = "all"
    records: int = 0
    scored: int = 0
    top1: int = 0  # the triage as configured (fused when a classifier is present)
    top3: int = 0
    retrieval_top1: int = 0
    retrieval_top3: int = 0
    constant: list = field(default_factory=list)  # the constant baseline's three departments
    constant_top1: int = 0
    constant_top3: int = 0
    chance_top1: float = 0.0  # expected hits of a uniform random ranking, summed over scored records
    chance_top3: float = 0.0
    unsure: int = 0  # low-confidence results (general practice offered)
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
    classifier: str = "none"

    def to_dict(self) -> dict:
        out = {"expand": self.expand, "classifier": self.classifier, "files": []}
        for f in self.files:
            row = asdict(f)
            row.update({f"{name}_accuracy": f.rate(getattr(f, name)) for name in
                        ("top1", "top3", "retrieval_top1", "retrieval_top3", "constant_top1", "constant_top3",
                         "chance_top1", "chance_top3")})
            out["files"].append(row)
        return out

    def format(self) -> str:
        lines = [f"triage (classifier: {self.classifier}; retrieval{' with lay-term expansion' if self.expand else ''})",
                 f"{'file / part':<44} {'n':>5}  {'triage t1/t3':>14}  {'retrieval':>13}  {'constant':>13}  {'random':>13}"]
        pct = lambda f, a, b: f"{f.rate(a):5.1%}/{f.rate(b):5.1%}"  # noqa: E731
        for f in self.files:
            name = f"{Path(f.file).name} [{f.split}]"
            lines.append(f"{name:<44} {f.scored:>5}  {pct(f, f.top1, f.top3):>14}  {pct(f, f.retrieval_top1, f.retrieval_top3):>13}  "
                         f"{pct(f, f.constant_top1, f.constant_top3):>13}  {pct(f, f.chance_top1, f.chance_top3):>13}")
            lines.append(f"    constant baseline answers {' '.join(f.constant)}; top-3 margin over it "
                         f"{100 * (f.rate(f.top3) - f.rate(f.constant_top3)):+.1f} points; low confidence {f.unsure}")
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


def constant_baseline(accepted_sets: list[set[str]], k: int = 3) -> list[str]:
    """The k departments a constant answer should name: greedily, the one accepted by most records not yet covered."""
    chosen: list[str] = []
    remaining = list(accepted_sets)
    for _ in range(k):
        counts = Counter(name for accepted in remaining for name in accepted if name not in chosen)
        if not counts:
            break
        best = max(sorted(counts), key=lambda name: counts[name])
        chosen.append(best)
        remaining = [a for a in remaining if best not in a]
    return chosen


def evaluate_triage(
    data_files: Sequence[str | Path],
    guides: str | Path,
    catalog_path: str | Path | None = None,
    limit: int | None = None,
    expand: bool = True,
    encoder=None,
    mapping: dict = DEPARTMENT_MAP,
    train_files: Sequence[str | Path] | None = None,
    classifier="default",
    by_split: bool = True,
    parts: Sequence[str] = ("dev", "test"),
) -> TriageReport:
    """Top-1 / top-3 of triage, retrieval alone, the constant baseline and chance, per file and split part.

    classifier: "default" (shipped), None (retrieval only), or a TriageClassifier; train_files overrides it with
    one trained on those files' dev parts. limit: the first N records of each file. parts: which split parts to
    score (by_split only), e.g. ("test",)."""
    catalog = load_catalog(guides, catalog_path)
    if train_files:
        classifier = train_from_files(train_files, catalog, split="dev")
        label = "trained on the dev parts of " + ", ".join(Path(p).name for p in train_files)
    else:
        label = {"default": "shipped sample model", None: "none"}.get(classifier, "given") if isinstance(classifier, (str, type(None))) else "given"
    triage = DepartmentTriage(catalog, encoder=encoder, expand=expand, classifier=classifier)
    retrieval = DepartmentTriage(catalog, encoder=encoder, expand=expand, classifier=None) if triage.classifier else triage
    total = len(catalog.departments)
    results = []
    for data_file in data_files:
        path = Path(data_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: data file not found (expected JSONL with a 'department' field)")
        wanted = tuple(parts) if by_split else ("all",)
        parts_of_file = {s: FileResult(str(path), s) for s in wanted}
        accepted_by_part: dict[str, list[set[str]]] = {s: [] for s in parts_of_file}
        counters = {s: (Counter(), Counter(), {}) for s in parts_of_file}
        seen = 0
        for number, record in _records(path):
            if limit is not None and seen >= limit:
                break
            seen += 1
            part = split_of(record) if by_split else "all"
            if part not in parts_of_file:
                continue
            result = parts_of_file[part]
            unmapped, unknown, per_label = counters[part]
            result.records += 1
            label_text = str(record.get("department") or "").strip()
            accepted = resolve_targets(label_text, catalog, mapping)
            if accepted is None:
                (unmapped if label_text in UNMAPPED else unknown)[label_text] += 1
                continue
            text = patient_text(record)
            if not text:
                result.no_text += 1
                continue
            found = triage.recommend(text, k=3)
            top = [r.department for r in found.recommendations]
            base = top if retrieval is triage else [r.department for r in retrieval.recommend(text, k=3).recommendations]
            hit1, hit3 = bool(top) and top[0] in accepted, bool(set(top) & accepted)
            result.scored += 1
            result.top1 += hit1
            result.top3 += hit3
            result.retrieval_top1 += bool(base) and base[0] in accepted
            result.retrieval_top3 += bool(set(base) & accepted)
            result.unsure += bool(found.unsure)
            result.chance_top1 += _chance(len(accepted), total, 1)
            result.chance_top3 += _chance(len(accepted), total, 3)
            accepted_by_part[part].append(accepted)
            counts = per_label.setdefault(label_text, [0, 0, 0])
            counts[0] += 1
            counts[1] += hit1
            counts[2] += hit3
        for part, result in parts_of_file.items():
            unmapped, unknown, per_label = counters[part]
            result.unmapped, result.unknown, result.per_label = dict(unmapped), dict(unknown), per_label
            result.constant = constant_baseline(accepted_by_part[part])
            result.constant_top1 = sum(1 for a in accepted_by_part[part] if result.constant and result.constant[0] in a)
            result.constant_top3 = sum(1 for a in accepted_by_part[part] if set(result.constant) & a)
            results.append(result)
    return TriageReport(results, expand, label)
