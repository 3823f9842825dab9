"""Generating answers for a batch of conversations: the model actor of batch prediction.

``PromptGenerator`` is a Ray Data class-based UDF: Ray starts ``num_workers`` of them, each loads
the model once (base + ``checkpoint_dir`` adapters, merged unless the base is quantised) and then
answers batch after batch. Prompts go through the same chat template code as training
(``Template.encode_prompt``), so the model sees exactly the prompt layout it was trained on.

Batched generation pads on the LEFT, so every row's last prompt token sits at the same position and
new tokens are appended after it for the whole batch (verified: a left-padded batch yields the same
greedy tokens as one row alone). Generation stops at the tokenizer's eos and at the template's stop
strings; the answer is cut at the first of them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

logger = logging.getLogger("caregpt.eval.generation")

OUTPUT_SCHEMA = pa.schema(
    [
        ("loc", pa.string()),
        ("dataset", pa.string()),
        ("error", pa.string()),
        ("prompt", pa.string()),
        ("label", pa.string()),
        ("prediction", pa.string()),
        ("extra", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("new_tokens", pa.int32()),
        ("prompt_truncated", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are sampled. The default is greedy: deterministic, and what CareGPT's predict does."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def hf_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


def stop_token_ids(tokenizer, stop_strings: tuple[str, ...]) -> tuple[list[int], list[str]]:
    """(token ids that end generation, stop strings that span several tokens).

    A stop string that is one token (``<|im_end|>``) is cheapest as an eos id; longer ones
    (``\\nHuman:``) need transformers' string matching during generation.
    """
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    multi: list[str] = []
    for text in stop_strings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(encoded[0])
        elif encoded:
            multi.append(text)
    return list(dict.fromkeys(ids)), multi


def cut_at_stops(text: str, stop_strings: list[str]) -> str:
    """The answer up to the first stop string (generation may run a few tokens past one)."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut].strip()


def split_prompt(roles: list[str], contents: list[str]) -> tuple[list[dict[str, str]], str]:
    """(the conversation up to the last user turn, the reference answer)."""
    messages = [{"role": str(r), "content": str(c)} for r, c in zip(roles, contents)]
    return messages[:-1], messages[-1]["content"]


class PromptGenerator:
    """Ray Data actor: canonical sft records in, OUTPUT_SCHEMA rows out (invalid records passed through)."""

    def __init__(self, config_json: str, settings_json: str, threads: int | None = None):
        import torch

        from caregpt.config.loader import config_from_json
        from caregpt.data.templates import get_template
        from caregpt.data.tokenize import load_tokenizer
        from caregpt.models.adapters import _merge_adapters, _quiet_peft
        from caregpt.models.loader import load_model

        config = config_from_json(config_json)
        self.settings = GenerationSettings(**json.loads(settings_json))
        if threads:
            torch.set_num_threads(threads)  # actors of one node share its cores
        torch.manual_seed(config.train.seed)  # only matters with do_sample
        device = "cuda" if config.ray.use_gpu and torch.cuda.is_available() else "cpu"
        self.tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code, config.model.use_fast_tokenizer)
        self.template = get_template(config.data.template, self.tokenizer)
        self.cutoff_len = config.data.cutoff_len
        model = load_model(config, for_training=False, device=device)
        adapters = list(config.model.checkpoint_dir or [])
        if adapters and config.model.quantization_bit:
            # a quantised base cannot take merged weights: keep the (single, checked on the driver) adapter apart
            from peft import PeftModel

            with _quiet_peft():
                model = PeftModel.from_pretrained(model, adapters[0])
        elif adapters:
            model = _merge_adapters(model, adapters)  # merged: no adapter overhead per token
        model.eval()
        model.generation_config.use_cache = True
        self.model = model
        self.device = torch.device(device)
        self.eos_ids, self.multi_stops = stop_token_ids(self.tokenizer, self.template.stop_strings)
        self.stop_strings = list(self.template.stop_strings)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        logger.info("generator ready on %s (pid %s, %s threads)", device, os.getpid(), torch.get_num_threads())

    def _encode(self, prompt: list[dict[str, str]]) -> tuple[list[int], bool]:
        ids = self.template.encode_prompt(self.tokenizer, prompt)
        if len(ids) > self.cutoff_len:
            # keep the end: the latest question and the generation prompt matter most
            return ids[-self.cutoff_len :], True
        return ids, False

    def _generate(self, prompts: list[list[int]]) -> list[list[int]]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        kwargs = self.settings.hf_kwargs()
        if self.multi_stops:
            kwargs.update(stop_strings=self.multi_stops, tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                **kwargs,
            )
        new = out[:, width:].tolist()
        stops = set(self.eos_ids)
        return [ids[: next((i for i, t in enumerate(ids) if t in stops), len(ids))] for ids in new]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = {name: [] for name in OUTPUT_SCHEMA.names}
        todo: list[tuple[int, list[int]]] = []
        for index, row in enumerate(rows):
            out["loc"].append(row["loc"])
            out["dataset"].append(row["dataset"])
            out["error"].append(row["error"])
            out["extra"].append(row.get("extra") or "{}")
            prompt_text = label = ""
            ids: list[int] = []
            truncated = False
            if not row["error"]:
                prompt, label = split_prompt(row["roles"], row["contents"])
                prompt_text = self.template.render(prompt, add_generation_prompt=True)
                ids, truncated = self._encode(prompt)
                todo.append((index, ids))
            out["prompt"].append(prompt_text)
            out["label"].append(label)
            out["prompt_tokens"].append(len(ids))
            out["prompt_truncated"].append(truncated)
        predictions = [""] * len(rows)
        new_tokens = [0] * len(rows)
        if todo:
            for (index, _), ids in zip(todo, self._generate([ids for _, ids in todo])):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                predictions[index] = cut_at_stops(text, self.stop_strings)
                new_tokens[index] = len(ids)
        out["prediction"] = predictions
        out["new_tokens"] = new_tokens
        return pa.table(out, schema=OUTPUT_SCHEMA)
