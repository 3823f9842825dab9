"""The one SSE writer: engine events -> ``data: {chunk}`` lines, for chat and text completions alike.

A stream is: opening chunks (chat: the assistant role per choice, then any guard prefix;
completions with ``echo``: the prompt), content chunks as events arrive, a finish chunk per choice
(chat: after the disclaimer suffix), a usage chunk when ``stream_options.include_usage`` is set (its
``choices`` is empty, as OpenAI sends it), and ``data: [DONE]``. An error after the headers went out
is sent as ``data: {"error": {...}}`` (the openai SDK raises it) followed by ``[DONE]``.

Chunks are the typed models of :mod:`caregpt.serve.protocol`, dumped with ``exclude_unset`` so a
delta carries only what it sets. All chunks made from one batch of events are written at once:
each write is a message through Ray to the HTTP proxy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from caregpt.serve import errors
from caregpt.serve.errors import APIError
from caregpt.serve.events import TokenEvent, merge
from caregpt.serve.observability import AccessRecord
from caregpt.serve.protocol import ChatCompletionChunk, ChunkChoice, CompletionResponse, Delta, TextChoice, Usage, error_chunk

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not buffer the stream


def _line(chunk: Any) -> bytes:
    return b"data: " + chunk.model_dump_json(exclude_unset=True).encode() + b"\n\n"


class ChatChunks:
    """chat.completion.chunk bodies for one job."""

    def __init__(self, record: AccessRecord, job: Any, include_usage: bool):
        self.job, self.include_usage = job, include_usage
        self.head = {"id": record.response_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": job.ref.name}

    def chunk(self, choices: list[ChunkChoice], usage: Usage | None = None, **extra: Any) -> bytes:
        fields = {**self.head, "choices": choices, **extra}
        if self.include_usage:
            fields["usage"] = usage
        return _line(ChatCompletionChunk(**fields))

    def _content(self, index: int, text: str) -> bytes:
        return self.chunk([ChunkChoice(index=index, delta=Delta(content=text), finish_reason=None, logprobs=None)])

    def opening(self) -> list[bytes]:
        n = self.job.n
        out = [self.chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""), finish_reason=None, logprobs=None) for i in range(n)])]
        if self.job.prefix:  # urgent-care advice (or a refusal) reaches the reader before any model token
            out.append(self.chunk([ChunkChoice(index=i, delta=Delta(content=self.job.prefix), finish_reason=None, logprobs=None) for i in range(n)]))
        return out

    def step(self, index: int, text: str, finish: str | None) -> list[bytes]:
        out = [self._content(index, text)] if text else []
        if finish:
            if self.job.suffix:
                out.append(self._content(index, self.job.suffix))
            extra = {"citations": self.job.citations} if self.job.citations and index == self.job.n - 1 else {}
            out.append(self.chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=finish, logprobs=None)], **extra))
        return out


class TextChunks:
    """text_completion chunk bodies for one job (one prompt)."""

    def __init__(self, record: AccessRecord, job: Any, include_usage: bool, echo: str | None):
        self.job, self.include_usage, self.echo = job, include_usage, echo
        self.head = {"id": record.response_id, "object": "text_completion", "created": int(time.time()), "model": job.ref.name}

    def chunk(self, choices: list[TextChoice], usage: Usage | None = None) -> bytes:
        fields = {**self.head, "choices": choices}
        if self.include_usage:
            fields["usage"] = usage
        return _line(CompletionResponse(**fields))

    def opening(self) -> list[bytes]:
        if self.echo is None:
            return []
        return [self.chunk([TextChoice(index=i, text=self.echo, finish_reason=None, logprobs=None) for i in range(self.job.n)])]

    def step(self, index: int, text: str, finish: str | None) -> list[bytes]:
        return [self.chunk([TextChoice(index=index, text=text, finish_reason=finish, logprobs=None)])] if text or finish else []


async def _canned(job: Any) -> AsyncIterator[list[TokenEvent]]:
    yield [TokenEvent(i, "", 0, "stop") for i in range(job.n)]


def _note_tokens(record: AccessRecord, batch: list[TokenEvent], counts: dict[int, int]) -> None:
    for ev in batch:
        counts[ev.choice] = ev.tokens
        if ev.text and record.first_token_at is None:
            record.first_token_at = time.perf_counter()
    record.completion_tokens = sum(counts.values())


async def write_stream(events: AsyncIterator[list[TokenEvent]] | None, chunks: ChatChunks | TextChunks, record: AccessRecord, on_done: Callable[[AccessRecord], None]) -> AsyncIterator[bytes]:
    """SSE bytes for one job's events (None: a canned answer, the model is not called)."""
    from caregpt.serve.router import ReplicaDied

    job = chunks.job
    counts: dict[int, int] = {}
    out = chunks.opening()
    try:
        async for batch in events if events is not None else _canned(job):
            _note_tokens(record, batch, counts)
            for index, (text, finish) in merge(batch).items():
                out.extend(chunks.step(index, text, finish))
            if out:
                yield b"".join(out)
            out = []
        if chunks.include_usage:
            out.append(chunks.chunk([], Usage.of(len(job.prompt_ids), record.completion_tokens)))
        yield b"".join(out) + DONE
    except (APIError, ReplicaDied) as exc:
        err = exc if isinstance(exc, APIError) else errors.overloaded(2.0, "The model replica serving this request stopped")
        record.error_code = err.code
        yield b"".join(out) + b"data: " + error_chunk(err).encode() + b"\n\n" + DONE
    except asyncio.CancelledError:
        record.error_code = "client_disconnected"
        raise
    finally:
        on_done(record)
