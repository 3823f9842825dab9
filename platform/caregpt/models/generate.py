"""The one batched generation path: token-id prompts in, answers (new token ids and text) out.

Batch prediction (:mod:`caregpt.eval.generation`) and exam scoring by generation
(:mod:`caregpt.eval.choice`) both call :func:`generate_batch`; the serving engine streams token by
token through its own loop (:mod:`caregpt.serve.hf_engine`) but takes its stop ids from the same
:func:`caregpt.models.inference.stop_token_ids`.

- Prompts are padded on the LEFT, so every row's last prompt token sits at the same position and
  new tokens are appended after it for the whole batch; the attention mask hides the padding and
  transformers derives position ids from it, so a row's greedy answer is the one it gets alone
  (exactly in float32, as tests/unit/test_generate.py checks; in bf16 / fp16 a padded row can round
  differently and flip a near-tie).
- Decoding follows :class:`GenerationSettings` (the resolved ``generation:`` config group): greedy
  by default, else sampled with temperature / top_p / top_k; repetition_penalty applies to both.
- Generation ends at the stop token ids (eos and template stops that are one token) and at stop
  strings that span several tokens; each answer is cut before its first stop token, decoded without
  special tokens and cut at its first stop string (:func:`caregpt.models.inference.cut_at_stops`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from caregpt.models.inference import cut_at_stops, default_pad_id, stop_token_ids


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are decoded. The default is greedy: deterministic, and what CareGPT's predict does."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}; it must be at least 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate``."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # a checkpoint's generation_config may carry sampling values: greedy must not warn about or use them
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


@dataclass(frozen=True)
class Generated:
    """One prompt's answer."""

    ids: list[int]  # new tokens, up to (not including) the first stop token, without the batch's trailing padding
    text: str  # `ids` decoded without special tokens, cut at the first stop string, stripped
    stopped: bool  # ended on a stop token or stop string (False: max_new_tokens ran out)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = None):
    """(input ids, attention mask) of `rows` padded on the left to the longest, as long tensors on `device`."""
    import torch

    if not rows:
        raise ValueError("no prompts to pad")
    empty = [i for i, row in enumerate(rows) if len(row) == 0]
    if empty:
        raise ValueError(f"prompts {empty[:10]} are empty: a prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def _answer(row: list[int], stops: set[int], pad_id: int, tokenizer: Any, stop_strings: Sequence[str]) -> Generated:
    end = next((i for i, token in enumerate(row) if token in stops), None)
    hit_token = end is not None
    if end is None:
        # a row that ended on a stop string is filled with pad up to the batch's longest answer
        end = len(row)
        while end > 0 and row[end - 1] == pad_id:
            end -= 1
    ids = row[:end]
    raw = tokenizer.decode(ids, skip_special_tokens=True)
    text = cut_at_stops(raw, stop_strings)
    hit_string = any(s and s in raw for s in stop_strings)
    return Generated(ids=ids, text=text, stopped=hit_token or hit_string)


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings | None = None,
    *,
    stop_strings: Sequence[str] = (),
    stop_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
) -> list[Generated]:
    """Answer every prompt (token ids, chat template already applied) in one left-padded batch.

    `stop_strings` are the template's stops (plus any the caller adds); the ids that end generation
    default to :func:`~caregpt.models.inference.stop_token_ids` of them (eos included), and stops
    that span several tokens are matched on the text while generating. Answers come back in prompt
    order. Sampled decoding draws from torch's global generator: seed it for repeatable samples.
    """
    import torch

    settings = settings or GenerationSettings()
    if not prompts:
        return []
    found_ids, text_stops = stop_token_ids(tokenizer, stop_strings, model)
    stops = list(found_ids if stop_ids is None else stop_ids)
    if stop_ids is not None and not stops:  # transformers would fall back to the generation config's eos
        raise ValueError("stop_ids=[]: leave stop_ids unset for eos and the template's one-token stops")
    pad = default_pad_id(tokenizer, stops) if pad_id is None else int(pad_id)
    device = next(model.parameters()).device
    input_ids, attention = left_pad(prompts, pad, device)
    kwargs = settings.hf_kwargs()
    if text_stops:
        kwargs.update(stop_strings=list(text_stops), tokenizer=tokenizer)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention, eos_token_id=stops or None, pad_token_id=pad, **kwargs)
    new = out[:, input_ids.shape[1] :].tolist()
    return [_answer(row, set(stops), pad, tokenizer, stop_strings) for row in new]
