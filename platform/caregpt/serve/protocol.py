"""The OpenAI wire format: request validation and response shapes (pydantic).

Requests are validated field by field (ranges as OpenAI documents them) and unknown fields are
ignored, as OpenAI-compatible servers do, so clients that send more than we use still work. Two
spellings from CareGPT's `api_demo.py` era are understood: `max_new_tokens` (0 or null = the
server default) and zero `temperature` / `top_p` (greedy decoding), so the seed README's curl
request gets an answer instead of an error.

Accepted but ignored: `presence_penalty`, `frequency_penalty`, `user`, `logit_bias` (clients such as
ChatGPT-Next-Web send them with neutral values); they are still type-checked. Types are strict
(JSON's own types, no coercion): `stream: "yes"`, `seed: "123"`, `n: true` are 400s, since a
server that guesses what a malformed field meant answers a question nobody asked. Text must be
valid Unicode: a lone surrogate (`"\ud800"`, legal JSON, not encodable) is a 400 naming the field. Refused with a 400 because silently dropping them
would change the answer's meaning: `tools` / `functions`, `logprobs`, JSON `response_format`,
image content parts, `suffix`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

from caregpt.serve.errors import APIError, bad_request

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)


def check_unicode(text: str, param: str) -> str:
    """`text` itself, or a 400 naming `param` when it holds a lone surrogate (cannot be UTF-8 encoded or tokenized)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{param} is not valid Unicode text (it holds a lone surrogate such as \\ud800).", param, "invalid_unicode") from None
    return text


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: str
    content: str | list[TextPart | dict[str, Any]] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        """The content as one string; a 400 naming the message for anything that is not text."""
        if self.content is None:
            raise bad_request(f"messages[{index}].content must be a string (it is null).", f"messages.{index}.content", "invalid_type")
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for j, part in enumerate(self.content):
            if isinstance(part, TextPart):
                pieces.append(part.text)
                continue
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise bad_request(
                f"messages[{index}].content[{j}] has type {kind!r}; this server takes text content only.",
                f"messages.{index}.content.{j}.type",
                "unsupported_content",
            )
        return "".join(pieces)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Parameters shared by chat and text completions."""

    model: str | None = Field(default=None, max_length=256)
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0.0, le=2.0)
    top_p: StrictFloat | StrictInt | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=0)  # CareGPT api_demo / HF spelling; 0 = default
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: StrictFloat | StrictInt | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: StrictFloat | StrictInt | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, StrictFloat | StrictInt] | None = Field(default=None, max_length=300)
    logprobs: Any = None
    ignore_eos: bool = False  # vLLM's extension: keep generating past EOS (benchmarks want fixed lengths)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop sequences must be at most {MAX_STOP_CHARS} characters")
        return stops

    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens, else max_tokens, else a non-zero max_new_tokens; None = server default."""
        for value in (getattr(self, "max_completion_tokens", None), self.max_tokens, self.max_new_tokens):
            if value:
                return int(value)
        return None

    def check_supported(self) -> None:
        if self.logprobs not in (None, False, 0):
            raise bad_request("logprobs are not supported by this server.", "logprobs", "unsupported_parameter")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true.", "stream_options")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    knowledge_base: str | None = Field(default=None, max_length=64)
    """caregpt extension: answer with retrieval from this configured knowledge base (citations in the response)."""

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools or self.functions:
            raise bad_request("tools / function calling are not supported by this server.", "tools", "unsupported_parameter")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise bad_request("only response_format {'type': 'text'} is supported.", "response_format", "unsupported_parameter")


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=128)

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise bad_request("prompt must be a string or a non-empty list of strings.", "prompt")
        for i, text in enumerate(prompts):
            check_unicode(text, "prompt" if isinstance(self.prompt, str) else f"prompt.{i}")
        return prompts

    def check_supported(self) -> None:
        super().check_supported()
        if self.suffix:
            raise bad_request("suffix is not supported by this server.", "suffix", "unsupported_parameter")
        if self.best_of not in (None, self.n):
            raise bad_request("best_of must equal n (no server-side reranking).", "best_of", "unsupported_parameter")


_ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
_UNSUPPORTED_ROLES = {"tool", "function"}


def normalize_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat templates want them: an optional system first, then user/assistant turns.

    Lenient where OpenAI is (several leading system messages, consecutive turns of one role are
    joined), strict where a template cannot express the request (a system message mid-way, a
    conversation that does not end with the user).
    """
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        role = _ROLE_ALIASES.get(msg.role, msg.role)
        if role in _UNSUPPORTED_ROLES:
            raise bad_request(f"messages[{i}] has role {msg.role!r}; tool messages are not supported by this server.", f"messages.{i}.role")
        if role not in ("system", "user", "assistant"):
            raise bad_request(
                f"messages[{i}].role must be one of 'system', 'user', 'assistant' (or 'developer'), got {msg.role!r}.",
                f"messages.{i}.role",
            )
        text = check_unicode(msg.text(i), f"messages.{i}.content")
        if role == "system" and any(m["role"] != "system" for m in out):
            raise bad_request(f"messages[{i}]: a system message must come before the conversation.", f"messages.{i}.role")
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": role, "content": text})
    turns = out[1:] if out and out[0]["role"] == "system" else out
    if not turns or turns[0]["role"] != "user":
        raise bad_request("the conversation must start with a user message (after an optional system message).", "messages")
    if turns[-1]["role"] != "user":
        raise bad_request("the last message must come from the user: the server answers it.", "messages")
    return out


# ---- responses --------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    citations: list[dict[str, Any]] | None = None  # caregpt extension, on the final chunk of a knowledge-base answer


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "caregpt"
    parent: str | None = None  # the base model of an adapter
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_chunk(exc: APIError) -> str:
    """An error inside an SSE stream (headers are gone): the same JSON shape, as one data event."""
    return ErrorResponse(error=ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code)).model_dump_json()
