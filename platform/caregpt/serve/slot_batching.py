"""caregpt's own continuous batching: one KV-cache row (a "slot") per running request.

Every step admits waiting requests (their prompts prefilled in chunks, so one long prompt never
stalls the others for long) and then decodes one token for every running request in a single
forward pass. The KV cache is one tensor per layer, ``[slots, kv_heads, length, head_dim]``; the
running requests always occupy rows ``0..n-1`` (a finished row is refilled with the last one), so
the decode step attends over a plain view of the cache with a ``[n, 1, 1, length]`` padding mask.

Why not transformers' paged continuous batching (``batching: paged``, kept as the fallback): it
packs all rows of a step into one sequence and masks across rows, so attention grows with the
square of the batch, and it copies every row's keys and values out of its pages at every step.
On the ~34M benchmark model at 32 streams that is about half of each step
(``benchmarks/serve_load.py``). Slots cost memory for the longest running row times the batch,
which is right for chat-length contexts on CPUs and small GPUs; vLLM is the engine for long
contexts on large GPUs.

Works with any decoder whose attention layers take a 4-D additive mask and a cache object with
``update(keys, values, layer_idx)`` (the transformers ``Cache`` protocol). :func:`check_slots`
compares a slot-decoded sequence with a plain forward pass when the backend starts; models that
differ (sliding-window or linear attention, custom caches) are served by the paged backend.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from caregpt.serve.engine import EngineError
from caregpt.serve.sampling import RowSampler, argmax_tokens

logger = logging.getLogger("caregpt.serve.slot_batching")

PREFILL_CHUNK_TOKENS = 512  # most prompt tokens prefilled per step: bounds how long one step stalls the decoders
_FIRST_CAP = 256  # initial cache length; doubled on demand up to max_model_len


class SlotCache:
    """The transformers ``Cache`` protocol over per-request rows; the backend sets a plan before each forward."""

    is_compileable = False

    def __init__(self, slots: int, max_len: int):
        self.slots, self.max_len = slots, max_len
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self._plan: tuple = ()

    def plan_decode(self, rows: int, positions: Any, length: int) -> None:
        """Next forward: one new token for rows 0..rows-1 at `positions`; attend over `length` cached tokens."""
        import torch

        self._plan = ("decode", rows, positions, torch.arange(rows, device=positions.device), length)

    def plan_prefill(self, row: int, start: int, count: int) -> None:
        """Next forward: tokens start..start+count-1 of the request in `row`."""
        self._plan = ("prefill", row, start, count)

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if layer_idx >= len(self.keys):
            self._allocate(layer_idx, key_states)
        mode = self._plan[0]
        end = self._plan[4] if mode == "decode" else self._plan[2] + self._plan[3]
        if end > self.keys[layer_idx].shape[2]:
            self._grow(layer_idx, end)
        k, v = self.keys[layer_idx], self.values[layer_idx]
        if mode == "decode":
            _, rows, positions, row_index, length = self._plan
            k[row_index, :, positions] = key_states[:, :, 0]
            v[row_index, :, positions] = value_states[:, :, 0]
            return k[:rows, :, :length], v[:rows, :, :length]
        _, row, start, count = self._plan
        k[row, :, start : start + count] = key_states[0]
        v[row, :, start : start + count] = value_states[0]
        return k[row : row + 1, :, : start + count], v[row : row + 1, :, : start + count]

    def _allocate(self, layer_idx: int, like: Any) -> None:
        import torch

        while len(self.keys) <= layer_idx:  # layers are met in order; shapes come from the first keys seen
            shape = (self.slots, like.shape[1], min(_FIRST_CAP, self.max_len), like.shape[3])
            self.keys.append(torch.zeros(shape, dtype=like.dtype, device=like.device))
            self.values.append(torch.zeros(shape, dtype=like.dtype, device=like.device))

    def _grow(self, layer_idx: int, needed: int) -> None:
        import torch

        for store in (self.keys, self.values):
            old = store[layer_idx]
            cap = min(self.max_len, max(needed, 2 * old.shape[2]))
            new = torch.zeros((old.shape[0], old.shape[1], cap, old.shape[3]), dtype=old.dtype, device=old.device)
            new[:, :, : old.shape[2]] = old
            store[layer_idx] = new

    def move_row(self, src: int, dst: int, length: int) -> None:
        for store in (self.keys, self.values):
            for layer in store:
                layer[dst, :, :length] = layer[src, :, :length]

    # the rest of the Cache protocol some model code asks for
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt: list[int]
    sampler: RowSampler
    max_tokens: int
    eos: frozenset[int]
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue
    prefilled: int = 0  # prompt tokens in the cache
    length: int = 0  # tokens in the cache (prompt + answer - the last token, which is fed next)
    last_token: int = -1
    generated: int = 0
    row: int = -1
    cancelled: bool = False


def _cache_kwarg(model: Any) -> str:
    """transformers renamed the forward argument past_key_values -> cache (5.2x); pass whichever this model takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class SlotsUnsupported(RuntimeError):
    """This model cannot be decoded with slots (the reason says why); serve it with the paged backend."""


def _text_config(model: Any) -> Any:
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def _architecture_problem(model: Any) -> str | None:
    config = _text_config(model)
    types = set(getattr(config, "layer_types", None) or ())
    if types - {"full_attention"}:
        return f"its attention layers are {sorted(types)} (slots handle full attention only)"
    if not types and getattr(config, "sliding_window", None):
        return f"it uses sliding-window attention (window {config.sliding_window})"
    return None


class SlotBackend:
    """Streams token ids for many concurrent requests; one background thread runs every forward pass."""

    def __init__(self, model: Any, *, max_batch_size: int, max_model_len: int, prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS):
        import torch

        self.model, self.slots, self.max_model_len = model, max_batch_size, max_model_len
        self.prefill_chunk = prefill_chunk_tokens
        # OpenMP thread counts are per thread: a thread started here does not inherit torch.set_num_threads()
        # from the replica's main thread and would fall back to OMP_NUM_THREADS, which Ray sets to 1.
        self._threads = torch.get_num_threads()
        self._device = model.device
        # the compute dtype (transformers' `dtype`: the first floating-point weight; 4-bit weights are uint8)
        self._dtype = getattr(model, "dtype", None) or next(p.dtype for p in model.parameters() if p.is_floating_point())
        self._neg = torch.finfo(self._dtype).min
        self._cache_kw = _cache_kwarg(model)
        self._cache = SlotCache(max_batch_size, max_model_len)
        problem = _architecture_problem(model)
        if problem is None:
            try:
                problem = self._check()
            except Exception as exc:  # noqa: BLE001 - any failure of the check means: not with slots
                problem = f"slot decoding fails on this model ({type(exc).__name__}: {exc})"
        if problem:
            raise SlotsUnsupported(problem)
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: deque[_Request] = deque()
        self._prefilling: _Request | None = None
        self._running: list[_Request] = []  # row i holds self._running[i]
        self._stop = threading.Event()
        self._closing, self._closed = threading.Lock(), False
        self._wake = threading.Event()
        self.fatal_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="caregpt-slot-batching", daemon=True)
        self._thread.start()

    def _check(self) -> str | None:
        """Why slot decoding does not reproduce a plain forward pass of this model (None: it does).

        Two rows of different lengths, prefilled (the longer one in two chunks) and then decoded three
        tokens side by side, must give the logits of one uncached forward pass over each whole sequence.
        """
        import torch

        if self.slots < 2 or self.max_model_len < 16:
            return None  # too small to run the check; nothing batches rows of different lengths anyway
        vocab = int(getattr(_text_config(self.model), "vocab_size", 0) or 32)
        gen = torch.Generator().manual_seed(0)
        seqs = [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (11, 6)]
        prompts = [seqs[0][:8], seqs[1][:3]]
        with torch.inference_mode():
            self._prefill_forward(0, prompts[0][:5], 0)  # the first chunk of row 0
            got = [[self._prefill_forward(0, prompts[0][5:], 5)[0, -1]], [self._prefill_forward(1, prompts[1], 0)[0, -1]]]
            for step in range(3):
                lengths = [len(p) + step for p in prompts]
                logits = self._decode_forward([seqs[i][lengths[i]] for i in range(2)], lengths)
                for i in range(2):
                    got[i].append(logits[i, -1])
            for i, seq in enumerate(seqs):
                want = self.model(input_ids=torch.tensor([seq], device=self._device), use_cache=False).logits[0, len(prompts[i]) - 1 :]
                have = torch.stack(got[i]).to(want.dtype)
                scale = float(want.abs().max()) or 1.0
                err = float((have - want).abs().max()) / scale
                tolerance = 1e-3 if self._dtype == torch.float32 else 3e-2
                if not err <= tolerance:
                    return f"slot decoding differs from a plain forward pass (relative error {err:.2e} > {tolerance:.0e})"
        return None

    # ---- the asyncio side ------------------------------------------------------------------
    async def stream(self, request_id: str, prompt_ids: list[int], sampler: RowSampler, max_tokens: int, eos_ids: list[int]) -> AsyncIterator[tuple[list[int], bool]]:
        """(new token ids, finished) as the steps produce them; closing early cancels the request."""
        if self._stop.is_set() or not self.alive():
            raise EngineError(f"the slot batching loop has stopped ({self.fatal_error!r})" if self.fatal_error else "the engine is shut down")
        if len(prompt_ids) + max_tokens > self.max_model_len:
            raise EngineError(f"prompt ({len(prompt_ids)}) + max_tokens ({max_tokens}) exceeds the engine's max_model_len {self.max_model_len}")
        req = _Request(request_id, list(prompt_ids), sampler, max_tokens, frozenset(eos_ids), asyncio.get_running_loop(), asyncio.Queue())
        with self._closing:
            if self._closed:
                raise EngineError("the engine is shut down")
            self._incoming.put(req)
        self._wake.set()
        finished = False
        try:
            while not finished:
                item = await req.outputs.get()
                new: list[int] = []
                while True:  # the consumer fell behind: hand over everything at once
                    if isinstance(item, BaseException):
                        raise EngineError(f"generation failed: {item!r}") from item
                    tokens, finished = item
                    new += tokens
                    if finished or req.outputs.empty():
                        break
                    item = req.outputs.get_nowait()
                yield new, finished
        finally:
            if not finished:
                req.cancelled = True
                self._wake.set()

    def alive(self) -> bool:
        return self._thread.is_alive() and self.fatal_error is None

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    # ---- the generation thread -------------------------------------------------------------
    def _run(self) -> None:
        import torch

        torch.set_num_threads(self._threads)
        try:
            with torch.inference_mode():
                while not self._stop.is_set():
                    if not (self._running or self._waiting or self._prefilling):
                        self._wake.wait(0.5)
                    self._wake.clear()
                    self._admit()
                    try:
                        outputs: dict[_Request, tuple[list[int], bool]] = {}
                        self._prefill_step(outputs)
                        self._deliver(outputs)  # first tokens go out before the decode step: it would delay them a step
                        if self._running:
                            outputs = {}
                            self._decode_step(outputs)
                            self._deliver(outputs)
                    except Exception as exc:  # noqa: BLE001 - the requests in this step fail; the loop goes on
                        logger.exception("a generation step failed; failing the %d requests in it", len(self._running) + bool(self._prefilling))
                        self._fail_all(exc)
        except BaseException as exc:  # noqa: BLE001 - reported through alive() / check_health
            self.fatal_error = exc
            logger.exception("the slot batching loop stopped")
            self._fail_all(exc)
        # stopped (an evicted adapter, a replica going away): whoever still waits gets an error, not silence
        with self._closing:
            self._closed = True  # stream() adds no request after this drain
        self._admit()
        stopped = EngineError("the engine was shut down before this request finished")
        for req in self._waiting:
            self._running.append(req)
        self._waiting.clear()
        self._fail_all(stopped)

    def _admit(self) -> None:
        while True:
            try:
                self._waiting.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        for req in [r for r in self._running if r.cancelled]:
            self._free(req)
        if self._prefilling is not None and self._prefilling.cancelled:
            self._prefilling = None
        self._waiting = deque(r for r in self._waiting if not r.cancelled)

    def _prefill_step(self, outputs: dict) -> None:
        import torch

        budget = self.prefill_chunk
        while budget > 0 and len(self._running) < self.slots:
            req = self._prefilling
            if req is None:
                if not self._waiting:
                    return
                req = self._prefilling = self._waiting.popleft()
                req.row = len(self._running)  # the row right after the decoders
            count = min(budget, len(req.prompt) - req.prefilled)
            logits = self._prefill_forward(req.row, req.prompt[req.prefilled : req.prefilled + count], req.prefilled)
            req.prefilled += count
            budget -= count
            if req.prefilled < len(req.prompt):
                return  # the rest of this prompt goes in the next steps
            self._prefilling = None
            req.length = len(req.prompt)
            token = int(argmax_tokens(logits[:, -1], [req.sampler])[0])  # logits of the prompt's last token
            self._running.append(req)
            if self._emit(req, token, outputs):
                self._free(req)

    def _decode_step(self, outputs: dict) -> None:
        rows = self._running
        logits = self._decode_forward([r.last_token for r in rows], [r.length for r in rows])
        tokens = argmax_tokens(logits[:, -1], [r.sampler for r in rows]).tolist()
        for req in rows:
            req.length += 1  # every row's new key is in the cache before any row moves
        for req, token in zip(list(rows), tokens):
            if self._emit(req, token, outputs):
                self._free(req)

    def _prefill_forward(self, row: int, tokens: list[int], start: int) -> Any:
        """Logits [1, 1, vocab] after `tokens`, which continue the sequence cached in `row` at position `start`."""
        import torch

        count = len(tokens)
        positions = torch.arange(start, start + count, device=self._device)
        allowed = torch.arange(start + count, device=self._device).unsqueeze(0) <= positions.unsqueeze(1)  # causal, offset by the cache
        self._cache.plan_prefill(row, start, count)
        return self._forward(torch.tensor([tokens], device=self._device), positions.unsqueeze(0), allowed.view(1, 1, count, start + count))

    def _decode_forward(self, last_tokens: list[int], lengths: list[int]) -> Any:
        """Logits [rows, 1, vocab]: row i (0..n-1) has lengths[i] tokens cached and feeds last_tokens[i] after them."""
        import torch

        positions = torch.tensor(lengths, device=self._device)
        length = max(lengths) + 1
        allowed = torch.arange(length, device=self._device).unsqueeze(0) <= positions.unsqueeze(1)  # each row's own length
        self._cache.plan_decode(len(lengths), positions, length)
        ids = torch.tensor([[t] for t in last_tokens], device=self._device)
        return self._forward(ids, positions.unsqueeze(1), allowed.view(len(lengths), 1, 1, length))

    def _forward(self, ids: Any, positions: Any, allowed: Any) -> Any:
        import torch

        mask = torch.zeros(allowed.shape, dtype=self._dtype, device=self._device).masked_fill_(~allowed, self._neg)
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, logits_to_keep=1, **{self._cache_kw: self._cache})
        return out.logits

    def _emit(self, req: _Request, token: int, outputs: dict) -> bool:
        """Record req's new token; True when req is finished."""
        req.generated += 1
        req.last_token = token
        done = token in req.eos or req.generated >= req.max_tokens or req.length >= self.max_model_len
        tokens, _ = outputs.get(req, ([], False))
        outputs[req] = (tokens + [token], done)
        return done

    def _free(self, req: _Request) -> None:
        """Take req's row out; the last running row moves into it, and the prefilling row (if any) follows."""
        i = self._running.index(req)
        last = len(self._running) - 1
        if i != last:
            moved = self._running[last]
            self._cache.move_row(last, i, moved.length)
            moved.row = i
            self._running[i] = moved
        self._running.pop()
        req.row = -1
        if self._prefilling is not None and self._prefilling.row != len(self._running):
            self._cache.move_row(self._prefilling.row, len(self._running), self._prefilling.prefilled)
            self._prefilling.row = len(self._running)

    def _deliver(self, outputs: dict) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for req, item in outputs.items():
            if not req.cancelled:
                by_loop.setdefault(req.loop, []).append((req.outputs, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that event loop is closed: its requests are gone
                pass

    def _fail_all(self, exc: BaseException) -> None:
        failed = list(self._running) + ([self._prefilling] if self._prefilling else [])
        self._running.clear()
        self._prefilling = None
        for req in failed:
            try:
                req.loop.call_soon_threadsafe(req.outputs.put_nowait, exc)
            except RuntimeError:
                pass


def _put_all(items: list) -> None:
    for q, item in items:
        q.put_nowait(item)
