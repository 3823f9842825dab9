"""Rebuild the trimmed samples in this folder from the full files in ../shared/data (kept for the record).

    python tests/data/trim_samples.py ../shared/data

Deterministic (fixed seed): running it again on the same inputs writes byte-identical files.
The exam sample (mcq_medical_exam.jsonl) and dataset_info.json are written by hand, not by this script.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def stratified(rows: list[dict], total: int, minimum: int, max_bytes: int | None, seed: int) -> list[dict]:
    """About `total` rows, every department kept (at least `minimum` rows or all it has), in a shuffled order
    so that the first N rows of the sample are a mix of departments too."""
    rng = random.Random(seed)
    by_department: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if max_bytes is None or len(json.dumps(row, ensure_ascii=False).encode()) <= max_bytes:
            by_department[str(row.get("department"))].append(row)
    kept = sum(len(group) for group in by_department.values())
    picked = []
    for department in sorted(by_department):
        group = by_department[department]
        quota = max(minimum, round(total * len(group) / kept))
        picked += rng.sample(group, min(quota, len(group)))
    rng.shuffle(picked)
    return picked


def main(source: str) -> None:
    src = Path(source)
    _write(HERE / "sft_toyhom_im_department.jsonl",
           stratified(_rows(src / "sft_toyhom_im_department.jsonl"), total=240, minimum=12, max_bytes=None, seed=0))
    _write(HERE / "sft_cmtmedqa_multiturn.jsonl",
           stratified(_rows(src / "sft_cmtmedqa_multiturn.jsonl"), total=130, minimum=3, max_bytes=2400, seed=0))
    lines = src.joinpath("pretrain_medicalgpt_fever.txt").read_text(encoding="utf-8").splitlines()
    (HERE / "pretrain_medicalgpt_fever.txt").write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    for name in ("pref_medicalgpt_medical_reward.jsonl", "hospital_guide_departments.json", "hospital_guide_catalog.txt"):
        shutil.copyfile(src / name, HERE / name)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE.parents[2] / "shared" / "data"))
