"""The one small interface every generation engine implements.

An engine takes prompt token ids and sampling settings and streams the answer back as text
deltas. Everything OpenAI-specific (messages, templates, n, usage, SSE) lives above it, in the
router and the LLM server, so swapping transformers for vLLM changes nothing a client sees.

Implementations:
- :mod:`caregpt.serve.hf_engine` — transformers on CPU or a small GPU, batching concurrent
  requests continuously, with caregpt's slot batching or transformers' paged batching.
- :mod:`caregpt.serve.vllm_engine` — vLLM on GPU clusters (optional extra, imported only when chosen).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from caregpt.serve.sampling import SamplingParams

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class GenerationOutput:
    """A step of one answer: the new text, how many tokens the answer has so far, and why it ended (if it did)."""

    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None


class EngineError(RuntimeError):
    """The engine failed on a request (not the client's fault)."""


@runtime_checkable
class Engine(Protocol):
    #: the longest prompt + answer the model takes (tokens)
    max_model_len: int

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Stream one answer. Closing the iterator early cancels the request inside the engine."""
        ...

    def stats(self) -> dict[str, int]:
        """{'waiting': requests without a first token yet, 'running': requests generating}."""
        ...

    def check_health(self) -> None:
        """Raise if the engine can no longer serve (Ray Serve then replaces the replica)."""
        ...

    def shutdown(self) -> None:
        """Stop background work and free memory."""
        ...


def create_engine(kind: str, model: Any, tokenizer: Any, options: dict[str, Any]) -> Engine:
    """An engine of `kind` around an already loaded model (transformers) or a model path (vllm)."""
    if kind == "transformers":
        from caregpt.serve.hf_engine import TransformersEngine

        return TransformersEngine(model, tokenizer, **options)
    if kind == "vllm":
        from caregpt.serve.vllm_engine import VLLMEngine  # imported only when chosen: vllm is an optional extra

        return VLLMEngine(model, tokenizer, **options)
    raise ValueError(f"unknown engine {kind!r}; use transformers or vllm")
