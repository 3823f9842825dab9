"""Identifier shapes the first detectors missed (issue 17), as further detectors for deid_detect.detect():

- resident IDs and mobile numbers written in groups ("3315 1919 9703 0442 84", "352593-19741223-9101",
  "154  7657  3448", "1 8 2 1 3 5 5 8 0 6 1"): the digits are read without the separators and must still pass
  the same checks (ID checksum or an ID word before it; a 1[3-9] mobile prefix with exactly 11 digits);
- mobile numbers in Chinese numerals ("一三八一二三四五六七八", "幺三九..."): 11 numerals starting 1[3-9];
- names after kinship and role words ("丈夫 蒋文博", "母亲王丽", "主任冯国萍", "患者 张三", "我是周涛的女儿",
  "李先生（李国强）"), with a space or colon allowed between, confirmed by jieba's person tag (posseg `nr`) where
  the word is one that verbs often follow ("母亲商量", "医生建议").

Look-alikes stay: doses, lab values and ICD codes have no 11-digit mobile shape, no valid ID checksum, and
no kinship word before them.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

from caregpt.data import deid_patterns as P

CN_NUMERALS = {"零": "0", "〇": "0", "一": "1", "幺": "1", "二": "2", "两": "2", "三": "3", "四": "4", "五": "5",
               "六": "6", "七": "7", "八": "8", "九": "9"}
_GROUPED = re.compile(r"(?<![0-9A-Za-z])\d(?:[ \-\u3000]{0,2}\d){9,19}(?:[ \-\u3000]{0,2}[Xx])?(?![0-9A-Za-z])")
_CN_PHONE = re.compile(r"(?<![零〇一幺二两三四五六七八九十百千万])[一幺][三四五六七八九](?:[\s\-]?[零〇一幺二两三四五六七八九]){9}"
                       r"(?![零〇一幺二两三四五六七八九十百千万])")
_KIN = re.compile(r"(?:" + "|".join(re.escape(k) for k in sorted(P.KIN_PREFIXES, key=len, reverse=True)) + r")[ \t\u3000]*[:：]?[ \t\u3000]*")
_ACT = re.compile("|".join(P.NAME_ACTS))
_BEFORE_ACT = re.compile("|".join(P.NAME_BEFORE))
_jieba_lock = threading.Lock()


def acting_names(text: str, name_at) -> list[tuple[int, int, str]]:
    """"由王芳陪同", "请李建国签字": surname-led name after a preposition and right before a record act."""
    out = []
    for match in _BEFORE_ACT.finditer(text):
        start = match.end()
        end = name_at(text, start)
        if end and end - start >= 2 and _ACT.match(text, end):
            out.append((start, end, "NAME"))
    return out


def grouped_numbers(text: str, valid_id18) -> list[tuple[int, int, str]]:
    """(start, end, type) of IDs and mobiles written with spaces or hyphens between digit groups."""
    out = []
    for match in _GROUPED.finditer(text):
        raw = match.group(0)
        if not re.search(r"[ \-\u3000]", raw):
            continue  # ungrouped numbers are the main detectors' job
        digits = re.sub(r"[ \-\u3000]", "", raw)
        before = text[max(0, match.start() - 16):match.start()]
        if len(digits) == 18 and (valid_id18(digits) or (P.ID_CONTEXT.search(before) and digits[:2] in P.PROVINCE_CODES)):
            out.append((match.start(), match.end(), "ID"))
        elif len(digits) == 11 and re.fullmatch(r"1[3-9]\d{9}", digits):
            out.append((match.start(), match.end(), "PHONE"))
        elif len(digits) == 13 and re.fullmatch(r"861[3-9]\d{9}", digits):
            out.append((match.start(), match.end(), "PHONE"))
    return out


_PHONE_WORD = re.compile(r"电话|手机|座机|固话|联系方式|分机|传真")
_CN_NUMBER_AFTER_CONTEXT = re.compile(r"(?:[零〇一幺二两三四五六七八九][\s\-]?){7,12}")


def chinese_numeral_phones(text: str) -> list[tuple[int, int, str]]:
    """Mobiles in Chinese numerals anywhere; landlines (7-12 numerals) only right after a phone word (电话, 座机)."""
    out = [(m.start(), m.end(), "PHONE") for m in _CN_PHONE.finditer(text)]
    for context in _PHONE_WORD.finditer(text):
        window = re.match(r"[^\u4e00-\u9fff\d]{0,3}(?:是|为|号码?是?)?[:：\s]*", text[context.end():])
        start = context.end() + (window.end() if window else 0)
        match = _CN_NUMBER_AFTER_CONTEXT.match(text, start)
        if match:
            end = match.end()
            while end > start and text[end - 1] in " -":
                end -= 1
            out.append((start, end, "PHONE"))
    return out


@lru_cache(maxsize=4096)
def _person_tokens(text: str) -> tuple[tuple[int, int], ...]:
    import jieba.posseg as pseg

    spans, pos = [], 0
    with _jieba_lock:  # jieba's lazy initialisation is not thread-safe
        pairs = [(p.word, p.flag) for p in pseg.cut(text)]
    for word, flag in pairs:
        if flag == "nr" and 2 <= len(word) <= 4:
            spans.append((pos, pos + len(word)))
        pos += len(word)
    return tuple(spans)


def kin_names(text: str, name_at, boundary_after: set[str] = frozenset()) -> list[tuple[int, int, str]]:
    """Names right after a kinship or role word (see the module docstring)."""
    out = []
    persons = None
    for match in _KIN.finditer(text):
        start = match.end()
        word = match.group(0).strip(" \t\u3000:：")
        end = name_at(text, start, weak_needs_boundary=True)
        if not end or (end - start == 2 and text[start] == text[start + 1]):
            continue  # "常常", "明明": a doubled word, not surname + given name
        spaced = match.group(0) != word  # "丈夫 蒋文博", "患者：张三": a form, the name is what follows
        if word in P.KIN_STRONG and (spaced or end - start >= 2):
            out.append((start, end, "NAME"))
            continue
        if boundary_after and end < len(text) and text[end] not in boundary_after:
            continue  # "我是仲景智能医学助手": after a word verbs follow, the name must end at a boundary ("我是周涛的女儿")
        if persons is None:
            persons = _person_tokens(text)
        if any(p_start == start for p_start, _ in persons):
            out.append((start, end, "NAME"))
    return out
