"""Text normalisation before the guard's rules: the same message however it was typed.

1. width and compatibility forms (NFKC): full-width letters, digits and punctuation become ASCII;
2. traditional characters become simplified (OpenCC tables, `opencc-python-reimplemented`);
3. spaces between Chinese characters go ("胸口 疼" is "胸口疼");
4. homophone typos of red-flag phrases are repaired at the pinyin level: a span whose toneless pinyin equals a
   lexicon phrase's and that shares at least half its characters with it is rewritten to the phrase
   ("喘不上起" -> "喘不上气", "胸口腾" -> "胸口疼"). Only the short lexicon below is repaired, so ordinary
   text is left as written.
5. `present_clauses` drops clauses about an imagined case (如果, 万一) and clauses about the past (去年, 以前,
   已经好了) unless they also say "now", so
   "我爸去年心梗放了支架，现在恢复得挺好" says nothing is wrong now.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# red-flag phrases worth repairing: two or more characters each, most distinctive first
REPAIR_LEXICON = (
    "喘不上气", "喘不过气", "上不来气", "透不过气", "呼吸困难", "胸口疼", "胸口痛", "心口疼", "心口痛", "胸口闷", "叫不醒",
    "喊不醒", "没反应", "止不住", "吞下去", "纽扣电池", "安眠药", "百草枯", "敌敌畏", "老鼠药", "说不出话", "口齿不清",
    "不想活", "喘不上", "喘不过", "过敏性休克",
    # two-character phrases are repaired only when their first character is as written ("出寒" -> "出汗"), so
    # ordinary words that sound alike ("留学", "严重了", "抽出") are never rewritten
    "冷汗", "出汗", "胸闷", "胸痛", "昏迷", "晕倒", "吐血", "流血", "出血", "割腕", "自杀", "遗书", "农药", "噎住", "嘴歪",
    "发紫", "心梗", "中风", "想死", "跳楼", "上吊", "过敏", "中毒", "电池", "喉咙", "嘴唇",
)
HISTORY = re.compile(r"(?:19|20)\d\d年|多年|好几年|几年了|长期|至今|老毛病|去年|前年|几年前|\d+年前|[一二三四五六七八九十两]+年前|以前|之前|曾经|小时候|那次|上次|上个月|"
                     r"已经好了|早就好了|好了以后|康复了|恢复得|出院了|抢救回来|治好了|过去了")
HYPOTHETICAL = re.compile(r"如果|假如|万一|要是|假设|倘若|若是|遇到有人|遇到.{0,4}时|\b(?:if|in case|what if|suppose|supposing)\b",
                          re.IGNORECASE)
HISTORY_EN = re.compile(r"\b(?:last (?:year|month|week)|(?:years|months|weeks) ago|in the past|used to|history of|previously|"
                        r"recovered|has recovered|fully healed)\b", re.IGNORECASE)
NOW = re.compile(r"现在|刚才|刚刚|今天|今晚|正在|突然|又|还在|一直|马上|\b(?:now|right now|just now|today|tonight|again|suddenly)\b",
                 re.IGNORECASE)
CLAUSE = re.compile(r"[，。,.;；！？!?\n]+")
_CJK_SPACE = re.compile(r"(?<=[\u4e00-\u9fff，。！？；：])\s+(?=[\u4e00-\u9fff，。！？；：])")


@lru_cache(maxsize=1)
def _t2s():
    try:
        import opencc
    except ImportError:  # pragma: no cover - a declared dependency; without it traditional text stays as written
        return None
    return opencc.OpenCC("t2s")


@lru_cache(maxsize=8192)
def _syllable(ch: str) -> str:
    if not ("\u4e00" <= ch <= "\u9fff"):
        return ch
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(ch, style=Style.NORMAL)[0]


@lru_cache(maxsize=1)
def _lexicon_index() -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    index: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for phrase in REPAIR_LEXICON:
        if len(phrase) < 2:
            continue
        sounds = tuple(_syllable(ch) for ch in phrase)
        index.setdefault(sounds[0], []).append((phrase, sounds))
    for entries in index.values():
        entries.sort(key=lambda e: -len(e[0]))
    return index


def repair_homophones(text: str) -> str:
    """Rewrite spans that sound like a lexicon phrase and share at least half its characters with it."""
    index = _lexicon_index()
    sounds = [_syllable(ch) for ch in text]
    out = list(text)
    i = 0
    while i < len(text):
        for phrase, target in index.get(sounds[i], ()):
            n = len(phrase)
            if tuple(sounds[i:i + n]) == target:
                same = sum(a == b for a, b in zip(text[i:i + n], phrase))
                first_kept = n > 2 or text[i] == phrase[0]
                if same < n and same * 2 >= n and first_kept:
                    out[i:i + n] = list(phrase)
                    i += n - 1
                    break
                if same == n:
                    i += n - 1
                    break
        i += 1
    return "".join(out)


def normalize(text: str) -> str:
    """Width, script, spacing and homophone repairs (see the module docstring); never raises on odd input."""
    text = unicodedata.normalize("NFKC", text)
    converter = _t2s()
    if converter is not None and any("\u4e00" <= ch <= "\u9fff" for ch in text):
        text = converter.convert(text)
    text = _CJK_SPACE.sub("", text)
    return repair_homophones(text)


def present_clauses(text: str) -> str:
    """The text without clauses about the past or an imagined case (unless the clause itself says 'now')."""
    kept = []
    for clause in CLAUSE.split(text):
        if not clause:
            continue
        if HYPOTHETICAL.search(clause):
            continue  # "如果老人突然胸痛": imagined, even with a word for 'suddenly' in it
        if (HISTORY.search(clause) or HISTORY_EN.search(clause)) and not NOW.search(clause):
            continue  # "去年心梗过" is history; "去年心梗过，今天又胸口疼" keeps its second clause
        kept.append(clause)
    return "，".join(kept)
