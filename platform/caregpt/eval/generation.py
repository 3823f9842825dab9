"""Generating answers for a batch of conversations: the model actor of batch prediction.

``PromptGenerator`` is a Ray Data class-based UDF: Ray starts ``num_workers`` of them, each loads
the model once (base + ``checkpoint_dir`` adapters, merged unless the base is quantised) and then
answers batch after batch. Prompts go through the same chat template code as training
(``Template.encode_prompt``), so the model sees exactly the prompt layout it was trained on. The
model, template and stop ids come from the one inference loader (:mod:`caregpt.models.inference`).

Answers come from the one batched generation path (:func:`caregpt.models.generate.generate_batch`):
a left-padded batch (the same greedy tokens as each row alone), stopped at the tokenizer's eos and
the template's stop strings, each answer cut at the first of them.
"""

from __future__ import annotations

import json
import logging
import os

import pyarrow as pa

from caregpt.models.generate import GenerationSettings, generate_batch

__all__ = ["OUTPUT_SCHEMA", "GenerationSettings", "PromptGenerator", "split_prompt"]  # settings: the shared spec, re-exported

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
        self.stop_ids, self.pad_id = loaded.stop_ids, loaded.pad_id
        self.stop_strings = list(self.template.stop_strings)
        logger.info("generator ready on %s (pid %s, %s threads)", device, os.getpid(), torch.get_num_threads())

    def _encode(self, prompt: list[dict[str, str]]) -> tuple[list[int], bool]:
        ids = self.template.encode_prompt(self.tokenizer, prompt)
        if len(ids) > self.cutoff_len:
            # keep the end: the latest question and the generation prompt matter most
            return ids[-self.cutoff_len :], True
        return ids, False

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
            answers = generate_batch(self.model, self.tokenizer, [ids for _, ids in todo], self.settings,
                                     stop_strings=self.stop_strings, stop_ids=self.stop_ids, pad_id=self.pad_id)
            for (index, _), answer in zip(todo, answers):
                predictions[index] = answer.text
                new_tokens[index] = len(answer.ids)
        out["prediction"] = predictions
        out["new_tokens"] = new_tokens
        return pa.table(out, schema=OUTPUT_SCHEMA)
