"""Metrics (Prometheus, through Ray) and structured access logs.

Metrics are ``ray.serve.metrics`` objects: Ray exports them on every node's metrics port with the
deployment, replica and application as tags, so they show on the Ray dashboard and in Grafana
next to Serve's own request metrics. Names start with ``caregpt_``.

The access log is one JSON object per request on the ``ray.serve`` logger (it lands in the
replica's log file, in the format Serve's logging config chooses). It records ids, sizes, status
and timings, never message text: prompts may hold patient data. ``log_prompts: true`` adds the
messages for debugging on data that is allowed to be logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

access_logger = logging.getLogger("ray.serve").getChild("caregpt.access")

_LATENCY_BUCKETS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000]
_RATE_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]


class RouterMetrics:
    """Request-level metrics, recorded where requests enter (the router)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        tags = ("model", "route", "status")
        self.requests = metrics.Counter("caregpt_requests_total", description="API requests, by model, route and HTTP status.", tag_keys=tags)
        self.errors = metrics.Counter("caregpt_request_errors_total", description="API requests answered with an error, by status and error code.", tag_keys=("route", "status", "code"))
        self.ttft = metrics.Histogram("caregpt_time_to_first_token_ms", description="Time from request arrival to the first answer token.", boundaries=_LATENCY_BUCKETS_MS, tag_keys=("model",))
        self.latency = metrics.Histogram("caregpt_request_latency_ms", description="Time from request arrival to the last byte of the answer.", boundaries=_LATENCY_BUCKETS_MS, tag_keys=("model", "route"))
        self.output_tokens = metrics.Counter("caregpt_output_tokens_total", description="Generated tokens.", tag_keys=("model",))
        self.prompt_tokens = metrics.Counter("caregpt_prompt_tokens_total", description="Prompt tokens.", tag_keys=("model",))
        self.tokens_per_s = metrics.Histogram("caregpt_output_tokens_per_second", description="Per request: generated tokens / time from first to last token.", boundaries=_RATE_BUCKETS, tag_keys=("model",))

    def observe(self, record: AccessRecord) -> None:
        # Only names the router resolved to a served model become labels: any other string would let a client
        # mint label values (unbounded /metrics, patient text in Prometheus).
        model = record.model or "unknown"
        self.requests.inc(tags={"model": model, "route": record.route, "status": str(record.status)})
        if record.status >= 400:
            self.errors.inc(tags={"route": record.route, "status": str(record.status), "code": record.error_code or "-"})
            return
        self.latency.observe(record.latency_ms(), tags={"model": model, "route": record.route})
        if record.first_token_at is not None:
            self.ttft.observe((record.first_token_at - record.started) * 1000, tags={"model": model})
        if record.completion_tokens:
            self.output_tokens.inc(record.completion_tokens, tags={"model": model})
            decode_s = (record.ended or time.perf_counter()) - (record.first_token_at or record.started)
            if decode_s > 0 and record.completion_tokens > 1:
                self.tokens_per_s.observe(record.completion_tokens / decode_s, tags={"model": model})
        if record.prompt_tokens:
            self.prompt_tokens.inc(record.prompt_tokens, tags={"model": model})


class ServerMetrics:
    """Engine-level gauges, recorded in each model replica."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.waiting = metrics.Gauge("caregpt_engine_queue_length", description="Requests in a model replica waiting for their first token.", tag_keys=())
        self.running = metrics.Gauge("caregpt_engine_running_requests", description="Requests a model replica is generating.", tag_keys=())
        self.loaded_adapters = metrics.Gauge("caregpt_loaded_adapters", description="Adapters loaded in a model replica.", tag_keys=())

    def update(self, waiting: int, running: int, adapters: int) -> None:
        self.waiting.set(waiting)
        self.running.set(running)
        self.loaded_adapters.set(adapters)


def key_id(key: str | None) -> str | None:
    """A short, non-reversible id of an API key, for logs (the key itself is never logged)."""
    return hashlib.sha256(key.encode()).hexdigest()[:10] if key else None


_LOG_FIELD_CHARS = 64


def _clip(value: str | None) -> str | None:
    """A log field cut to a fixed size, with characters that are not printable escaped."""
    if value is None:
        return None
    text = value[:_LOG_FIELD_CHARS].encode("ascii", "backslashreplace").decode("ascii")
    return text + ("..." if len(value) > _LOG_FIELD_CHARS else "")


@dataclass
class AccessRecord:
    request_id: str
    route: str
    response_id: str = ""
    """The id in the response body (chatcmpl-..., cmpl-...)."""
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    """The served model the request resolved to; None until then (never the client's `model` text)."""
    status: int = 200
    error_code: str | None = None
    stream: bool = False
    n: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    ended: float | None = None
    key: str | None = None
    client: str | None = None
    messages: Any = None  # only kept when log_prompts is on

    def latency_ms(self) -> float:
        return ((self.ended or time.perf_counter()) - self.started) * 1000

    def as_log(self) -> dict[str, Any]:
        entry = {
            "event": "caregpt_access",
            "request_id": _clip(self.request_id),  # Ray Serve's, also the x-request-id response header
            "response_id": self.response_id,  # the id in the response body (chatcmpl-...), ours
            "route": self.route,
            "status": self.status,
            "model": _clip(self.model) or "unknown",
            "stream": self.stream,
            "n": self.n,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": round((self.first_token_at - self.started) * 1000, 1) if self.first_token_at else None,
            "latency_ms": round(self.latency_ms(), 1),
            "key_id": key_id(self.key),
            "client": _clip(self.client),
        }
        if self.error_code:
            entry["error_code"] = _clip(self.error_code)
        if self.messages is not None:
            entry["messages"] = self.messages
        return entry


def log_access(record: AccessRecord) -> None:
    access_logger.info(json.dumps(record.as_log(), ensure_ascii=False))
