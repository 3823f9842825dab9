"""OpenAI's Files and fine-tuning jobs API, and POST /v1/feedback, on the chat app.

Mounted by the API (serve/api.py) with :func:`mount` when the serve settings have a `finetune:` block. Every
object belongs to the API key that made it (state.owner_of): another key gets 404 for its ids, and its lists
do not show it. Errors use the app's OpenAI error shape (APIError).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from caregpt.finetune import hyperparams
from caregpt.finetune.feedback import FeedbackError, deidentify_feedback, parse_feedback
from caregpt.finetune.service import FinetuneService, serving_of
from caregpt.finetune.state import ACTIVE, new_id, now, owner_of
from caregpt.finetune.tenancy import OwnerMiddleware
from caregpt.finetune.validation import check_file
from caregpt.serve.errors import APIError, bad_request

UPLOAD_PATH_SUFFIX = "/v1/files"
MAX_LIST = 100


def not_found(what: str, object_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such {what}: {object_id[:80]!r}.", param=param, code="not_found", type="invalid_request_error")


def _limit(request: Request, default: int = 20) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise bad_request(f"limit must be an integer from 1 to {MAX_LIST}.", "limit")
    return int(raw)


def _page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    shown = items[:limit]
    return {"object": "list", "data": shown, "has_more": len(items) > limit,
            "first_id": shown[0]["id"] if shown else None, "last_id": shown[-1]["id"] if shown else None}


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"], "filename": row["filename"],
            "purpose": row["purpose"], "status": "processed", "status_details": None, "expires_at": None}


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    method = job["method"]
    hp = method[method["type"]]["hyperparameters"]
    return {"id": job["id"], "object": "fine_tuning.job", "created_at": job["created_at"], "model": job["model"],
            "organization_id": "org-" + job["owner"][:24], "training_file": job["training_file"], "validation_file": job["validation_file"],
            "status": job["status"], "fine_tuned_model": job["fine_tuned_model"], "finished_at": job["finished_at"], "error": job["error"],
            "hyperparameters": {k: hp[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}, "method": method,
            "seed": job["seed"], "trained_tokens": job["trained_tokens"], "result_files": [], "estimated_finish": None,
            "integrations": [], "metadata": None, "user_provided_suffix": job["suffix"]}


def mount(app: FastAPI, router: Any, authenticate: Callable[[Request], str | None]) -> FinetuneService | None:
    """Add the routes (and the per-request owner used by the model catalog) when fine-tuning is configured."""
    settings = router.config.finetune
    if settings is None:
        return None
    service = FinetuneService(settings, serving_of(router))
    service.start()
    app.add_middleware(OwnerMiddleware, keys_configured=bool(router.api_keys))
    api = APIRouter()
    state, storage = service.state, service.storage

    def owner(request: Request) -> str:
        return owner_of(authenticate(request))

    def owned(lookup: Callable[[str, str], dict[str, Any] | None], what: str, param: str) -> Callable[[Request, str], dict[str, Any]]:
        """The caller's object by id; another key's object, like a missing one, is a 404 (ids never leak across keys)."""

        def get(request: Request, object_id: str) -> dict[str, Any]:
            row = lookup(owner(request), object_id)
            if row is None:
                raise not_found(what, object_id, param)
            return row

        return get

    own_file = owned(state.file, "file", "file_id")
    own_job = owned(state.job, "fine-tuning job", "fine_tuning_job_id")

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise bad_request("The request body is not valid JSON.", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise bad_request("The request body must be a JSON object.", None, "invalid_json")
        return data

    # ---- files -----------------------------------------------------------------------------------
    @api.post("/v1/files")
    async def create_file(request: Request):
        who = owner(request)
        form = await request.form(max_files=1, max_fields=4)
        try:
            purpose, upload = form.get("purpose"), form.get("file")
            if purpose != "fine-tune":
                raise bad_request("purpose must be 'fine-tune' (the only purpose this server stores files for).", "purpose")
            if upload is None or isinstance(upload, str):
                raise bad_request("Send the file as the multipart field 'file'.", "file", "missing_required_parameter")
            data = await upload.read(settings.max_file_bytes + 1)
            filename = (upload.filename or "upload.jsonl").replace("/", "_")[:255]
        finally:
            await form.close()
        if len(data) > settings.max_file_bytes:
            raise APIError(413, f"The file is larger than {settings.max_file_bytes} bytes (finetune.max_file_bytes); split it.", param="file", code="file_too_large")
        if state.count_files(who) >= settings.max_files_per_key:
            raise APIError(429, f"This key already stores {settings.max_files_per_key} files; delete some first.", code="too_many_files", type="rate_limit_error")
        report, stored = await asyncio.to_thread(check_file, data, deidentify=settings.deidentify)
        if not report.ok:
            line = report.first_line()
            raise APIError(400, f"Invalid file {filename!r}: {report.message()}", param="file", code="invalid_file_format" if line else "invalid_file")
        file_id = new_id("file")
        await asyncio.to_thread(storage.write_bytes, f"files/{file_id}.jsonl", stored)
        row = state.add_file({"id": file_id, "owner": who, "filename": filename, "bytes": len(stored), "created_at": now(),
                              "purpose": purpose, "kind": report.kind, "examples": report.examples, "masked": sum(report.masked.values())})
        return file_object(row)

    @api.get("/v1/files")
    async def list_files(request: Request):
        limit = _limit(request, 100)
        rows = state.files(owner(request), limit + 1, request.query_params.get("after"), request.query_params.get("purpose"))
        return _page([file_object(r) for r in rows], limit)

    @api.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str, request: Request):
        return file_object(own_file(request, file_id))

    @api.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request):
        row = own_file(request, file_id)
        data = await asyncio.to_thread(storage.read_bytes, f"files/{row['id']}.jsonl")
        return Response(data, media_type="application/jsonl")

    @api.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request):
        row = own_file(request, file_id)
        state.delete_file(row["owner"], row["id"])
        await asyncio.to_thread(storage.delete, f"files/{row['id']}.jsonl")
        return {"id": row["id"], "object": "file", "deleted": True}

    # ---- fine-tuning jobs -------------------------------------------------------------------------
    @api.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request):
        who = owner(request)
        body = await json_body(request)
        model = body.get("model")
        if model != service.serving.base_name:
            raise APIError(400, f"Model {str(model)[:80]!r} cannot be fine-tuned here: this app trains LoRA adapters on the model it serves, "
                                f"{service.serving.base_name!r}.", param="model", code="model_not_available")
        training = body.get("training_file")
        if not isinstance(training, str) or state.file(who, training) is None:
            raise APIError(400, f"training_file {str(training)[:80]!r} does not exist (upload it with POST /v1/files first).", param="training_file", code="invalid_training_file")
        try:
            plan = hyperparams.plan_job(body, settings)
        except hyperparams.RequestError as exc:
            raise APIError(400, str(exc), param=exc.param, code=exc.code) from None
        if state.count_active(who) >= settings.max_active_jobs_per_key:
            raise APIError(429, f"This key already has {settings.max_active_jobs_per_key} jobs waiting or running; wait for one to finish.",
                           code="too_many_jobs", type="rate_limit_error")
        job = state.add_job({"id": new_id("ftjob"), "owner": who, "created_at": now(), "model": model, "training_file": training,
                             "validation_file": None, "suffix": plan.suffix, "seed": plan.seed, "method": plan.method, "status": "validating_files"})
        state.add_event(job["id"], "created", f"Created fine-tuning job: {job['id']}")
        service.wake()
        return job_object(job)

    @api.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request):
        limit = _limit(request)
        rows = state.jobs(owner(request), limit + 1, request.query_params.get("after"))
        return _page([job_object(j) for j in rows], limit)

    @api.get("/v1/fine_tuning/jobs/{job_id}")
    async def retrieve_job(job_id: str, request: Request):
        return job_object(own_job(request, job_id))

    @api.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, request: Request):
        job = own_job(request, job_id)
        if job["status"] not in ACTIVE:
            raise APIError(400, f"Job {job_id} is {job['status']}; only a job that is validating, queued or running can be cancelled.", code="job_not_cancellable")
        if state.update_job(job["id"], expect=ACTIVE, status="cancelled", cancel_requested=1):
            state.add_event(job["id"], "status-cancelled", "Fine-tuning job cancelled")
            await asyncio.to_thread(service.runner.stop, state.job(None, job["id"]))
        return job_object(own_job(request, job_id))

    @api.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request):
        job = own_job(request, job_id)
        limit = _limit(request)
        rows = state.events(job["id"], limit + 1, request.query_params.get("after"))
        events = [{"id": e["id"], "object": "fine_tuning.job.event", "created_at": e["created_at"], "level": e["level"],
                   "message": e["message"], "type": e["type"], "data": e["data"]} for e in rows]
        return _page(events, limit)

    @api.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def job_checkpoints(job_id: str, request: Request):
        job = own_job(request, job_id)
        limit = _limit(request, 10)
        rows = state.checkpoints(job["id"], limit + 1, request.query_params.get("after"))
        items = [{"id": c["id"], "object": "fine_tuning.job.checkpoint", "created_at": c["created_at"], "fine_tuning_job_id": job["id"],
                  "fine_tuned_model_checkpoint": c["model"], "step_number": c["step"], "metrics": c["metrics"]} for c in rows]
        return _page(items, limit)

    # ---- feedback --------------------------------------------------------------------------------
    @api.post("/v1/feedback")
    async def feedback(request: Request):
        who = owner(request)
        try:
            row = parse_feedback(await json_body(request))
        except FeedbackError as exc:
            raise bad_request(str(exc), exc.param) from None
        if state.count_feedback(who) >= settings.max_feedback_per_key:
            raise APIError(429, f"This key already stored {settings.max_feedback_per_key} ratings (finetune.max_feedback_per_key).",
                           code="too_much_feedback", type="rate_limit_error")
        if settings.deidentify:
            row = await asyncio.to_thread(deidentify_feedback, row)
        stored = state.add_feedback({**row, "id": new_id("feedback"), "owner": who, "created_at": now()})
        return {"id": stored["id"], "object": "feedback", "response_id": stored["response_id"], "rating": stored["rating"], "created_at": stored["created_at"]}

    app.include_router(api)
    return service
