"""Chat with a model loaded in this process (the seed's `cli_demo.py --model_name_or_path ... --checkpoint_dir ...`).

The model is loaded by the one inference loader (:mod:`caregpt.models.inference`: base, adapters,
k-bit, the template recorded with the checkpoint) and answers through the serving engine itself
(:class:`caregpt.serve.hf_engine.TransformersEngine`, continuous batching), run on a private event
loop thread: the same token loop, sampling, incremental decoding and stop-string handling as
`caregpt serve`, so a local answer and a served one cannot drift apart. The prompt is rendered
with the template code training used (``encode_prompt``). Closing the stream (Ctrl-C, the Stop
button) cancels the request inside the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caregpt.chat.api import ChatApiError, Delta
from caregpt.config.loader import load_config

logger = logging.getLogger("caregpt.chat.local")

_POLL_S = 0.1  # how often the consumer wakes to notice Ctrl-C while waiting for tokens
_MAX_STREAMS = 4  # one conversation at a time; a few slots for a web UI's overlapping requests


class _LoopThread:
    """An asyncio loop on a daemon thread: the engine is async, the chat REPL is not."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="caregpt-chat-engine", daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class LocalChat:
    """Load base model (+ adapters) and tokenizer once; stream answers for a message list."""

    def __init__(self, model_name_or_path: str, *, checkpoint_dir: list[str] | None = None, template: str | None = None,
                 extra: dict[str, Any] | None = None, seed: int | None = None):
        from caregpt.models.inference import InferenceSpec, load_for_inference
        from caregpt.models.loader import validate_model
        from caregpt.serve.hf_engine import TransformersEngine

        adapters = list(checkpoint_dir or [])
        overrides = dict(extra or {})
        overrides.update(model_name_or_path=model_name_or_path, checkpoint_dir=adapters or None)
        # Only the model settings matter here. finetuning_type decides which checks validate_model runs:
        # `full` skips the training-only ones; a quantised base is only valid with lora (QLoRA).
        overrides["finetuning_type"] = "lora" if overrides.get("quantization_bit") else "full"
        overrides.setdefault("lora_target", "all")
        overrides["cutoff_len"] = 8  # a training length limit; chat fits the prompt to the model itself
        overrides["template"] = template or "default"  # validated here; None lets the loader resolve it
        config = load_config(None, overrides)  # unknown / invalid --key value flags fail here, named
        validate_model(config)  # wrong paths / not an adapter dir: one clear ConfigError, before loading weights
        # --template, else the one recorded with the checkpoint, else the tokenizer's own, else `default`
        loaded = load_for_inference(InferenceSpec.from_run_config(config, template=template or None))
        self.model_name = Path(model_name_or_path).name or model_name_or_path
        self.tokenizer, self.template, self.model = loaded.tokenizer, loaded.template, loaded.model
        self.max_positions = loaded.max_positions
        self._seeds = itertools.count(seed) if seed is not None else None  # reproducible, yet each answer differs
        self._requests = itertools.count()
        self._loop = _LoopThread()
        self.engine = TransformersEngine(self.model, self.tokenizer, template_stops=self.template.stop_strings,
                                         max_batch_size=_MAX_STREAMS, max_model_len=self.max_positions)

    def _prompt_ids(self, messages: list[dict[str, str]], max_new_tokens: int) -> list[int]:
        # Drop the oldest turns (never the system prompt or the question) until the prompt fits.
        budget = max(self.engine.max_model_len - max_new_tokens, 16)
        msgs = list(messages)
        ids = self.template.encode_prompt(self.tokenizer, msgs)
        start = 1 if msgs and msgs[0]["role"] == "system" else 0
        while len(ids) > budget and len(msgs) - start > 2:
            del msgs[start : start + 2]
            ids = self.template.encode_prompt(self.tokenizer, msgs)
        return ids[-budget:]

    def stream(self, messages: list[dict[str, str]], *, model: str | None = None, temperature: float | None = 0.7,
               top_p: float | None = 0.9, max_tokens: int | None = 512) -> Iterator[Delta]:
        """Yield the answer text as it is generated (model is accepted for symmetry with ApiChat)."""
        from caregpt.serve.engine import GenerationRequest
        from caregpt.serve.sampling import SamplingParams

        max_new = max(1, min(int(max_tokens or 512), self.engine.max_model_len - 16))
        try:
            ids = self._prompt_ids(messages, max_new)
        except ValueError as exc:  # a malformed conversation (roles out of order)
            raise ChatApiError(f"cannot render the conversation with template {self.template.name!r}: {exc}") from None
        params = SamplingParams(
            max_tokens=max_new,
            temperature=float(temperature) if temperature else 0.0,  # 0 / None: greedy
            top_p=float(top_p) if top_p else 1.0,
            seed=next(self._seeds) if self._seeds is not None else None,
        )
        request = GenerationRequest(f"chat-{next(self._requests)}", ids, params)
        events: queue.Queue = queue.Queue()

        async def pump() -> None:
            try:
                async for out in self.engine.generate(request):
                    events.put(("text", out.text))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - reported in the caller's thread
                events.put(("error", exc))
            finally:
                events.put(("end", None))

        future = self._loop.submit(pump())
        try:
            while True:
                try:
                    kind, item = events.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if kind == "end":
                    break
                if kind == "error":
                    detail = str(item).splitlines()[0] if str(item) else ""
                    raise ChatApiError(f"generation failed: {type(item).__name__}: {detail}")
                if item:
                    yield Delta(text=item)
        finally:
            future.cancel()  # done, or the consumer went away (Ctrl-C, Stop button): the engine drops the request

    def close(self) -> None:
        """Stop the engine's generation thread and the event loop."""
        self.engine.shutdown()
        self._loop.close()
