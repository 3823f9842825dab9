"""Talk to any OpenAI-compatible chat API (ours, `transformers serve`, vLLM, a hosted one).

Both chat clients (the terminal REPL and the Gradio page) go through this module, so they show the
same clear messages for the same failures: an API that is down, a refused key, an unknown model.
Every failure becomes a :class:`ChatApiError` whose text is meant for the user; the API key is
never part of it, and neither is the conversation (it may hold patient text).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

#: Sent when no key is configured: the openai client refuses an empty key, and local servers ignore it.
NO_KEY = "EMPTY"
#: Environment variables read for the key, in order, when no --api-key is given.
KEY_ENV_VARS = ("CAREGPT_API_KEY", "OPENAI_API_KEY")


class ChatApiError(Exception):
    """A failure talking to the chat API, with a message fit to show to the user as is."""


@dataclass
class Delta:
    """One piece of a streamed answer: new text and/or the knowledge-base citations."""

    text: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    response_id: str | None = None
    """The completion's id (chatcmpl-...): what POST /v1/feedback rates."""


def resolve_api_key(explicit: str | None) -> str:
    """--api-key, else CAREGPT_API_KEY / OPENAI_API_KEY, else a placeholder local servers accept."""
    if explicit:
        return explicit
    for name in KEY_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return NO_KEY


def normalize_base_url(api_base: str) -> str:
    """`http://host:8000` and `http://host:8000/v1/` both mean the API root `http://host:8000/v1`."""
    base = api_base.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ChatApiError(f"--api-base must be an http(s) URL such as http://127.0.0.1:8000/v1, got {api_base!r}")
    return base if base.endswith("/v1") else base + "/v1"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _status_detail(exc: Any) -> str:
    # The server's own explanation (OpenAI error shape: {"error": {"message": ...}} or FastAPI's {"detail": ...}).
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail"):
                if inner.get(key):
                    return _first_line(str(inner[key]))
        elif isinstance(inner, str):
            return _first_line(inner)
    return _first_line(getattr(exc, "message", "") or str(exc))


def explain(exc: BaseException, base_url: str, model: str | None = None) -> ChatApiError:
    """Turn an openai client exception into a one-line message (no traceback, no key, no prompt)."""
    import openai

    if isinstance(exc, ChatApiError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return ChatApiError(f"The chat API at {base_url} did not answer in time. Is it overloaded or still loading the model?")
    if isinstance(exc, openai.APIConnectionError):
        return ChatApiError(
            f"Cannot reach the chat API at {base_url}: is it running? Start it (e.g. `caregpt serve ...`) "
            f"or pass the right --api-base."
        )
    if isinstance(exc, openai.AuthenticationError):
        return ChatApiError(f"The chat API at {base_url} refused the API key (401). Check --api-key or OPENAI_API_KEY.")
    if isinstance(exc, openai.PermissionDeniedError):
        return ChatApiError(f"The chat API at {base_url} denied access (403): {_status_detail(exc)}")
    if isinstance(exc, openai.NotFoundError):
        what = f"model {model!r} or " if model else ""
        return ChatApiError(f"The chat API at {base_url} has no {what}such endpoint (404): {_status_detail(exc)}")
    if isinstance(exc, openai.RateLimitError):
        return ChatApiError(f"The chat API at {base_url} is busy (429): {_status_detail(exc)}. Try again shortly.")
    if isinstance(exc, openai.APIStatusError):
        return ChatApiError(f"The chat API at {base_url} returned an error ({exc.status_code}): {_status_detail(exc)}")
    if isinstance(exc, openai.APIError):  # e.g. an error event inside the stream
        return ChatApiError(f"The chat API at {base_url} reported an error: {_status_detail(exc)}")
    return ChatApiError(f"Unexpected problem talking to the chat API at {base_url}: {type(exc).__name__}")


class ApiChat:
    """A thin streaming wrapper over the official `openai` client for one base URL and key."""

    def __init__(self, api_base: str, api_key: str | None = None, *, timeout_s: float = 300.0, connect_timeout_s: float = 5.0, max_retries: int = 1):
        import openai

        self.base_url = normalize_base_url(api_base)
        # A short connect timeout makes "API down" show in seconds; the read timeout is long because
        # a CPU replica may take a while before its first token.
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=resolve_api_key(api_key),
            timeout=openai.Timeout(timeout_s, connect=connect_timeout_s),
            max_retries=max_retries,
        )

    def list_models(self) -> list[str]:
        """Model ids from /v1/models (the base model and each served adapter)."""
        try:
            return [m.id for m in self._client.models.list()]
        except Exception as exc:  # noqa: BLE001 - every client failure becomes one user-facing line
            raise explain(exc, self.base_url) from None

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        model: str,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[Delta]:
        """Yield the answer as it arrives; citations (our API's extra field) come with the chunk that has them."""
        params: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        for key, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens)):
            if value is not None:
                params[key] = value
        try:
            stream = self._client.chat.completions.create(**params)
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, self.base_url, model) from None
        try:
            with stream:  # closes the HTTP response if the caller stops early (Stop button, Ctrl-C)
                for chunk in stream:
                    yield _delta(chunk)
        except Exception as exc:  # noqa: BLE001 - a dropped connection or an error event mid-stream
            raise explain(exc, self.base_url, model) from None


    def feedback(self, payload: dict[str, Any]) -> None:
        """POST /v1/feedback (caregpt's fine-tuning service): a rating of one answer, for DPO later."""
        try:
            self._client.post("/feedback", body=payload, cast_to=object)
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, self.base_url) from None


def _delta(chunk: Any) -> Delta:
    extra = getattr(chunk, "model_extra", None) or {}
    citations = extra.get("citations") or []
    text, finish = "", None
    if chunk.choices:
        choice = chunk.choices[0]
        text = (choice.delta.content or "") if choice.delta is not None else ""
        finish = choice.finish_reason
    return Delta(text=text, citations=[c for c in citations if isinstance(c, dict)], finish_reason=finish, response_id=getattr(chunk, "id", None))


def format_citation(citation: dict[str, Any]) -> str:
    """`document, chunk N (score 0.87)` for one {document, chunk, score} entry; missing parts are left out."""
    parts = [str(citation.get("document") or "unknown document")]
    if citation.get("chunk") is not None:
        parts.append(f"chunk {citation['chunk']}")
    text = ", ".join(parts)
    score = citation.get("score")
    if isinstance(score, (int, float)):
        text += f" (score {score:.2f})"
    return text
