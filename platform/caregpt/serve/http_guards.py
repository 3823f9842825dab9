"""Guards on the HTTP request before any handler runs: body size (also for chunked bodies), JSON parsing, request ids.

The router reads every body through :class:`BodyLimit`, so a body over ``max_request_bytes`` is a
413 whether the client declared its length or streamed it in chunks. JSON that is nested too deeply
for the parser, or is not an object, is a 400. The request id in logs is the one Ray Serve's proxy
puts on the response (``x-request-id``), accepted only in a safe shape: a client may send its own
id, and client text never reaches a log unchecked.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from caregpt.serve import errors
from caregpt.serve.errors import APIError
from caregpt.serve.protocol import new_id

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class BodyTooLarge(APIError):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than {limit} bytes (max_request_bytes); shorten the messages.", code="request_too_large")


class BodyLimit:
    """ASGI middleware: 413 for bodies above `limit` bytes, by Content-Length or while reading (chunked)."""

    def __init__(self, app, limit: int, uploads: tuple[str, int] | None = None):
        self.app, self.limit = app, limit
        self.uploads = uploads  # (path suffix, limit): fine-tuning file uploads may be larger than chat requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit
        if self.uploads and scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith(self.uploads[0]):
            limit = self.uploads[1]
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_error(send, BodyTooLarge(limit))
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)  # handlers reading the body answer it as any APIError
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # raised outside a handler (e.g. by a dependency)
            if not started:
                await _send_error(send, exc)


async def _send_error(send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 (413 through BodyLimit) saying what is wrong with it."""
    raw = await request.body()
    if not raw.strip():
        raise errors.bad_request("The request body is empty; send a JSON object.", None, "invalid_json")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise errors.bad_request("The request body is nested too deeply.", None, "invalid_json") from None
    except (ValueError, UnicodeDecodeError):
        raise errors.bad_request("The request body is not valid JSON.", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise errors.bad_request("The request body must be a JSON object.", None, "invalid_json")
    return data


def request_id(request: Request) -> str:
    """Ray Serve's id for this request (it sends it back as x-request-id) when safe to log, else a new one."""
    given = request.headers.get("x-request-id", "")
    return given if _SAFE_ID.fullmatch(given) else new_id("req")
