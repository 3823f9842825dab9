"""Benchmark: caregpt SFT training throughput vs LLaMA-Factory 0.9.5 and plain TRL, on CPU.

Every system trains the same model on the same data with the same batch shape:

* model: the ``bench34m`` preset of :mod:`caregpt.models.tiny` (Llama architecture, hidden 512,
  8 layers, 8 heads, intermediate 1408, vocab 8192, ~34M parameters), built once into the work
  dir with a tokenizer trained on the shared SFT file + the shared pretraining text, seed 0;
* data: the first 2,000 records of ``../shared/data/sft_toyhom_im_department.jsonl`` (alpaca
  layout; user turn = instruction + "\\n" + input), chatml template, cutoff 1024;
* full fine-tuning, fp32, 8 samples per optimizer step (batch 8, no accumulation), one worker,
  learning rate 1e-5, seed 42, the same number of torch threads everywhere (this machine's CPU
  count, which is what caregpt gives its only worker); each system otherwise keeps its defaults
  (batching, sampler, gradient checkpointing: the table says which had it on).

Systems (each runs in a fresh subprocess; ``--only`` picks a subset):

* ``caregpt``: ``caregpt.train.launch.run_training`` -- Ray Train TorchTrainer, 1 worker, on an
  embedded Ray started in that subprocess (never another user's Ray), logging every step.
* ``plain``: the same stage code (``CareTrainer``, ``TokenDataset``, ``PadCollator``,
  ``training_arguments``, ``load_model``/``apply_finetuning``) in one plain process, without Ray
  and without ``RayReportCallback``: the Ray Train overhead is caregpt vs plain.
* ``trl``: ``trl.SFTTrainer`` (the version in this venv) on a chat-``messages`` dataset, defaults
  except batch 8, ``max_length`` 1024, steps, logging every step, lr/seed as above and fp32
  (``bf16=False``; TRL's default would be bf16 autocast).
* ``llamafactory``: LLaMA-Factory 0.9.5 from PyPI in its own cached venv (``--lf-venv``), run
  through its own entry point ``llamafactory.train.tuner.run_exp`` (what ``llamafactory-cli
  train`` calls) with stage sft, finetuning_type full, template ``chatml`` (same layout as
  caregpt's chatml: no default system prompt), cutoff_len 1024, its default padded batching.
* ``dense``: a reference ceiling: one hand-written fwd/bwd/AdamW step in plain PyTorch on a full
  8 x L block of real tokens (L = the data's mean record length), no padding at all.
* ``matmul``: the machine's fp32 matmul FLOP/s (2048 x 2048, same thread count), measured at
  the start and again at the end of the run; the median of all repetitions is the denominator of
  the utilisation figure.

How it is measured (identical for ``plain``, ``trl``, ``llamafactory``): a TrainerCallback takes
a ``time.perf_counter()`` mark at every ``on_step_end`` together with running token counters;
the counters are fed by wrapping ``transformers.Trainer._track_num_input_tokens``, which the HF
training loop calls once per micro-batch with exactly the tensors that go into the model
(useful tokens = ``attention_mask.sum()``, padded tokens = ``input_ids.numel()``). For ``plain``
the useful count is cross-checked against ``CareTrainer.real_tokens``. The Ray run cannot take a
callback from here, so its numbers come from its own ``trainer_log.jsonl``: every step logs
``tokens_seen`` (cumulative real tokens) and ``tokens_per_second`` (real tokens since the
previous log / seconds since the previous log, both taken in ``RayReportCallback.on_log``, right
after ``on_step_end``), so step k took ``(tokens_seen[k] - tokens_seen[k-1]) /
tokens_per_second[k]`` seconds. Both ways time one full optimizer step between consecutive marks.
The first ``--warmup`` steps are dropped; the next ``--steps`` are timed. Useful tokens/s = useful
tokens in the timed steps / their wall time. Utilisation = 6 x parameters x useful tokens/s /
matmul FLOP/s. The Ray run's padded tokens are not logged; they equal the plain run's when the
per-step useful counts match (same seeded length-grouped sampler), which the script checks.

Targets (printed, never asserted): caregpt >= 1.25x LLaMA-Factory useful tokens/s; utilisation
>= 60 %; caregpt under Ray Train <= 10 % slower than the same code in one plain process. Figures
measured on this machine before caregpt existed are printed next to them as references.

LLaMA-Factory's venv: ``python3.11 -m venv``, ``pip install torch==2.13.0`` first (the CPU wheel),
then ``llamafactory==0.9.5 --no-deps`` and its declared requirements under the constraint
``torch==2.13.0``, except ``torchaudio`` and ``torchvision``: no torchaudio on the index builds
against torch 2.13 (its newest, 2.11.1, pins torch 2.11) and the PyPI torchvision 0.28.0 cannot
load its operators next to the CPU torch build. Nothing LLaMA-Factory does for text SFT needs
either: transformers treats torchvision as optional, and LLaMA-Factory imports torchaudio at
module level only for audio inputs (``data/mm_plugin.py``), so a stand-in ``torchaudio`` module
that raises on use is put on that subprocess's PYTHONPATH. The venv is cached between runs (a
marker file says it is complete). If it cannot be built or run, the reason is printed and the
issue's reference figure (484 useful tokens/s) is used, labelled as a reference.

Run ``python benchmarks/train_throughput.py --help`` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SFT_DATA = SHARED_DATA / "sft_toyhom_im_department.jsonl"
TOKENIZER_CORPUS = [SFT_DATA, SHARED_DATA / "pretrain_medicalgpt_fever.txt"]
RESULT_TAG = "BENCH_RESULT "
SYSTEMS = ("caregpt", "trl", "llamafactory", "plain", "dense", "matmul")
LF_VERSION = "0.9.5"
TORCH_PIN = "torch==2.13.0"
LF_SKIP_REQUIREMENTS = {"torch", "torchaudio", "torchvision"}
LF_READY_MARKER = "caregpt-bench-ready.json"

# targets and the figures measured on this machine before caregpt existed (from the issue)
TARGET_VS_LF = 1.25
TARGET_UTILISATION = 0.60
TARGET_RAY_OVERHEAD = 0.10
REFERENCE = {
    "llamafactory": 484.0,
    "llamafactory_neat_packing": 350.0,
    "trl": 235.0,
    "trl_packing": 203.0,
    "llamafactory_utilisation": 0.52,
    "dense_utilisation": 0.85,
}


# ---------------------------------------------------------------------------------------------
# measurement helpers shared by the child processes (transformers is imported lazily: the
# LLaMA-Factory child runs this file with its own venv's Python, where caregpt is not installed)
# ---------------------------------------------------------------------------------------------
class TokenCounter:
    """Running useful (attention_mask.sum) and padded (input_ids.numel) token counts."""

    def __init__(self) -> None:
        self.useful = 0
        self.padded = 0
        self.batches = 0

    def add(self, inputs: dict[str, Any]) -> None:
        ids = inputs.get("input_ids")
        if ids is None:
            return
        mask = inputs.get("attention_mask")
        self.padded += int(ids.numel())
        # a 2-D 0/1 mask is what every system here produces (none packs); a 4-D mask would be packing
        self.useful += int(mask.sum()) if mask is not None and mask.dim() == 2 else int(ids.numel())
        self.batches += 1


def install_token_hook(counter: TokenCounter) -> str:
    """Count the tokens of every micro-batch the HF training loop feeds the model.

    transformers' inner loop calls ``Trainer._track_num_input_tokens(inputs)`` once per micro-batch
    (it returns at once unless ``include_num_input_tokens_seen`` is on); wrapping it sees exactly the
    collated tensors, whatever collator and sampler a system uses, at the cost of one sum.
    """
    from transformers import Trainer

    original = getattr(Trainer, "_track_num_input_tokens", None)
    if original is None:
        raise RuntimeError("this transformers version has no Trainer._track_num_input_tokens; the token hook needs updating")

    def tracked(self, inputs):
        counter.add(inputs)
        return original(self, inputs)

    Trainer._track_num_input_tokens = tracked
    return "Trainer._track_num_input_tokens"


def make_step_clock(counter: TokenCounter):
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """(perf_counter, global_step, useful, padded) at train begin and after every optimizer step."""

        def __init__(self) -> None:
            self.marks: list[tuple[float, int, int, int]] = []
            self.info: dict[str, Any] = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None:
                self.info["gradient_checkpointing"] = bool(getattr(model, "is_gradient_checkpointing", False))
                self.info["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
                self.info["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            self.info["torch_threads"] = torch.get_num_threads()
            self.marks.append((time.perf_counter(), state.global_step, counter.useful, counter.padded))

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.global_step, counter.useful, counter.padded))

    return StepClock()


def summarize_marks(marks: list[tuple[float, int, int, int]], warmup: int, steps: int) -> dict[str, Any]:
    """Throughput over steps warmup+1 .. warmup+steps from cumulative marks indexed by step."""
    by_step = {step: (t, useful, padded) for t, step, useful, padded in marks}
    last = warmup + steps
    missing = [s for s in range(warmup, last + 1) if s not in by_step]
    if missing:
        raise RuntimeError(f"steps {missing} were not recorded (ran {max(by_step, default=0)} steps)")
    step_seconds = [by_step[s][0] - by_step[s - 1][0] for s in range(warmup + 1, last + 1)]
    step_useful = [by_step[s][1] - by_step[s - 1][1] for s in range(warmup + 1, last + 1)]
    step_padded = [by_step[s][2] - by_step[s - 1][2] for s in range(warmup + 1, last + 1)]
    return _throughput(step_seconds, step_useful, step_padded)


def _throughput(step_seconds: list[float], step_useful: list[int], step_padded: list[int] | None) -> dict[str, Any]:
    seconds = sum(step_seconds)
    useful = sum(step_useful)
    out: dict[str, Any] = {
        "timed_steps": len(step_seconds),
        "timed_seconds": seconds,
        "useful_tokens": useful,
        "useful_tokens_per_s": useful / seconds,
        "step_seconds_mean": seconds / len(step_seconds),
        "step_seconds_median": statistics.median(step_seconds),
        "step_seconds": [round(s, 4) for s in step_seconds],
        "step_useful_tokens": step_useful,
    }
    if step_padded is not None:
        padded = sum(step_padded)
        out.update(padded_tokens=padded, padded_tokens_per_s=padded / seconds, useful_ratio=useful / padded if padded else None,
                   step_padded_tokens=step_padded)
    return out


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _records(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ---------------------------------------------------------------------------------------------
# children (each runs in its own subprocess: python this_file --_child NAME --_spec FILE)
# ---------------------------------------------------------------------------------------------
def _caregpt_config(spec: dict[str, Any], **extra: Any):
    from caregpt.config.loader import load_config

    values = {
        "model_name_or_path": spec["model"],
        "dataset": spec["records"],
        "dataset_dir": str(Path(spec["records"]).parent),
        "stage": "sft",
        "template": "chatml",
        "cutoff_len": 1024,
        "finetuning_type": "full",
        "per_device_train_batch_size": spec["batch_size"],
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-5,
        "seed": 42,
        "tokenized_path": spec["tokenized"],
    }
    values.update(extra)
    return load_config(None, {k: str(v) for k, v in values.items()})


def child_setup(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model, cut the records, tokenize them once (caregpt's Ray Data pipeline)."""
    os.environ.setdefault("CAREGPT_PROGRESS", "0")
    import numpy as np

    from caregpt.models.tiny import build_tiny_model

    start = time.perf_counter()
    model = Path(spec["model"])
    if not (model / "config.json").is_file():
        build_tiny_model("bench34m", [p for p in TOKENIZER_CORPUS if p.is_file()], model, seed=0, overwrite=True)
    built = time.perf_counter() - start
    with open(SFT_DATA, encoding="utf-8") as source, open(spec["records"], "w", encoding="utf-8") as out:
        for i, line in enumerate(source):
            if i >= spec["records_count"]:
                break
            out.write(line)
    import ray

    from caregpt.data.prepare import prepare
    from caregpt.runtime import ensure_ray
    from caregpt.train.data import TokenDataset

    ensure_ray()
    path, manifest = prepare(_caregpt_config(spec), spec["model"])
    ray.shutdown()
    data = TokenDataset.from_parquet(path)
    lengths = data.lengths
    manifest_model = json.loads((model / "caregpt_model.json").read_text())
    return {
        "model": str(model),
        "num_parameters": int(manifest_model["num_parameters"]),
        "vocab_size": int(manifest_model["vocab_size"]),
        "model_build_seconds": round(built, 1),
        "tokenized": str(path),
        "records_used": manifest["records_used"],
        "records_rejected": manifest["records_rejected"],
        "tokens": int(lengths.sum()),
        "length_mean": float(lengths.mean()),
        "length_percentiles": {str(q): float(v) for q, v in zip((0, 10, 50, 90, 100), np.percentile(lengths, [0, 10, 50, 90, 100]))},
    }


def child_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    _set_threads(spec["threads"])
    n, reps = spec["matmul_size"], spec["matmul_reps"]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    out = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    flops = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        flops.append(2 * n**3 / (time.perf_counter() - start))
    return {"size": n, "reps": reps, "threads": torch.get_num_threads(), "flops": flops,
            "flops_median": statistics.median(flops), "flops_max": max(flops)}


def _ray_process_kind(proc) -> str:
    try:
        name = proc.name()
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - a process can vanish or hide its cmdline at any time
        return "?"
    if name in ("gcs_server", "raylet"):
        return name
    if cmd.startswith("ray::"):  # actors and task workers retitle themselves (ray::IDLE, ray::RayTrainWorker...)
        return cmd.split()[0].split("(")[0]
    for needle, kind in (("dashboard/agent.py", "dashboard agent"), ("runtime_env/agent", "runtime_env agent"),
                         ("dashboard.subprocesses", "dashboard subprocesses"), ("dashboard/dashboard.py", "dashboard"),
                         ("log_monitor", "log_monitor"), ("autoscaler/_private/monitor", "autoscaler monitor"),
                         ("default_worker.py", "ray worker (starting)")):
        if needle in cmd:
            return kind
    return (cmd or name)[:50]


class RayCpuSampler:
    """CPU seconds of every process of this process's own Ray session (its descendants), per kind.

    Sampled every `interval` seconds in a thread of the driver; the last value seen for a process is
    kept, so a process that exits (the training worker) still counts up to its last sample.
    """

    def __init__(self, interval: float = 1.0):
        import threading

        import psutil

        self.psutil = psutil
        self.interval = interval
        self.seen: dict[int, tuple[str, float]] = {}
        self.series: list[tuple[float, dict[int, float], float]] = []  # (time, CPU-s per pid, driver CPU-s)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="ray-cpu-sampler")

    def _sample(self) -> None:
        root = self.psutil.Process()
        try:
            procs = root.children(recursive=True)
        except self.psutil.Error:
            return
        for proc in procs:
            try:
                times = proc.cpu_times()
                cpu = times.user + times.system
            except self.psutil.Error:
                continue
            kind = _ray_process_kind(proc)  # re-read: a worker retitles itself once it runs an actor
            if kind == "?" and proc.pid in self.seen:
                kind = self.seen[proc.pid][0]
            self.seen[proc.pid] = (kind, cpu)
        self.series.append((time.perf_counter(), {pid: cpu for pid, (_, cpu) in self.seen.items()}, time.process_time()))

    def while_training(self, min_worker_cpus: float = 0.5) -> dict[str, float] | None:
        """CPUs used by everything but the training worker (driver included) while the worker computes."""
        workers = {pid for pid, (kind, _) in self.seen.items() if kind == "ray::RayTrainWorker"}
        points = [(t, sum(c for pid, c in cpus.items() if pid in workers),
                   sum(c for pid, c in cpus.items() if pid not in workers) + driver) for t, cpus, driver in self.series]
        seconds = other = 0.0
        for (t0, w0, o0), (t1, w1, o1) in zip(points, points[1:]):
            if t1 > t0 and (w1 - w0) / (t1 - t0) >= min_worker_cpus:
                seconds += t1 - t0
                other += o1 - o0
        return {"seconds": round(seconds, 1), "other_cpus": round(other / seconds, 3)} if seconds else None

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> dict[str, float]:
        self._sample()
        self.stop_event.set()
        self.thread.join()
        totals: dict[str, float] = {}
        for kind, cpu in self.seen.values():
            totals[kind] = totals.get(kind, 0.0) + cpu
        return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def child_caregpt(spec: dict[str, Any]) -> dict[str, Any]:
    """caregpt's own `caregpt train` path: run_training -> Ray Train TorchTrainer (1 worker)."""
    os.environ.setdefault("CAREGPT_PROGRESS", "0")
    from caregpt.train.launch import run_training

    out_dir = Path(spec["workdir"]) / "caregpt_ray_out"
    config = _caregpt_config(spec, max_steps=spec["warmup"] + spec["steps"], logging_steps=spec.get("ray_logging_steps", 1),
                             output_dir=str(out_dir),
                             overwrite_output_dir=True)
    sampler = RayCpuSampler()
    sampler.start()
    cpu_start = time.process_time()
    start = time.perf_counter()
    outcome = run_training(config)
    wall = time.perf_counter() - start
    driver_cpu = time.process_time() - cpu_start
    ray_cpu = sampler.stop()
    ray_cpu_training = sampler.while_training()
    import ray

    ray.shutdown()
    log = [json.loads(line) for line in (out_dir / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    per_step = {int(e["step"]): e for e in log if "tokens_seen" in e and "tokens_per_second" in e}
    warmup, steps, every = spec["warmup"], spec["steps"], spec.get("ray_logging_steps", 1)
    seconds, useful = [], []
    # one entry per logging interval (one step when logging every step); interval k covers steps (k-every, k]
    for s in range(warmup + every, warmup + steps + 1, every):
        if s not in per_step or (s - every not in per_step and s != every):
            raise RuntimeError(f"trainer_log.jsonl has no tokens_seen/tokens_per_second for step {s} or {s - every}")
        delta = per_step[s]["tokens_seen"] - (per_step[s - every]["tokens_seen"] if s > every else 0)
        useful.append(int(delta))
        seconds.append(delta / per_step[s]["tokens_per_second"])
    result = _throughput(seconds, useful, None)
    # with logging_steps > 1 each entry above is one logging interval: report per optimizer step
    result.update(timed_steps=steps, step_seconds_mean=result["timed_seconds"] / steps)
    result.update(
        logging_steps=every,
        method="trainer_log.jsonl: interval time = delta tokens_seen / tokens_per_second (RayReportCallback.on_log)",
        run_training_wall_seconds=wall,
        cpu_seconds_during_run_training={"driver (this process)": round(driver_cpu, 2), **ray_cpu},
        ray_cpus_while_worker_trains=ray_cpu_training,
        train_runtime=outcome.metrics.get("train_runtime"),
        tokens_seen=outcome.metrics.get("tokens_seen"),
        threads=int(os.cpu_count() or 1),
        gradient_checkpointing=config.train.gradient_checkpointing,
        dtype="float32",
        ray_version=__import__("ray").__version__,
    )
    return result


def child_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """The worker's stage code (caregpt.train.worker.train_loop without Ray) in this one process."""
    import torch

    from caregpt.data.tokenize import load_tokenizer
    from caregpt.models.adapters import apply_finetuning
    from caregpt.models.loader import load_model
    from caregpt.train.data import PadCollator, TokenDataset, split_eval
    from caregpt.train.trainer import CareTrainer
    from caregpt.train.worker import training_arguments

    counter = TokenCounter()
    hook = install_token_hook(counter)
    _set_threads(spec["threads"])
    config = _caregpt_config(spec, max_steps=spec["warmup"] + spec["steps"], logging_steps=1,
                             output_dir=str(Path(spec["workdir"]) / "caregpt_plain_out"))
    start = time.perf_counter()
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    model = apply_finetuning(load_model(config, for_training=True, device="cpu"), config)
    train_data, _ = split_eval(TokenDataset.from_parquet(spec["tokenized"]), config.data.val_size, config.train.seed)
    args = training_arguments(config, str(Path(spec["workdir"]) / "caregpt_plain_hf"), None, False, False)
    trainer = CareTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=None,
                          data_collator=PadCollator(tokenizer.pad_token_id, pad_multiple=1, varlen_attention=False),
                          processing_class=tokenizer)
    clock = make_step_clock(counter)
    trainer.add_callback(clock)
    trainer.train()
    wall = time.perf_counter() - start
    result = summarize_marks(clock.marks, spec["warmup"], spec["steps"])
    result.update(clock.info, method=f"StepClock.on_step_end + {hook} hook", wall_seconds=wall,
                  real_tokens_check={"CareTrainer.real_tokens": trainer.real_tokens, "hook": counter.useful},
                  torch_version=torch.__version__)
    return result


def child_dense(spec: dict[str, Any]) -> dict[str, Any]:
    """Ceiling: the same model, a full 8 x L block of real tokens, no padding, no Trainer."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from caregpt.train.data import TokenDataset

    _set_threads(spec["threads"])
    data = TokenDataset.from_parquet(spec["tokenized"])
    width = int(round(float(data.lengths.mean())))
    flat = data.columns["input_ids"].values.to_numpy(zero_copy_only=False).astype(np.int64)
    block = torch.from_numpy(flat[: spec["batch_size"] * width].copy()).view(spec["batch_size"], width)
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    marks = []
    for step in range(spec["warmup"] + spec["steps"] + 1):
        marks.append((time.perf_counter(), step, step * block.numel(), step * block.numel()))
        if step == spec["warmup"] + spec["steps"]:
            break
        loss = model(input_ids=block, labels=block).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss)
    result = summarize_marks(marks, spec["warmup"], spec["steps"])
    result.update(block=[spec["batch_size"], width], method="hand-written loop: fwd + bwd + clip + AdamW per step",
                  torch_threads=torch.get_num_threads(), gradient_checkpointing=False, dtype="float32")
    return result


def child_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    counter = TokenCounter()
    hook = install_token_hook(counter)
    _set_threads(spec["threads"])
    rows = []
    for record in _records(spec["records"]):
        query = record.get("input") or ""
        user = f"{record['instruction']}\n{query}" if query.strip() else record["instruction"]
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]})
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(Path(spec["workdir"]) / "trl_out"),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        max_length=1024,
        max_steps=spec["warmup"] + spec["steps"],
        logging_steps=1,
        learning_rate=1e-5,
        seed=42,
        bf16=False,  # fp32 like every system here (TRL's own default is bf16 autocast)
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    clock = make_step_clock(counter)
    trainer.add_callback(clock)
    start = time.perf_counter()
    trainer.train()
    result = summarize_marks(clock.marks, spec["warmup"], spec["steps"])
    result.update(clock.info, method=f"StepClock.on_step_end + {hook} hook", train_wall_seconds=time.perf_counter() - start,
                  trl_version=trl.__version__, packing=config.packing, padding_free=config.padding_free)
    return result


TORCHAUDIO_STUB = '''"""Stand-in for torchaudio, written by caregpt's benchmarks/train_throughput.py.

PyPI has no torchaudio built against torch 2.13 (the CPU torch this benchmark venv uses), and
LLaMA-Factory imports torchaudio at module level only to decode audio inputs, which text SFT never
has. Any real use raises.
"""

__version__ = "0+caregpt.bench.stub"


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchaudio is a stand-in in the caregpt benchmark venv: audio inputs are not supported")


load = _unavailable


class functional:  # noqa: N801 - mirrors the torchaudio.functional namespace
    resample = staticmethod(_unavailable)
'''


def child_llamafactory(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs under the LLaMA-Factory venv's Python: its own run_exp (= `llamafactory-cli train`)."""
    import torch
    import transformers

    import llamafactory
    from llamafactory.train.tuner import run_exp

    counter = TokenCounter()
    hook = install_token_hook(counter)
    _set_threads(spec["threads"])
    data_dir = Path(spec["workdir"]) / "lf_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec["records"], data_dir / "records.jsonl")
    (data_dir / "dataset_info.json").write_text(json.dumps({
        "bench_records": {
            "file_name": "records.jsonl",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history"},
        }
    }, indent=2))
    args = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": spec["model"],
        "finetuning_type": "full",
        "dataset": "bench_records",
        "dataset_dir": str(data_dir),
        "template": "chatml",
        "cutoff_len": 1024,
        "overwrite_cache": True,
        "output_dir": str(Path(spec["workdir"]) / "lf_out"),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": spec["batch_size"],
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-5,
        "max_steps": spec["warmup"] + spec["steps"],
        "logging_steps": 1,
        "seed": 42,
        "report_to": "none",
        "plot_loss": False,
    }
    (Path(spec["workdir"]) / "lf_train.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in args.items()))
    clock = make_step_clock(counter)
    start = time.perf_counter()
    run_exp(args=dict(args), callbacks=[clock])
    result = summarize_marks(clock.marks, spec["warmup"], spec["steps"])
    result.update(clock.info, method=f"StepClock.on_step_end + {hook} hook, via llamafactory.train.tuner.run_exp",
                  train_wall_seconds=time.perf_counter() - start, llamafactory_version=llamafactory.__version__,
                  transformers_version=transformers.__version__, torch_version=torch.__version__, template="chatml",
                  config_yaml=str(Path(spec["workdir"]) / "lf_train.yaml"))
    return result


CHILDREN = {
    "setup": child_setup,
    "matmul": child_matmul,
    "caregpt": child_caregpt,
    "plain": child_plain,
    "dense": child_dense,
    "trl": child_trl,
    "llamafactory": child_llamafactory,
}


# ---------------------------------------------------------------------------------------------
# parent: LLaMA-Factory venv, subprocess runs, report
# ---------------------------------------------------------------------------------------------
def _pip(python: Path, *args: str, log) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"`pip install {' '.join(args)}` failed (exit {done.returncode})")


def ensure_lf_venv(venv: Path, log_path: Path) -> Path:
    """The cached LLaMA-Factory venv's Python (built on first use; see the module docstring)."""
    python = venv / "bin" / "python"
    marker = venv / LF_READY_MARKER
    if marker.is_file() and python.is_file():
        return python
    interpreter = shutil.which("python3.11") or shutil.which("python3")
    if interpreter is None:
        raise RuntimeError("no python3.11 / python3 on PATH to create the LLaMA-Factory venv")
    print(f"[bench] building the LLaMA-Factory {LF_VERSION} venv in {venv} (log: {log_path}) ...", flush=True)
    start = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    with open(log_path, "a", encoding="utf-8") as log:
        subprocess.run([interpreter, "-m", "venv", str(venv)], check=True, stdout=log, stderr=subprocess.STDOUT)
        _pip(python, "--upgrade", "pip", log=log)
        _pip(python, TORCH_PIN, log=log)  # first: the CPU wheel, or pip resolves a multi-GB CUDA build
        _pip(python, "--no-deps", f"llamafactory=={LF_VERSION}", log=log)
        listing = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('llamafactory') or []))"],
            check=True, capture_output=True, text=True,
        ).stdout.splitlines()
        requirements = []
        for requirement in listing:
            if "extra ==" in requirement:
                continue
            name = requirement.split(";")[0].strip()
            bare = name.split("[")[0]
            for sep in "<>=!~ (":
                bare = bare.split(sep)[0]
            if bare.strip().lower() in LF_SKIP_REQUIREMENTS:
                continue
            requirements.append(name)
        constraints = venv / "caregpt-bench-constraints.txt"
        constraints.write_text(TORCH_PIN + "\n")
        _pip(python, "-c", str(constraints), *requirements, log=log)
    shim = venv / "caregpt-bench-shims" / "torchaudio"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text(TORCHAUDIO_STUB)
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    marker.write_text(json.dumps({"llamafactory": LF_VERSION, "built_seconds": round(time.perf_counter() - start, 1),
                                  "skipped": sorted(LF_SKIP_REQUIREMENTS), "freeze": freeze.splitlines()}, indent=2))
    print(f"[bench] LLaMA-Factory venv ready in {time.perf_counter() - start:.0f}s", flush=True)
    return python


def _cpu_jiffies() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [float(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_cpus(seconds: float = 2.0) -> float:
    """How many CPUs the whole machine kept busy over the next `seconds`."""
    busy0, _ = _cpu_jiffies()
    time.sleep(seconds)
    busy1, _ = _cpu_jiffies()
    return (busy1 - busy0) / seconds


def wait_for_quiet(max_wait: float, below: float) -> dict[str, Any]:
    """Wait (at most max_wait s) until other processes use fewer than `below` CPUs; returns what was seen."""
    start = time.perf_counter()
    seen = busy_cpus()
    while seen >= below and time.perf_counter() - start < max_wait:
        seen = busy_cpus()
    return {"waited_seconds": round(time.perf_counter() - start, 1), "busy_cpus_at_start": round(seen, 2)}


def run_child(name: str, spec: dict[str, Any], workdir: Path, python: str | Path = sys.executable,
              env_extra: dict[str, str] | None = None, timeout: float = 1800, verbose: bool = False,
              tag: str = "", quiet_wait: float = 0.0, quiet_below: float = 0.3) -> dict[str, Any]:
    spec_path = workdir / f"spec_{name}.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"log_{name}{tag}.txt"
    env = dict(os.environ, **(env_extra or {}))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [str(python), str(Path(__file__).resolve()), "--_child", name, "--_spec", str(spec_path)]
    quiet = wait_for_quiet(quiet_wait, quiet_below) if quiet_wait > 0 else {}
    print(f"[bench] {name} ... (log: {log_path})" + (f" after waiting {quiet['waited_seconds']:.0f}s for a quiet machine "
          f"({quiet['busy_cpus_at_start']:.2f} CPUs busy)" if quiet.get("waited_seconds") else ""), flush=True)
    load_before = os.getloadavg()
    busy0, _ = _cpu_jiffies()
    own0 = _children_cpu()
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        # own session: on a timeout the child and everything it started (its embedded Ray) are ended together
        proc = subprocess.Popen(command, stdout=subprocess.PIPE if verbose else log, stderr=subprocess.STDOUT, env=env,
                                text=True, start_new_session=True)
        try:
            if verbose:
                for line in proc.stdout:  # type: ignore[union-attr]
                    log.write(line)
                    sys.stdout.write(f"  {name}| {line}")
            code: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout"
    elapsed = time.perf_counter() - start
    busy = _cpu_jiffies()[0] - busy0
    own = _children_cpu() - own0
    text = log_path.read_text(encoding="utf-8", errors="replace")
    results = [line[len(RESULT_TAG):] for line in text.splitlines() if line.startswith(RESULT_TAG)]
    if code != 0 or not results:
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"{name} failed (exit {code}) after {elapsed:.0f}s; last lines of {log_path}:\n{tail}")
    result = json.loads(results[-1])
    if isinstance(result.get("cpu_seconds_during_run_training"), dict):
        # Ray's workers are reaped by the raylet, not by us: count them from the child's own sampling
        own = max(own, sum(result["cpu_seconds_during_run_training"].values()))
    result.update(quiet)
    result["child_seconds"] = round(elapsed, 1)
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    # what the rest of the machine used meanwhile: all busy CPU time minus this run's own (reaped) processes
    result["machine_busy_cpus"] = round(busy / elapsed, 2)
    result["other_cpus"] = round(max(0.0, busy - own) / elapsed, 2)
    print(f"[bench] {name} done in {elapsed:.0f}s (other processes kept {result['other_cpus']:.2f} of {os.cpu_count()} CPUs busy; "
          f"load average {result['loadavg_after'][0]:.2f})", flush=True)
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


ROW_LABELS = {
    "caregpt": "caregpt (Ray Train, 1 worker)",
    "plain": "caregpt stage code, plain process",
    "trl": "TRL SFTTrainer defaults",
    "llamafactory": f"LLaMA-Factory {LF_VERSION}",
    "dense": "dense PyTorch step (ceiling)",
}
AGGREGATED = ("useful_tokens_per_s", "padded_tokens_per_s", "useful_ratio", "step_seconds_mean")


def aggregate(rounds: list[dict[str, Any]], how: str) -> dict[str, Any]:
    """One figure per system from its rounds: the fastest round (`best`) or the median of each figure."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return {"error": rounds[-1]["error"], "rounds": rounds}
    if how == "best" or len(ok) == 1:
        out = dict(max(ok, key=lambda r: r["useful_tokens_per_s"]))
    else:
        out = {k: v for k, v in ok[0].items() if k not in AGGREGATED and not k.startswith("step_")}
        for key in AGGREGATED:
            values = [r[key] for r in ok if r.get(key) is not None]
            out[key] = statistics.median(values) if values else None
    out["rounds"] = rounds
    out["per_round"] = [None if "error" in r else (round(r["useful_tokens_per_s"], 1), r.get("other_cpus")) for r in rounds]
    return out


def report(results: dict[str, list[dict[str, Any]]], setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    params = setup["num_parameters"]
    matmul_runs = results.get("matmul", [])
    matmul_flops = [f for run in matmul_runs for f in run["flops"]]
    # the denominator follows --aggregate: the best measurement's median, or the median of every repetition
    if not matmul_flops:
        peak = None
    elif args.aggregate == "best":
        peak = max(run["flops_median"] for run in matmul_runs)
    else:
        peak = statistics.median(matmul_flops)

    def utilisation(tps: float | None) -> float | None:
        return 6 * params * tps / peak if (tps and peak) else None

    # the Ray run's padded tokens: the plain run of the same round trained on the same batches
    for ray_run, plain_run in zip(results.get("caregpt", []), results.get("plain", [])):
        if "error" in ray_run or "error" in plain_run or "padded_tokens" in ray_run:
            continue
        if sum(ray_run["step_useful_tokens"]) == sum(plain_run["step_useful_tokens"]) and (
                ray_run.get("logging_steps", 1) > 1 or ray_run["step_useful_tokens"] == plain_run["step_useful_tokens"]):
            ray_run.update(padded_tokens=plain_run["padded_tokens"], padded_tokens_per_s=plain_run["padded_tokens"] / ray_run["timed_seconds"],
                           useful_ratio=plain_run["useful_ratio"], padded_from="plain run (identical per-step useful tokens)")
    agg = {name: aggregate(runs, args.aggregate) for name, runs in results.items() if name in ROW_LABELS}
    print()
    print(f"model bench34m: {params:,} parameters; data: {setup['records_used']} records, {setup['tokens']:,} tokens, "
          f"mean length {setup['length_mean']:.1f} (p50 {setup['length_percentiles']['50']:.0f}, max {setup['length_percentiles']['100']:.0f}); "
          f"batch {args.batch_size}, cutoff 1024, fp32, {args.threads} torch threads, {args.warmup} warm-up + {args.steps} timed steps"
          + (f"; {args.rounds} interleaved rounds, table = {'fastest round' if args.aggregate == 'best' else 'median'}" if args.rounds > 1 else ""))
    if peak:
        print(f"fp32 matmul {args.matmul_size}x{args.matmul_size}: {peak / 1e9:.1f} GFLOP/s "
              f"({'best measurement' if args.aggregate == 'best' else 'median of all reps'}; {len(matmul_flops)} reps) "
              f"(per measurement: {', '.join(format(run['flops_median'] / 1e9, '.1f') for run in matmul_runs)})")
    header = (f"{'system':36} {'useful tok/s':>12} {'padded tok/s':>12} {'useful/padded':>13} {'step s':>7} {'util':>6} "
              f"{'grad ckpt':>9} {'others CPU':>10}")
    print()
    print(header)
    print("-" * len(header))
    for name, label in ROW_LABELS.items():
        r = agg.get(name)
        if r is None:
            continue
        if name == "caregpt" and args.ray_logging_steps > 1:
            label = f"caregpt (Ray, logging_steps {args.ray_logging_steps})"
        if "error" in r:
            print(f"{label:36} failed: {r['error'].splitlines()[0][:90]}")
            continue
        u = utilisation(r["useful_tokens_per_s"])
        print(f"{label:36} {r['useful_tokens_per_s']:12.1f} {_fmt(r.get('padded_tokens_per_s'), '12.1f'):>12} "
              f"{_fmt(r.get('useful_ratio'), '13.3f'):>13} {r['step_seconds_mean']:7.3f} {_fmt(u * 100 if u else None, '5.1f') + '%':>6} "
              f"{str(r.get('gradient_checkpointing', 'n/a')):>9} {_fmt(r.get('other_cpus'), '10.2f'):>10}")
    print(f"(others CPU: CPUs that other processes on this machine kept busy, on average, during that run; of {os.cpu_count()})")
    if args.rounds > 1:
        print()
        for name, label in ROW_LABELS.items():
            if name in agg:
                rounds_text = ", ".join("failed" if r is None else f"{r[0]:.1f} (others {_fmt(r[1], '.2f')})" for r in agg[name]["per_round"])
                print(f"  {label:36} per round: {rounds_text}")
    print()
    summary: dict[str, Any] = {"matmul_flops_median": peak, "num_parameters": params,
                               "useful_tokens_per_s": {k: v.get("useful_tokens_per_s") for k, v in agg.items()}}

    def good(name: str) -> dict[str, Any] | None:
        r = agg.get(name)
        return r if r is not None and "error" not in r else None

    base, plain, lf, trl, dense = good("caregpt"), good("plain"), good("llamafactory"), good("trl"), good("dense")
    if base is None and plain is not None:
        print("(no Ray run: the ratios below use the plain-process figure for caregpt)")
        base = plain
    if base:
        if lf:
            ratio, what = base["useful_tokens_per_s"] / lf["useful_tokens_per_s"], "measured in this run"
        else:
            ratio, what = base["useful_tokens_per_s"] / REFERENCE["llamafactory"], \
                f"LLaMA-Factory NOT measured: REFERENCE figure {REFERENCE['llamafactory']:.0f} tok/s from the issue"
        summary["vs_llamafactory"] = {"ratio": ratio, "target": TARGET_VS_LF, "llamafactory": what}
        print(f"caregpt / LLaMA-Factory useful tokens/s: {ratio:.2f}x  (target >= {TARGET_VS_LF:.2f}x; {what})"
              f"  [{'meets' if ratio >= TARGET_VS_LF else 'MISSES'} target]")
        if trl:
            ratio = base["useful_tokens_per_s"] / trl["useful_tokens_per_s"]
            summary["vs_trl"] = ratio
            print(f"caregpt / TRL SFTTrainer defaults useful tokens/s: {ratio:.2f}x  (no target)")
        u = utilisation(base["useful_tokens_per_s"])
        if u is not None:
            summary["utilisation"] = u
            lfu = utilisation(lf["useful_tokens_per_s"]) if lf else None
            du = utilisation(dense["useful_tokens_per_s"]) if dense else None
            summary["utilisation_llamafactory"], summary["utilisation_dense"] = lfu, du
            print(f"caregpt useful-token FLOP/s / fp32 matmul FLOP/s: {u * 100:.1f}%  (target >= {TARGET_UTILISATION * 100:.0f}%)"
                  f"  [{'meets' if u >= TARGET_UTILISATION else 'MISSES'} target]; here LLaMA-Factory {_fmt(lfu * 100 if lfu else None, '.1f')}{'%' if lfu else ''}, "
                  f"dense step {_fmt(du * 100 if du else None, '.1f')}{'%' if du else ''}")
        if plain and good("caregpt"):
            overhead = plain["useful_tokens_per_s"] / base["useful_tokens_per_s"] - 1
            summary["ray_overhead"] = overhead
            print(f"Ray Train overhead (plain tok/s / Ray tok/s - 1): {overhead * 100:+.1f}%  (target <= {TARGET_RAY_OVERHEAD * 100:.0f}%)"
                  f"  [{'meets' if overhead <= TARGET_RAY_OVERHEAD else 'MISSES'} target]")
            walls = [(r.get("run_training_wall_seconds"), p.get("wall_seconds")) for r, p in zip(base["rounds"], plain["rounds"])
                     if "error" not in r and "error" not in p]
            if walls:
                print(f"  end to end (round 1): run_training {walls[0][0]:.1f}s (embedded Ray start, cache check, worker, checkpoint) "
                      f"vs plain process {walls[0][1]:.1f}s (model load + train)")
            every = base.get("logging_steps", 1)
            poll = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0 (Ray Train default)")
            print(f"  the Ray run logged (= ray.train.report) every {every} step(s), one log per {base['step_seconds_mean'] * every:.2f}s; "
                  f"Ray Train's controller takes reports every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S = {poll}s from a queue of one, "
                  f"so reports more frequent than that block training")
            cpu = base["rounds"][0].get("cpu_seconds_during_run_training") if "error" not in base["rounds"][0] else None
            if cpu:
                wall = base["rounds"][0]["run_training_wall_seconds"]
                ray_own = sum(v for k, v in cpu.items() if k != "ray::RayTrainWorker")
                busy = ", ".join(f"{k} {v:.1f}" for k, v in list(cpu.items())[:8])
                print(f"  CPU seconds during run_training (round 1, {wall:.0f}s wall): {busy}")
                print(f"  => everything but the training worker: {ray_own:.1f} CPU-s = {ray_own / wall:.2f} CPUs on average "
                      f"({ray_own / wall / (os.cpu_count() or 1) * 100:.1f}% of this machine)")
                steady = base["rounds"][0].get("ray_cpus_while_worker_trains")
                if steady:
                    print(f"  => while the worker trained ({steady['seconds']:.0f}s sampled): {steady['other_cpus']:.3f} CPUs for Ray's "
                          f"own processes and the driver")
    print(f"issue references (this machine, before caregpt): LLaMA-Factory {REFERENCE['llamafactory']:.0f}, its neat_packing "
          f"~{REFERENCE['llamafactory_neat_packing']:.0f}, TRL defaults {REFERENCE['trl']:.0f}, TRL packing {REFERENCE['trl_packing']:.0f} "
          f"useful tok/s; utilisation LLaMA-Factory ~{REFERENCE['llamafactory_utilisation'] * 100:.0f}%, dense step ~{REFERENCE['dense_utilisation'] * 100:.0f}%")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="caregpt SFT training throughput (useful = non-padding tokens/s) vs LLaMA-Factory 0.9.5 and TRL, "
                    "plus fp32 utilisation and Ray Train overhead. Prints a table; never asserts.",
    )
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps after warm-up (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    parser.add_argument("--records", type=int, default=2000, help="first N records of the shared SFT file (default 2000)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per optimizer step (default 8)")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every system this many times, interleaved (order rotated each round), and report the "
                             "median: steadier on a shared machine (default 1)")
    parser.add_argument("--aggregate", choices=("best", "median"), default="best",
                        help="with --rounds > 1: report each system's fastest round (default; outside load only ever "
                             "slows a run down) or the median of its rounds")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                        help="before each run, wait up to this long until the machine is nearly idle (see --quiet-below); "
                             "default 0: do not wait")
    parser.add_argument("--quiet-below", type=float, default=0.3, metavar="CPUS",
                        help="'nearly idle' for --quiet-wait: fewer than this many CPUs busy over 2 s (default 0.3)")
    parser.add_argument("--ray-logging-steps", type=int, default=1, metavar="N",
                        help="logging_steps of the caregpt Ray run (default 1: per-step timing). Every log is a "
                             "ray.train.report; --warmup and --steps must be multiples of N")
    parser.add_argument("--lf-venv", default="/tmp/caregpt-bench-lf-venv", help="cached LLaMA-Factory venv (built on first use)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for every system (default: CPU count, what caregpt gives its one worker)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-reps", type=int, default=20)
    parser.add_argument("--workdir", default=None, help="work dir (default: a fresh temp dir, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (model, logs, outputs)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per system run (default 1800)")
    parser.add_argument("--verbose", action="store_true", help="stream every subprocess's output")
    parser.add_argument("--json", default=None, metavar="OUT", help="write all figures to this JSON file")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._child:
        spec = json.loads(Path(args._spec).read_text())
        result = CHILDREN[args._child](spec)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {','.join(SYSTEMS)}")
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.ray_logging_steps < 1:
        parser.error("--rounds, --steps and --ray-logging-steps must be >= 1, --warmup >= 0")
    if args.warmup % args.ray_logging_steps or args.steps % args.ray_logging_steps:
        parser.error(f"--warmup ({args.warmup}) and --steps ({args.steps}) must be multiples of --ray-logging-steps ({args.ray_logging_steps})")
    if not SFT_DATA.is_file():
        parser.error(f"shared SFT data not found at {SFT_DATA}")
    started = time.perf_counter()
    load_start = os.getloadavg()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="caregpt-bench-train-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "workdir": str(workdir), "model": str(workdir / "bench34m"), "records": str(workdir / "records.jsonl"),
        "records_count": args.records, "tokenized": str(workdir / "tokenized"), "batch_size": args.batch_size,
        "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
        "matmul_size": args.matmul_size, "matmul_reps": args.matmul_reps, "ray_logging_steps": args.ray_logging_steps,
    }
    print(f"[bench] work dir {workdir}; load average {' '.join(f'{x:.2f}' for x in load_start)}; {os.cpu_count()} CPUs", flush=True)
    run = dict(timeout=args.timeout, verbose=args.verbose)
    setup = run_child("setup", spec, workdir, **run)
    run.update(quiet_wait=args.quiet_wait, quiet_below=args.quiet_below)

    lf_python, lf_env, lf_error = None, None, None
    if "llamafactory" in only:
        venv = Path(args.lf_venv).resolve()
        try:
            lf_python = ensure_lf_venv(venv, workdir / "lf_venv_install.log")
            shim = str(venv / "caregpt-bench-shims")
            lf_env = {
                "PYTHONPATH": shim + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(workdir / "lf_hf_datasets"),
                "WANDB_DISABLED": "true",
            }
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            lf_error = f"LLaMA-Factory venv could not be built: {exc}"
            print(f"[bench] {lf_error}", flush=True)

    order = [name for name in ("caregpt", "plain", "trl", "llamafactory", "dense") if name in only]
    results: dict[str, list[dict[str, Any]]] = {}
    failed = False
    for round_index in range(args.rounds):
        rotated = order[round_index % len(order):] + order[: round_index % len(order)] if order else []
        if args.rounds > 1:
            print(f"[bench] round {round_index + 1}/{args.rounds}: {', '.join(rotated)}", flush=True)
        tag = f"_r{round_index + 1}"
        if "matmul" in only:
            results.setdefault("matmul", []).append(run_child("matmul", spec, workdir, tag=tag, **run))
        for name in rotated:
            try:
                if name == "llamafactory":
                    if lf_error:
                        raise RuntimeError(lf_error)
                    result = run_child(name, spec, workdir, python=lf_python, env_extra=lf_env, tag=tag, **run)
                else:
                    result = run_child(name, spec, workdir, tag=tag, **run)
            except RuntimeError as exc:
                failed = True
                if not (name == "llamafactory" and lf_error):
                    print(f"[bench] {exc}", flush=True)
                result = {"error": str(exc)}
            result["round"] = round_index + 1
            results.setdefault(name, []).append(result)
    if "matmul" in only:
        results.setdefault("matmul", []).append(run_child("matmul", spec, workdir, tag="_end", **run))
    summary = report(results, setup, args)
    total = time.perf_counter() - started
    load = os.getloadavg()
    print(f"\n[bench] total {total:.0f}s; load average at start {' '.join(f'{x:.2f}' for x in load_start)}, "
          f"at end {' '.join(f'{x:.2f}' for x in load)} (1/5/15 min; {os.cpu_count()} CPUs)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "setup": setup, "results": results,
            "summary": summary, "reference": REFERENCE, "total_seconds": total, "loadavg_start": load_start, "loadavg_end": load,
        }, indent=2, default=str))
        print(f"[bench] figures written to {args.json}")
    if args.keep or failed:
        print(f"[bench] work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
