"""Chat with a model loaded in this process (the seed's `cli_demo.py --model_name_or_path ... --checkpoint_dir ...`).

The prompt is rendered with the same template code that training used (`encode_prompt`), so a fine-tuned
checkpoint sees exactly the format it learned. Tokens are streamed with transformers'
``TextIteratorStreamer`` while ``generate`` runs in a background thread; a threading event lets Ctrl-C
stop the generation between two tokens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caregpt.chat.api import ChatApiError, Delta
from caregpt.config.loader import RESOLVED_CONFIG_NAME, ConfigError, load_config, read_yaml

logger = logging.getLogger("caregpt.chat.local")

DEFAULT_TEMPLATE = "default"


def resolve_template(template: str | None, model_dir: str, adapters: list[str]) -> str:
    """--template, else the one the checkpoint (last adapter, then model dir) was trained with, else `default`.

    Every training output carries its resolved config, so a checkpoint knows its own template and the
    user need not repeat it.
    """
    if template:
        return template
    for directory in [*reversed(adapters), model_dir]:
        resolved = Path(directory) / RESOLVED_CONFIG_NAME
        if resolved.is_file():
            try:
                name = read_yaml(resolved).get("template")
            except Exception:  # noqa: BLE001 - an unreadable file only means "no hint here"
                name = None
            if name:
                logger.info("using template %r from %s", name, resolved)
                return str(name)
    return DEFAULT_TEMPLATE


class _StopFilter:
    """Cut the streamed text at the first stop string, holding back a tail that may be one's beginning."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                self.stopped = True
                out, self.pending = self.pending[:at], ""
                return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class LocalChat:
    """Load base model (+ adapters merged in) and tokenizer once; stream answers for a message list."""

    def __init__(self, model_name_or_path: str, *, checkpoint_dir: list[str] | None = None, template: str | None = None, extra: dict[str, Any] | None = None):
        import torch
        from transformers import AutoTokenizer

        from caregpt.data.templates import get_template
        from caregpt.models.loader import load_model, validate_model

        adapters = list(checkpoint_dir or [])
        overrides = dict(extra or {})
        overrides.update(model_name_or_path=model_name_or_path, checkpoint_dir=adapters or None)
        # Only the model settings matter here. finetuning_type decides which checks validate_model runs:
        # `full` skips the training-only ones; a quantised base is only valid with lora (QLoRA).
        overrides["finetuning_type"] = "lora" if overrides.get("quantization_bit") else "full"
        overrides.setdefault("lora_target", "all")
        overrides["cutoff_len"] = 8  # a training length limit; chat fits the prompt to the model itself
        overrides["template"] = resolve_template(template, model_name_or_path, adapters)
        config = load_config(None, overrides)
        validate_model(config)  # wrong paths / not an adapter dir: one clear ConfigError, before loading weights
        self.model_name = Path(model_name_or_path).name or model_name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(
            config.model.model_name_or_path, trust_remote_code=config.model.trust_remote_code, use_fast=config.model.use_fast_tokenizer
        )
        try:
            self.template = get_template(config.data.template, self.tokenizer)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        model = load_model(config, for_training=False)
        if adapters:
            model = _apply_adapters(model, adapters)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 2048
        self._torch = torch
        self._stop_ids = self._single_token_stops()

    def _single_token_stops(self) -> list[int]:
        # Stop strings that are one token in this vocabulary stop `generate` directly (cheapest check);
        # the text filter still cuts any that arrive split across tokens.
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        for stop in self.template.stop_strings:
            tok = self.tokenizer.convert_tokens_to_ids(stop)
            if isinstance(tok, int) and tok != self.tokenizer.unk_token_id:
                ids.add(tok)
        return sorted(ids)

    def _prompt_ids(self, messages: list[dict[str, str]], max_new_tokens: int) -> list[int]:
        # Drop the oldest turns (never the system prompt or the question) until the prompt fits.
        budget = max(self.max_positions - max_new_tokens, 16)
        msgs = list(messages)
        ids = self.template.encode_prompt(self.tokenizer, msgs)
        start = 1 if msgs and msgs[0]["role"] == "system" else 0
        while len(ids) > budget and len(msgs) - start > 2:
            del msgs[start : start + 2]
            ids = self.template.encode_prompt(self.tokenizer, msgs)
        return ids[-budget:]

    def stream(self, messages: list[dict[str, str]], *, model: str | None = None, temperature: float | None = 0.7, top_p: float | None = 0.9, max_tokens: int | None = 512) -> Iterator[Delta]:
        """Yield the answer text as it is generated (model is accepted for symmetry with ApiChat)."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        torch = self._torch
        max_new = int(max_tokens or 512)
        try:
            ids = self._prompt_ids(messages, max_new)
        except ValueError as exc:  # a malformed conversation (roles out of order)
            raise ChatApiError(f"cannot render the conversation with template {self.template.name!r}: {exc}") from None
        cancel = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = bool(temperature and temperature > 0)
        kwargs: dict[str, Any] = dict(
            input_ids=torch.tensor([ids], device=self.device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=self.device),
            max_new_tokens=max_new,
            do_sample=sample,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            eos_token_id=self._stop_ids or None,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self._stop_ids or [0])[0],
        )
        if sample:
            kwargs.update(temperature=float(temperature), top_p=float(top_p) if top_p else 1.0)
        else:  # greedy: unset the sampling knobs a generation_config may carry, so transformers does not warn
            kwargs.update(temperature=None, top_p=None, top_k=None)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported in the caller's thread
                failure.append(exc)
                streamer.end()  # unblock the consumer

        thread = threading.Thread(target=run, name="caregpt-chat-generate", daemon=True)
        thread.start()
        stops = _StopFilter(self.template.stop_strings)
        drained = False  # the streamer's end signal was read: iterating again would block forever
        try:
            for piece in streamer:
                text = stops.feed(piece)
                if text:
                    yield Delta(text=text)
                if stops.stopped:
                    break
            else:
                drained = True
            tail = stops.flush()
            if tail:
                yield Delta(text=tail)
        finally:
            cancel.set()  # done, stopped at a stop string, or the consumer went away (Ctrl-C, Stop button)
            if not drained:
                for _ in streamer:  # generate returns after at most one more token, then ends the streamer
                    pass
            thread.join()
        if failure:
            exc = failure[0]
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise ChatApiError(f"generation failed: {type(exc).__name__}: {detail}")


def _apply_adapters(model, adapters: list[str]):
    """Merge each LoRA adapter into the base weights (plain-model speed); on a quantised base, where
    merging would need full-precision weights, keep them as unmerged adapters instead."""
    from peft import PeftModel

    from caregpt.models.adapters import is_quantized

    quantized = is_quantized(model)
    for path in adapters:
        model = PeftModel.from_pretrained(model, path)
        if not quantized:
            model = model.merge_and_unload()
        logger.info("%s adapter %s", "loaded" if quantized else "merged", path)
    return model
