"""Concept lexicon layer: a red-flag symptom scored with severity, sudden onset and a vulnerable person.

Rules name exact situations; this layer catches the ones phrased some other way. A red-flag symptom alone is
not enough ("胸闷是怎么回事" is a question); it must come with at least two of: a severity word, a sudden or
ongoing onset, a vulnerable person (a baby, a pregnant woman, an old person), or a second red-flag symptom.
Runs on normalised, present-tense text (guard_normalize.py), so history and "if" clauses never count.
"""

from __future__ import annotations

import re

# red-flag symptom -> emergency category
SYMPTOMS: dict[str, str] = {
    "胸口疼": "cardiac", "胸口痛": "cardiac", "胸痛": "cardiac", "心口疼": "cardiac", "心口痛": "cardiac", "胸闷": "cardiac",
    "心口窝": "cardiac", "胸口闷": "cardiac", "胸口压": "cardiac", "冷汗": "cardiac", "大汗": "cardiac",
    "喘不上": "breathing", "喘不过": "breathing", "上不来气": "breathing", "憋得": "breathing", "吸不进": "breathing",
    "呼吸困难": "breathing", "发紫": "breathing", "发青": "breathing", "喘得": "breathing",
    "嘴歪": "stroke", "嘴瓢": "stroke", "大舌头": "stroke", "口齿不清": "stroke", "说话不清": "stroke", "半边": "stroke",
    "半拉身子": "stroke", "不听使唤": "stroke", "抬不起": "stroke", "拿不住": "stroke", "耷拉": "stroke",
    "抽搐": "seizure", "抽风": "seizure", "翻白眼": "seizure", "口吐白沫": "seizure",
    "昏过去": "unconscious", "晕过去": "unconscious", "不省人事": "unconscious", "没反应": "unconscious", "叫不醒": "unconscious",
    "流血": "bleeding", "出血": "bleeding", "吐血": "bleeding", "便血": "bleeding", "见红": "bleeding",
    "肿": "anaphylaxis", "起疹子": "anaphylaxis", "起大包": "anaphylaxis",
}
SEVERITY = re.compile(r"剧|厉害|受不了|遭不住|扛不住|要命|特别|非常|好多|很多|大量|止不住|越来越|不行了|直冒|浑身|全身|"
                      r"一头|满头|站不|起不来|动不了|说不了|煞白|发白|湿透|一大")
ONSET = re.compile(r"突然|刚才|刚刚|一下子|猛地|忽然|半小时|十分钟|几分钟|现在|正在|还在|一直|没停|半个钟头|今早|早上起来")
VULNERABLE = re.compile(r"孩子|宝宝|婴儿|娃|小孩|新生儿|孕|怀孕|产后|老人|老爷子|老太太|奶奶|爷爷|姥姥|姥爷|外公|外婆|"
                        r"老伴|老汉|老头|[六七八九]十多?岁")
_SYMPTOM = re.compile("|".join(sorted(SYMPTOMS, key=len, reverse=True)))


def concept_emergency(text: str) -> tuple[str, str] | None:
    """(category, reason) when a red-flag symptom comes with two supporting concepts, else None."""
    found = [m.group(0) for m in _SYMPTOM.finditer(text)]
    if not found:
        return None
    categories = [SYMPTOMS[s] for s in found]
    support = [name for name, pattern in (("severity", SEVERITY), ("onset", ONSET), ("vulnerable", VULNERABLE))
               if pattern.search(text)]
    if len(set(found)) >= 2:
        support.append("second_symptom")
    if len(support) < 2:
        return None
    category = max(set(categories), key=categories.count)
    return category, "concept:" + "+".join(support)
