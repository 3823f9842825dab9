"""A token bucket shared by every request of a run.

`TokenBucket` hands out reservations: `reserve()` takes a token (the count may go negative, which queues
the caller) and returns how long the caller must sleep before sending. Sleeping happens at the caller, so the
bucket itself never blocks — as a Ray actor it answers each call in microseconds. `pause(seconds)` empties
the bucket for a while: a 429 with Retry-After slows every worker, not only the one that was told.
"""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """rate tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self) -> float:
        """Take one token; seconds to wait before using it (0 when one was available)."""
        with self._lock:
            self._refill(self._clock())
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def pause(self, seconds: float) -> None:
        """Nobody gets a token for `seconds` (beyond reservations already handed out)."""
        with self._lock:
            self._refill(self._clock())
            self._tokens = min(self._tokens, -seconds * self.rate)


class LocalLimiter:
    """In-process limiter: the bucket and the sleeping in one object (tests, single process use)."""

    def __init__(self, rate: float, burst: float | None = None, sleep=time.sleep):
        self.bucket = TokenBucket(rate, burst)
        self._sleep = sleep

    def acquire(self) -> None:
        wait = self.bucket.reserve()
        if wait > 0:
            self._sleep(wait)

    def pause(self, seconds: float) -> None:
        self.bucket.pause(seconds)


class RayLimiter:
    """The same interface over a TokenBucket actor shared by all request actors."""

    def __init__(self, handle, sleep=time.sleep):
        self.handle = handle
        self._sleep = sleep

    def acquire(self) -> None:
        import ray

        wait = ray.get(self.handle.reserve.remote())
        if wait > 0:
            self._sleep(wait)

    def pause(self, seconds: float) -> None:
        self.handle.pause.remote(seconds)  # fire and forget: the next reserve() sees it


def start_bucket_actor(rate: float, burst: float | None = None):
    """A TokenBucket as a Ray actor (no CPU reserved: it only does arithmetic)."""
    import ray

    return ray.remote(num_cpus=0)(TokenBucket).remote(rate, burst)
