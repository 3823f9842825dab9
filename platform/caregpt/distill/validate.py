"""Per-record filters: each returns the first reason a record is not kept, or None.

Checks apply to the text the teacher wrote: the answer (sft), every assistant turn (multiturn), the chosen
answer (preference; the rejected one only has to be non-empty and different) or the document (kb_document).
"""

from __future__ import annotations

import re

from caregpt.distill.config import DistillConfig

# phrases a teacher uses when it declines: said about itself ("as an AI", "I cannot answer"), not about the
# patient's situation ("无法确诊" in a medical answer is advice, not a refusal)
REFUSALS = [
    r"作为(一个|一名)?(AI|人工智能|语言模型|AI语言模型|人工智能助手|AI助手)",
    r"我(只是|是)(一个)?(AI|人工智能|语言模型)",
    r"(抱歉|对不起|很遗憾)[，,]?\s*我(无法|不能|没办法)(回答|提供|帮助|协助|满足)",
    r"我(无法|不能)(回答|提供|协助)(这个|该|此|您的)?(问题|请求)",
    r"\bas an ai\b",
    r"\bi am (just )?an? (ai|language model)\b",
    r"\bi('m| am) (sorry|afraid),? (but )?i (can(no|')t|am unable to|won't) (help|assist|provide|answer|comply)",
    r"\bi (can(no|')t|am unable to) (help|assist|provide|answer|comply) (with )?(this|that|your)",
]
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")


class RecordChecker:
    def __init__(self, config: DistillConfig):
        self.config = config
        self.refusal = re.compile("|".join(f"(?:{p})" for p in REFUSALS + list(config.refusal_patterns or [])), re.IGNORECASE)

    def _language_ok(self, text: str) -> bool:
        if self.config.language == "any":
            return True
        cjk, latin = len(CJK.findall(text)), len(LATIN.findall(text))
        letters = cjk + latin
        if letters == 0:
            return False
        if self.config.language == "zh":
            return cjk / letters >= self.config.min_cjk_ratio
        return latin / letters >= 0.5

    def check_text(self, text: str) -> str | None:
        if not text or not text.strip():
            return "empty"
        if self.refusal.search(text):
            return "refusal"
        if not self._language_ok(text):
            return "language"
        length = len(text.strip())
        if length < self.config.min_chars:
            return "too_short"
        if length > self.config.max_chars:
            return "too_long"
        return None

    def check(self, record: dict, finish_reasons: list[str]) -> str | None:
        if self.config.drop_truncated and "length" in finish_reasons:
            return "truncated"
        kind = self.config.kind
        if kind == "kb_document":
            return self.check_text(record.get("content", ""))
        if not str(record.get("instruction", "")).strip():
            return "empty"
        if kind == "preference":
            chosen, rejected = record["output"]
            if not rejected.strip():
                return "empty"
            if chosen.strip() == rejected.strip():
                return "identical_pair"
            return self.check_text(chosen)
        answers = [pair[1] for pair in record.get("history", [])] + [record.get("output", "")]
        for answer in answers:
            reason = self.check_text(answer)
            if reason:
                return reason
        return None
