"""Token backend on Ray Serve's ``@serve.batch``: requests that arrive together decode together.

``@serve.batch`` collects up to ``max_batch_size`` calls that arrive within ``batch_wait_timeout_s``
into one call of a batched async generator, which yields one list (an item per request) per step.
Here a batch is left-padded, prefilled once, then decoded step by step with a shared KV cache;
finished rows are dropped from the cache so later steps get cheaper. A request that arrives
while a batch runs waits for it to finish (up to ``max_concurrent_batches`` batches run at once):
that wait is what continuous batching avoids, and what the benchmark measures.

The model runs on one worker thread per backend, never on the replica's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from caregpt.serve.engine import EngineError
from caregpt.serve.sampling import RowSampler, argmax_tokens

logger = logging.getLogger("caregpt.serve.hf_static")

_DONE = StopIteration  # what a @serve.batch generator yields for a request that has finished


@dataclass
class _Row:
    request_id: str
    prompt_ids: list[int]
    sampler: RowSampler
    max_tokens: int
    eos_ids: frozenset[int]
    generated: int = 0
    done: bool = False


class StaticBatchBackend:
    """Streams token ids for requests batched by ``@serve.batch``."""

    def __init__(self, model: Any, *, pad_token_id: int, max_batch_size: int, batch_wait_timeout_s: float, max_concurrent_batches: int = 1):
        from ray import serve

        self._model = model
        self._pad = pad_token_id
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent_batches, thread_name_prefix="caregpt-batch")
        self._failed: BaseException | None = None

        async def run_batch(rows: list[_Row]) -> AsyncIterator[list[Any]]:
            async for step in self._decode(rows):
                yield step

        # A plain function decorated per instance: the batch queue belongs to this backend, not to a class
        # shared by every engine of the replica (base model and adapters batch separately).
        self._batched = serve.batch(
            max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s, max_concurrent_batches=max_concurrent_batches
        )(run_batch)

    async def stream(self, request_id: str, prompt_ids: list[int], sampler: RowSampler, max_tokens: int, eos_ids: list[int]) -> AsyncIterator[tuple[list[int], bool]]:
        row = _Row(request_id, list(prompt_ids), sampler, max_tokens, frozenset(eos_ids))
        finished = False
        steps = self._batched(row)
        try:
            async for new_ids, finished in steps:
                yield new_ids, finished
                if finished:
                    break
        finally:
            if not finished:
                with self._lock:
                    self._cancelled.add(request_id)  # the decode loop drops the row at its next step
            else:
                # Serve ends a request with one more (StopIteration) item; read it, or asyncio warns about it.
                with contextlib.suppress(StopAsyncIteration, Exception):
                    await steps.__anext__()

    async def _decode(self, rows: list[_Row]) -> AsyncIterator[list[Any]]:
        """Run the batch on the worker thread; relay each step's tokens as @serve.batch expects."""
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue = asyncio.Queue()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(steps.put_nowait, item)

        future = loop.run_in_executor(self._executor, self._run, rows, emit)
        while True:
            item = await steps.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise EngineError(f"batched generation failed: {item}") from item
            yield item
        await future

    def _run(self, rows: list[_Row], emit) -> None:
        try:
            self._run_batch(rows, emit)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
            logger.exception("batched generation failed")
            self._failed = exc
            emit(exc)
        finally:
            emit(None)

    def _run_batch(self, rows: list[_Row], emit) -> None:
        import torch
        from transformers import DynamicCache

        model = self._model
        device = next(model.parameters()).device
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token lands in the last column
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        # transformers 5.2x renamed past_key_values to cache (the old name warns, then goes in 5.40)
        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        live = list(range(len(rows)))  # batch row -> index in `rows`
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_arg: cache})
            while live:
                logits = out.logits[:, -1, :]
                tokens = argmax_tokens(logits, [rows[i].sampler for i in live]).tolist()
                step: list[Any] = [_DONE] * len(rows)
                keep: list[int] = []
                with self._lock:
                    cancelled = {rows[i].request_id for i in live} & self._cancelled
                    self._cancelled -= cancelled
                for b, i in enumerate(live):
                    r = rows[i]
                    if r.request_id in cancelled:
                        r.done = True
                        continue
                    r.generated += 1
                    r.done = tokens[b] in r.eos_ids or r.generated >= r.max_tokens
                    step[i] = ([tokens[b]], r.done)
                    if not r.done:
                        keep.append(b)
                emit(step)
                if not keep:
                    break
                if len(keep) < len(live):  # drop finished rows: later steps only pay for live ones
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask, positions = mask.index_select(0, index), positions.index_select(0, index)
                    tokens = [tokens[b] for b in keep]
                    live = [live[b] for b in keep]
                mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=-1)
                positions = positions[:, -1:] + 1
                next_ids = torch.tensor(tokens, device=device).unsqueeze(-1)
                out = model(input_ids=next_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_arg: cache})

    def alive(self) -> bool:
        return self._failed is None or not isinstance(self._failed, (MemoryError, SystemError))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
