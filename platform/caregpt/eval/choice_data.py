"""Multiple-choice exam records (CMB / CMExam / CMMLU / MedQA style jsonl) and their prompts.

One record per line::

    {"id": "cmmlu-anatomy-0", "question": "女性生殖腺是", "options": {"A": "卵巢", "B": "前庭大腺", ...},
     "answer": "A", "subject": "解剖学"}

``answer`` holds one or several letters ("B", "BC", "B,C", ["B", "C"]); ``id`` and ``subject`` are
optional (default: file:line and "all"). Spellings of other exam files are accepted too:
``option`` (CMB) for options, ``answer_idx`` (MedQA, where ``answer`` is the text) for the letters,
``exam_subject`` / ``category`` for the subject. Every invalid record is reported with file:line
and field before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError
from caregpt.eval.choice_parse import parse_answer_field

DEFAULT_SUBJECT = "all"
MAX_SHOWN_ERRORS = 10
_SUBJECT_KEYS = ("subject", "exam_subject", "category")


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    question: str
    options: dict[str, str]
    answer: str  # sorted distinct letters, e.g. "B" or "BC"
    subject: str
    loc: str  # file:line, for messages
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def multi(self) -> bool:
        return len(self.answer) > 1


def _options(record: dict) -> Any:
    return record["options"] if "options" in record else record.get("option")


def validate_record(record: Any, loc: str) -> tuple[ChoiceItem | None, list[str]]:
    """(item, []) for a valid record, else (None, problems), each naming loc and the field."""
    if not isinstance(record, dict):
        return None, [f"{loc}: expected a JSON object per line, got {type(record).__name__}"]
    problems: list[str] = []
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append(f"{loc}: field 'question' must be non-empty text, got {question!r}")
    options = _options(record)
    if not isinstance(options, dict) or len(options) < 2:
        problems.append(f"{loc}: field 'options' must be an object of at least two options like "
                        f"{{\"A\": \"...\", \"B\": \"...\"}}, got {options!r}")
        options = None
    else:
        bad_keys = [k for k in options if not (isinstance(k, str) and len(k) == 1 and "A" <= k <= "Z")]
        empty = [k for k, v in options.items() if k not in bad_keys and (not isinstance(v, str) or not v.strip())]
        if bad_keys:
            problems.append(f"{loc}: field 'options' has key(s) {bad_keys}; option keys must be single capital letters A-Z")
        if empty:
            problems.append(f"{loc}: field 'options' has empty option text for {empty}")
    answer_key = "answer_idx" if "answer_idx" in record else "answer"
    answer = ""
    try:
        answer = parse_answer_field(record.get(answer_key))
    except ValueError as exc:
        problems.append(f"{loc}: field {answer_key!r} {exc}")
    if answer and options is not None:
        missing = [ch for ch in answer if ch not in options]
        if missing:
            problems.append(f"{loc}: field {answer_key!r} is {record.get(answer_key)!r} but option(s) {', '.join(missing)} "
                            f"are not among the options {', '.join(sorted(map(str, options)))}")
    subject = next((record[k] for k in _SUBJECT_KEYS if record.get(k) not in (None, "")), DEFAULT_SUBJECT)
    if not isinstance(subject, str):
        problems.append(f"{loc}: field 'subject' must be text, got {subject!r}")
    item_id = record.get("id", loc)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        problems.append(f"{loc}: field 'id' must be text or a number, got {item_id!r}")
    if problems:
        return None, problems
    ordered = {k: options[k].strip() for k in sorted(options)}
    extra = {k: v for k, v in record.items() if k not in ("question", "options", "option", "answer", "answer_idx", "id")}
    return ChoiceItem(str(item_id), question.strip(), ordered, answer, subject, loc, extra), []


def load_items(path: str | Path, *, what: str = "data") -> list[ChoiceItem]:
    """Every record of a jsonl exam file, validated; ConfigError listing the invalid ones (file:line, field)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path} (expected a jsonl file with question, options, answer, subject)")
    items: list[ChoiceItem] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            loc = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{loc}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            item, errors = validate_record(record, loc)
            problems += errors
            if item is not None:
                if item.id in seen:
                    problems.append(f"{loc}: field 'id' {item.id!r} repeats the id of {seen[item.id]}; ids must be unique")
                    continue
                seen[item.id] = loc
                items.append(item)
    if problems:
        shown = "; ".join(problems[:MAX_SHOWN_ERRORS])
        more = f" (and {len(problems) - MAX_SHOWN_ERRORS} more)" if len(problems) > MAX_SHOWN_ERRORS else ""
        raise ConfigError(f"{what} file {path} has {len(problems)} invalid record(s): {shown}{more}")
    if not items:
        raise ConfigError(f"{what} file {path} holds no records (expected one JSON object per line)")
    return items


def subset(items: list[ChoiceItem], max_samples: int | None = None, max_per_subject: int | None = None) -> list[ChoiceItem]:
    """The first max_per_subject items of each subject, then the first max_samples: file order, deterministic."""
    if max_per_subject is not None:
        taken: dict[str, int] = {}
        kept = []
        for item in items:
            if taken.get(item.subject, 0) < max_per_subject:
                taken[item.subject] = taken.get(item.subject, 0) + 1
                kept.append(item)
        items = kept
    return items[:max_samples] if max_samples is not None else items


def choose_shots(item: ChoiceItem, pool: list[ChoiceItem], k: int) -> list[ChoiceItem]:
    """k worked examples for `item`: the first ones of its own subject in the pool, then others; never itself.

    Deterministic (file order), so two runs with the same files score the same prompts.
    """
    if k <= 0:
        return []
    others = [p for p in pool if p.id != item.id or p.loc != item.loc]
    same = [p for p in others if p.subject == item.subject]
    rest = [p for p in others if p.subject != item.subject]
    return (same + rest)[:k]


def system_prompt(subject: str) -> str:
    topic = f"关于{subject}的" if subject and subject != DEFAULT_SUBJECT else ""
    return f"以下是{topic}选择题，请选出正确答案，直接给出选项字母。"


def question_text(item: ChoiceItem) -> str:
    """Question, one line per option, and the answer cue the answer letter completes."""
    lines = [item.question, *(f"{k}. {v}" for k, v in item.options.items()), "答案："]
    return "\n".join(lines)


def build_messages(item: ChoiceItem, shots: list[ChoiceItem]) -> list[dict[str, str]]:
    """Chat messages: a system line, the shots as answered user/assistant turns, then the question."""
    messages = [{"role": "system", "content": system_prompt(item.subject)}]
    for shot in shots:
        messages += [{"role": "user", "content": question_text(shot)}, {"role": "assistant", "content": shot.answer}]
    messages.append({"role": "user", "content": question_text(item)})
    return messages
