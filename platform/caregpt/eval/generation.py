"""Generating answers for a batch of conversations: the model actor of batch prediction.

``PromptGenerator`` is a Ray Data class-based UDF: Ray starts ``num_workers`` of them, each loads
the model once (base + ``checkpoint_dir`` adapters, merged unless the base is quantised) and then
answers batch after batch. Prompts go through the same chat template code as training
(``Template.encode_prompt``), so the model sees exactly the prompt layout it was trained on. The
model, template and stop ids come from the one inference loader (:mod:`caregpt.models.inference`).

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

from caregpt.models.inference import cut_at_stops

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


def split_prompt(roles: list[str], contents: list[str]) -> tuple[list[dict[str, str]], str]:
    """(the conversation up to the last user turn, the reference answer)."""
    messages = [{"role": str(r), "content": str(c)} for r, c in zip(roles, contents)]
    return messages[:-1], messages[-1]["content"]


class PromptGenerator:
    """Ray Data actor: canonical sft records in, OUTPUT_SCHEMA rows out (invalid records passed through)."""

    def __init__(self, config_json: str, settings_json: str, threads: int | None = None):
        import torch

        from caregpt.config.loader import config_from_json
        from caregpt.models.inference import InferenceSpec, load_for_inference

        config = config_from_json(config_json)
        self.settings = GenerationSettings(**json.loads(settings_json))
        if threads:
            torch.set_num_threads(threads)  # actors of one node share its cores
        torch.manual_seed(config.train.seed)  # only matters with do_sample
        device = "cuda" if config.ray.use_gpu and torch.cuda.is_available() else "cpu"
        # the one inference loader: adapters merged (no per-token cost) unless the base is quantised
        loaded = load_for_inference(InferenceSpec.from_run_config(config, device=device))
        self.tokenizer, self.template, self.model = loaded.tokenizer, loaded.template, loaded.model
        self.cutoff_len = config.data.cutoff_len
        self.device = torch.device(device)
        self.eos_ids, self.multi_stops = loaded.stop_ids, loaded.text_stops
        self.stop_strings = list(self.template.stop_strings)
        self.pad_id = loaded.pad_id
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
