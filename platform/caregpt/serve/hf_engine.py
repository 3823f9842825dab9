"""The transformers engine: one loaded model, concurrent requests batched, answers streamed as text.

Batching is continuous: requests join and leave the running batch at every step. Two backends:
``slots`` (:mod:`caregpt.serve.slot_batching`, the default: one KV-cache row per request, attention
per row) and ``paged`` (:mod:`caregpt.serve.hf_continuous`: transformers' paged continuous batching,
used for models slots cannot decode, e.g. sliding-window attention). A static-batch path (Ray Serve's ``@serve.batch``)
existed until issue 16: measured with ``benchmarks/serve_load.py`` on the same model at 32
concurrent 128-token streams it gave 1/2-1/3.5 of the output tokens/s and a median time to first
token of 17-98 s instead of under 1 s, so it was removed.
This module turns token ids into text (:mod:`caregpt.serve.textstream`), applies stop tokens and
stop strings, and keeps the waiting / running counts the queue-length metric reports.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from caregpt.models.inference import default_pad_id, max_positions, stop_token_ids
from caregpt.serve.engine import GenerationOutput, GenerationRequest
from caregpt.serve.sampling import RowSampler
from caregpt.serve.textstream import IncrementalText

logger = logging.getLogger("caregpt.serve.hf_engine")

Batching = Literal["slots", "paged"]
BATCHING_CHOICES: tuple[str, ...] = ("slots", "paged")


class TransformersEngine:
    """An :class:`~caregpt.serve.engine.Engine` over a transformers causal LM already in memory."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        template_stops: tuple[str, ...] = (),
        batching: Batching = "slots",
        max_batch_size: int = 32,
        max_model_len: int | None = None,
        kv_cache_tokens: int | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        positions = max_positions(model) or 2048
        self.max_model_len = min(max_model_len or positions, positions)
        # eos and single-token template stops end a row on the token (the one rule batch generation uses);
        # stops that span several tokens are matched on the text (e.g. "\nHuman:")
        stop_ids, text_stops = stop_token_ids(tokenizer, template_stops, model)
        self.stop_ids, self.text_stops = stop_ids, tuple(text_stops)
        pad = default_pad_id(tokenizer, self.stop_ids)
        if batching not in BATCHING_CHOICES:
            raise ValueError(f"unknown batching {batching!r}; use one of {BATCHING_CHOICES}")
        self._backend: Any = None
        if batching == "slots":
            from caregpt.serve.slot_batching import SlotBackend, SlotsUnsupported

            if kv_cache_tokens is not None:
                raise ValueError("kv_cache_tokens sizes the paged cache (batching: paged); slots keep one row per request, bounded by max_batch_size x max_model_len")
            try:
                self._backend = SlotBackend(model, max_batch_size=max_batch_size, max_model_len=self.max_model_len)
            except SlotsUnsupported as exc:
                logger.warning("slot batching cannot serve this model (%s): using transformers' paged continuous batching", exc)
                batching = "paged"
        if self._backend is None:
            from caregpt.serve.hf_continuous import ContinuousBackend

            self._backend = ContinuousBackend(model, pad_token_id=pad, max_batch_size=max_batch_size, max_model_len=self.max_model_len, kv_cache_tokens=kv_cache_tokens)
        self.batching = batching
        self._waiting = 0
        self._running = 0
        logger.info("transformers engine ready: batching=%s, max_batch_size=%d, max_model_len=%d, stop ids %s", batching, max_batch_size, self.max_model_len, self.stop_ids)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        params = request.params
        eos = [] if params.ignore_eos else self.stop_ids
        text = IncrementalText(self.tokenizer, tuple(params.stop) + self.text_stops)
        tokens = self._backend.stream(request.request_id, request.prompt_ids, RowSampler(params), params.max_tokens, eos)
        count, started = 0, False
        self._waiting += 1
        try:
            async for new_ids, done in tokens:
                if not started:
                    started = True
                    self._waiting -= 1
                    self._running += 1
                count += len(new_ids)
                hit_eos = bool(done and new_ids and new_ids[-1] in eos)
                delta = text.feed(new_ids[:-1] if hit_eos else new_ids)
                if text.stopped:
                    yield GenerationOutput(delta, count, "stop")
                    return
                if done:
                    reason = "stop" if hit_eos or count < params.max_tokens else "length"
                    yield GenerationOutput(delta + text.flush(), count, reason)
                    return
                if delta:
                    yield GenerationOutput(delta, count)
        finally:
            if started:
                self._running -= 1
            else:
                self._waiting -= 1
            await tokens.aclose()  # cancels the request in the backend if it has not finished

    def stats(self) -> dict[str, int]:
        return {"waiting": self._waiting, "running": self._running}

    def check_health(self) -> None:
        if not self._backend.alive():
            raise RuntimeError(f"the {self.batching} generation loop has stopped")

    def shutdown(self) -> None:
        self._backend.shutdown()
