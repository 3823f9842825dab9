"""OpenAI response bodies from engine events: whole answers, and SSE streams.

A stream is ``data: {chunk}\\n\\n`` events: first a role chunk per choice, then content deltas,
a finish chunk per choice, a usage chunk when ``stream_options.include_usage`` is set (its
``choices`` is empty, as OpenAI sends it), and ``data: [DONE]``. An error after the headers went
out is sent as ``data: {"error": {...}}`` (the openai SDK raises it) followed by ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from caregpt.serve import errors
from caregpt.serve.errors import APIError
from caregpt.serve.observability import AccessRecord
from caregpt.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    TextChoice,
    Usage,
    error_chunk,
)
from caregpt.serve.router import Job, OpenAIRouter, ReplicaDied

DONE = b"data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _note_tokens(record: AccessRecord, batch: list[dict[str, Any]], counts: dict[int, int]) -> None:
    for ev in batch:
        counts[ev["i"]] = ev["n"]
        if ev["t"] and record.first_token_at is None:
            record.first_token_at = time.perf_counter()
    record.completion_tokens = sum(counts.values())


def _merged(batch: list[dict[str, Any]]) -> dict[int, tuple[str, str | None]]:
    """Events of one batch folded per choice: (all new text, finish reason)."""
    out: dict[int, tuple[str, str | None]] = {}
    for ev in batch:
        text, finish = out.get(ev["i"], ("", None))
        out[ev["i"]] = (text + ev["t"], ev["f"] or finish)
    return out


async def chat_completion(router: OpenAIRouter, job: Job, record: AccessRecord) -> dict[str, Any]:
    if job.canned:  # the guard answered; the model was not called
        results = {i: {"text": "", "tokens": 0, "finish": "stop"} for i in range(job.n)}
    else:
        results = await router.collect(job)
    record.first_token_at = record.first_token_at or time.perf_counter()
    record.completion_tokens = sum(r["tokens"] for r in results.values())
    choices = [ChatChoice(index=i, message=AssistantMessage(content=job.prefix + r["text"] + job.suffix), finish_reason=r["finish"] or "stop")
               for i, r in sorted(results.items())]
    body = ChatCompletionResponse(id=record.request_id, model=job.ref.name, choices=choices, usage=Usage.of(len(job.prompt_ids), record.completion_tokens))
    data = body.model_dump(mode="json")
    if job.citations:
        data["citations"] = job.citations
    return data


async def _canned_events(job: Job) -> AsyncIterator[list[dict[str, Any]]]:
    yield [{"i": i, "t": "", "n": 0, "f": "stop"} for i in range(job.n)]


async def chat_stream(router: OpenAIRouter, job: Job, opened: Any, record: AccessRecord, include_usage: bool, on_done) -> AsyncIterator[bytes]:
    created = int(time.time())
    head = {"id": record.request_id, "object": "chat.completion.chunk", "created": created, "model": job.ref.name}

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        data = {**head, "choices": choices}
        if include_usage:
            data["usage"] = usage
        return _sse(data)

    counts: dict[int, int] = {}
    # One write per batch of events: each write is a message through Ray to the HTTP proxy.
    out = [chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None} for i in range(job.n)])]
    if job.prefix:  # urgent-care advice (or a refusal) reaches the reader before any model token
        out.append(chunk([{"index": i, "delta": {"content": job.prefix}, "logprobs": None, "finish_reason": None} for i in range(job.n)]))
    try:
        async for batch in (_canned_events(job) if job.canned else router.events(job, opened)):
            _note_tokens(record, batch, counts)
            for index, (text, finish) in sorted(_merged(batch).items()):
                if text:
                    out.append(chunk([{"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]))
                if finish:
                    if job.suffix:
                        out.append(chunk([{"index": index, "delta": {"content": job.suffix}, "logprobs": None, "finish_reason": None}]))
                    last = {**head, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}]}
                    if include_usage:
                        last["usage"] = None
                    if job.citations and index == job.n - 1:
                        last["citations"] = job.citations  # on the final chunk, where clients look for them
                    out.append(_sse(last))
            yield b"".join(out)
            out = []
        if include_usage:
            out.append(chunk([], Usage.of(len(job.prompt_ids), record.completion_tokens).model_dump()))
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


async def completion(router: OpenAIRouter, body: CompletionRequest, jobs: list[Job], record: AccessRecord) -> dict[str, Any]:
    results = await asyncio.gather(*(router.collect(job) for job in jobs))
    record.first_token_at = record.first_token_at or time.perf_counter()
    prompts = body.prompts()
    choices = []
    for p, (job, result) in enumerate(zip(jobs, results)):
        for i, r in sorted(result.items()):
            text = prompts[p] + r["text"] if body.echo else r["text"]
            choices.append(TextChoice(index=p * job.n + i, text=text, finish_reason=r["finish"] or "stop"))
    record.completion_tokens = sum(r["tokens"] for result in results for r in result.values())
    usage = Usage.of(sum(len(j.prompt_ids) for j in jobs), record.completion_tokens)
    return CompletionResponse(id=record.request_id, model=jobs[0].ref.name, choices=choices, usage=usage).model_dump(mode="json")


async def completion_stream(router: OpenAIRouter, body: CompletionRequest, job: Job, opened: Any, record: AccessRecord, include_usage: bool, on_done) -> AsyncIterator[bytes]:
    head = {"id": record.request_id, "object": "text_completion", "created": int(time.time()), "model": job.ref.name}

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        data = {**head, "choices": choices}
        if include_usage:
            data["usage"] = usage
        return _sse(data)

    counts: dict[int, int] = {}
    out = []
    if body.echo:
        out.append(chunk([{"index": i, "text": body.prompts()[0], "logprobs": None, "finish_reason": None} for i in range(job.n)]))
    try:
        async for batch in router.events(job, opened):
            _note_tokens(record, batch, counts)
            for index, (text, finish) in sorted(_merged(batch).items()):
                if text or finish:
                    out.append(chunk([{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]))
            if out:
                yield b"".join(out)
            out = []
        if include_usage:
            out.append(chunk([], Usage.of(len(job.prompt_ids), record.completion_tokens).model_dump()))
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
