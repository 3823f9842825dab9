"""Who may see a fine-tuned model: the API key that created the job, and nobody else.

A published adapter folder holds ``caregpt_owner.json`` with the owner's key hash (state.owner_of). The
serving catalog asks :func:`visible` before it lists or resolves an adapter; the owner of the request in
progress comes from :data:`CURRENT_OWNER`, set per request by :class:`OwnerMiddleware` from the bearer key.
Adapters an operator put in the adapter root by hand have no owner file and stay visible to every key.
"""

from __future__ import annotations

import contextvars
import json
from pathlib import Path

from caregpt.finetune.state import owner_of

OWNER_FILE = "caregpt_owner.json"
CURRENT_OWNER: contextvars.ContextVar[str | None] = contextvars.ContextVar("caregpt_finetune_owner", default=None)


def bearer_key(headers: dict[bytes, bytes] | None = None, authorization: str | None = None) -> str | None:
    value = authorization if authorization is not None else (headers or {}).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def write_owner(adapter_dir: Path, owner: str, job_id: str) -> None:
    (adapter_dir / OWNER_FILE).write_text(json.dumps({"owner": owner, "job": job_id}), encoding="utf-8")


def owner_of_adapter(adapter_dir: Path) -> str | None:
    path = adapter_dir / OWNER_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["owner"])
    except (ValueError, KeyError, OSError):
        return ""  # unreadable: owned by nobody who can prove it, so hidden from everyone


def visible(adapter_dir: Path) -> bool:
    """May the current request see this adapter? (Outside a request, owned adapters are hidden.)"""
    owner = owner_of_adapter(adapter_dir)
    return owner is None or owner == CURRENT_OWNER.get()


class OwnerMiddleware:
    """ASGI middleware: the request's owner (hash of its bearer key) into CURRENT_OWNER while it is handled.

    Whether the key is valid is the API's business (it answers 401 before anything is listed); this only says
    whose adapters a request may see, and a wrong key owns nothing.
    """

    def __init__(self, app, keys_configured: bool):
        self.app, self.keys_configured = app, keys_configured

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        key = bearer_key(dict(scope.get("headers") or []))
        token = CURRENT_OWNER.set(owner_of(key if self.keys_configured else None))
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_OWNER.reset(token)
