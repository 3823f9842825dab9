"""Training metrics as Prometheus series, through Ray's metrics API.

`RayReportCallback` (trainer.py) hands metrics to Ray Train, which keeps them with the run
(`Result.metrics`, the Train dashboard). That is history, not monitoring: nothing there can be
scraped or alerted on while a 2-day run is going. This callback sets Ray application metrics
(`ray.util.metrics`) from every worker at every logging step, so the node's metrics agent
exports them on `--metrics-export-port` next to Ray's own series (CPU, GPU, object store).

Ray prefixes application metrics with `ray_` on export: `caregpt_train_loss` is scraped as
`ray_caregpt_train_loss`. Each series carries `run` (the Ray Train run name) and `rank`;
dashboards sum tokens/s over ranks and show loss from rank 0. Values are per process, with no
collective, so a slow scrape never stalls training.

Register it in the worker next to RayReportCallback (see `TrainMetricsCallback.for_trainer`).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from transformers import TrainerCallback

# name -> description. All are Gauges, not Counters: loss and lr go down, and tokens seen is
# restored from the checkpoint on resume rather than counted up from zero by a new process.
GAUGES: dict[str, str] = {
    "caregpt_train_loss": "Training loss at the last logging step.",
    "caregpt_train_learning_rate": "Learning rate at the last logging step.",
    "caregpt_train_grad_norm": "Gradient norm at the last logging step.",
    "caregpt_train_step": "Optimizer steps done (global_step).",
    "caregpt_train_tokens_seen": "Real (non-padding) tokens this rank trained on, including before a resume.",
    "caregpt_train_tokens_per_second": "Real tokens per second on this rank since the previous logging step.",
    "caregpt_train_gpu_memory_allocated_bytes": "CUDA memory held by tensors on this rank's device.",
    "caregpt_train_gpu_memory_reserved_bytes": "CUDA memory reserved by the caching allocator on this rank's device.",
    "caregpt_train_gpu_memory_peak_bytes": "Peak CUDA memory held by tensors since the last logging step.",
}
METRIC_NAMES = tuple(GAUGES)
TAG_KEYS = ("run", "rank")
LOG_KEYS = {"loss": "caregpt_train_loss", "learning_rate": "caregpt_train_learning_rate", "grad_norm": "caregpt_train_grad_norm"}


class Throughput:
    """Real tokens per second, the one way every progress line, trainer_log.jsonl, gauge and all_results.json count it.

    interval(): tokens since the previous call over the wall time since the previous call, excluding nothing
    (evaluations, checkpoints and reports in between count as time). average(): tokens since start() over
    the wall time since start(), the run average written to all_results.json.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.start()

    def start(self, tokens: int = 0) -> None:
        self.first_time = self.last_time = self.clock()
        self.first_tokens = self.last_tokens = int(tokens)

    def interval(self, tokens: int) -> float:
        now = self.clock()
        rate = (int(tokens) - self.last_tokens) / max(now - self.last_time, 1e-9)
        self.last_tokens, self.last_time = int(tokens), now
        return rate

    def average(self, tokens: int | None = None) -> float:
        tokens = self.last_tokens if tokens is None else int(tokens)
        end = self.last_time if tokens == self.last_tokens else self.clock()
        return (tokens - self.first_tokens) / max(end - self.first_time, 1e-9)

    def elapsed(self) -> float:
        return self.clock() - self.first_time


class TrainMetricsCallback(TrainerCallback):
    """Sets the caregpt_train_* gauges at every `on_log`.

    tokens: returns the real tokens this process has trained on since (re)start, e.g.
    `lambda: trainer.real_tokens` for CareTrainer. Without it, HF's `num_input_tokens_seen`
    log entry is used when `include_num_input_tokens_seen` is on, else tokens are not reported.
    """

    def __init__(self, run: str, rank: int, tokens: Callable[[], int] | None = None):
        from ray.util.metrics import Gauge

        self.tags = {"run": str(run), "rank": str(rank)}
        self.tokens = tokens
        self.gauges = {name: Gauge(name, description=text, tag_keys=TAG_KEYS) for name, text in GAUGES.items()}
        self.tokens_offset = 0  # restored from the checkpoint's log history on resume
        self.rate = Throughput()

    @classmethod
    def for_trainer(cls, trainer, run: str, rank: int) -> "TrainMetricsCallback":
        """For CareTrainer, which counts real tokens in `real_tokens`."""
        return cls(run=run, rank=rank, tokens=lambda: int(getattr(trainer, "real_tokens", 0)))

    def _set(self, name: str, value: float) -> None:
        self.gauges[name].set(float(value), tags=self.tags)

    def on_train_begin(self, args, state, control, **kwargs):
        previous = [h for h in (state.log_history or []) if "tokens_seen" in h]
        self.tokens_offset = int(previous[-1]["tokens_seen"]) if previous else 0
        self.rate.start()

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        logs = logs or {}
        for key, name in LOG_KEYS.items():
            if isinstance(logs.get(key), (int, float)):
                self._set(name, logs[key])
        self._set("caregpt_train_step", state.global_step)
        # Only training-step logs carry a rate: HF's closing summary and eval logs come without
        # "loss", and counting them as an interval would report a misleading 0 tokens/s.
        tokens = self._tokens(logs) if "loss" in logs else None
        if tokens is not None:
            self._set("caregpt_train_tokens_seen", self.tokens_offset + tokens)
            self._set("caregpt_train_tokens_per_second", self.rate.interval(tokens))
        self._gpu_memory()

    def _tokens(self, logs: dict[str, Any]) -> int | None:
        if self.tokens is not None:
            return int(self.tokens())
        seen = logs.get("num_input_tokens_seen")
        return int(seen) if isinstance(seen, (int, float)) else None

    def _gpu_memory(self) -> None:
        import torch

        if not torch.cuda.is_available():  # CPU runs export no GPU series at all, not zeros
            return
        device = torch.cuda.current_device()
        self._set("caregpt_train_gpu_memory_allocated_bytes", torch.cuda.memory_allocated(device))
        self._set("caregpt_train_gpu_memory_reserved_bytes", torch.cuda.memory_reserved(device))
        self._set("caregpt_train_gpu_memory_peak_bytes", torch.cuda.max_memory_allocated(device))
        torch.cuda.reset_peak_memory_stats(device)  # peak per logging interval, not since start
