"""Benchmark: caregpt SFT training throughput vs LLaMA-Factory 0.9.5 and TRL, on CPU (never asserts).

Systems, each in a fresh child process: ``caregpt`` (run_training: Ray Train, 1 worker), ``plain`` (the same
stage code in one process, no Ray), ``trl`` (SFTTrainer defaults), ``llamafactory`` (its run_exp, own venv:
benchmarks/peers/setup_llamafactory.py), ``dense`` (hand-written fwd/bwd/AdamW on an unpadded block: a ceiling),
``matmul`` (the fp32 matmul FLOP/s that utilisation divides by). Same model, data, batch shape everywhere.
Methodology and latest figures: benchmarks/README.md. ``--quick`` is a smoke run; ``--help`` lists every option.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import Target
from step_clock import make_step_clock, summarize_marks, throughput

SYSTEMS = ("caregpt", "trl", "llamafactory", "plain", "dense", "matmul")
TRAINERS = ("caregpt", "plain", "trl", "llamafactory", "dense")
LABELS = {"caregpt": "caregpt (Ray Train, 1 worker)", "plain": "caregpt stage code, plain process",
          "trl": "TRL SFTTrainer defaults", "llamafactory": "LLaMA-Factory 0.9.5", "dense": "dense PyTorch step (ceiling)"}
TARGETS = {
    "vs_llamafactory": Target("caregpt / LLaMA-Factory useful tokens/s", 1.25),
    "utilisation": Target("caregpt useful-token FLOP/s / fp32 matmul FLOP/s", 0.60, unit="%"),
    "ray_overhead": Target("Ray Train overhead (plain tok/s / Ray tok/s - 1)", 0.10, higher_is_better=False, unit="%", signed=True),
}
# measured on this machine before caregpt existed (from the issue); printed beside the figures
REFERENCE = {"llamafactory": 484.0, "llamafactory_neat_packing": 350.0, "trl": 235.0, "trl_packing": 203.0}
AGGREGATED = ("useful_tokens_per_s", "padded_tokens_per_s", "useful_ratio", "step_seconds_mean")


# --------------------------------------------------------------------------------------------- children
def _threads(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])


def _caregpt_config(spec: dict[str, Any], **extra: Any):
    from caregpt.config.loader import load_config

    values = {"model_name_or_path": spec["model"], "dataset": spec["records"], "dataset_dir": str(Path(spec["records"]).parent),
              "stage": "sft", "template": "chatml", "cutoff_len": 1024, "finetuning_type": "full",
              "per_device_train_batch_size": spec["batch_size"], "gradient_accumulation_steps": 1, "learning_rate": 1e-5,
              "seed": 42, "tokenized_path": spec["tokenized"], "max_steps": spec["warmup"] + spec["steps"], **extra}
    return load_config(None, {k: str(v) for k, v in values.items()})


def child_setup(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model (once), cut the records, tokenize them with caregpt's Ray Data pipeline."""
    os.environ.setdefault("CAREGPT_PROGRESS", "0")
    import ray

    from caregpt.data.prepare import prepare
    from caregpt.models.tiny import build_tiny_model
    from caregpt.runtime import ensure_ray
    from caregpt.train.data import TokenDataset

    model = Path(spec["model"])
    if not (model / "config.json").is_file():
        build_tiny_model("bench34m", [Path(p) for p in spec["tokenizer_corpus"]], model, seed=0, overwrite=True)
    with open(spec["data"], encoding="utf-8") as source, open(spec["records"], "w", encoding="utf-8") as out:
        out.writelines(line for _, line in zip(range(spec["records_count"]), source))
    ensure_ray()
    path, manifest = prepare(_caregpt_config(spec), spec["model"])
    ray.shutdown()
    lengths = TokenDataset.from_parquet(path).lengths
    return {"num_parameters": int(json.loads((model / "caregpt_model.json").read_text())["num_parameters"]),
            "records_used": manifest["records_used"], "tokens": int(lengths.sum()), "length_mean": float(lengths.mean()),
            "length_max": int(lengths.max())}


def child_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    _threads(spec)
    n = spec["matmul_size"]
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    flops = []
    for _ in range(spec["matmul_reps"]):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        flops.append(2 * n**3 / (time.perf_counter() - start))
    return {"flops": flops, "flops_median": statistics.median(flops)}


def child_caregpt(spec: dict[str, Any]) -> dict[str, Any]:
    """`caregpt train`'s path: run_training -> Ray Train TorchTrainer, 1 worker, on an embedded Ray.

    The step clock cannot run inside the Ray worker from here, so step times come from its trainer_log.jsonl:
    step k took (tokens_seen[k] - tokens_seen[k-1]) / tokens_per_second[k] (both taken in RayReportCallback.on_log).
    """
    os.environ.setdefault("CAREGPT_PROGRESS", "0")
    import ray

    from caregpt.train.launch import run_training

    out_dir, every = Path(spec["workdir"]) / "caregpt_ray_out", spec["ray_logging_steps"]
    config = _caregpt_config(spec, logging_steps=every, output_dir=str(out_dir), overwrite_output_dir=True)
    sampler = harness.ProcessSampler(interval=1.0, keep_series=True)
    sampler.start()
    start = time.perf_counter()
    run_training(config)
    wall = time.perf_counter() - start
    cpu = sampler.cpu_since()
    sampler.stop()
    steady = sampler.others_while_busy("ray::RayTrainWorker")
    ray.shutdown()
    log = [json.loads(line) for line in (out_dir / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    per_step = {int(e["step"]): e for e in log if "tokens_seen" in e and "tokens_per_second" in e}
    seconds, useful = [], []
    for s in range(spec["warmup"] + every, spec["warmup"] + spec["steps"] + 1, every):
        if s not in per_step or (s > every and s - every not in per_step):
            raise RuntimeError(f"trainer_log.jsonl has no tokens_seen/tokens_per_second for step {s} or {s - every}")
        delta = per_step[s]["tokens_seen"] - (per_step[s - every]["tokens_seen"] if s > every else 0)
        useful.append(int(delta))
        seconds.append(delta / per_step[s]["tokens_per_second"])
    result = throughput(seconds, useful, None)
    result.update(timed_steps=spec["steps"], step_seconds_mean=result["timed_seconds"] / spec["steps"], logging_steps=every,
                  wall_seconds=wall, cpu_seconds=cpu, own_cpu_seconds=sum(cpu.values()), ray_cpus_while_worker_trains=steady,
                  gradient_checkpointing=config.train.gradient_checkpointing)
    return result


def child_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """The worker's stage code (caregpt.train.worker without Ray) in this one process."""
    from caregpt.data.tokenize import load_tokenizer
    from caregpt.models.adapters import apply_finetuning
    from caregpt.models.loader import load_model
    from caregpt.train.data import PadCollator, TokenDataset, split_eval
    from caregpt.train.trainer import CareTrainer
    from caregpt.train.worker import training_arguments

    _threads(spec)
    config = _caregpt_config(spec, logging_steps=1, output_dir=str(Path(spec["workdir"]) / "caregpt_plain_out"))
    start = time.perf_counter()
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    model = apply_finetuning(load_model(config, for_training=True, device="cpu"), config)
    train_data, _ = split_eval(TokenDataset.from_parquet(spec["tokenized"]), config.data.val_size, config.train.seed)
    args = training_arguments(config, str(Path(spec["workdir"]) / "caregpt_plain_hf"), None, False, False)
    trainer = CareTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=None, processing_class=tokenizer,
                          data_collator=PadCollator(tokenizer.pad_token_id, pad_multiple=1, varlen_attention=False))
    clock = make_step_clock()
    trainer.add_callback(clock)
    trainer.train()
    result = summarize_marks(clock.marks, spec["warmup"], spec["steps"])
    result.update(clock.info, wall_seconds=time.perf_counter() - start,
                  real_tokens_check={"CareTrainer.real_tokens": trainer.real_tokens, "hook": clock.useful})
    return result


def child_dense(spec: dict[str, Any]) -> dict[str, Any]:
    """Ceiling: the same model on a full batch x L block of real tokens (L = mean record length), no Trainer."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from caregpt.train.data import TokenDataset

    _threads(spec)
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
        if step < spec["warmup"] + spec["steps"]:
            model(input_ids=block, labels=block).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {**summarize_marks(marks, spec["warmup"], spec["steps"]), "gradient_checkpointing": False}


def child_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    _threads(spec)
    rows = []
    with open(spec["records"], encoding="utf-8") as handle:
        for record in map(json.loads, filter(str.strip, handle)):
            user = f"{record['instruction']}\n{record['input']}" if (record.get("input") or "").strip() else record["instruction"]
            rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]})
    config = SFTConfig(output_dir=str(Path(spec["workdir"]) / "trl_out"), per_device_train_batch_size=spec["batch_size"],
                       gradient_accumulation_steps=1, max_length=1024, max_steps=spec["warmup"] + spec["steps"], logging_steps=1,
                       learning_rate=1e-5, seed=42, bf16=False, report_to="none", disable_tqdm=True)  # fp32 as everywhere
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32), args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(spec["model"]))
    clock = make_step_clock()
    trainer.add_callback(clock)
    trainer.train()
    return {**summarize_marks(clock.marks, spec["warmup"], spec["steps"]), **clock.info, "packing": config.packing}


def child_llamafactory(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs under the LLaMA-Factory venv's python: its own run_exp (what `llamafactory-cli train` calls)."""
    from llamafactory.train.tuner import run_exp

    _threads(spec)
    work = Path(spec["workdir"])
    data_dir = work / "lf_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec["records"], data_dir / "records.jsonl")
    columns = {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench_records": {"file_name": "records.jsonl", "columns": columns}}))
    args = {"stage": "sft", "do_train": True, "model_name_or_path": spec["model"], "finetuning_type": "full",
            "dataset": "bench_records", "dataset_dir": str(data_dir), "template": "chatml", "cutoff_len": 1024,
            "overwrite_cache": True, "output_dir": str(work / "lf_out"), "overwrite_output_dir": True,
            "per_device_train_batch_size": spec["batch_size"], "gradient_accumulation_steps": 1, "learning_rate": 1e-5,
            "max_steps": spec["warmup"] + spec["steps"], "logging_steps": 1, "seed": 42, "report_to": "none", "plot_loss": False}
    clock = make_step_clock()
    run_exp(args=dict(args), callbacks=[clock])
    return {**summarize_marks(clock.marks, spec["warmup"], spec["steps"]), **clock.info}


CHILDREN = {"setup": child_setup, "matmul": child_matmul, "caregpt": child_caregpt, "plain": child_plain,
            "dense": child_dense, "trl": child_trl, "llamafactory": child_llamafactory}


# --------------------------------------------------------------------------------------------- report
def report(results: dict[str, list[dict[str, Any]]], setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    params = setup["num_parameters"]
    flops = [f for run in results.get("matmul", []) if "error" not in run for f in run["flops"]]
    peak = statistics.median(flops) if flops else None
    # the Ray run logs no padded tokens: the plain run of the same round trained on the same batches
    for ray_run, plain_run in zip(results.get("caregpt", []), results.get("plain", [])):
        if "error" not in ray_run and "error" not in plain_run and ray_run["step_useful_tokens"] == plain_run["step_useful_tokens"]:
            ray_run.update(padded_tokens_per_s=plain_run["padded_tokens"] / ray_run["timed_seconds"], useful_ratio=plain_run["useful_ratio"])
    agg = {name: harness.aggregate(results[name], AGGREGATED, args.aggregate, best="useful_tokens_per_s") for name in TRAINERS if name in results}
    util = {name: 6 * params * r["useful_tokens_per_s"] / peak if peak and "error" not in r else None for name, r in agg.items()}
    rows = [{"system": LABELS[n], **r, "util": None if util[n] is None else util[n] * 100} for n, r in agg.items() if "error" not in r]
    print(f"\nmodel bench34m: {params:,} parameters; {setup['records_used']} records, {setup['tokens']:,} tokens, mean length "
          f"{setup['length_mean']:.1f} (max {setup['length_max']}); batch {args.batch_size}, cutoff 1024, fp32, {args.threads} torch "
          f"threads, {args.warmup} warm-up + {args.steps} timed steps; {args.rounds} round(s), table = "
          f"{'fastest round' if args.aggregate == 'best' else 'median'}")
    if peak:
        print(f"fp32 matmul {args.matmul_size}x{args.matmul_size}: {peak / 1e9:.1f} GFLOP/s (median of {len(flops)} reps, start and end of the run)")
    print()
    harness.print_table(rows, [("system", "system", ""), ("useful tok/s", "useful_tokens_per_s", ".1f"),
                               ("padded tok/s", "padded_tokens_per_s", ".1f"), ("useful/padded", "useful_ratio", ".3f"),
                               ("step s", "step_seconds_mean", ".3f"), ("util %", "util", ".1f"),
                               ("grad ckpt", "gradient_checkpointing", ""), ("others CPU", "other_cpus", ".2f")])
    for name, r in agg.items():
        if "error" in r:
            print(f"{LABELS[name]}: failed: {r['error'].splitlines()[0][:120]}")
        elif args.rounds > 1:
            print(f"  {LABELS[name]} per round: " + ", ".join("failed" if "error" in x else f"{x['useful_tokens_per_s']:.1f} "
                                                          f"(others {x['other_cpus']:.2f})" for x in r["rounds"]))
    print(f"(others CPU: CPUs other processes on this machine kept busy during that run, of {os.cpu_count()}; figures are noisy when it is high)\n")

    def good(name: str) -> dict[str, Any] | None:
        return agg[name] if name in agg and "error" not in agg[name] else None

    summary: dict[str, Any] = {"matmul_flops_median": peak, "useful_tokens_per_s": {k: v.get("useful_tokens_per_s") for k, v in agg.items()}}
    base, plain, lf, trl = good("caregpt") or good("plain"), good("plain"), good("llamafactory"), good("trl")
    if base is None:
        return summary
    if base is plain:
        print("(no Ray run: the ratios below use the plain-process figure for caregpt)")
    lf_tps, lf_note = (lf["useful_tokens_per_s"], "measured in this run") if lf else \
        (REFERENCE["llamafactory"], f"LLaMA-Factory NOT measured: the issue's reference {REFERENCE['llamafactory']:.0f} tok/s")
    summary["vs_llamafactory"] = base["useful_tokens_per_s"] / lf_tps
    print(TARGETS["vs_llamafactory"].line(summary["vs_llamafactory"], lf_note))
    if trl:
        summary["vs_trl"] = base["useful_tokens_per_s"] / trl["useful_tokens_per_s"]
        print(f"caregpt / TRL SFTTrainer defaults useful tokens/s: {summary['vs_trl']:.2f}x  (no target)")
    summary["utilisation"] = util.get("caregpt" if good("caregpt") else "plain")
    others = ", ".join(f"{LABELS[n]} {u * 100:.1f}%" for n, u in util.items() if u is not None and n not in ("caregpt", "plain"))
    print(TARGETS["utilisation"].line(summary["utilisation"], others))
    if plain and good("caregpt"):
        summary["ray_overhead"] = plain["useful_tokens_per_s"] / base["useful_tokens_per_s"] - 1
        print(TARGETS["ray_overhead"].line(summary["ray_overhead"]))
        first = base["rounds"][0]
        if "error" not in first:
            ray_own = sum(v for k, v in first["cpu_seconds"].items() if k != "ray::RayTrainWorker")
            print(f"  run_training {first['wall_seconds']:.0f}s wall (Ray start, worker, checkpoint); CPU seconds: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in list(first["cpu_seconds"].items())[:6])
                  + f"; everything but the worker {ray_own / first['wall_seconds']:.2f} CPUs on average")
            if first.get("ray_cpus_while_worker_trains"):
                print(f"  while the worker trained: {first['ray_cpus_while_worker_trains']['other_cpus']:.3f} CPUs for Ray's own processes and the driver")
    print(f"issue references (this machine, before caregpt; useful tok/s): LLaMA-Factory {REFERENCE['llamafactory']:.0f}, its neat_packing "
          f"~{REFERENCE['llamafactory_neat_packing']:.0f}, TRL defaults {REFERENCE['trl']:.0f}, TRL packing {REFERENCE['trl_packing']:.0f}")
    return summary


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="caregpt SFT training throughput (useful = non-padding tokens/s) vs "
                                     "LLaMA-Factory 0.9.5 and TRL, fp32 utilisation and Ray Train overhead. Prints; never asserts.")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 records, 1 warm-up + 3 timed steps, 3 matmul reps, "
                        "and no LLaMA-Factory unless --only names it (its venv takes minutes to build)")
    parser.add_argument("--data", default=str(harness.SHARED_DATA / "sft_toyhom_im_department.jsonl"), help="alpaca SFT jsonl (default: %(default)s)")
    parser.add_argument("--pretrain-text", default=str(harness.SHARED_DATA / "pretrain_medicalgpt_fever.txt"),
                        help="extra tokenizer-training text, used when present (default: %(default)s)")
    for flag, default, text in (("--steps", 12, "timed optimizer steps after warm-up"), ("--warmup", 2, "untimed warm-up steps"),
                                ("--records", 2000, "first N records of --data"), ("--batch-size", 8, "samples per optimizer step"),
                                ("--matmul-size", 2048, "matmul side for the FLOP/s reference"), ("--matmul-reps", 20, "matmul repetitions")):
        parser.add_argument(flag, type=int, default=default, help=f"{text} (default {default})")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="run every system this many times, interleaved, order rotated (default 1)")
    parser.add_argument("--aggregate", choices=("best", "median"), default="best",
                        help="with --rounds > 1: each system's fastest round (default; load only slows a run down) or the median")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="S", help="before each run, wait up to S seconds for a quiet machine")
    parser.add_argument("--quiet-below", type=float, default=0.3, metavar="CPUS", help="'quiet' for --quiet-wait: fewer CPUs busy (default 0.3)")
    parser.add_argument("--ray-logging-steps", type=int, default=1, metavar="N",
                        help="logging_steps of the Ray run (each log is a ray.train.report); --warmup and --steps must be multiples")
    parser.add_argument("--lf-venv", default="/tmp/caregpt-bench-lf-venv", help="cached LLaMA-Factory venv (built on first use)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for every system (default: CPU count)")
    parser.add_argument("--workdir", default=None, help="work dir, kept (default: a temp dir, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temp work dir (model, logs, outputs)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per system run (default 1800)")
    parser.add_argument("--verbose", action="store_true", help="stream every child's output")
    parser.add_argument("--json", default=None, metavar="OUT", help="write all figures to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.warmup, args.steps, args.matmul_reps = min(args.records, 200), 1, 3, 3
        args.only = args.only or ",".join(s for s in SYSTEMS if s != "llamafactory")
    args.only = [s.strip() for s in (args.only or ",".join(SYSTEMS)).split(",") if s.strip()]
    if set(args.only) - set(SYSTEMS):
        parser.error(f"unknown system(s) {sorted(set(args.only) - set(SYSTEMS))}; choose from {','.join(SYSTEMS)}")
    if min(args.rounds, args.steps, args.ray_logging_steps) < 1 or args.warmup < 0:
        parser.error("--rounds, --steps and --ray-logging-steps must be >= 1, --warmup >= 0")
    if args.warmup % args.ray_logging_steps or args.steps % args.ray_logging_steps:
        parser.error("--warmup and --steps must be multiples of --ray-logging-steps")
    return args


def main(argv: list[str] | None = None) -> int:
    if harness.child_main(CHILDREN, argv):
        return 0
    args = parse_args(argv)
    harness.require_files(Path(args.data))
    started, load_start = time.perf_counter(), harness.loadavg()
    with harness.work_dir(args.workdir, args.keep, "caregpt-bench-train-") as workdir:
        spec = {"workdir": str(workdir), "model": str(workdir / "bench34m"), "records": str(workdir / "records.jsonl"),
                "data": args.data, "tokenizer_corpus": [p for p in (args.data, args.pretrain_text) if Path(p).is_file()],
                "records_count": args.records, "tokenized": str(workdir / "tokenized"), "batch_size": args.batch_size,
                "warmup": args.warmup, "steps": args.steps, "threads": args.threads, "matmul_size": args.matmul_size,
                "matmul_reps": args.matmul_reps, "ray_logging_steps": args.ray_logging_steps}
        print(f"[bench] work dir {workdir}; load average {load_start}; {os.cpu_count()} CPUs", flush=True)
        run = dict(timeout=args.timeout, verbose=args.verbose)
        setup = harness.run_child(__file__, "setup", spec, workdir, **run)
        run.update(quiet_wait=args.quiet_wait, quiet_below=args.quiet_below)
        order, per_name, lf_error = [name for name in TRAINERS if name in args.only], {}, None
        if "llamafactory" in order:
            from peers import setup_llamafactory

            try:
                per_name["llamafactory"] = {"python": setup_llamafactory.ensure_venv(Path(args.lf_venv).resolve(), workdir / "lf_venv.log"),
                                            "env": {**setup_llamafactory.run_env(), "HF_DATASETS_CACHE": str(workdir / "lf_datasets")}}
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                lf_error = f"LLaMA-Factory venv could not be built: {exc}"
                print(f"[bench] {lf_error}", flush=True)
                order.remove("llamafactory")
        probes = ("matmul",) if "matmul" in args.only else ()
        results = harness.run_rounds(__file__, order, spec, workdir, args.rounds, every_round=probes, at_end=probes, per_name=per_name, **run)
        if lf_error:
            results["llamafactory"] = [{"error": lf_error}]
        summary = report(results, setup, args)
        total = time.perf_counter() - started
        print(f"\n[bench] total {total:.0f}s; load average at start {load_start}, at end {harness.loadavg()} (1/5/15 min)", flush=True)
        harness.write_json(args.json, {"args": vars(args), "setup": setup, "results": results, "summary": summary,
                                       "reference": REFERENCE, "total_seconds": total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
