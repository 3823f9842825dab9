"""A small, real OpenAI-compatible HTTP server for client tests (FastAPI + uvicorn in a thread).

It speaks the wire format of `/v1/models` and streaming / non-streaming `/v1/chat/completions`
(server-sent events of `chat.completion.chunk` objects, ended by `data: [DONE]`), with our extra
`citations` field on the final chunk. Answers are built from the request, slowly, word by word, so
a client can be seen streaming, and they reveal what the client sent (turn count, system prompt), so
tests can check multi-turn history without knowing the words in advance. It records every request body.

Used instead of the real Ray Serve API where a test is about a client, not about serving: it starts in
well under a second and streams at a known pace on a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from typing import Any

# Module level, not inside app(): with postponed annotations FastAPI resolves `Request` by name here.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

CITATIONS = [
    {"document": "fever_guide.md", "chunk": 3, "score": 0.91},
    {"document": "pediatrics_handbook.pdf", "chunk": 12, "score": 0.77},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandinAPI:
    """Start with `start()` (returns the base URL ending in /v1), stop with `stop()`."""

    def __init__(self, *, models: tuple[str, ...] = ("caregpt-tiny", "caregpt-tiny-sft"), api_key: str | None = None,
                 delay_s: float = 0.08, words: int = 24, port: int | None = None):
        self.models, self.api_key, self.delay_s, self.words = models, api_key, delay_s, words
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []  # every chat request body, in order
        self.sent: list[str] = []  # every full answer text, in order
        self.answers = 0
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- answers ---------------------------------------------------------------------------
    def _answer_words(self, body: dict[str, Any]) -> list[str]:
        self.answers += 1
        messages = body.get("messages") or []
        turns = sum(1 for m in messages if m.get("role") == "user")
        system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
        question = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        head = [f"Answer#{self.answers}", f"turn={turns}", f"system={'yes' if system else 'no'}", "about", f"«{str(question)[:40]}»:"]
        filler = "rest drink fluids check the temperature twice a day and see a doctor if it lasts".split()
        tail = [filler[i % len(filler)] for i in range(max(self.words - len(head), 1))]
        return head + tail

    def _chunk(self, cid: str, model: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        data = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    # ---- app -------------------------------------------------------------------------------
    def app(self):
        app = FastAPI()

        def refused(request: Request):
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "invalid API key", "type": "invalid_request_error", "code": "invalid_api_key"}}, status_code=401)
            return None

        @app.get("/v1/models")
        async def models(request: Request):
            if (bad := refused(request)) is not None:
                return bad
            return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "caregpt"} for m in self.models]}

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            if (bad := refused(request)) is not None:
                return bad
            body = await request.json()
            self.requests.append(body)
            model = body.get("model")
            if model not in self.models:
                return JSONResponse({"error": {"message": f"model {model!r} not found", "type": "invalid_request_error"}}, status_code=404)
            words = self._answer_words(body)
            self.sent.append(" ".join(words))
            cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
            if not body.get("stream"):
                return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}],
                        "citations": CITATIONS}

            async def events():
                yield self._chunk(cid, model, {"role": "assistant", "content": ""}, None)
                for i, word in enumerate(words):
                    await asyncio.sleep(self.delay_s)
                    yield self._chunk(cid, model, {"content": (" " if i else "") + word}, None)
                yield self._chunk(cid, model, {}, "stop", citations=CITATIONS)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        return app

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, timeout_s: float = 20.0) -> str:
        import uvicorn

        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="openai-standin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the stand-in API did not start on port {self.port}")
            time.sleep(0.05)
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
