"""The model deployment: engines for the base model and, on demand, for adapters (Serve multiplexing).

The router calls ``generate`` through a deployment handle with ``multiplexed_model_id`` set to
the adapter name ('' for the base model). Ray Serve sends requests for an adapter preferably to
replicas that already hold it; ``@serve.multiplexed`` loads it on first use and unloads the
least recently used one beyond ``max_loaded_adapters``. The adapter name was validated by the
router, and is checked again here against the adapter root before any file is read.

``generate`` streams lists of :class:`~caregpt.serve.events.TokenEvent`. Every message costs two Ray hops (here -> router -> HTTP proxy) and CPU the
model needs too, so the replica keeps to a budget of ``stream_updates_per_s`` messages per
second across all its streams: alone, a stream gets every token as it comes; with 32 streams, each
gets an update every 32 / budget seconds carrying all the tokens made meanwhile. The first token
and the end of an answer are always sent at once (time to first token is never delayed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from caregpt.serve.catalog import Catalog
from caregpt.serve.config import ServeConfig
from caregpt.serve.engine import Engine, EngineError, GenerationRequest, create_engine
from caregpt.serve.events import TokenEvent
from caregpt.serve.sampling import SamplingParams

logger = logging.getLogger("ray.serve").getChild("caregpt.server")

_METRICS_PERIOD_S = 1.0


def _engine_options(config: ServeConfig, template_stops: tuple[str, ...]) -> dict[str, Any]:
    if config.engine == "vllm":
        return {"config": config, "template_stops": template_stops}
    return {
        "template_stops": template_stops,
        "batching": config.batching,
        "max_batch_size": config.max_batch_size,
        "max_model_len": config.max_model_len,
        "kv_cache_tokens": config.kv_cache_tokens,
    }


class _AdapterEngine:
    """An engine for one adapter; Serve's multiplexer calls __del__ when it unloads it (LRU)."""

    def __init__(self, name: str, engine: Engine, loaded: dict[str, Engine]):
        self.name, self.engine, self._loaded = name, engine, loaded
        self._closed = False
        loaded[name] = engine

    def __del__(self):
        # Serve calls this when it evicts the adapter, and Python again when the object is collected.
        if not getattr(self, "_closed", True):
            self._closed = True
            self._loaded.pop(self.name, None)
            self.engine.shutdown()


@serve.deployment(name="LLMServer", health_check_period_s=10, health_check_timeout_s=30)
class LLMServer:
    def __init__(self, config: dict[str, Any]):
        self.config = ServeConfig(**config)
        if self.config.torch_threads:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        from caregpt.data.templates import get_template
        from caregpt.serve.loading import load_base_model, load_tokenizer

        self.catalog = Catalog(self.config)
        self.tokenizer = load_tokenizer(self.config)
        self._get_template = get_template
        if self.config.engine == "vllm":
            self.base_model = None  # vLLM loads the weights itself
            source = self.config.model_name_or_path
        else:
            self.base_model = load_base_model(self.config)
            source = self.base_model
        self.base_engine = create_engine(self.config.engine, source, self.tokenizer, _engine_options(self.config, self._stops(self.catalog.base_template)))
        self._adapter_engines: dict[str, Engine] = {}
        self._streams = 0  # answers being streamed by this replica

        async def load_adapter(name: str) -> _AdapterEngine:
            return await self._load_adapter_engine(name)

        # Decorated per instance: the LRU size comes from the config, and the decorator takes it at
        # decoration time (Serve detects multiplexing set up in __init__).
        self._load_adapter = serve.multiplexed(max_num_models_per_replica=self.config.max_loaded_adapters)(load_adapter)
        from caregpt.serve.observability import ServerMetrics

        self._metrics = ServerMetrics()
        self._metrics_task: asyncio.Task | None = None  # started by the first call, on the replica's event loop
        logger.info("model replica ready: %s (%s engine)", self.catalog.base_name, self.config.engine)

    def _stops(self, template_name: str | None) -> tuple[str, ...]:
        name = template_name or ("auto" if getattr(self.tokenizer, "chat_template", None) else "default")
        return self._get_template(name, self.tokenizer).stop_strings

    async def _load_adapter_engine(self, name: str) -> _AdapterEngine:
        path = self.catalog.adapter_path(name)  # raises on anything that is not a served adapter
        if self.config.engine == "vllm":
            return _AdapterEngine(name, self.base_engine.with_adapter(name, str(path)), self._adapter_engines)  # type: ignore[attr-defined]
        from caregpt.serve.catalog import recorded_template
        from caregpt.serve.loading import adapter_model

        model = await asyncio.to_thread(adapter_model, self.base_model, path)
        template = self.config.template or recorded_template(path) or self.catalog.base_template
        engine = create_engine("transformers", model, self.tokenizer, _engine_options(self.config, self._stops(template)))
        logger.info("loaded adapter %s from %s", name, path)
        return _AdapterEngine(name, engine, self._adapter_engines)

    async def _engine(self, adapter: str | None) -> Engine:
        if self._metrics_task is None:
            self._metrics_task = asyncio.create_task(self._report_metrics())
        if adapter is None:
            adapter = serve.get_multiplexed_model_id()
        if not adapter:
            return self.base_engine
        return (await self._load_adapter(adapter)).engine

    async def generate(self, payload: dict[str, Any]) -> AsyncIterator[list[TokenEvent]]:
        """Stream the answers (n choices) for one prompt as lists of events."""
        # the router names the adapter it validated (it is also the multiplexed id Serve routed by); never an HTTP header
        engine = await self._engine(payload.get("adapter"))
        params = SamplingParams(**payload["params"])
        events: asyncio.Queue = asyncio.Queue()
        n = int(payload.get("n", 1))

        async def run_choice(index: int) -> None:
            request = GenerationRequest(f"{payload['request_id']}-{index}", payload["prompt_ids"], params.for_choice(index))
            try:
                async for out in engine.generate(request):
                    events.put_nowait(TokenEvent(index, out.text, out.num_tokens, out.finish_reason))
            except Exception as exc:  # noqa: BLE001 - raised to the router below, from the stream
                logger.exception("generation failed")
                events.put_nowait(EngineError(f"{type(exc).__name__}: {exc}"))

        tasks = [asyncio.create_task(run_choice(i)) for i in range(n)]
        finished = 0
        last_sent = None
        self._streams += 1
        try:
            while finished < n:
                batch = [await events.get()]
                if last_sent is not None and isinstance(batch[0], TokenEvent) and batch[0].finish is None:
                    # spread this replica's update budget over its streams (see the module docstring)
                    wait = self._streams / self.config.stream_updates_per_s - (time.monotonic() - last_sent)
                    if wait > 0:
                        await asyncio.sleep(wait)
                while not events.empty():
                    batch.append(events.get_nowait())
                for event in batch:
                    if isinstance(event, EngineError):
                        raise event
                    if event.finish is not None:
                        finished += 1
                yield batch
                last_sent = time.monotonic()
        finally:
            self._streams -= 1
            for task in tasks:
                task.cancel()  # a client that went away stops its generation

    async def ready(self) -> dict[str, Any]:
        self.base_engine.check_health()
        return {"model": self.catalog.base_name, "engine": self.config.engine, **self.base_engine.stats()}

    def check_health(self) -> None:
        """Ray Serve calls this periodically; raising replaces the replica."""
        self.base_engine.check_health()

    async def _report_metrics(self) -> None:
        while True:
            await asyncio.sleep(_METRICS_PERIOD_S)
            try:
                stats = [self.base_engine.stats()] + [e.stats() for e in list(self._adapter_engines.values())]
                self._metrics.update(sum(s["waiting"] for s in stats), sum(s["running"] for s in stats), len(self._adapter_engines))
            except Exception:  # noqa: BLE001 - metrics must never take the replica down
                logger.debug("metrics update failed", exc_info=True)

    def __del__(self):
        if getattr(self, "_metrics_task", None) is not None:
            self._metrics_task.cancel()
        engine = getattr(self, "base_engine", None)
        if engine is not None:
            engine.shutdown()
