"""Token backend on transformers' continuous batching (``model.init_continuous_batching()``).

transformers runs one background thread that keeps a paged KV cache and, at every step, admits
waiting requests into the running batch and retires finished ones: a new request starts within
one step instead of waiting for a whole batch to finish. We add per-request sampling with a seed
(:mod:`caregpt.serve.sampling`) as a continuous-batching logits processor: the manager decodes
greedily (argmax) and our processor perturbs each row's scores for the rows that sample.

Written against transformers 5.2x's ``ContinuousBatchingManager`` (``add_request``,
``register_result_handler``, ``cancel_request``) and its ``ContinuousBatchingLogitsProcessor``
extension point; the manager's internals moved between releases, so the few internal touches
are kept in :func:`_install_sampler`, :func:`_keep_torch_threads` and :meth:`ContinuousBackend._forget`.

This is the ``batching: paged`` backend; the default is :mod:`caregpt.serve.slot_batching`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from caregpt.serve.engine import EngineError
from caregpt.serve.sampling import RowSampler, perturb_scores

logger = logging.getLogger("caregpt.serve.hf_continuous")

_SAMPLER_KWARG = "caregpt_sampler"
_PAGE_SIZE = 256  # tokens per cache page (transformers' default)


def _sampler_processor_class():
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    class SeededSampler(ContinuousBatchingLogitsProcessor):
        """Per-row temperature / top_p / seed for a batch decoded with argmax (see caregpt.serve.sampling)."""

        supported_kwargs = {_SAMPLER_KWARG: RowSampler}
        ignored_kwargs = ()

        def __init__(self) -> None:
            self._rows: list[RowSampler | None] = []

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            # Called on the generation thread right before the forward pass whose rows these are, in row order.
            self._rows = [r.state.logit_processor_kwargs.get(_SAMPLER_KWARG) for r in requests_with_new_token]
            return torch.zeros(len(self._rows), dtype=torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            rows = self._rows[: scores.shape[0]]
            rows += [None] * (scores.shape[0] - len(rows))
            return perturb_scores(scores, rows)

    return SeededSampler


def _install_sampler(manager: Any) -> None:
    from transformers import LogitsProcessorList
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessorList

    processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList([_sampler_processor_class()()]), per_request_processors=False)
    processors.tensors_required = 1  # one int32 slot per row (unused: the rows travel as Python objects)
    manager.logit_processor = processors


def _keep_torch_threads(manager: Any) -> None:
    """Run the manager's generation thread with this thread's torch thread count.

    OpenMP thread counts are per thread: a new thread falls back to OMP_NUM_THREADS (Ray sets it to
    the replica's num_cpus, often 1) instead of what the replica set with torch.set_num_threads().
    """
    import torch

    threads, loop = torch.get_num_threads(), manager._run_generation_loop

    def run_generation_loop(*args: Any, **kwargs: Any) -> Any:
        torch.set_num_threads(threads)
        return loop(*args, **kwargs)

    manager._run_generation_loop = run_generation_loop  # start() makes it the thread's target


class ContinuousBackend:
    """Streams token ids for many concurrent requests through one continuous-batching manager."""

    def __init__(self, model: Any, *, pad_token_id: int, max_batch_size: int, max_model_len: int, kv_cache_tokens: int | None = None, max_batch_tokens: int | None = None):
        from transformers import ContinuousBatchingConfig, GenerationConfig

        generation_config = GenerationConfig(do_sample=False, max_new_tokens=256, eos_token_id=-1, pad_token_id=pad_token_id)
        on_cpu = model.device.type == "cpu"
        if on_cpu:
            # transformers sizes the KV cache from free device memory; on CPU that is 60% of the machine's RAM,
            # shared with every other replica. Size it from the workload instead.
            kv_cache_tokens = kv_cache_tokens or max(max_model_len, max_batch_size * 512)
            max_batch_tokens = max_batch_tokens or 1024
        cb_config = ContinuousBatchingConfig(
            max_requests_per_batch=max_batch_size,
            max_batch_tokens=max_batch_tokens,
            num_blocks=-(-kv_cache_tokens // _PAGE_SIZE) if kv_cache_tokens else None,
            page_size=_PAGE_SIZE,
            auto_switch_to_flash=not on_cpu,  # on GPU transformers prefers FlashAttention when it is installed
        )
        self._manager = model.init_continuous_batching(generation_config=generation_config, continuous_batching_config=cb_config)
        _install_sampler(self._manager)
        _keep_torch_threads(self._manager)
        self._manager.start()

    async def stream(self, request_id: str, prompt_ids: list[int], sampler: RowSampler, max_tokens: int, eos_ids: list[int]) -> AsyncIterator[tuple[list[int], bool]]:
        """(new token ids, finished) as the manager produces them; closing early cancels the request."""
        outputs: asyncio.Queue = asyncio.Queue()
        manager = self._manager
        manager.register_result_handler(request_id, outputs.put_nowait)  # before add_request: no output is missed
        added = manager.add_request(
            list(prompt_ids),
            request_id=request_id,
            max_new_tokens=max_tokens,
            streaming=True,
            eos_token_id=list(eos_ids) if eos_ids else -1,
            **{_SAMPLER_KWARG: sampler},
        )
        if added is None:
            self._forget(request_id)
            raise EngineError("the continuous batching manager is not accepting requests (it is stopping or has failed)")
        seen, finished = 0, False
        try:
            while not finished:
                out = await outputs.get()
                while not outputs.empty():  # the consumer fell behind: hand over everything at once
                    out = outputs.get_nowait()
                if out.error:
                    raise EngineError(f"generation failed: {out.error}")
                tokens = out.generated_tokens
                finished = out.is_finished()
                new, seen = list(tokens[seen:]), len(tokens)
                yield new, finished
        finally:
            if not finished:
                manager.cancel_request(request_id)
                self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        # A cancelled request gets no final output, so its handler would never be removed.
        router = getattr(self._manager, "output_router", None)
        if router is not None:
            with router._lock:
                router.result_handlers.pop(request_id, None)

    def alive(self) -> bool:
        return self._manager.is_running() and self._manager.background_thread_status.fatal_error is None

    def shutdown(self) -> None:
        try:
            self._manager.stop(block=True, timeout=10)
        except Exception:  # noqa: BLE001 - best effort at exit
            logger.debug("stopping the continuous batching manager failed", exc_info=True)
