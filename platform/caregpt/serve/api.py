"""The FastAPI app of a router replica: routes, API keys, body-size limit, CORS, error shapes.

Built per replica (``__serve_build_asgi_app__``) so the settings (CORS origins, limits, keys) come
from the application's config. Routes:

- ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON or SSE with ``stream: true``)
- ``GET /v1/models``, ``GET /v1/models/{model}``
- ``GET /health`` (the router is up) and ``GET /ready`` (a model replica answers); no key needed.
- with ``finetune:`` set, OpenAI's Files and fine-tuning jobs API and ``POST /v1/feedback`` (caregpt/finetune/routes.py).

Every error, including unknown routes and bodies that are too large, has OpenAI's shape.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from caregpt.serve import errors, responses
from caregpt.serve.errors import APIError
from caregpt.serve.observability import AccessRecord, log_access
from caregpt.serve.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, new_id

logger = logging.getLogger("ray.serve").getChild("caregpt.api")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not buffer the stream


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for bodies above `limit` bytes, by Content-Length or while reading (chunked)."""

    def __init__(self, app, limit: int, uploads: tuple[str, int] | None = None):
        self.app, self.limit = app, limit
        self.uploads = uploads  # (path suffix, limit): file uploads may be larger than chat requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit
        if self.uploads and scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith(self.uploads[0]):
            limit = self.uploads[1]
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reject(send, limit)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    async def _reject(self, send, limit: int):
        err = APIError(413, f"The request body is larger than {limit} bytes (max_request_bytes, or finetune.max_file_bytes for uploads); shorten it.", code="request_too_large")
        body = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def build_api(router) -> FastAPI:
    """The ASGI app for one router replica (see module docstring)."""
    config = router.config
    app = FastAPI(title="CareGPT OpenAI-compatible API", version="1", docs_url="/docs", redoc_url=None)
    uploads = ("/v1/files", config.finetune.max_file_bytes + 65536) if config.finetune else None  # + room for the multipart framing
    app.add_middleware(BodyLimit, limit=config.max_request_bytes, uploads=uploads)
    # Bearer keys travel in a header, so browsers need no credentials mode; any listed origin may call.
    app.add_middleware(CORSMiddleware, allow_origins=config.cors_allow_origins, allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"], expose_headers=["Retry-After", "X-Request-Id"])

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), type=kind, code=kind if exc.status_code == 404 else None))

    def authenticate(request: Request) -> str | None:
        if not router.api_keys:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.unauthorized("No API key provided: send the header 'Authorization: Bearer YOUR_KEY'.")
        matched = False
        for key in router.api_keys:  # every key compared, in constant time per key
            matched |= hmac.compare_digest(token.encode(), key.encode())
        if not matched:
            raise errors.unauthorized("Incorrect API key provided.")
        return token

    async def read_json(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            raise errors.bad_request("The request body is empty; send a JSON object.", None, "invalid_json")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise errors.bad_request("The request body is not valid JSON.", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise errors.bad_request("The request body must be a JSON object.", None, "invalid_json")
        return data

    def parse(model_cls, data: dict[str, Any]):
        try:
            return model_cls.model_validate(data)
        except ValidationError as exc:
            raise errors.from_validation_errors(exc.errors()) from None

    def finish(record: AccessRecord) -> None:
        import time

        record.ended = time.perf_counter()
        try:
            router.metrics.observe(record)
        except Exception:  # noqa: BLE001 - metrics never fail a request
            logger.debug("metrics failed", exc_info=True)
        log_access(record)

    def new_record(request: Request, route: str, prefix: str) -> AccessRecord:
        return AccessRecord(request_id=new_id(prefix), route=route, client=request.client.host if request.client else None)

    async def run(request: Request, route: str, prefix: str, handler):
        record = new_record(request, route, prefix)
        streaming = False
        try:
            record.key = authenticate(request)
            response = await handler(await read_json(request), record)
            streaming = isinstance(response, StreamingResponse)
            response.headers["X-Request-Id"] = record.request_id
            return response
        except APIError as exc:
            record.status, record.error_code = exc.status, exc.code
            response = _error_response(exc)
            response.headers["X-Request-Id"] = record.request_id
            return response
        except Exception:
            record.status, record.error_code = 500, "internal_error"
            logger.exception("request %s failed", record.request_id)
            return _error_response(errors.internal())
        finally:
            if not streaming:  # a stream logs when it ends
                finish(record)

    async def chat(data: dict[str, Any], record: AccessRecord):
        body = parse(ChatCompletionRequest, data)
        record.model, record.stream, record.n = body.model, body.stream, body.n
        job = await router.prepare_chat(body, record.request_id)
        record.model, record.prompt_tokens = job.ref.name, len(job.prompt_ids)
        if router.config.log_prompts:
            record.messages = [m.model_dump(mode="json") for m in body.messages]
        if not body.stream:
            return JSONResponse(await responses.chat_completion(router, job, record))
        opened = None if job.canned else await router.open_stream(job)  # errors before the first token are still HTTP errors
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(responses.chat_stream(router, job, opened, record, usage, finish), media_type="text/event-stream", headers=_SSE_HEADERS)

    async def complete(data: dict[str, Any], record: AccessRecord):
        body = parse(CompletionRequest, data)
        record.model, record.stream, record.n = body.model, body.stream, body.n
        if body.stream and len(body.prompts()) > 1:
            raise errors.bad_request("Streaming takes one prompt per request; send a request per prompt.", "prompt")
        jobs = await router.prepare_completion(body, record.request_id)
        record.model, record.prompt_tokens = jobs[0].ref.name, sum(len(j.prompt_ids) for j in jobs)
        if router.config.log_prompts:
            record.messages = body.prompts()
        if not body.stream:
            return JSONResponse(await responses.completion(router, body, jobs, record))
        opened = await router.open_stream(jobs[0])
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(responses.completion_stream(router, body, jobs[0], opened, record, usage, finish), media_type="text/event-stream", headers=_SSE_HEADERS)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, "chat", "chatcmpl", chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, "completions", "cmpl", complete)

    def card(name: str, parent: str | None) -> ModelCard:
        return ModelCard(id=name, created=router.created, parent=parent, max_model_len=router.max_model_len)

    @app.get("/v1/models")
    async def models(request: Request):
        authenticate(request)
        base = router.catalog.base_name
        cards = [card(base, None)] + [card(name, base) for name in router.catalog.adapters()]
        return ModelList(data=cards).model_dump(mode="json")

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request):
        authenticate(request)
        ref = router.catalog.resolve(model)
        return card(ref.name, None if not ref.adapter else router.catalog.base_name).model_dump(mode="json")

    async def triage(data: dict[str, Any], record: AccessRecord):
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise errors.bad_request("'text' must be a non-empty string describing the symptoms.", "text")
        k = data.get("k", 3)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 10:
            raise errors.bad_request("'k' must be an integer from 1 to 10.", "k")
        return JSONResponse(router.triage(text, k))

    @app.post("/v1/triage")
    async def triage_route(request: Request):
        """caregpt extension: department recommendations (导诊) for a symptom description."""
        return await run(request, "triage", "triage", triage)

    from caregpt.finetune.routes import mount as mount_finetune

    mount_finetune(app, router, authenticate)  # Files, fine-tuning jobs, feedback (only with `finetune:` set)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        return {"status": "ready", **(await router.ready())}

    return app
