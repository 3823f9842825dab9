"""Clinician feedback on answers, and the preference pairs it becomes for DPO.

`POST /v1/feedback` stores one rating per answer and API key:

    {"response_id": "chatcmpl-...", "rating": 1 | -1 | "up" | "down", "better_answer": "..." (optional),
     "messages": [the conversation that was answered, ending with the user turn], "answer": "the rated answer",
     "model": "..." (optional)}

The server keeps no transcripts of its own (prompts are not logged by default), so the client that shows the
answer sends the conversation and the answer it rated. `caregpt data export --format preference` turns the
ratings into OpenAI's preference (DPO) JSONL: for one conversation, a chosen answer is a suggested better
answer or an up-rated answer, a rejected one is a down-rated answer; every (chosen, rejected) pair is one
example. Ratings that pair with nothing are counted and reported, never silently dropped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caregpt.data.openai_export import ROLES

MAX_MESSAGES = 200
MAX_TEXT_CHARS = 100_000
RATINGS = {1: 1, -1: -1, "up": 1, "down": -1, "thumbs_up": 1, "thumbs_down": -1}
FIELDS = {"response_id", "rating", "better_answer", "messages", "answer", "model"}


class FeedbackError(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _text(value: Any, param: str, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise FeedbackError(f"{param} must be a non-empty string", param)
    if len(value) > MAX_TEXT_CHARS:
        raise FeedbackError(f"{param} is longer than {MAX_TEXT_CHARS} characters", param)
    return value


def parse_feedback(body: dict[str, Any]) -> dict[str, Any]:
    """The stored fields of one feedback request, or FeedbackError naming the field and what is valid."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise FeedbackError(f"unknown field {unknown[0]!r}; feedback takes {', '.join(sorted(FIELDS))}", unknown[0])
    response_id = _text(body.get("response_id"), "response_id")
    if len(response_id) > 128:  # type: ignore[arg-type]
        raise FeedbackError("response_id is longer than 128 characters", "response_id")
    rating = body.get("rating")
    if isinstance(rating, bool) or rating not in RATINGS:
        raise FeedbackError('rating must be 1 or -1 ("up" / "down")', "rating")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise FeedbackError(f"messages must be the answered conversation: a list of 1 to {MAX_MESSAGES} messages ending with the user turn", "messages")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise FeedbackError(f"messages.{index} must have role one of {', '.join(ROLES)}", f"messages.{index}.role")
        clean.append({"role": message["role"], "content": _text(message.get("content"), f"messages.{index}.content")})
    if clean[-1]["role"] != "user":
        raise FeedbackError("messages must end with the user turn that was answered", "messages")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > 256):
        raise FeedbackError("model must be a string of at most 256 characters", "model")
    return {"response_id": response_id, "rating": RATINGS[rating], "better_answer": _text(body.get("better_answer"), "better_answer", required=False),
            "messages": clean, "answer": _text(body.get("answer"), "answer"), "model": model}


def deidentify_feedback(row: dict[str, Any]) -> dict[str, Any]:
    """All texts of one rating masked together (one placeholder per person throughout)."""
    from caregpt.data.deid import deidentify_record

    texts = [dict(m) for m in row["messages"]] + [{"role": "assistant", "content": row["answer"]}]
    if row["better_answer"]:
        texts.append({"role": "assistant", "content": row["better_answer"]})
    masked, _ = deidentify_record({"messages": texts}, ["messages"])
    out = masked["messages"]
    n = len(row["messages"])
    return {**row, "messages": out[:n], "answer": out[n]["content"], "better_answer": out[n + 1]["content"] if row["better_answer"] else None}


@dataclass
class PairReport:
    ratings: int = 0
    pairs: int = 0
    unpaired: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def to_json(self) -> dict[str, Any]:
        return {"ratings": self.ratings, "pairs": self.pairs, "unpaired": self.unpaired, "reasons": dict(self.reasons)}

    def format(self) -> str:
        lines = [f"{self.pairs} preference pairs from {self.ratings} ratings ({self.unpaired} ratings paired with nothing)"]
        lines += [f"  unpaired: {count} {reason}" for reason, count in sorted(self.reasons.items())]
        return "\n".join(lines)


def preference_pairs(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], PairReport]:
    """OpenAI preference examples from feedback rows (see the module docstring for the pairing rule)."""
    report = PairReport(ratings=len(rows))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[json.dumps(row["messages"], ensure_ascii=False, sort_keys=True)].append(row)
    pairs = []
    for group in groups.values():
        chosen = list(dict.fromkeys([r["better_answer"] for r in group if r["better_answer"]] + [r["answer"] for r in group if r["rating"] > 0]))
        rejected = list(dict.fromkeys(r["answer"] for r in group if r["rating"] < 0))
        used: set[str] = set()
        for bad in rejected:
            for good in chosen:
                if good != bad:
                    pairs.append({"input": {"messages": group[0]["messages"]},
                                  "preferred_output": [{"role": "assistant", "content": good}],
                                  "non_preferred_output": [{"role": "assistant", "content": bad}]})
                    used.update((good, bad))
        for row in group:
            if row["answer"] not in used and row["better_answer"] not in used:
                report.unpaired += 1
                why = "up-rated answers with no down-rated answer to the same conversation" if row["rating"] > 0 else \
                      "down-rated answers with no better or up-rated answer to the same conversation"
                report.reasons[why] += 1
    report.pairs = len(pairs)
    return pairs, report


def export_preference(state_dir: str | Path, output: str | Path, api_key: str | None = None) -> PairReport:
    """Stored ratings (all, or those made with `api_key`) -> preference JSONL at `output` (written atomically)."""
    from caregpt.config.loader import ConfigError
    from caregpt.finetune.state import State, owner_of

    directory = Path(state_dir)
    if not (directory / "finetune.sqlite3").is_file():
        raise ConfigError(f"{directory} holds no fine-tuning state (finetune.sqlite3); pass the service's state_dir (default <storage_root>/state)")
    pairs, report = preference_pairs(State(directory).feedback(owner_of(api_key) if api_key else None))
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".tmp")
    partial.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    partial.replace(target)
    return report
