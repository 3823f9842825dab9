"""The Hugging Face Trainer as used inside a Ray Train worker, plus the callback that talks to Ray.

CareTrainer adds two things to `transformers.Trainer`: it counts real (non-padding) tokens for
throughput, and it groups samples of similar length into the same batch from lengths it already
knows (padding is the main waste on both CPU and GPU). RayReportCallback sends metrics to Ray at
every logging step and each checkpoint at every save, from every worker, as Ray Train expects.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

logger = logging.getLogger(__name__)

# HF's own bookkeeping that is not a training signal; everything else numeric goes to Ray
SKIPPED_LOG_KEYS = {"total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


class CareTrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.real_tokens = 0  # this process, since the run (re)started

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        real = inputs.pop("real_tokens", None)
        if real is not None and model.training:
            self.real_tokens += int(real)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("real_tokens", None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            # megabatches of 50 optimizer steps are sorted by length, so each step pads little
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=dataset.lengths.tolist(),
            )
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        # evaluation order does not matter, and HF's length grouping there needs a `datasets` column
        return torch.utils.data.SequentialSampler(eval_dataset)


def _all_ranks_sum(value: int, device: torch.device) -> int:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    torch.distributed.all_reduce(tensor)
    return int(tensor.item())


class RayReportCallback(TrainerCallback):
    """Metrics and checkpoints to Ray Train; trainer_log.jsonl-style history; a progress line."""

    def __init__(self, trainer: CareTrainer):
        self.trainer = trainer
        self.start = time.perf_counter()
        self.last_time = self.start
        self.last_tokens = 0
        self.last_metrics: dict[str, Any] = {}
        self.tokens_offset = 0  # tokens seen before a resume (restored from the checkpoint)

    def on_train_begin(self, args, state, control, **kwargs):
        previous = [h for h in state.log_history if "tokens_seen" in h]
        self.tokens_offset = int(previous[-1]["tokens_seen"]) if previous else 0
        self.start = self.last_time = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        import ray.train

        logs = dict(logs or {})
        now = time.perf_counter()
        tokens = _all_ranks_sum(self.trainer.real_tokens, args.device)
        metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and k not in SKIPPED_LOG_KEYS}
        metrics["step"] = state.global_step
        if "loss" in logs:
            metrics["tokens_seen"] = self.tokens_offset + tokens
            metrics["tokens_per_second"] = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
            self.last_tokens, self.last_time = tokens, now
            # HF keeps log_history in trainer_state.json inside every checkpoint: the log resumes with the run
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(tokens_seen=metrics["tokens_seen"], tokens_per_second=metrics["tokens_per_second"])
        self.last_metrics.update(metrics)
        if state.is_world_process_zero:
            _progress_line(state, metrics, now - self.start)
        ray.train.report(metrics=dict(self.last_metrics))

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        directory.mkdir(parents=True, exist_ok=True)  # ranks that wrote nothing still join the report
        metrics = {**self.last_metrics, "step": state.global_step}
        ray.train.report(metrics=metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))


def _progress_line(state, metrics: dict[str, Any], elapsed: float) -> None:
    step, total = state.global_step, state.max_steps or 0
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    for key, fmt in (("loss", "loss {:.4f}"), ("eval_loss", "eval_loss {:.4f}"), ("learning_rate", "lr {:.2e}"), ("tokens_per_second", "{:.0f} tok/s")):
        if key in metrics:
            parts.append(fmt.format(metrics[key]))
    if total and step:
        remaining = elapsed / step * (total - step)
        parts.append(f"eta {int(remaining // 60)}m{int(remaining % 60):02d}s")
    bar = ""
    if total:
        filled = int(20 * step / total)
        bar = "[" + "#" * filled + "." * (20 - filled) + "] "
    print(f"[caregpt] {bar}" + " | ".join(parts), flush=True)


def write_history(log_history: list[dict[str, Any]], path: Path) -> None:
    """trainer_log.jsonl: one JSON object per logging/eval step, in step order."""
    with open(path, "w", encoding="utf-8") as handle:
        for entry in log_history:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
