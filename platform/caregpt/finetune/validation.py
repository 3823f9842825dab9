"""Uploaded fine-tuning files: OpenAI's chat format and its preference (DPO) format, checked line by line.

    chat:        {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    preference:  {"input": {"messages": [..., {"role": "user", ...}]},
                  "preferred_output": [{"role": "assistant", "content": "..."}],
                  "non_preferred_output": [{"role": "assistant", "content": "..."}]}

The chat rules are those of `caregpt data export` (data/openai_export.py), so a file that command writes is
accepted here and vice versa. A file is one format throughout; the first problems are reported with their
line numbers (never the text, which may be patient data).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from caregpt.data.openai_export import DEFAULT_MAX_TOKENS, MIN_EXAMPLES, ROLES, TokenCounter, validate_example

MAX_REPORTED = 5
KINDS = {"chat": "supervised", "preference": "dpo"}  # file kind -> the fine-tuning method that trains on it


@dataclass
class FileCheck:
    kind: str = ""
    examples: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), the first MAX_REPORTED
    invalid: int = 0
    file_error: str = ""
    masked: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.file_error

    def first_line(self) -> int | None:
        return self.problems[0][0] if self.problems else None

    def message(self) -> str:
        if self.file_error:
            return self.file_error
        shown = "; ".join(f"line {line}: {reason}" for line, reason in self.problems)
        more = f" (and {self.invalid - len(self.problems)} more invalid lines)" if self.invalid > len(self.problems) else ""
        return f"{self.invalid} invalid example(s) in the {self.kind or 'uploaded'} file: {shown}{more}"


def iter_lines(data: bytes | Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    lines = data.splitlines() if isinstance(data, bytes) else data
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line


def detect_kind(example: Any) -> str | None:
    if isinstance(example, dict):
        if "messages" in example:
            return "chat"
        if "input" in example or "preferred_output" in example:
            return "preference"
    return None


def _single_assistant(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        return [f'"{name}" must be a list holding one assistant message']
    message = value[0]
    if message.get("role") != "assistant":
        return [f'"{name}" message must have role "assistant"']
    if not isinstance(message.get("content"), str) or not message["content"].strip():
        return [f'"{name}" message has empty or non-string content']
    return []


def validate_preference(example: Any, counter: TokenCounter, max_tokens: int) -> tuple[list[str], int]:
    """(problems, tokens) for one line of a preference file."""
    if not isinstance(example, dict):
        return [f"expected a JSON object, got {type(example).__name__}"], 0
    extra = sorted(set(example) - {"input", "preferred_output", "non_preferred_output"})
    if extra:
        return [f"unrecognised key {extra[0]!r}; a preference example has input, preferred_output, non_preferred_output"], 0
    problems = []
    source = example.get("input")
    messages = source.get("messages") if isinstance(source, dict) else None
    if not isinstance(messages, list) or not messages:
        problems.append('"input" must be an object with a non-empty "messages" list')
    else:
        for number, message in enumerate(messages, start=1):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                problems.append(f"input message {number} must be an object with role one of {', '.join(ROLES)}")
            elif not isinstance(message.get("content"), str) or not message["content"].strip():
                problems.append(f"input message {number} ({message['role']}) has empty or non-string content")
        if not problems:
            roles = [m["role"] for m in messages]
            body = roles[1:] if roles[0] == "system" else roles
            expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(body))]
            if body != expected or not body or body[-1] != "user":
                problems.append("input messages must alternate user/assistant after an optional system message and end with user")
    problems += _single_assistant(example.get("preferred_output"), "preferred_output")
    problems += _single_assistant(example.get("non_preferred_output"), "non_preferred_output")
    if problems:
        return problems, 0
    if example["preferred_output"][0]["content"] == example["non_preferred_output"][0]["content"]:
        return ["preferred and non-preferred outputs are identical: the pair teaches nothing"], 0
    tokens = counter.example_tokens(messages + example["preferred_output"]) + counter.text_tokens(example["non_preferred_output"][0]["content"])
    if tokens > max_tokens:
        return [f"{tokens} tokens ({counter.method}) exceed the limit of {max_tokens}"], tokens
    return [], tokens


def validate_line(kind: str, example: Any, counter: TokenCounter, max_tokens: int) -> list[str]:
    check = validate_example if kind == "chat" else validate_preference
    return check(example, counter, max_tokens)[0]


def deidentify_example(kind: str, example: dict[str, Any]) -> tuple[dict[str, Any], Counter]:
    """A masked copy of one example: all its texts masked together, so a name gets one placeholder throughout."""
    from caregpt.data.deid import deidentify_record

    clean = copy.deepcopy(example)
    if kind == "chat":
        messages = clean["messages"]
    else:
        messages = clean["input"]["messages"] + clean["preferred_output"] + clean["non_preferred_output"]
    masked, counts = deidentify_record({"messages": messages}, ["messages"])
    for target, source in zip(messages, masked["messages"]):
        target["content"] = source["content"]
    return clean, counts


def check_file(data: bytes, *, counter: TokenCounter | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
               expect_kind: str | None = None, deidentify: bool = False) -> tuple[FileCheck, bytes]:
    """Validate a whole upload; returns the report and the bytes to store (masked when deidentify is on)."""
    counter = counter or TokenCounter()
    report = FileCheck(kind=expect_kind or "")
    out: list[bytes] = []
    for number, raw in iter_lines(data):
        try:
            example = json.loads(raw)
        except UnicodeDecodeError:
            reason = "not UTF-8 text"
        except json.JSONDecodeError as exc:
            reason = f"not valid JSON (column {exc.colno}: {exc.msg}); each line must be one JSON object"
        else:
            reason = ""
        if not reason and not report.kind:
            report.kind = detect_kind(example) or ""
            if not report.kind:
                reason = 'neither a chat example ({"messages": [...]}) nor a preference example ({"input", "preferred_output", "non_preferred_output"})'
        if not reason:
            if detect_kind(example) not in (report.kind, None) and expect_kind is None:
                reason = f"a {detect_kind(example)} example in a {report.kind} file; one file holds one format"
            else:
                reason = "; ".join(validate_line(report.kind, example, counter, max_tokens))
        if reason:
            report.invalid += 1
            if len(report.problems) < MAX_REPORTED:
                report.problems.append((number, reason))
            continue
        report.examples += 1
        if deidentify:
            example, counts = deidentify_example(report.kind, example)
            report.masked.update(counts)
            raw = json.dumps(example, ensure_ascii=False).encode()
        out.append(raw)
    if report.ok and report.examples < MIN_EXAMPLES:
        report.file_error = f"the file has {report.examples} valid example(s); fine-tuning needs at least {MIN_EXAMPLES}"
    return report, b"\n".join(out) + b"\n"


def training_rows(kind: str, data: bytes) -> Iterator[dict[str, Any]]:
    """Validated examples in caregpt's training formats: sharegpt-style messages, or messages + chosen/rejected."""
    for number, raw in iter_lines(data):
        example = json.loads(raw)
        if kind == "chat":
            if any(m.get("weight") == 0 for m in example["messages"]):
                raise ValueError(f"line {number}: messages with \"weight\": 0 are not supported by this trainer (it learns every assistant turn); remove them or the weight")
            yield {"messages": [{"role": m["role"], "content": m["content"]} for m in example["messages"]]}
        else:
            messages = [{"role": m["role"], "content": m["content"]} for m in example["input"]["messages"]]
            yield {"messages": messages, "chosen": example["preferred_output"][0]["content"], "rejected": example["non_preferred_output"][0]["content"]}
