"""Record formats: turn a raw record into the canonical form, or say exactly why it is invalid.

Three data kinds:
- text: pretraining documents                      -> {"text"}
- sft:  alpaca (instruction/input/output/history)  -> {"messages": [...system?, user, assistant, ..., assistant]}
        or sharegpt (conversations from/value or role/content)
- pref: alpaca with output = [chosen, rejected], or chosen/rejected columns
                                                   -> {"messages": [...ends with user], "chosen", "rejected"}
Invalid records are never dropped silently: they come back with an error string, and callers count them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from caregpt.data.registry import DatasetAttr

Kind = Literal["text", "sft", "pref"]
STAGE_KINDS: dict[str, Kind] = {"pt": "text", "sft": "sft", "rm": "pref", "dpo": "pref", "ppo": "sft"}
KIND_NAMES = {
    "text": "plain text (pretraining: .txt lines or a text column)",
    "sft": "instruction data (instruction/input/output/history, or sharegpt conversations)",
    "pref": "preference pairs (output: [chosen, rejected], `ranking: true` in dataset_info.json)",
}


class InvalidRecord(ValueError):
    """Raised inside normalisers; the message becomes the record's error."""


@dataclass(frozen=True)
class Record:
    """Canonical record. Every field is always present so Arrow blocks share one schema."""

    loc: str
    dataset: str
    error: str = ""
    text: str = ""
    roles: tuple[str, ...] = ()
    contents: tuple[str, ...] = ()
    chosen: str = ""
    rejected: str = ""

    def to_row(self) -> dict[str, Any]:
        return {
            "loc": self.loc,
            "dataset": self.dataset,
            "error": self.error,
            "text": self.text,
            "roles": list(self.roles),
            "contents": list(self.contents),
            "chosen": self.chosen,
            "rejected": self.rejected,
        }

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in zip(self.roles, self.contents)]


def dataset_kind(attr: DatasetAttr) -> Kind:
    if attr.ranking:
        return "pref"
    if attr.is_plain_text or (attr.formatting == "alpaca" and not attr.column("response")):
        return "text"
    return "sft"


def check_stage_kind(stage: str, attr: DatasetAttr) -> None:
    from caregpt.config.loader import ConfigError

    need, have = STAGE_KINDS[stage], dataset_kind(attr)
    if need != have:
        raise ConfigError(
            f"dataset {attr.name!r} is {KIND_NAMES[have]}, but stage {stage!r} needs {KIND_NAMES[need]}; "
            f"pick a dataset of that kind or the stage that fits this data"
        )


def _text(record: dict[str, Any], column: str | None, what: str, required: bool = True) -> str:
    if not column:
        return ""
    value = record.get(column)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN from csv/parquet
        if required:
            raise InvalidRecord(f"missing field {column!r} ({what})")
        return ""
    if not isinstance(value, str):
        raise InvalidRecord(f"field {column!r} ({what}) must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidRecord(f"field {column!r} ({what}) is empty")
    return value


def _history(record: dict[str, Any], column: str | None) -> list[tuple[str, str]]:
    value = record.get(column) if column else None
    if value in (None, "", []):
        return []
    if not isinstance(value, list):
        raise InvalidRecord(f"field {column!r} (history) must be a list of [user, assistant] pairs, got {type(value).__name__}")
    pairs = []
    for turn, pair in enumerate(value, start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise InvalidRecord(f"field {column!r} (history) turn {turn} must be a [user, assistant] pair of strings")
        if not pair[0].strip() or not pair[1].strip():
            raise InvalidRecord(f"field {column!r} (history) turn {turn} has an empty side")
        pairs.append((pair[0], pair[1]))
    return pairs


def _alpaca_prompt(record: dict[str, Any], attr: DatasetAttr, default_system: str | None) -> tuple[list[str], list[str]]:
    prompt = _text(record, attr.column("prompt"), "instruction")
    query = _text(record, attr.column("query"), "input", required=False)
    user = f"{prompt}\n{query}" if query.strip() else prompt
    system = _text(record, attr.column("system"), "system", required=False) or (default_system or "")
    roles, contents = ([], [])
    if system:
        roles.append("system")
        contents.append(system)
    for old_user, old_assistant in _history(record, attr.column("history")):
        roles += ["user", "assistant"]
        contents += [old_user, old_assistant]
    roles.append("user")
    contents.append(user)
    return roles, contents


def _sharegpt_messages(record: dict[str, Any], attr: DatasetAttr, default_system: str | None) -> tuple[list[str], list[str]]:
    column = attr.column("messages") or "conversations"
    turns = record.get(column)
    if turns is None and "messages" in record:
        turns = record["messages"]
    if not isinstance(turns, list) or not turns:
        raise InvalidRecord(f"field {column!r} must be a non-empty list of messages")
    tags = attr.tags
    first = turns[0] if isinstance(turns[0], dict) else {}
    # role/content (OpenAI style) and from/value (ShareGPT style) are both common: accept either
    role_tag, content_tag = ("role", "content") if "role" in first else (tags["role_tag"], tags["content_tag"])
    role_map = {
        tags["user_tag"]: "user", "user": "user", "human": "user",
        tags["assistant_tag"]: "assistant", "assistant": "assistant", "gpt": "assistant",
        tags["system_tag"]: "system", "system": "system",
    }
    roles, contents = [], []
    system = _text(record, attr.column("system"), "system", required=False) or (default_system or "")
    for index, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or role_tag not in turn or content_tag not in turn:
            raise InvalidRecord(f"message {index} must be an object with {role_tag!r} and {content_tag!r}")
        role = role_map.get(turn[role_tag])
        if role is None:
            raise InvalidRecord(f"message {index} has unknown role {turn[role_tag]!r}; expected {tags['user_tag']!r}, {tags['assistant_tag']!r} or {tags['system_tag']!r}")
        content = turn[content_tag]
        if not isinstance(content, str) or not content.strip():
            raise InvalidRecord(f"message {index} ({role}) has empty or non-string content")
        if role == "system":
            if index != 1:
                raise InvalidRecord(f"message {index}: a system message may only come first")
            system = content
            continue
        roles.append(role)
        contents.append(content)
    if system:
        roles.insert(0, "system")
        contents.insert(0, system)
    return roles, contents


def _check_alternation(roles: list[str], must_end_with: str) -> None:
    body = roles[1:] if roles and roles[0] == "system" else roles
    for index, role in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise InvalidRecord(f"turn {index + 1} is {role!r} but {expected!r} was expected (turns must alternate, starting with user)")
    if not body or body[-1] != must_end_with:
        raise InvalidRecord(f"the conversation must end with a {must_end_with} turn")


def _pref_pair(record: dict[str, Any], attr: DatasetAttr) -> tuple[str, str]:
    if "chosen" in record and "rejected" in record:
        chosen, rejected = record["chosen"], record["rejected"]
        # sharegpt preference data carries one message object per side
        chosen = chosen.get("value", chosen.get("content")) if isinstance(chosen, dict) else chosen
        rejected = rejected.get("value", rejected.get("content")) if isinstance(rejected, dict) else rejected
    else:
        column = attr.column("response") or "output"
        value = record.get(column)
        if not (isinstance(value, list) and len(value) == 2):
            raise InvalidRecord(f"field {column!r} must be a [chosen, rejected] pair for preference data")
        chosen, rejected = value
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or not text.strip():
            raise InvalidRecord(f"the {side} answer is empty or not a string")
    if chosen == rejected:
        raise InvalidRecord("chosen and rejected answers are identical: the pair teaches nothing")
    return chosen, rejected


def normalize(value: Any, loc: str, attr: DatasetAttr, kind: Kind, default_system: str | None = None) -> Record:
    """Raw record -> canonical Record (with .error set instead of raising)."""
    try:
        if not isinstance(value, dict):
            raise InvalidRecord(f"expected an object (JSON dict), got {type(value).__name__}")
        if kind == "text":
            column = attr.column("prompt") if not attr.is_plain_text else "text"
            candidates = [c for c in (column, "text", "content") if c]
            present = next((c for c in candidates if c in value), candidates[0])
            return Record(loc, attr.name, text=_text(value, present, "text"))
        if kind == "pref":
            roles, contents = (_sharegpt_messages if attr.formatting == "sharegpt" else _alpaca_prompt)(value, attr, default_system)
            _check_alternation(roles, must_end_with="user")
            chosen, rejected = _pref_pair(value, attr)
            return Record(loc, attr.name, roles=tuple(roles), contents=tuple(contents), chosen=chosen, rejected=rejected)
        if attr.formatting == "sharegpt":
            roles, contents = _sharegpt_messages(value, attr, default_system)
        else:
            roles, contents = _alpaca_prompt(value, attr, default_system)
            roles.append("assistant")
            contents.append(_text(value, attr.column("response"), "output"))
        _check_alternation(roles, must_end_with="assistant")
        return Record(loc, attr.name, roles=tuple(roles), contents=tuple(contents))
    except InvalidRecord as exc:
        return Record(loc, attr.name, error=str(exc))
