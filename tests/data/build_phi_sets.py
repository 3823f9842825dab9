"""Build the PHI dev and frozen test sets: platform/caregpt/resources/deid_eval/{dev,test}.jsonl.

    python tests/data/build_phi_sets.py

Each record: {"id", "category": names | identifiers | lookalikes, "text", "spans": [{start, end, type, text}]}.
Templates are our own writing in several voices (ward notes, consent forms, referral letters, patients' chat
messages, insurance forms); dev and test use different templates, and the test templates were written before
the detectors were tuned. Slots are filled with synthetic values (caregpt.data.deid_make_eval.Filler plus
spaced IDs, phone numbers in Chinese numerals, insurance and medical-card numbers). Look-alike records hold
doses, lab values, ICD codes, years and measurements that must come out unchanged: they have no spans.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))
from caregpt.data.deid_make_eval import Filler  # noqa: E402

OUT = ROOT / "platform" / "caregpt" / "resources" / "deid_eval"
SLOT = re.compile(r"\{([A-Z_0-9]+)\}")
CN_DIGITS = "零一二三四五六七八九"
TYPE_OF = {"NAME": "NAME", "NAME2": "NAME", "SURNAME": "NAME", "ID": "ID", "ID_SPACED": "ID", "MOBILE": "PHONE",
           "MOBILE_CN": "PHONE", "MOBILE_SPACED": "PHONE", "LANDLINE": "PHONE", "EMAIL": "EMAIL", "ADDR": "ADDRESS",
           "MRN": "MRN", "INSURANCE": "MRN", "CARD": "MRN", "DATE": "DATE"}


class PhiFiller(Filler):
    def NAME2(self) -> str:  # always a two-character given name
        return self.pick(list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜")) + \
            "".join(self.pick(list("伟芳敏静丽强磊军洋勇艳杰娟涛超秀霞平刚桂英华玉兰萍红建国文辉宁鹏斌浩凯晨欣怡婷雪琳晓峰博")) for _ in range(2))

    def ID_SPACED(self) -> str:
        raw = self.ID()
        return self.pick([f"{raw[:6]} {raw[6:14]} {raw[14:]}", " ".join(raw[i:i + 4] for i in range(0, 18, 4)), f"{raw[:6]}-{raw[6:14]}-{raw[14:]}"])

    def MOBILE_CN(self) -> str:
        raw = "1" + self.pick("3589") + self.digits(9)
        cn = "".join(CN_DIGITS[int(d)] for d in raw)
        return self.pick([cn, cn.replace("一", "幺"), f"{cn[:3]}{cn[3:7]}{cn[7:]}"])

    def MOBILE_SPACED(self) -> str:
        raw = "1" + self.pick("3589") + self.digits(9)
        return self.pick([f"{raw[:3]} {raw[3:7]} {raw[7:]}", f"{raw[:3]}  {raw[3:7]}  {raw[7:]}", " ".join(raw)])

    def INSURANCE(self) -> str:
        return self.pick([f"{self.digits(4)} {self.digits(4)} {self.digits(4)}", f"{self.digits(4)}-{self.digits(4)}-{self.digits(4)}-{self.digits(2)}",
                          f"YB{self.digits(10)}", self.digits(12)])

    def CARD(self) -> str:
        return self.pick([f"{self.digits(4)} {self.digits(4)} {self.digits(2)}", f"JZ{self.digits(8)}", self.digits(10)])


def render(template: str, filler: PhiFiller) -> tuple[str, list[dict]]:
    text, spans, pos = "", [], 0
    for match in SLOT.finditer(template):
        text += template[pos:match.start()]
        value = getattr(filler, match.group(1))()
        spans.append({"start": len(text), "end": len(text) + len(value), "type": TYPE_OF[match.group(1)], "text": value})
        text += value
        pos = match.end()
    return text + template[pos:], spans


sys.path.insert(0, str(Path(__file__).resolve().parent))
from phi_templates import DEV, TEST  # noqa: E402


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for split, templates in (("dev", DEV), ("test", TEST)):
        filler = PhiFiller(random.Random(int(hashlib.md5(split.encode()).hexdigest()[:8], 16)))
        rows = []
        for category, template, copies in templates:
            for _ in range(copies * 2):
                text, spans = render(template, filler)
                rows.append({"id": f"{split}-{len(rows):04d}", "category": category, "text": text, "spans": spans})
        with open(OUT / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(split, len(rows), {c: sum(r["category"] == c for r in rows) for c in ("names", "identifiers", "lookalikes")})


if __name__ == "__main__":
    main()
