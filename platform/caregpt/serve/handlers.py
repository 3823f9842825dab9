"""What each API route does with a parsed body: chat, text completions, triage.

Each handler takes the JSON body and the request's :class:`AccessRecord` (filled in as the request
is understood: the resolved model, token counts) and returns a response; every failure is an
:class:`~caregpt.serve.errors.APIError`. :func:`handle` wraps a handler with what every route
shares: admission (503 at once when the router is full), the body, error shapes and the access log.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from caregpt.serve import errors, responses
from caregpt.serve.errors import APIError
from caregpt.serve.http_guards import read_json, request_id
from caregpt.serve.observability import AccessRecord, log_access
from caregpt.serve.protocol import ChatCompletionRequest, CompletionRequest, new_id
from caregpt.serve.sse import SSE_HEADERS, ChatChunks, TextChunks, write_stream

logger = logging.getLogger("ray.serve").getChild("caregpt.api")

Handler = Callable[[Any, dict[str, Any], AccessRecord], Awaitable[Response]]


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def finish(router: Any, record: AccessRecord) -> None:
    """Metrics and the access log for a request that has ended."""
    record.ended = time.perf_counter()
    try:
        router.metrics.observe(record)
    except Exception:  # noqa: BLE001 - metrics never fail a request
        logger.debug("metrics failed", exc_info=True)
    log_access(record)


def new_record(request: Request, route: str, prefix: str = "req") -> AccessRecord:
    return AccessRecord(request_id=request_id(request), route=route, response_id=new_id(prefix), client=request.client.host if request.client else None)


async def handle(router: Any, request: Request, record: AccessRecord, handler: Handler) -> Response:
    streaming = admitted = False
    try:
        router.admission.enter()
        admitted = True
        response = await handler(router, await read_json(request), record)
        streaming = isinstance(response, StreamingResponse)
        return response
    except APIError as exc:
        record.status, record.error_code = exc.status, exc.code
        return error_response(exc)
    except Exception:
        record.status, record.error_code = 500, "internal_error"
        logger.exception("request %s failed", record.request_id)
        return error_response(errors.internal())
    finally:
        if not streaming:  # a stream leaves and logs when it ends (see _sse)
            if admitted:
                router.admission.leave()
            finish(router, record)


def _parse(model_cls, data: dict[str, Any]):
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise errors.from_validation_errors(exc.errors()) from None


def _sse(router: Any, events, chunks, record: AccessRecord) -> StreamingResponse:
    ended = False

    def done(r: AccessRecord) -> None:
        nonlocal ended
        if ended:
            return
        ended = True
        router.admission.leave()
        finish(router, r)

    stream = write_stream(events, chunks, record, done)
    # A client that hangs up before the first byte: the body generator is dropped without ever starting, so
    # its `finally` never runs. Ending it when the generator is collected keeps the admission slot from
    # leaking and stops the model's stream (the replica would otherwise generate for nobody).
    weakref.finalize(stream, _never_started, done, record, events)
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)


def _never_started(done: Callable[[AccessRecord], None], record: AccessRecord, events: Any) -> None:
    if record.ended is not None:  # the stream ran and ended: nothing to do
        return
    record.error_code = record.error_code or "client_disconnected"
    done(record)
    if events is not None:
        try:
            asyncio.get_running_loop().create_task(events.aclose())
        except RuntimeError:  # collected outside the event loop: the events generator is dropped with it
            pass


async def chat(router: Any, data: dict[str, Any], record: AccessRecord) -> Response:
    body = _parse(ChatCompletionRequest, data)
    record.stream, record.n = body.stream, body.n
    job = await router.prepare_chat(body, record.request_id)
    record.model, record.prompt_tokens = job.ref.name, len(job.prompt_ids)
    if router.config.log_prompts:
        record.messages = [m.model_dump(mode="json") for m in body.messages]
    if not body.stream:
        return JSONResponse(await responses.chat_completion(router, job, record))
    events = None if job.canned else router.events(job, await router.open_stream(job))  # errors before the first token stay HTTP errors
    usage = bool(body.stream_options and body.stream_options.include_usage)
    return _sse(router, events, ChatChunks(record, job, usage), record)


async def complete(router: Any, data: dict[str, Any], record: AccessRecord) -> Response:
    body = _parse(CompletionRequest, data)
    record.stream, record.n = body.stream, body.n
    if body.stream and len(body.prompts()) > 1:
        raise errors.bad_request("Streaming takes one prompt per request; send a request per prompt.", "prompt")
    jobs = await router.prepare_completion(body, record.request_id)
    record.model, record.prompt_tokens = jobs[0].ref.name, sum(len(j.prompt_ids) for j in jobs)
    if router.config.log_prompts:
        record.messages = body.prompts()
    if not body.stream:
        return JSONResponse(await responses.completion(router, body, jobs, record))
    events = router.events(jobs[0], await router.open_stream(jobs[0]))
    usage = bool(body.stream_options and body.stream_options.include_usage)
    return _sse(router, events, TextChunks(record, jobs[0], usage, body.prompts()[0] if body.echo else None), record)


async def triage(router: Any, data: dict[str, Any], record: AccessRecord) -> Response:
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise errors.bad_request("'text' must be a non-empty string describing the symptoms.", "text")
    k = data.get("k", 3)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 10:
        raise errors.bad_request("'k' must be an integer from 1 to 10.", "k")
    return JSONResponse(router.triage(text, k))
