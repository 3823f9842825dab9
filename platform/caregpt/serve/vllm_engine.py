"""The vLLM engine, for GPU clusters (``engine: vllm``; ``pip install vllm`` on the GPU nodes).

UNTESTED HERE: the machine this project is developed and tested on has no GPU and no vllm, so
this module has never run. It is written against vLLM's documented ``AsyncLLMEngine`` API
(``AsyncEngineArgs``, ``generate(prompt, sampling_params, request_id, lora_request=...)``,
``abort``) and imports vllm only when this engine is chosen, so nothing else depends on it. Check
it on a GPU before relying on it: serve a merged model, stream a chat, serve an adapter by name.

vLLM batches continuously and applies LoRA adapters per request on one copy of the base
(``enable_lora``), so adapters cost no extra model copy, unlike the transformers engine.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

from caregpt.serve.engine import GenerationOutput, GenerationRequest

logger = logging.getLogger("caregpt.serve.vllm_engine")

_lora_ids = itertools.count(1)


class VLLMEngine:
    """An :class:`~caregpt.serve.engine.Engine` over ``vllm.AsyncLLMEngine``."""

    def __init__(self, model_path: str, tokenizer: Any, *, config: Any, template_stops: tuple[str, ...] = (), lora_request: Any = None, engine: Any = None):
        self.tokenizer = tokenizer
        self.template_stops = tuple(template_stops)
        self._lora = lora_request
        self._waiting = 0
        self._running = 0
        if engine is not None:  # a view of a shared engine for one adapter
            self._engine, self.max_model_len = engine, engine_max_len(engine)
            return
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        options = {
            "model": model_path,
            "tokenizer": model_path,
            "trust_remote_code": bool(config.trust_remote_code),
            "max_model_len": config.max_model_len,
            "max_num_seqs": config.max_batch_size,
            "enable_lora": bool(config.adapters_dir),
            "max_loras": config.max_loaded_adapters,
            **dict(config.vllm_options or {}),
        }
        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**{k: v for k, v in options.items() if v is not None}))
        self.max_model_len = engine_max_len(self._engine) or config.max_model_len or 4096
        logger.info("vLLM engine ready for %s (max_model_len %s)", model_path, self.max_model_len)

    def with_adapter(self, name: str, path: str) -> VLLMEngine:
        """The same engine, answering with LoRA adapter `name` (loaded by vLLM on first use)."""
        from vllm.lora.request import LoRARequest

        return VLLMEngine("", self.tokenizer, config=None, template_stops=self.template_stops, lora_request=LoRARequest(name, next(_lora_ids), path), engine=self._engine)

    def _sampling(self, request: GenerationRequest):
        from vllm import SamplingParams as VSamplingParams

        p = request.params
        greedy = p.greedy
        return VSamplingParams(
            n=1,
            temperature=0.0 if greedy else p.temperature,
            top_p=1.0 if greedy else p.top_p,
            seed=p.seed,
            max_tokens=p.max_tokens,
            stop=list(p.stop) + list(self.template_stops),
            ignore_eos=p.ignore_eos,
            skip_special_tokens=True,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        sent = 0
        started = finished = False
        self._waiting += 1
        try:
            stream = self._engine.generate({"prompt_token_ids": list(request.prompt_ids)}, self._sampling(request), request.request_id, lora_request=self._lora)
            async for out in stream:
                if not started:
                    started = True
                    self._waiting, self._running = self._waiting - 1, self._running + 1
                completion = out.outputs[0]
                text = completion.text  # cumulative
                delta, sent = text[sent:], len(text)
                finished = out.finished
                reason = ("length" if completion.finish_reason == "length" else "stop") if finished else None
                if delta or finished:
                    yield GenerationOutput(delta, len(completion.token_ids), reason)
        finally:
            if started:
                self._running -= 1
            else:
                self._waiting -= 1
            if not finished:
                await self._engine.abort(request.request_id)

    def stats(self) -> dict[str, int]:
        return {"waiting": self._waiting, "running": self._running}

    def check_health(self) -> None:
        errored = getattr(self._engine, "errored", False)
        if errored:
            raise RuntimeError("the vLLM engine has stopped with an error")

    def shutdown(self) -> None:
        if self._lora is None:
            shutdown = getattr(self._engine, "shutdown", None)
            if callable(shutdown):
                shutdown()


def engine_max_len(engine: Any) -> int | None:
    for path in (("model_config", "max_model_len"), ("engine", "model_config", "max_model_len")):
        obj = engine
        for attr in path:
            obj = getattr(obj, attr, None)
        if isinstance(obj, int):
            return obj
    return None
