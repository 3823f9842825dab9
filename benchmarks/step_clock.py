"""Step timing for benchmarks of Hugging Face Trainer-based systems (caregpt's stage code, TRL, LLaMA-Factory).

``make_step_clock()`` is a TrainerCallback: a ``perf_counter`` mark and running token counts at train begin and
after every optimizer step. Tokens are counted by a forward pre-hook on the model (public torch API) registered at
train begin: it sees exactly the tensors of every micro-batch the training loop feeds the model, whatever the
collator and sampler (useful = ``attention_mask.sum()``, padded = ``input_ids.numel()``). Nothing here evaluates
during the timed run, so every forward is a training one. transformers is imported lazily: this module also runs
under a peer's venv (LLaMA-Factory's), where caregpt is not installed.
"""

from __future__ import annotations

import statistics
import time
from typing import Any


def make_step_clock():
    """A TrainerCallback recording (time, step, useful, padded tokens); see the module docstring."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, int, int, int]] = []
            self.info: dict[str, Any] = {}
            self.useful = self.padded = 0

        def _count(self, module, args, kwargs) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                return
            mask = kwargs.get("attention_mask")
            self.padded += int(ids.numel())
            self.useful += int(mask.sum()) if mask is not None and mask.dim() == 2 else int(ids.numel())

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(self._count, with_kwargs=True)
            self.info.update(gradient_checkpointing=bool(getattr(model, "is_gradient_checkpointing", False)),
                             dtype=str(next(model.parameters()).dtype).replace("torch.", ""), torch_threads=torch.get_num_threads())
            self.marks.append((time.perf_counter(), state.global_step, self.useful, self.padded))

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.global_step, self.useful, self.padded))

    return StepClock()


def summarize_marks(marks: list[tuple[float, int, int, int]], warmup: int, steps: int) -> dict[str, Any]:
    """Throughput over steps warmup+1 .. warmup+steps from cumulative marks indexed by step."""
    by_step = {step: (t, useful, padded) for t, step, useful, padded in marks}
    missing = [s for s in range(warmup, warmup + steps + 1) if s not in by_step]
    if missing:
        raise RuntimeError(f"steps {missing} were not recorded (ran {max(by_step, default=0)} steps)")
    span = range(warmup + 1, warmup + steps + 1)
    return throughput([by_step[s][0] - by_step[s - 1][0] for s in span], [by_step[s][1] - by_step[s - 1][1] for s in span],
                      [by_step[s][2] - by_step[s - 1][2] for s in span])


def throughput(seconds: list[float], useful: list[int], padded: list[int] | None) -> dict[str, Any]:
    total = sum(seconds)
    out: dict[str, Any] = {"timed_steps": len(seconds), "timed_seconds": total, "useful_tokens_per_s": sum(useful) / total,
                           "step_seconds_mean": total / len(seconds), "step_seconds_median": statistics.median(seconds),
                           "step_useful_tokens": useful}
    if padded:
        out.update(padded_tokens=sum(padded), padded_tokens_per_s=sum(padded) / total, useful_ratio=sum(useful) / sum(padded))
    return out
