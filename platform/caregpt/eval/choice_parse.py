"""Reading option letters: the gold `answer` field of an exam record, and a model's free-text reply.

``parse_answer_field`` is strict (a data file must say exactly which letters are right);
``extract_choice`` is forgiving but never guesses: when a reply names no clear option it returns
None, and the item is reported as unparsed (and scored wrong) instead of silently matched.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

# Separators between letters of a multi-answer: "B、C", "B,C", "B和C", "B and C", "B/C", "B C".
_SEP = r"(?:\s*(?:[、,;/&+]|和|与|及|或|以及|and)\s*|\s+)"
# What may stand between an answer cue and the letters: "答案是：", "the answer is (", "应选择选项".
_GLUE = r"(?:\s|[:=(\[【]|是|为|应为|应该是|应该为|选项|(?i:is|are|should\s+be|would\s+be|option|choice|letter))*"
_CUES = (
    "正确答案", "最佳答案", "参考答案", "答案", "答", "故选", "应选", "选择", "选", "应该是", "应是", "认为是", "即为",
    "(?i:the\\s+(?:correct\\s+|best\\s+|right\\s+)?answers?)", "(?i:answers?)", "(?i:correct\\s+(?:option|choice)s?)",
    "(?i:option)", "(?i:choice)",
)
_CUE = "(?:" + "|".join(_CUES) + ")"
_LABEL_SEP = re.compile(r"[\s,、;/&+]|和|与|及")


def normalize(text: str) -> str:
    """Full-width letters and punctuation (Ａ, （, ：) to their ASCII forms, so one pattern reads both."""
    return unicodedata.normalize("NFKC", text)


def letters_of(group: str, valid: str) -> str:
    """The distinct letters of a matched group, sorted: "C、A、C" -> "AC"."""
    return "".join(sorted({ch for ch in group if ch in valid}))


def parse_answer_field(value: object) -> str:
    """Gold answer -> sorted distinct upper-case letters ("B", "bc", "B,C", ["B", "C"] -> "B" / "BC" / "BC").

    Raises ValueError saying what was expected; the caller adds the file, line and field.
    """
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be the option letter(s) of the right answer, e.g. \"B\", \"BC\" or \"B,C\"; got {value!r}")
    body = _LABEL_SEP.sub("", normalize(value).strip().strip(".。")).upper()
    if not body or not body.isascii() or not body.isalpha():
        raise ValueError(
            f"must be the option letter(s) of the right answer, e.g. \"B\", \"BC\" or \"B,C\"; got {value!r} "
            "(if the field holds the answer text, put the letter in `answer_idx` or `answer`)"
        )
    return "".join(sorted(set(body)))


def _group(valid: str) -> str:
    # A run of valid letters that is not part of an English word or code ("HbA1c", "Because", "B12"):
    # no ASCII letter or digit directly before the first or after the last letter; nor a medical
    # term that starts with a letter (B超, A型, B族, A类, A级), which is not an option.
    letter = f"[{re.escape(valid)}]"
    return rf"(?<![A-Za-z0-9]){letter}(?:{_SEP}?{letter})*(?![A-Za-z0-9]|[超型族类级])"


def _valid_letters(options: Mapping[str, str] | Iterable[str] | None) -> str:
    if options is None:
        return "ABCDE"
    return "".join(sorted(k for k in options if isinstance(k, str) and len(k) == 1 and k.isupper()))


def extract_choice(text: str | None, options: Mapping[str, str] | Iterable[str] | None = None) -> str | None:
    """The option letter(s) a reply chooses, as sorted letters ("B", "AD"), or None when unclear.

    options: the item's options (a letter -> text mapping, or just the letters); default A-E.
    Rules, first that applies wins:
      1. an answer statement ("答案是B", "正确答案：A和D", "选B", "The answer is (C)"); when a reply
         makes several, the last one counts (reasoning first, conclusion last);
      2. the reply opens with the letters ("B", "B、C", "(C)", "B. 前庭大腺"), but not an English
         sentence that merely starts with "A " ("A patient with ...");
      3. letters in brackets anywhere ("我认为 (C) 对"), if all bracketed letters agree;
      4. the reply quotes exactly one option's text (needs the option texts).
    """
    if not text or not text.strip():
        return None
    valid = _valid_letters(options)
    if not valid:
        return None
    body = normalize(text).strip()
    group = _group(valid)

    stated = re.findall(rf"{_CUE}{_GLUE}({group})", body)
    if stated:
        return letters_of(stated[-1], valid)

    # "B. text", "B、C", "(C)"; a space then a Latin word means an English article, not an option
    lead = re.match(rf"^[\s(\[【*]*({group})(?![ \t]+[A-Za-z])", body)
    if lead:
        return letters_of(lead.group(1), valid)

    bracketed = {letters_of(g, valid) for g in re.findall(rf"[(\[【]\s*({group})\s*[)\]】]", body)}
    if len(bracketed) == 1:
        return bracketed.pop()

    if isinstance(options, Mapping):
        quoted = [k for k in valid if str(options.get(k, "")).strip() and normalize(str(options[k])).strip() in body]
        if len(quoted) == 1:
            return quoted[0]
    return None
