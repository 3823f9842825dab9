"""One chat request to the teacher, with our own retry loop.

The official `openai` client is built with max_retries=0: its built-in retries are invisible to us, and we
need every attempt counted (requests, outcomes, tokens), a shared rate limiter consulted before each attempt,
and garbage replies (non-JSON bodies, JSON that is not a chat completion) treated like transient failures.

Retried: 429, 408/409, 5xx, timeouts, connection errors, garbage replies. Not retried: other 4xx (the
request itself is wrong: a bad model name, a bad key). The wait before retry n is exponential with "equal
jitter" (half fixed, half random, so waits always grow), and never shorter than a Retry-After /
retry-after-ms header; a Retry-After above max_retry_after ends the request instead of stalling the run.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}


@dataclass
class CallResult:
    """What one logical call produced: text, or a failure reason; plus every attempt's accounting."""

    text: str | None = None
    finish_reason: str | None = None
    failure: str | None = None  # rate_limited | server_error | timeout | connection_error | bad_response | client_error
    detail: str = ""  # short, never request or reply text: "HTTP 500", "Retry-After 600s > max_retry_after"
    attempts: int = 0
    outcomes: Counter = field(default_factory=Counter)  # per attempt: ok, rate_limited, server_error, ...
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.failure is None


def parse_retry_after(headers) -> float | None:
    """Seconds from retry-after-ms, or retry-after as seconds or an HTTP date; None when absent or unreadable."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Wait before retry number `retry` (1-based): equal jitter over min(cap, base * 2^(retry-1))."""
    ceiling = min(cap, base * (2 ** (retry - 1)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class TeacherClient:
    """Sends chat requests to one OpenAI-compatible endpoint. Thread-safe: one instance per actor, many threads."""

    def __init__(self, base_url: str, api_key: str, model: str, *, timeout: float, max_retries: int,
                 backoff_base: float = 1.0, backoff_max: float = 30.0, max_retry_after: float = 120.0,
                 limiter=None, log_text: bool = False, sleep=time.sleep, seed: int | None = None):
        from openai import OpenAI

        self._client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.limiter = limiter
        self.log_text = log_text
        self._sleep = sleep
        self._rng = random.Random(seed)

    def close(self) -> None:
        self._client.close()

    def _attempt(self, messages: list[dict], temperature: float, max_tokens: int) -> tuple[str, object, float | None]:
        """One HTTP request -> (outcome, response or detail, retry_after)."""
        import openai

        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, timeout=self.timeout
            )
        except openai.APITimeoutError:
            return "timeout", f"no reply within {self.timeout:g}s", None
        except openai.APIConnectionError as exc:
            return "connection_error", type(exc.__cause__ or exc).__name__, None
        except openai.APIStatusError as exc:
            retry_after = parse_retry_after(exc.response.headers)
            status = exc.status_code
            if status == 429:
                return "rate_limited", "HTTP 429", retry_after
            if status >= 500 or status in RETRYABLE_STATUS:
                return "server_error", f"HTTP {status}", retry_after
            return "client_error", f"HTTP {status}", None
        except openai.APIResponseValidationError:
            return "bad_response", "reply failed validation", None
        except ValueError as exc:  # a body that claims to be JSON but is not (json.JSONDecodeError)
            return "bad_response", f"unreadable reply ({type(exc).__name__})", None
        except openai.APIError as exc:  # anything else the client raises about a reply: not worth a crash
            return "bad_response", type(exc).__name__, None
        return "ok", response, None

    @staticmethod
    def _read(response: object) -> tuple[str, str | None, int, int]:
        """(text, finish_reason, prompt_tokens, completion_tokens); ValueError when not a chat completion."""
        choices = getattr(response, "choices", None)
        if isinstance(response, str) or not choices:
            raise ValueError("reply is not a chat completion (no choices)")
        choice = choices[0]
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            raise ValueError("reply has no text content")
        usage = getattr(response, "usage", None)
        prompt = getattr(usage, "prompt_tokens", 0) if usage is not None else 0
        completion = getattr(usage, "completion_tokens", 0) if usage is not None else 0
        return content, getattr(choice, "finish_reason", None), int(prompt or 0), int(completion or 0)

    def chat(self, messages: list[dict], temperature: float, max_tokens: int) -> CallResult:
        result = CallResult()
        retry = 0
        while True:
            if self.limiter is not None:
                self.limiter.acquire()
            result.attempts += 1
            outcome, payload, retry_after = self._attempt(messages, temperature, max_tokens)
            if outcome == "ok":
                try:
                    text, finish, prompt, completion = self._read(payload)
                except (ValueError, TypeError, AttributeError) as exc:
                    outcome, payload = "bad_response", str(exc)
                else:
                    result.outcomes["ok"] += 1
                    result.prompt_tokens += prompt
                    result.completion_tokens += completion
                    result.text, result.finish_reason = text, finish
                    if self.log_text:
                        logger.debug("teacher request %s -> reply %s", messages, text)
                    return result
            result.outcomes[outcome] += 1
            result.detail = str(payload)
            if outcome == "client_error" or retry >= self.max_retries:
                result.failure = outcome
                return result
            if retry_after is not None and retry_after > self.max_retry_after:
                result.failure = outcome
                result.detail = f"{payload}; Retry-After {retry_after:g}s exceeds max_retry_after {self.max_retry_after:g}s"
                return result
            retry += 1
            delay = backoff_delay(retry, self.backoff_base, self.backoff_max, self._rng)
            if retry_after is not None and math.isfinite(retry_after):
                # the server said when: wait at least that long, plus a little jitter so workers do not return in step
                delay = max(delay, retry_after + self._rng.uniform(0, 0.1 * retry_after + 0.01))
                if outcome == "rate_limited" and self.limiter is not None:
                    self.limiter.pause(retry_after)
            logger.debug("attempt %d failed (%s: %s); retrying in %.2fs", result.attempts, outcome, payload, delay)
            self._sleep(delay)
