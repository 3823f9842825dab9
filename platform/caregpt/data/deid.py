"""De-identification: mask personal identifiers with typed placeholders, consistently within a record.

    from caregpt.data.deid import deidentify_record
    clean, counts = deidentify_record({"instruction": "患者张三，电话13812345678", "output": "张三您好……", "history": []})
    # clean["instruction"] == "患者[姓名1]，电话[电话1]", clean["output"] == "[姓名1]您好……"; counts == {"NAME": 2, "PHONE": 1}

A record is one unit: all of its text fields (instruction, input, output, history turns, conversations,
chosen / rejected, system, text, content) are searched together, so a name found with context in one field
("患者张三") is also masked where it appears without context ("张三您好"), and the same value always gets the
same numbered placeholder. Detection itself lives in deid_detect.py (patterns in deid_patterns.py).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from caregpt.data.deid_detect import TYPES, Span, detect

PLACEHOLDERS = {"NAME": "姓名", "ID": "身份证号", "PHONE": "电话", "EMAIL": "邮箱", "ADDRESS": "地址", "MRN": "病历号", "DATE": "日期"}
# text fields of our SFT / preference / pretraining / knowledge-base formats; role tags and ids are left alone
DEFAULT_FIELDS = ("system", "instruction", "input", "output", "history", "conversations", "messages", "chosen", "rejected", "text", "content")
MESSAGE_TEXT_KEYS = ("value", "content")


def _value_key(span: Span) -> tuple[str, str]:
    """What counts as 'the same value' for consistent numbering."""
    if span.type in ("PHONE", "ID", "MRN"):
        compact = re.sub(r"[^0-9A-Za-z]", "", span.text).upper()
        # +86 138 1234 5678 and 138-1234-5678 are one number: compare the last 11 digits
        return span.type, compact[-11:] if span.type == "PHONE" else compact
    if span.type == "EMAIL":
        return span.type, span.text.lower()
    return span.type, span.text


class RecordMasker:
    """Numbering state for one record: the same value -> the same placeholder, e.g. [姓名1]."""

    def __init__(self, numbered: bool = True):
        self.numbered = numbered
        self.numbers: dict[tuple[str, str], int] = {}
        self.next_number: Counter = Counter()
        self.aliases: dict[tuple[str, str], tuple[str, str]] = {}

    def link_surnames(self, names: Iterable[str]) -> None:
        """An English surname seen alone ("Smith") refers to the full name seen in the record ("John Smith")."""
        full = [n for n in names if " " in n]
        for name in names:
            if " " not in name:
                owner = next((f for f in full if f.split()[-1] == name), None)
                if owner:
                    self.aliases[("NAME", name)] = ("NAME", owner)

    def placeholder(self, span: Span) -> str:
        label = PLACEHOLDERS[span.type]
        if not self.numbered:
            return f"[{label}]"
        key = _value_key(span)
        key = self.aliases.get(key, key)
        if key not in self.numbers:
            self.next_number[span.type] += 1
            self.numbers[key] = self.next_number[span.type]
        return f"[{label}{self.numbers[key]}]"


def mask_text(text: str, spans: list[Span], masker: RecordMasker) -> str:
    parts, last = [], 0
    for span in spans:
        parts.append(text[last:span.start])
        parts.append(masker.placeholder(span))
        last = span.end
    parts.append(text[last:])
    return "".join(parts)


def _context_names(spans: Iterable[Span]) -> set[str]:
    """Names worth searching for again: two or more Chinese characters, or English names / surnames of 3+ letters."""
    names = set()
    for span in spans:
        if span.type != "NAME":
            continue
        if span.text.isascii():
            names.add(span.text)
            if " " in span.text and len(span.text.split()[-1]) >= 3:
                names.add(span.text.split()[-1])
        elif len(span.text) >= 2:
            names.add(span.text)
    return names


def deidentify_texts(texts: Sequence[str], *, numbered: bool = True, types: tuple[str, ...] = TYPES) -> tuple[list[str], Counter]:
    """Mask a group of texts that belong to one record; returns (masked texts, masked spans per type)."""
    first_pass = [detect(t, types) for t in texts]
    names = _context_names(s for spans in first_pass for s in spans)
    # second pass: names found with context in any text are masked wherever they appear in the record
    final = [detect(t, types, known_names=names) if names else spans for t, spans in zip(texts, first_pass)]
    masker = RecordMasker(numbered)
    masker.link_surnames(sorted({s.text for spans in final for s in spans if s.type == "NAME" and s.text.isascii()}))
    counts: Counter = Counter()
    masked = []
    for text, spans in zip(texts, final):
        counts.update(s.type for s in spans)
        masked.append(mask_text(text, spans, masker))
    return masked, counts


def _collect(value: Any, slots: list[tuple[Any, Any]], container: Any = None, key: Any = None) -> None:
    """Find every string under a field: plain strings, lists (history pairs, [chosen, rejected]), message dicts."""
    if isinstance(value, str):
        if container is not None:
            slots.append((container, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _collect(item, slots, value, index)
    elif isinstance(value, dict):
        for text_key in MESSAGE_TEXT_KEYS:
            if text_key in value:
                _collect(value[text_key], slots, value, text_key)


def deidentify_record(record: dict, fields: Sequence[str] | None = None, *, numbered: bool = True,
                      types: tuple[str, ...] = TYPES) -> tuple[dict, Counter]:
    """A masked copy of one raw record (alpaca, sharegpt, preference, text or kb formats) and counts per type.

    This is the per-record function for the data pipeline's `deidentify: true`: call it on each raw record
    before normalisation. Fields not present are skipped; non-text values (ids, labels) are never changed.
    """
    clean = copy.deepcopy(record)
    slots: list[tuple[Any, Any]] = []
    for name in fields or DEFAULT_FIELDS:
        if name in clean:
            if isinstance(clean[name], str):
                slots.append((clean, name))
            else:
                _collect(clean[name], slots)
    masked, counts = deidentify_texts([container[key] for container, key in slots], numbered=numbered, types=types)
    for (container, key), text in zip(slots, masked):
        container[key] = text
    return clean, counts


def deidentify(text: str, *, numbered: bool = True) -> str:
    """One text on its own (a record of one field)."""
    return deidentify_texts([text], numbered=numbered)[0][0]
