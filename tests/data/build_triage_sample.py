"""Build the shipped triage training sample: platform/caregpt/resources/triage/train.jsonl.

    python tests/data/build_triage_sample.py [--shared ../shared/data]

Only records of the dev split (triage_classifier.split_of) are taken, so the test split of the shared files
stays unseen by the shipped model. Per label at most PER_LABEL records, the patient's words cut to MAX_CHARS
characters (the opening states the complaint), to stay a few hundred KB. Sources: Toyhom/Chinese-medical-
dialogue-data (MIT) and SupritYoung/Zhongjing CMtMedQA (Apache-2.0); see tests/data/SOURCES.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))
from caregpt.medical.triage_classifier import patient_text, split_of  # noqa: E402

OUT = ROOT / "platform" / "caregpt" / "resources" / "triage" / "train.jsonl"
PER_LABEL = 80
MAX_CHARS = 80
FILES = (("sft_toyhom_im_department.jsonl", "toyhom"), ("sft_cmtmedqa_multiturn.jsonl", "cmtmedqa"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    rows, taken = [], Counter()
    for name, source in FILES:
        for line in (Path(args.shared) / name).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            label = str(record.get("department") or "").strip()
            text = patient_text(record)
            if split_of(record) != "dev" or not text or taken[(source, label)] >= PER_LABEL:
                continue
            taken[(source, label)] += 1
            rows.append({"id": record.get("id"), "source": source, "department": label, "instruction": text[:MAX_CHARS]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(len(rows), "records,", OUT.stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main()
