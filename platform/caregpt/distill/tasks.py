"""What one seed becomes, for each kind. Pure logic over a TeacherClient: no Ray here.

Records use the project's formats: sft and multiturn are alpaca-with-history
({"instruction", "input", "output", "history": [[user, assistant], ...]}), preference is the same with
output [chosen, rejected], kb_document is {"content": ...}.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from caregpt.distill.client import CallResult, TeacherClient
from caregpt.distill.config import DistillConfig
from caregpt.distill.seeds import SeedItem
from caregpt.distill.templates import render

USER_ROLES = {"user", "human", "patient", "患者", "病人"}
ASSISTANT_ROLES = {"assistant", "gpt", "doctor", "医生", "bot"}
FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")


@dataclass
class Generation:
    """The outcome of one seed: a record (status ok) or a failure reason, with the accounting of all its calls."""

    id: str
    index: int
    status: str = "ok"  # ok | failed
    record: dict | None = None
    reason: str = ""
    detail: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started_at: float = 0.0  # wall clock (time.time) on the worker: the report's rate covers the request window only
    finished_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Generation:
        return cls(**json.loads(text))


class ContentError(ValueError):
    """The reply arrived but is not what was asked for (no JSON dialogue, no verdict)."""


class _Calls:
    """Runs calls for one seed and adds up their accounting."""

    def __init__(self, client: TeacherClient, config: DistillConfig, generation: Generation):
        self.client, self.config, self.gen = client, config, generation
        self.outcomes: Counter = Counter()

    def ask(self, prompt: str, *, temperature: float, system: bool = True) -> str:
        messages = [{"role": "system", "content": self.config.system_prompt}] if system and self.config.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        result: CallResult = self.client.chat(messages, temperature=temperature, max_tokens=self.config.max_tokens)
        self.gen.requests += result.attempts
        self.outcomes.update(result.outcomes)
        self.gen.prompt_tokens += result.prompt_tokens
        self.gen.completion_tokens += result.completion_tokens
        if not result.ok:
            raise _Failed(result.failure or "unknown", result.detail)
        self.gen.finish_reasons.append(result.finish_reason or "")
        return result.text or ""

    def ask_parsed(self, prompt: str, parse, *, temperature: float, system: bool = True):
        """A call whose reply must parse; a reply that does not is retried content_retries times."""
        last = ""
        for _ in range(self.config.content_retries + 1):
            text = self.ask(prompt, temperature=temperature, system=system)
            try:
                return parse(text)
            except ContentError as exc:
                last = str(exc)
                self.outcomes["bad_content"] += 1
        raise _Failed("bad_content", last)


class _Failed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _strip_fences(text: str) -> str:
    return FENCE.sub("", text.strip())


def parse_dialogue(text: str) -> list[tuple[str, str]]:
    """A JSON list of {role, content} turns (or {"dialogue": [...]}) -> [(user, assistant), ...]."""
    body = _strip_fences(text)
    start, end = body.find("["), body.rfind("]")
    candidates = [body] + ([body[start:end + 1]] if 0 <= start < end else [])
    data = None
    for candidate in candidates:
        try:
            data = json.loads(candidate)
            break
        except json.JSONDecodeError:
            continue
    if isinstance(data, dict):
        data = next((data[k] for k in ("dialogue", "turns", "messages", "conversations") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list) or not data:
        raise ContentError("the reply is not a JSON list of turns")
    roles, contents = [], []
    for number, turn in enumerate(data, start=1):
        if not isinstance(turn, dict):
            raise ContentError(f"turn {number} is not an object")
        role = str(turn.get("role", turn.get("from", ""))).strip().lower()
        content = turn.get("content", turn.get("value"))
        if role in USER_ROLES:
            role = "user"
        elif role in ASSISTANT_ROLES:
            role = "assistant"
        else:
            raise ContentError(f"turn {number} has unknown role {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ContentError(f"turn {number} has no text")
        roles.append(role)
        contents.append(content.strip())
    for number, role in enumerate(roles):
        if role != ("user" if number % 2 == 0 else "assistant"):
            raise ContentError(f"turn {number + 1} is {role}: turns must alternate, starting with the user")
    if roles[-1] != "assistant":
        raise ContentError("the dialogue must end with the assistant")
    return list(zip(contents[0::2], contents[1::2]))


def parse_verdict(text: str) -> str:
    """'A' or 'B' from a judge reply: a JSON {"better": ...} object, or a bare letter at the start."""
    body = _strip_fences(text)
    start, end = body.find("{"), body.rfind("}")
    if 0 <= start < end:
        try:
            data = json.loads(body[start:end + 1])
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            for key in ("better", "winner", "choice", "answer"):
                value = str(data.get(key, "")).strip().upper()
                if value in ("A", "B"):
                    return value
    match = re.match(r'^[\s\[\("“「]*(?:回答|answer\s*)?([AB])(?![A-Za-z])', body, flags=re.IGNORECASE)
    if match:
        return match.group(1).upper()
    raise ContentError("the judge named neither A nor B")


def _question(calls: _Calls, item: SeedItem) -> str:
    config = calls.config
    if not config.question_template:
        return item.seed
    prompt = render(config.question_template, seed=item.seed, variant=item.variant)
    question = calls.ask(prompt, temperature=config.temperature).strip()
    if not question:
        raise _Failed("bad_content", "the generated question is empty")
    return question


def _answer(calls: _Calls, template: str, question: str, item: SeedItem, temperature: float) -> str:
    return calls.ask(render(template, question=question, seed=item.seed, variant=item.variant), temperature=temperature).strip()


def _build(calls: _Calls, item: SeedItem) -> dict:
    config = calls.config
    if config.kind == "sft":
        question = _question(calls, item)
        answer = _answer(calls, config.answer_template, question, item, config.temperature)
        return {"instruction": question, "input": "", "output": answer, "history": []}
    if config.kind == "multiturn":
        prompt = render(config.dialogue_template, seed=item.seed, variant=item.variant, turns=config.dialogue_turns)
        pairs = calls.ask_parsed(prompt, parse_dialogue, temperature=config.temperature)
        *history, (last_user, last_answer) = pairs
        return {"instruction": last_user, "input": "", "output": last_answer, "history": [list(p) for p in history]}
    if config.kind == "preference":
        question = _question(calls, item)
        first = _answer(calls, config.answer_template, question, item, config.temperature)
        second = _answer(calls, config.alt_answer_template or config.answer_template, question, item, config.alt_temperature)
        # show the two answers in an order fixed by the seed id, so the judge's position bias does not always
        # favour the first-generated answer
        swap = int(hashlib.sha256(item.id.encode()).hexdigest(), 16) % 2 == 1
        shown_a, shown_b = (second, first) if swap else (first, second)
        prompt = render(config.judge_template, question=question, answer_a=shown_a, answer_b=shown_b)
        verdict = calls.ask_parsed(prompt, parse_verdict, temperature=0.0, system=False)
        chosen, rejected = (shown_a, shown_b) if verdict == "A" else (shown_b, shown_a)
        return {"instruction": question, "input": "", "output": [chosen, rejected], "history": []}
    prompt = render(config.document_template, seed=item.seed, variant=item.variant)
    return {"content": calls.ask(prompt, temperature=config.temperature).strip()}


def generate(item: SeedItem, config: DistillConfig, client: TeacherClient) -> Generation:
    """Never raises: every seed ends as ok (with a record) or failed (with a reason)."""
    generation = Generation(id=item.id, index=item.index, started_at=time.time())
    calls = _Calls(client, config, generation)
    try:
        generation.record = _build(calls, item)
    except _Failed as exc:
        generation.status, generation.reason, generation.detail = "failed", exc.reason, exc.detail
    except Exception as exc:  # noqa: BLE001 - a bug must not lose the seed: it is reported, and retried on re-run
        generation.status, generation.reason, generation.detail = "failed", "internal_error", f"{type(exc).__name__}: {exc}"[:300]
    generation.outcomes = dict(calls.outcomes)
    generation.finished_at = time.time()
    return generation
