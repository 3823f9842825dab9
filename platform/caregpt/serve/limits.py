"""Per-request limits and the fair share of the engine, checked in the router before any model work.

Three caps answer with a clear 400 naming the field and the server's limit: `n`, the number of
prompts in one completions request, and the total tokens a request may ask the model to generate
(prompts x n x max_tokens). A cheap bound rejects prompts that cannot fit the context before the
template or tokenizer runs: a token never covers more UTF-8 bytes than the longest vocabulary
entry, so text longer than ``max_model_len x that`` is over the limit whatever it tokenizes to.

Two guards keep one client from stalling the others:

- :class:`Admission` counts requests in this router replica and answers 503 + Retry-After at once
  beyond ``max_pending_requests`` (instead of queueing them for seconds before Serve refuses).
- :class:`FairShare` lets a request keep at most ``max_sequences_per_request`` sequences in the
  engine at a time; its other prompts wait for those, so a request for many prompts x n cannot
  fill the batch while a one-line question queues behind all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from caregpt.serve import errors
from caregpt.serve.errors import APIError


def max_token_bytes(tokenizer: Any) -> int:
    """UTF-8 bytes of the longest vocabulary entry as text (an upper bound on what one token covers)."""
    # A vocabulary entry's own spelling is never shorter in UTF-8 than the text it decodes to: byte-level BPE
    # spells each byte as one character, SentencePiece spells a space as the 3-byte '▁', byte fallback as '<0xE4>'.
    return max((len(piece.encode("utf-8", "surrogatepass")) for piece in tokenizer.get_vocab()), default=1)


def check_text_size(size: int, max_model_len: int, token_bytes: int, param: str) -> None:
    """400 when text of `size` UTF-8 bytes cannot fit the context, whatever it tokenizes to."""
    if size > max_model_len * token_bytes:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens; your {param} is {size} bytes, more than any "
            f"{max_model_len}-token text can be. Shorten it.",
            param=param,
            code="context_length_exceeded",
        )


def check_counts(n: int, prompts: int, max_tokens_each: int, *, max_n: int, max_prompts: int, max_total_tokens: int) -> None:
    if n > max_n:
        raise errors.bad_request(f"n must be at most {max_n} on this server (max_n), got {n}.", "n")
    if prompts > max_prompts:
        raise errors.bad_request(f"at most {max_prompts} prompts per request on this server (max_prompts), got {prompts}; send several requests.", "prompt")
    total = n * prompts * max_tokens_each
    if total > max_total_tokens:
        raise errors.bad_request(
            f"This request asks for up to {total} generated tokens ({prompts} prompt(s) x n={n} x max_tokens={max_tokens_each}); "
            f"the server allows {max_total_tokens} per request (max_total_tokens). Lower n, max_tokens or the number of prompts.",
            "max_tokens",
            "too_many_tokens",
        )


class Admission:
    """Requests admitted into one router replica; beyond `limit`, an immediate 503."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    def enter(self) -> None:
        """Count a request in, or raise 503 (pair every successful enter with one leave)."""
        if self.active >= self.limit:
            raise errors.overloaded(1.0, f"The server is handling {self.active} requests (max_pending_requests)")
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


class FairShare:
    """At most `limit` sequences of one request in the engine at once (see the module docstring)."""

    def __init__(self, limit: int, n: int):
        self._slots = asyncio.Semaphore(max(1, limit // max(n, 1)))

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._slots:
            yield
