"""The FastAPI app of a router replica: middleware, error shapes and routes, assembled from small parts.

Built per replica (``__serve_build_asgi_app__``) so the settings (CORS origins, limits, keys) come
from the application's config. Routes:

- ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON or SSE with ``stream: true``)
- ``POST /v1/triage`` (caregpt extension: departments for a symptom description)
- ``GET /v1/models``, ``GET /v1/models/{model}``
- ``GET /health`` (the router is up) and ``GET /ready`` (a model replica answers); no key needed.
- with ``finetune:`` set, OpenAI's Files and fine-tuning jobs API and ``POST /v1/feedback`` (caregpt/finetune/routes.py).

Every error, including unknown routes, failed auth and bodies that are too large, has OpenAI's
shape. What the routes do is in :mod:`caregpt.serve.handlers`; keys are :mod:`caregpt.serve.auth`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from caregpt.serve import handlers
from caregpt.serve.auth import require_key
from caregpt.serve.errors import APIError
from caregpt.serve.http_guards import BodyLimit
from caregpt.serve.protocol import ModelCard, ModelList


def _install_middleware(app: FastAPI, config: Any) -> None:
    uploads = ("/v1/files", config.finetune.max_file_bytes + 65536) if config.finetune else None  # + room for the multipart framing
    app.add_middleware(BodyLimit, limit=config.max_request_bytes, uploads=uploads)
    # Bearer keys travel in a header, so browsers need no credentials mode; any listed origin may call.
    app.add_middleware(CORSMiddleware, allow_origins=config.cors_allow_origins, allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"], expose_headers=["Retry-After", "X-Request-Id"])


def _install_error_handlers(app: FastAPI, router: Any) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        route = getattr(request.scope.get("route"), "name", None) or "unknown"
        record = handlers.new_record(request, route)  # e.g. a 401 from the key dependency: logged and counted too
        record.status, record.error_code = exc.status, exc.code
        handlers.finish(router, record)
        return handlers.error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return handlers.error_response(APIError(exc.status_code, str(exc.detail), type=kind, code=kind if exc.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        from caregpt.serve.errors import from_validation_errors

        return handlers.error_response(from_validation_errors(list(exc.errors())))


def _add_generation_routes(app: FastAPI, router: Any, key: Any) -> None:
    @app.post("/v1/chat/completions", name="chat")
    async def chat_completions(request: Request, api_key: str | None = key):
        record = handlers.new_record(request, "chat", "chatcmpl")
        record.key = api_key
        return await handlers.handle(router, request, record, handlers.chat)

    @app.post("/v1/completions", name="completions")
    async def completions(request: Request, api_key: str | None = key):
        record = handlers.new_record(request, "completions", "cmpl")
        record.key = api_key
        return await handlers.handle(router, request, record, handlers.complete)

    @app.post("/v1/triage", name="triage")
    async def triage(request: Request, api_key: str | None = key):
        """caregpt extension: department recommendations (导诊) for a symptom description."""
        record = handlers.new_record(request, "triage", "triage")
        record.key = api_key
        return await handlers.handle(router, request, record, handlers.triage)


def _add_model_routes(app: FastAPI, router: Any, key: Any) -> None:
    def card(name: str, parent: str | None) -> ModelCard:
        return ModelCard(id=name, created=router.created, parent=parent, max_model_len=router.max_model_len)

    @app.get("/v1/models", name="models", dependencies=[key])
    async def models():
        base = router.catalog.base_name
        return ModelList(data=[card(base, None)] + [card(name, base) for name in router.catalog.adapters()]).model_dump(mode="json")

    @app.get("/v1/models/{model:path}", name="model", dependencies=[key])
    async def model(model: str):
        ref = router.catalog.resolve(model)
        return card(ref.name, None if not ref.adapter else router.catalog.base_name).model_dump(mode="json")


def _add_ops_routes(app: FastAPI, router: Any) -> None:
    @app.get("/health", name="health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", name="ready")
    async def ready():
        return {"status": "ready", **(await router.ready())}


def build_api(router: Any) -> FastAPI:
    """The ASGI app for one router replica (see module docstring)."""
    app = FastAPI(title="CareGPT OpenAI-compatible API", version="1", docs_url="/docs", redoc_url=None)
    _install_middleware(app, router.config)
    _install_error_handlers(app, router)
    key = Depends(require_key(router.api_keys))
    _add_generation_routes(app, router, key)
    _add_model_routes(app, router, key)
    from caregpt.finetune.routes import mount as mount_finetune

    mount_finetune(app, router, require_key(router.api_keys))  # Files, fine-tuning jobs, feedback (only with `finetune:` set)
    _add_ops_routes(app, router)
    return app
