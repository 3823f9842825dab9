"""Finding personal identifiers in one text: spans with a type, no masking here (that is deid.py).

Types: NAME, ID (mainland resident ID, 18 digits with the ISO 7064 MOD 11-2 check character, or the 15-digit
legacy form), PHONE, EMAIL, ADDRESS, MRN (medical record / insurance numbers named as such), DATE (a day is
named: 2023年5月12日, 2023-05-12, 12/05/2023, 5月12日, May 12, 2023).

Where detectors disagree, the more certain type wins (an e-mail or a checksummed ID over anything else, an
address over a name inside it), then the longer span.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from caregpt.data import deid_extra as X
from caregpt.data import deid_patterns as P

TYPES = ("NAME", "ID", "PHONE", "EMAIL", "ADDRESS", "MRN", "DATE")
PRIORITY = {"EMAIL": 0, "ID": 1, "MRN": 2, "PHONE": 3, "DATE": 4, "ADDRESS": 5, "NAME": 6}


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str
    text: str


def _cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


# ------------------------------------------------------------------ ID numbers

def id_check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 17 digits of a resident ID."""
    total = sum(int(d) * w for d, w in zip(first17, P.ID_WEIGHTS))
    return P.ID_CHECK_CHARS[total % 11]


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    return True


def valid_id18(number: str) -> bool:
    """Province code, a real birth date (1900 to today) and the check character all agree."""
    if not re.fullmatch(r"\d{17}[0-9Xx]", number) or number[:2] not in P.PROVINCE_CODES:
        return False
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    if not (1900 <= year <= dt.date.today().year and _real_date(year, month, day)):
        return False
    return id_check_char(number[:17]) == number[17].upper()


def _ids(text: str) -> list[Span]:
    spans = []
    for match in P.ID18.finditer(text):
        number = match.group(0)
        in_context = bool(P.ID_CONTEXT.search(text[max(0, match.start() - 16):match.start()]))
        # a wrong check character is a typo in an ID only when the text says it is an ID
        if valid_id18(number) or (in_context and number[:2] in P.PROVINCE_CODES):
            spans.append(Span(match.start(), match.end(), "ID", number))
    for match in P.ID15.finditer(text):
        area, yy, mm, dd = match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4))
        if area[:2] in P.PROVINCE_CODES and _real_date(1900 + yy, mm, dd):
            spans.append(Span(match.start(), match.end(), "ID", match.group(0)))
    return spans


# ------------------------------------------------------------------ phones, e-mails, record numbers

def _phones(text: str) -> list[Span]:
    spans = []
    for pattern in P.PHONE_PATTERNS:
        for match in pattern.finditer(text):
            digits = re.sub(r"\D", "", match.group(0))
            if len(digits) < 10:
                continue
            spans.append(Span(match.start(), match.end(), "PHONE", match.group(0)))
    return spans


def _emails(text: str) -> list[Span]:
    return [Span(m.start(), m.end(), "EMAIL", m.group(0)) for m in P.EMAIL.finditer(text)]


def _mrns(text: str) -> list[Span]:
    return [Span(m.start(1), m.end(1), "MRN", m.group(1)) for m in P.MRN.finditer(text)]


# ------------------------------------------------------------------ dates

def _date_ok(kind: str, match: re.Match) -> bool:
    if kind == "ymd":
        year, month, day = int(match.group(1)), int(match.group(len(match.groups()) - 1)), int(match.group(len(match.groups())))
        return _real_date(year, month, day)
    if kind == "dmy":
        first, second, year = int(match.group(1)), int(match.group(3)), int(match.group(4))
        return _real_date(year, second, first) or _real_date(year, first, second)
    if kind == "md":
        return 1 <= int(match.group(1)) <= 12 and 1 <= int(match.group(2)) <= 31
    return True


def _dates(text: str) -> list[Span]:
    return [
        Span(m.start(), m.end(), "DATE", m.group(0))
        for kind, pattern in P.DATE_PATTERNS
        for m in pattern.finditer(text)
        if _date_ok(kind, m)
    ]


# ------------------------------------------------------------------ addresses

_GAZETTEER = re.compile("|".join(sorted(P.PROVINCES + P.CITIES, key=len, reverse=True)))
_ADDRESS_TRIGGER = re.compile("(?:" + "|".join(sorted(P.ADDRESS_TRIGGERS, key=len, reverse=True)) + r")\s*(?:[:：]|是|为|在|于)?\s*")
_GAZETTEER_SUFFIX = re.compile(r"特别行政区|自治区|省|市")
_ROAD_OR_NUMBER = re.compile(P.ROAD_SUFFIX + "|" + P.PLACE_SUFFIX + r"|\d")


def _address_from(text: str, start: int, triggered: bool) -> int | None:
    """End of the address that starts at `start`, or None (see the rule at the end)."""
    pos, parts, strong = start, 0, False
    if not triggered:
        match = _GAZETTEER.match(text, pos)
        pos = match.end()
        suffix = _GAZETTEER_SUFFIX.match(text, pos)
        pos = suffix.end() if suffix else pos
        parts = 1
    while pos < len(text):
        match = P.ADDRESS_NUMBER_COMPONENT.match(text, pos) or P.ADDRESS_NAME_COMPONENT.match(text, pos)
        if not match:
            break
        piece = match.group(0)
        strong = strong or bool(_ROAD_OR_NUMBER.search(piece))
        parts += 1
        pos = match.end()
    # "家住北京市朝阳区" is a residence; "宁波市江北区人民医院" or "北京地区" is a place of care or a region: without an
    # address word, an address needs a street-level part (road, number, estate) or three levels
    if (triggered and (parts >= 2 or strong)) or (not triggered and (strong or parts >= 3)):
        return pos
    return None


def _addresses(text: str) -> list[Span]:
    starts = [(m.end(), True) for m in _ADDRESS_TRIGGER.finditer(text)]
    starts += [(m.start(), False) for m in _GAZETTEER.finditer(text)]
    spans: list[Span] = []
    covered_to = -1
    for start, triggered in sorted(starts):
        if start < covered_to:
            continue
        end = _address_from(text, start, triggered)
        if end is not None and end > start:
            spans.append(Span(start, end, "ADDRESS", text[start:end]))
            covered_to = end
    spans += [Span(m.start(), m.end(), "ADDRESS", m.group(0)) for m in P.EN_ADDRESS.finditer(text)]
    return spans


# ------------------------------------------------------------------ names

# what may follow a name that starts with a weak surname: punctuation, sex, or a verb a person does
_BOUNDARY_AFTER_NAME = set("，,。.；;、：:（()）!！?？ \t\n男女的诉述于来因在今昨入出将已曾签陪代称表要拒同说讲问觉感记继去到")
_BEFORE_NAME = set("的和与是给向找请让被由对叫跟同及位者属系谢诉问见在陪把为：:，,。；;（(“\" \t\n")


def cn_name_at(text: str, pos: int, need_surname: bool = True, weak_needs_boundary: bool = False) -> int | None:
    """End of a Chinese name starting at pos (surname + one or two given characters), or None."""
    if text[pos:pos + 2] in P.SURNAMES_2:
        given_start = pos + 2
    elif pos < len(text) and (text[pos] in P.SURNAMES_1 or (not need_surname and _cjk(text[pos]) and text[pos] not in P.NAME_STOP_CHARS)):
        given_start = pos + 1
    else:
        return None
    end = given_start
    while end < len(text) and end - given_start < 2 and _cjk(text[end]) and text[end] not in P.NAME_STOP_CHARS:
        end += 1
    single = given_start == pos + 1
    if end == given_start or text[pos:pos + 2] in P.NOT_NAMES or (single and text[pos] in _NOT_BEFORE_SURNAME):
        return None
    if weak_needs_boundary and single and text[pos] in P.WEAK_SURNAMES and end < len(text) and text[end] not in _BOUNDARY_AFTER_NAME:
        return None
    return end


_PREFIX = re.compile("|".join(sorted(P.NAME_PREFIXES, key=len, reverse=True)))
_FIELD = re.compile("(?:" + "|".join(sorted(P.NAME_FIELDS, key=len, reverse=True)) + r")\s*[:：]\s*")
_TITLE = re.compile("|".join(sorted(P.NAME_TITLES, key=len, reverse=True)))
_CLAUSE_START = re.compile(r"(?:^|(?<=[。；;，,！!？?\s：:（(“\"]))(?=[\u4e00-\u9fff])")
# after a bare name only strong signals count: "诉/主诉" (a record's "X 诉头痛") or sex and age ("X，男，45岁")
_AFTER_BARE_NAME = re.compile("(?:" + "|".join(P.NAME_VERBS) + r")|[，,、]?\s*[（(]?(?:男|女)(?:性)?[，,、\s）)]|[，,]\s*\d{1,3}\s*岁")
_NOT_BEFORE_SURNAME = set("主责信担继前现上历专兼和与向于对给被把让叫请由找问同跟为及或是的了在")
_EN_NAME = P.EN_NAME_TOKEN
_EN_TITLE = re.compile(r"\b" + P.EN_TITLES + r"\.?\s+(" + _EN_NAME + r"(?:\s+" + _EN_NAME + r"){0,2})")
_EN_CONTEXT = re.compile(r"\b" + P.EN_NAME_CONTEXT + r"\s*(?::|is|was|-)?\s+(" + _EN_NAME + r"(?:\s+[A-Z]\.)?(?:\s+" + _EN_NAME + r"){0,2})")
# "John Smith was admitted ..." at the start of a sentence: two capitalised words, then a clinical verb
_EN_SUBJECT = re.compile(r"(?:^|(?<=[.;!?]\s))(" + _EN_NAME + r"\s+" + _EN_NAME + r")\s+(?:was|is|has|had|presented|presents|reports|"
                         r"reported|denies|denied|complains|complained|returns|returned|came|comes|underwent|received)\b")
_EN_AGE = re.compile(r"\b(" + _EN_NAME + r"(?:\s+" + _EN_NAME + r"){1,2}),?\s+(?:a|an|aged)\s+\d{1,3}[- ]?(?:year|yr)s?[- ]old")


def _title_name_start(text: str, title: int) -> int | None:
    """Start of the name before a title ("王女士", "李明先生"): surname + 2, 1 or 0 given characters, longest first."""
    for given in (2, 1, 0):
        for surname_len in (2, 1):
            start = title - given - surname_len
            if start < 0:
                continue
            surname = text[start:start + surname_len]
            if surname not in (P.SURNAMES_2 if surname_len == 2 else P.SURNAMES_1) or surname in _NOT_BEFORE_SURNAME:
                continue
            if any(not _cjk(ch) or ch in P.NAME_STOP_CHARS for ch in text[start + surname_len:title]):
                continue
            if text[start:start + 2] in P.NOT_NAMES or (start > 0 and text[start - 1:start + 1] in P.WORDS_ENDING_IN_SURNAME):
                continue
            if given and surname in P.WEAK_SURNAMES and start > 0 and text[start - 1] not in _BEFORE_NAME:
                continue  # "过程中爷爷": a word, not 程中 + 爷爷
            return start
    return None


def _cn_names(text: str) -> list[Span]:
    found: list[tuple[int, int]] = []
    for match in _FIELD.finditer(text):
        if text.startswith(P.KIN_PREFIXES, match.end()):
            continue  # "家属签字：丈夫 蒋文博": the kinship word is not the name (deid_extra finds the name after it)
        end = cn_name_at(text, match.end(), need_surname=False)
        if end:
            found.append((match.end(), end))
    for match in _PREFIX.finditer(text):
        end = cn_name_at(text, match.end(), weak_needs_boundary=True)
        if end:
            found.append((match.end(), end))
    for match in _TITLE.finditer(text):
        start = _title_name_start(text, match.start())
        if start is not None:
            found.append((start, match.start()))
    for match in _CLAUSE_START.finditer(text):
        pos = match.start()
        end = cn_name_at(text, pos)
        if end and end - pos >= 2 and _AFTER_BARE_NAME.match(text, end):
            found.append((pos, end))
    return [Span(s, e, "NAME", text[s:e]) for s, e in found]


def _en_names(text: str) -> list[Span]:
    spans = []
    for pattern in (_EN_TITLE, _EN_CONTEXT, _EN_AGE, _EN_SUBJECT):
        for match in pattern.finditer(text):
            tokens = match.group(1).split()
            while tokens and tokens[-1].rstrip(".") in P.EN_NOT_NAMES:
                tokens.pop()  # "Dr. Smith The ..." : the name stops before an ordinary word
            if not tokens or tokens[0] in P.EN_NOT_NAMES:
                continue
            start = match.start(1)
            name = " ".join(tokens)
            if text[start:start + len(name)] == name:
                spans.append(Span(start, start + len(name), "NAME", name))
    return spans


def known_name_spans(text: str, names: set[str]) -> list[Span]:
    """Every further occurrence of names already found in the same record (a name mentioned without context)."""
    spans = []
    for name in sorted(names, key=len, reverse=True):
        boundary = r"\b" if name[:1].isascii() else ""
        for match in re.finditer(boundary + re.escape(name) + boundary, text):
            spans.append(Span(match.start(), match.end(), "NAME", name))
    return spans


# ------------------------------------------------------------------ all together

def resolve(spans: list[Span]) -> list[Span]:
    """Non-overlapping spans: most certain type first, then longest, then leftmost."""
    chosen: list[Span] = []
    for span in sorted(spans, key=lambda s: (PRIORITY[s.type], -(s.end - s.start), s.start)):
        if all(span.end <= c.start or span.start >= c.end for c in chosen):
            chosen.append(span)
    return sorted(chosen, key=lambda s: s.start)


def detect(text: str, types: tuple[str, ...] = TYPES, known_names: set[str] | None = None) -> list[Span]:
    """All identifier spans in `text`, non-overlapping, in order."""
    if not text:
        return []
    detectors = {"ID": _ids, "PHONE": _phones, "EMAIL": _emails, "MRN": _mrns, "DATE": _dates, "ADDRESS": _addresses}
    spans: list[Span] = []
    for kind, detector in detectors.items():
        if kind in types:
            spans += detector(text)
    extra = X.grouped_numbers(text, valid_id18) + X.chinese_numeral_phones(text)
    if "NAME" in types:
        extra += X.kin_names(text, cn_name_at, _BOUNDARY_AFTER_NAME) + X.acting_names(text, cn_name_at)
    spans += [Span(s, e, kind, text[s:e]) for s, e, kind in extra if kind in types]
    if "NAME" in types:
        spans += _cn_names(text) + _en_names(text)
        if known_names:
            spans += known_name_spans(text, known_names)
    return resolve(spans)
