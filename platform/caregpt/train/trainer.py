"""The Hugging Face Trainer as used inside a Ray Train worker, plus the callback that talks to Ray.

CareTrainer adds two things to `transformers.Trainer`: it counts real (non-padding) tokens for
throughput, and it groups samples of similar length into the same batch from lengths it already
knows (padding is the main waste on both CPU and GPU). RayReportCallback sends metrics to Ray at
every logging step and each checkpoint at every save, from every worker, as Ray Train expects.
"""

from __future__ import annotations

import json
import logging
import os
import sys
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


def _all_ranks_sum(*values: float, device: torch.device) -> list[float]:
    """One all-reduce for several numbers: every rank gets the same sums (and so takes the same decisions)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def report_interval_s() -> float:
    """Least seconds between metrics-only reports to Ray.

    Ray Train V2 hands each report to its controller through a queue of one that the controller empties
    every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): a worker reporting faster than that waits on
    the queue (measured: +19% step time at 1.8 s steps). Reports carrying eval metrics, checkpoints or the
    last step always go through.
    """
    default = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")
    return float(os.environ.get("CAREGPT_REPORT_INTERVAL_S", default))


PROGRESS_PARTS = 5  # progress lines per run on the console, besides evals and the last step


class RayReportCallback(TrainerCallback):
    """Metrics and checkpoints to Ray Train; trainer_log.jsonl-style history; a progress line."""

    def __init__(self, trainer: CareTrainer):
        self.trainer = trainer
        self.start = time.perf_counter()
        self.last_time = self.start
        self.last_tokens = 0
        self.last_metrics: dict[str, Any] = {}
        self.tokens_offset = 0  # tokens seen before a resume (restored from the checkpoint)
        self.last_report = self.start
        self.report_interval = report_interval_s()
        # the console gets a line per fifth of the run (CAREGPT_VERBOSE=1: every logging step); the full
        # history is in trainer_log.jsonl either way
        self.every_log = os.environ.get("CAREGPT_VERBOSE", "0") == "1"
        self.shown_part = -1

    def on_train_begin(self, args, state, control, **kwargs):
        previous = [h for h in state.log_history if "tokens_seen" in h]
        self.tokens_offset = int(previous[-1]["tokens_seen"]) if previous else 0
        self.start = self.last_time = self.last_report = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        import ray.train

        logs = dict(logs or {})
        now = time.perf_counter()
        world = max(1, args.world_size)
        tokens, since_report = _all_ranks_sum(self.trainer.real_tokens, now - self.last_report, device=args.device)
        tokens, since_report = int(tokens), since_report / world  # the mean: identical on every rank
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
        if state.is_world_process_zero and self._worth_a_line(state.global_step, state.max_steps, metrics):
            _progress_line(state, metrics, now - self.start)
        # every rank reaches the same decision (same sums), so Ray sees the same number of reports from each
        has_eval = any(k.startswith("eval_") for k in metrics)
        last = bool(state.max_steps) and state.global_step >= state.max_steps
        if has_eval or last or since_report >= self.report_interval:
            ray.train.report(metrics=dict(self.last_metrics))
            self.last_report = time.perf_counter()

    def _worth_a_line(self, step: int, total: int, metrics: dict[str, Any]) -> bool:
        """Every logging step when verbose or when the total is unknown; else evals, the last step (once; the
        end-of-training summary logs at that step again) and each new fifth."""
        if self.every_log or not total or any(k.startswith("eval_") for k in metrics):
            return True
        part = PROGRESS_PARTS if step >= total else PROGRESS_PARTS * step // total
        if part > self.shown_part:
            self.shown_part = part
            return True
        return False

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        directory.mkdir(parents=True, exist_ok=True)  # ranks that wrote nothing still join the report
        metrics = {**self.last_metrics, "step": state.global_step}
        ray.train.report(metrics=metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))
        self.last_report = time.perf_counter()


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
    # straight to the process's stdout: Ray Train patches print() to also log through the root logger, which
    # showed every progress line twice in the driver's output
    sys.__stdout__.write(f"[caregpt] {bar}" + " | ".join(parts) + "\n")
    sys.__stdout__.flush()


def write_history(log_history: list[dict[str, Any]], path: Path) -> None:
    """trainer_log.jsonl: one JSON object per logging/eval step, in step order."""
    with open(path, "w", encoding="utf-8") as handle:
        for entry in log_history:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
