"""Registered SFT datasets -> OpenAI chat fine-tuning JSONL, validated the way the service validates it.

Conversion goes through the same registry (registry.py) and record normalisation (formats.py) the training
pipeline uses, so alpaca-with-history, sharegpt and direct files all work and a record that training would
reject is rejected here too, with its file:line. Each example becomes
    {"messages": [{"role": "system", ...}?, {"role": "user", ...}, {"role": "assistant", ...}, ...]}

Rules checked on every example (the fine-tuning service's own checks, plus what our export guarantees):
  - a JSON object with a non-empty "messages" list; each message an object with "role" and "content"
  - keys only from role, content, name, weight; roles only system, user, assistant
  - system only as the first message; then user and assistant alternate, starting with user, ending with assistant
  - content a non-empty string; "weight" (assistant only) is 0 or 1
  - at most max_tokens_per_example tokens (65,536 for gpt-4o / gpt-4o-mini training examples; 16,385 for
    gpt-3.5-turbo). Counted with a local Hugging Face tokenizer when --tokenizer is given (that is the *model's*
    tokenizer, not OpenAI's), else estimated: 1.5 tokens per CJK character, 1 per 3 other characters, 4 per
    message and 3 per example - deliberately high for Chinese, so an example the estimate accepts fits.
  - a file needs at least 10 examples (the service's minimum); fewer is reported as a file-level error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError

ALLOWED_KEYS = {"role", "content", "name", "weight"}
ROLES = ("system", "user", "assistant")
MIN_EXAMPLES = 10
DEFAULT_MAX_TOKENS = 65536
TOKENS_PER_MESSAGE, TOKENS_PER_EXAMPLE = 4, 3
CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
MAX_SHOWN = 20


class TokenCounter:
    """Tokens of one example: a local tokenizer when given, else the documented over-estimate."""

    def __init__(self, tokenizer_path: str | None = None):
        self.tokenizer = None
        self.method = "estimate"
        if tokenizer_path:
            if not Path(tokenizer_path).is_dir():
                raise ConfigError(f"--tokenizer {tokenizer_path!r} could not be loaded (no such folder); give a local tokenizer/model folder")
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--tokenizer {tokenizer_path!r} could not be loaded ({exc}); give a local tokenizer/model folder") from None
            self.method = f"tokenizer:{tokenizer_path}"

    def text_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        cjk = len(CJK.findall(text))
        return math.ceil(cjk * 1.5 + (len(text) - cjk) / 3)

    def example_tokens(self, messages: list[dict]) -> int:
        return TOKENS_PER_EXAMPLE + sum(TOKENS_PER_MESSAGE + self.text_tokens(str(m.get("content", ""))) for m in messages)


def validate_example(example: Any, counter: TokenCounter, max_tokens: int) -> tuple[list[str], int]:
    """(problems, tokens) for one line of a chat fine-tuning file; no problems means the service accepts it."""
    if not isinstance(example, dict):
        return [f"expected a JSON object, got {type(example).__name__}"], 0
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return ['missing "messages": a non-empty list of {"role", "content"} objects'], 0
    problems: list[str] = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            problems.append(f"message {number} is not an object")
            continue
        extra = sorted(set(message) - ALLOWED_KEYS)
        if extra:
            problems.append(f"message {number} has unrecognised key {extra[0]!r}; allowed: {', '.join(sorted(ALLOWED_KEYS))}")
        role = message.get("role")
        if role not in ROLES:
            problems.append(f"message {number} has role {role!r}; expected one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"message {number} ({role}) has empty or non-string content")
        if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
            problems.append(f"message {number}: weight must be 0 or 1 and only on assistant messages")
    if problems:
        return problems, 0
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        problems.append(f"message {roles.index('system', 1) + 1}: a system message may only come first")
    for index, role in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected and role != "system":
            offset = 2 if roles[0] == "system" else 1
            problems.append(f"message {index + offset} is {role!r} but {expected!r} was expected (user and assistant alternate, starting with user)")
            break
    if not body or body[-1] != "assistant":
        problems.append("the example must end with an assistant message (that is what the model learns to write)")
    tokens = counter.example_tokens(messages)
    if tokens > max_tokens:
        problems.append(f"{tokens} tokens ({counter.method}) exceed max_tokens_per_example {max_tokens}; shorten the history or split it")
    return problems, tokens


@dataclass
class ExportReport:
    """What happened to every record: exported, or rejected with file:line and the reason."""

    output: str = ""
    datasets: list[str] = field(default_factory=list)
    records: int = 0
    exported: int = 0
    rejected: int = 0
    rejected_examples: list[str] = field(default_factory=list)  # "file:line: reason" (no text)
    token_method: str = "estimate"
    tokens_max: int = 0
    tokens_total: int = 0
    file_errors: list[str] = field(default_factory=list)

    def reject(self, loc: str, reason: str) -> None:
        self.rejected += 1
        if len(self.rejected_examples) < MAX_SHOWN:
            self.rejected_examples.append(f"{loc}: {reason}")

    def finish(self) -> None:
        if self.exported < MIN_EXAMPLES:
            self.file_errors.append(f"{self.exported} valid examples; the fine-tuning service needs at least {MIN_EXAMPLES}")

    def to_json(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        mean = self.tokens_total / self.exported if self.exported else 0
        lines = [f"{self.exported} of {self.records} records valid ({self.rejected} rejected) -> {self.output or '(validation only)'}",
                 f"tokens per example ({self.token_method}): max {self.tokens_max}, mean {mean:.0f}"]
        lines += [f"  rejected {example}" for example in self.rejected_examples]
        if self.rejected > len(self.rejected_examples):
            lines.append(f"  ... and {self.rejected - len(self.rejected_examples)} more")
        lines += [f"  file: {error}" for error in self.file_errors]
        return "\n".join(lines)


def record_messages(roles: tuple[str, ...], contents: tuple[str, ...], last_turn_only: bool = False) -> list[dict]:
    """A normalised record's turns as chat messages; last_turn_only puts weight 0 on earlier assistant turns."""
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents)]
    if last_turn_only:
        assistants = [m for m in messages if m["role"] == "assistant"]
        for message in assistants[:-1]:
            message["weight"] = 0
    return messages


def export_openai_chat(datasets: list[str], dataset_dir: str, output: str | Path, *, dataset_info: str | None = None,
                       system: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS, tokenizer: str | None = None,
                       max_samples: int | None = None, last_turn_only: bool = False) -> ExportReport:
    """Every record of the named SFT datasets to one chat JSONL file (written atomically); invalid ones reported."""
    from caregpt.data.formats import KIND_NAMES, dataset_kind, normalize
    from caregpt.data.readers import iter_file_records
    from caregpt.data.registry import check_file, resolve_datasets

    attrs = resolve_datasets(datasets, dataset_dir, dataset_info)
    for attr in attrs:
        check_file(attr)
        if attr.load_from != "file":
            raise ConfigError(f"dataset {attr.name!r} is not a local file ({attr.load_from}); download it and register it with file_name")
        kind = dataset_kind(attr)
        if kind != "sft":
            raise ConfigError(f"dataset {attr.name!r} is {KIND_NAMES[kind]}; chat fine-tuning export needs {KIND_NAMES['sft']}")
    counter = TokenCounter(tokenizer)
    report = ExportReport(output=str(output), datasets=[a.name for a in attrs], token_method=counter.method)
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as writer:
        for attr in attrs:
            taken = 0
            for raw in iter_file_records(attr.path):
                if max_samples is not None and taken >= max_samples:
                    break
                taken += 1
                report.records += 1
                if raw.error:
                    report.reject(raw.loc, raw.error)
                    continue
                record = normalize(raw.value, raw.loc, attr, "sft", system)
                if record.error:
                    report.reject(raw.loc, record.error)
                    continue
                example = {"messages": record_messages(record.roles, record.contents, last_turn_only)}
                problems, tokens = validate_example(example, counter, max_tokens)
                if problems:
                    report.reject(raw.loc, "; ".join(problems))
                    continue
                writer.write(json.dumps(example, ensure_ascii=False) + "\n")
                report.exported += 1
                report.tokens_total += tokens
                report.tokens_max = max(report.tokens_max, tokens)
    tmp.replace(target)
    report.finish()
    return report


def validate_chat_file(path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS, tokenizer: str | None = None) -> ExportReport:
    """Check an existing chat fine-tuning JSONL line by line (for any file, ours or not)."""
    counter = TokenCounter(tokenizer)
    report = ExportReport(token_method=counter.method)
    with open(path, encoding="utf-8") as reader:
        for number, line in enumerate(reader, start=1):
            if not line.strip():
                continue
            report.records += 1
            try:
                example = json.loads(line)
            except json.JSONDecodeError as exc:
                report.reject(f"{path}:{number}", f"invalid JSON at column {exc.colno}: {exc.msg}")
                continue
            problems, tokens = validate_example(example, counter, max_tokens)
            if problems:
                report.reject(f"{path}:{number}", "; ".join(problems))
                continue
            report.exported += 1
            report.tokens_total += tokens
            report.tokens_max = max(report.tokens_max, tokens)
    report.finish()
    return report
