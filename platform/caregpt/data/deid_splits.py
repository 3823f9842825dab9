"""De-identification on the shipped PHI dev split (tuned on) and frozen test split, per category.

    caregpt eval --task deid [--data FILE ...]

Categories (a record's "category"): names (person names in varied contexts), identifiers (IDs, phones, e-mails,
addresses, record / insurance / card numbers, dates, written with spaces or Chinese numerals too), lookalikes
(doses, lab values, ICD codes, years: nothing may change). An identifier counts as hidden when detected spans
cover all of its characters, whatever type they carry (a masked identifier is masked). Baseline: masking
nothing hides 0% and alters 0 look-alike records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from caregpt.data.deid_detect import detect
from caregpt.data.deid_eval import load_labelled

SETS = Path(__file__).resolve().parents[1] / "resources" / "deid_eval"
TARGETS = {"names": "names hidden >= 92%", "identifiers": "all hidden", "lookalikes": "0 records altered"}


def load(path: Path) -> list[dict]:
    """The labelled records of one split (the same format and checks as `caregpt data deid --evaluate`)."""
    return load_labelled(path)


def score(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for row in rows:
        category = row.get("category") or ("lookalikes" if not row["spans"] else "identifiers")
        found = detect(row["text"])
        covered = set()
        for span in found:
            covered.update(range(span.start, span.end))
        block = out.setdefault(category, {"records": 0, "spans": 0, "hidden": 0, "altered": 0, "extra": 0, "missed": []})
        block["records"] += 1
        block["altered"] += bool(found) and not row["spans"]
        labelled = set()
        for span in row["spans"]:
            labelled.update(range(span["start"], span["end"]))
            block["spans"] += 1
            if all(i in covered for i in range(span["start"], span["end"])):
                block["hidden"] += 1
            else:
                block["missed"].append(row.get("id", "?"))
        block["extra"] += sum(1 for s in found if not labelled & set(range(s.start, s.end)))
    return out


@dataclass
class DeidReport:
    splits: dict  # split name -> score()

    def to_dict(self) -> dict:
        return self.splits

    def format(self) -> str:
        lines = ["de-identification: identifiers hidden (all characters covered); look-alike records altered; extra ="
                 " masked spans touching no labelled identifier.  baseline (mask nothing): 0% hidden, 0 altered"]
        for split, result in self.splits.items():
            lines.append(f"\n[{split}]")
            for category in ("names", "identifiers", "lookalikes"):
                block = result.get(category)
                if not block:
                    continue
                if category == "lookalikes":
                    lines.append(f"  {category:<12} {block['altered']}/{block['records']} records altered   target: {TARGETS[category]}")
                else:
                    rate = block["hidden"] / block["spans"] if block["spans"] else 0.0
                    lines.append(f"  {category:<12} {rate:6.1%} hidden ({block['hidden']}/{block['spans']}), extra {block['extra']}"
                                 f"   target: {TARGETS[category]}")
        return "\n".join(lines)


def evaluate_splits(paths: list[str] | None = None) -> DeidReport:
    if paths:
        return DeidReport({Path(p).name: score(load(Path(p))) for p in paths})
    return DeidReport({"dev (tuned on)": score(load(SETS / "dev.jsonl")),
                       "test (frozen, never tuned on)": score(load(SETS / "test.jsonl"))})
