"""Benchmark: the caregpt Ray Data tokenization pipeline vs Hugging Face `datasets` (never asserts).

Both read the same jsonl, validate + normalise every record (`caregpt.data.formats.normalize`) and tokenize
with the same `BatchTokenizer`, tokenizer and template: the comparison is about the engine.

* caregpt:  `build_token_dataset(config, tokenizer, num_workers)` on an embedded Ray, consumed with iter_batches;
* datasets: `load_dataset("json")` + `Dataset.map(batched=True, num_proc=2)`, caching off, iterated the same way.

Measured: tokens/s of both at N records, and the peak summed RSS of the Ray pipeline at N and 10N records.
Each measurement runs in a fresh child process (benchmarks/harness.py). Methodology: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from harness import Target

DEFAULT_DATA = harness.SHARED_DATA / "sft_toyhom_im_department.jsonl"
PRETRAIN_TEXT = harness.SHARED_DATA / "pretrain_medicalgpt_fever.txt"
TARGETS = {
    "throughput": Target("throughput ratio (caregpt ray / datasets)", 1.0),
    "memory": Target("Ray pipeline peak memory ratio, large / small corpus", 1.3, higher_is_better=False),
}


def cpu_kind(kind: str) -> str:
    """Coarser kinds for the CPU breakdown: Ray's tokenizer actors apart from its other workers."""
    if kind.startswith("ray::MapWorker"):
        return "ray map actors"
    if kind.startswith("ray::") and kind != "ray::IDLE":
        return "other ray workers"
    return kind


class NormalizeAndTokenize:
    """The `datasets` map function: raw json columns in, BatchTokenizer columns out; invalid records dropped, as
    `only_valid` does in the Ray pipeline. The tokenizer loads on first use in each map process (a Ray actor's
    constructor does the same) and is never pickled."""

    def __init__(self, path: str, attr_json: str, tokenizer_path: str, template: str, cutoff_len: int):
        self.path, self.attr_json, self.tokenizer_path, self.template, self.cutoff_len = path, attr_json, tokenizer_path, template, cutoff_len
        self._tokenizer = self._attr = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None, "_attr": None}

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        from caregpt.data.formats import normalize
        from caregpt.data.registry import DatasetAttr
        from caregpt.data.tokenize import BatchTokenizer

        if self._tokenizer is None:
            self._attr = DatasetAttr(**json.loads(self.attr_json))
            self._tokenizer = BatchTokenizer(self.tokenizer_path, "sft", self.template, self.cutoff_len)
        columns: dict[str, list] = {"loc": [], "dataset": [], "roles": [], "contents": []}
        for offset, index in enumerate(indices):
            row = normalize({name: batch[name][offset] for name in batch}, f"{self.path}:{index + 1}", self._attr, "sft").to_row()
            if not row["error"]:
                for name in columns:
                    columns[name].append(row[name])
        return self._tokenizer(columns)


def _consume(batches, iter_format: str) -> tuple[int, int, float | None, float]:
    """(rows, tokens, seconds to the first batch, seconds to the last) of an iterator of batches."""
    import pyarrow.compute as pc

    start, first, rows, tokens = time.perf_counter(), None, 0, 0
    for batch in batches:
        first = first if first is not None else time.perf_counter() - start
        lengths = batch["length"]
        tokens += int(pc.sum(lengths).as_py() if iter_format == "pyarrow" else lengths.sum())
        rows += len(lengths)
    return rows, tokens, first, time.perf_counter() - start


def child_ray(spec: dict[str, Any]) -> dict[str, Any]:
    sampler = harness.ProcessSampler(spec["interval"], spec["pss_interval"])
    sampler.start()
    os.environ["TOKENIZERS_PARALLELISM"] = spec["tokenizers_parallelism"]
    import ray
    import ray.data

    from caregpt.config.loader import load_config
    from caregpt.data.pipeline import build_token_dataset

    t_init = time.perf_counter()
    ray.init(num_cpus=spec["ray_cpus"], include_dashboard=False, configure_logging=False, log_to_driver=spec["verbose"])
    sampler.markers.append(ray._private.worker._global_node.get_session_dir_path())  # our session's processes only
    init_s = time.perf_counter() - t_init
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, spec["verbose"]
    if spec["block_mb"]:
        ctx.target_max_block_size = int(spec["block_mb"] * (1 << 20))
    cpu0 = sampler.mark()
    t0 = time.perf_counter()
    config = load_config(None, {"dataset": spec["data"], "dataset_dir": str(Path(spec["data"]).parent), "stage": "sft",
                                "template": spec["template"], "cutoff_len": str(spec["cutoff_len"])})
    ds, _ = build_token_dataset(config, spec["tokenizer"], spec["workers"])
    rows, tokens, first, _ = _consume(ds.iter_batches(batch_size=spec["iter_batch_size"], batch_format=spec["iter_format"]), spec["iter_format"])
    elapsed = time.perf_counter() - t0
    cpu = sampler.cpu_since(cpu0, cpu_kind)
    sampler.stop()
    ray.shutdown()
    return {"engine": "ray", "records": spec["records"], "rows": rows, "tokens": tokens, "seconds": elapsed,
            "ray_init_seconds": init_s, "first_batch_seconds": first, "tokens_per_s": tokens / elapsed,
            "tokens_per_s_incl_init": tokens / (elapsed + init_s), "cpu_seconds_timed": sum(cpu.values()),
            "cpu_breakdown": cpu, "own_cpu_seconds": sum(sampler.cpu.values()), **sampler.memory()}


def child_datasets(spec: dict[str, Any]) -> dict[str, Any]:
    sampler = harness.ProcessSampler(spec["interval"], spec["pss_interval"])
    sampler.start()
    os.environ["TOKENIZERS_PARALLELISM"] = spec["tokenizers_parallelism"]
    cache_dir = tempfile.mkdtemp(prefix="hf-cache-", dir=spec["workdir"])
    os.environ.update(HF_DATASETS_CACHE=cache_dir, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    tempfile.tempdir = cache_dir  # where map writes its (uncached) temporary arrow files
    import dataclasses

    import datasets

    from caregpt.data.registry import resolve_datasets

    datasets.disable_caching()
    if not spec["verbose"]:
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    (attr,) = resolve_datasets([spec["data"]], Path(spec["data"]).parent)
    fn = NormalizeAndTokenize(spec["data"], json.dumps(dataclasses.asdict(attr)), spec["tokenizer"], spec["template"], spec["cutoff_len"])
    cpu0 = sampler.mark()
    t0 = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=spec["data"], split="train", cache_dir=cache_dir)
    tokenized = raw.map(fn, batched=True, with_indices=True, num_proc=spec["num_proc"], remove_columns=raw.column_names)
    map_s = time.perf_counter() - t0
    fmt = "numpy" if spec["iter_format"] == "numpy" else "arrow"
    rows, tokens, _, _ = _consume(tokenized.with_format(fmt).iter(batch_size=spec["iter_batch_size"]), spec["iter_format"])
    elapsed = time.perf_counter() - t0
    cpu = sampler.cpu_since(cpu0, cpu_kind)
    sampler.stop()
    return {"engine": "datasets", "records": spec["records"], "rows": rows, "tokens": tokens, "seconds": elapsed,
            "map_seconds": map_s, "tokens_per_s": tokens / elapsed, "cpu_seconds_timed": sum(cpu.values()),
            "cpu_breakdown": cpu, **sampler.memory()}


CHILDREN = {"ray": child_ray, "datasets": child_datasets}


def write_corpus(source: Path, records: int, out: Path) -> Path:
    """The source file's records repeated, in order, up to `records` lines."""
    lines = [line for line in source.read_bytes().splitlines() if line.strip()]
    full, rest = divmod(records, len(lines))
    with open(out, "wb") as handle:
        for _ in range(full):
            handle.write(b"\n".join(lines) + b"\n")
        if rest:
            handle.write(b"\n".join(lines[:rest]) + b"\n")
    return out


def _mib(value: float | None) -> float | None:
    return value / (1 << 20) if value else None


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["engine"], r["records"]), []).append(r)
    numeric = tuple(k for k, v in results[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "records")
    by = {key: harness.aggregate(runs, numeric + ("first_batch_seconds", "map_seconds", "ray_init_seconds")) for key, runs in groups.items()}
    names = {"ray": f"caregpt ray ({args.workers} tokenizer actors)", "datasets": f"datasets map (num_proc={args.num_proc})"}
    order = sorted(by, key=lambda k: (k[1], k[0] != "ray"))
    rows = [{**by[(e, s)], "engine": names[e], "records": s, "rss": _mib(by[(e, s)]["peak_rss_bytes"]),
             "pss": _mib(by[(e, s)]["peak_pss_bytes"])} for e, s in order]
    print("\n(medians over the runs)" if any(r["runs"] > 1 for r in by.values()) else "")
    harness.print_table(rows, [("engine", "engine", ""), ("records", "records", ","), ("runs", "runs", ""), ("tokens", "tokens", ",.0f"),
                               ("seconds", "seconds", ".1f"), ("tokens/s", "tokens_per_s", ",.0f"), ("CPU s", "cpu_seconds_timed", ".1f"),
                               ("peak RSS MiB", "rss", ",.0f"), ("peak PSS MiB", "pss", ",.0f")])
    print()
    for e, s in order:
        r = by[(e, s)]
        if e == "ray":
            where = ", ".join(f"{k} {v / (1 << 20):,.0f}" for k, v in r["peak_rss_breakdown"].items())
            print(f"ray at {s:,}: ray.init {r['ray_init_seconds']:.1f} s (not timed), first batch after {r['first_batch_seconds']:.1f} s; "
                  f"RSS at the peak (MiB): {where}")
        else:
            print(f"datasets at {s:,}: load_dataset + map {r['map_seconds']:.1f} s, iterating {r['seconds'] - r['map_seconds']:.1f} s")
        print("  CPU seconds in the timed region: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_breakdown"].items()))
        twin = by.get(("datasets" if e == "ray" else "ray", s))
        if twin and (r["tokens"] != twin["tokens"] or r["rows"] != twin["rows"]):
            print(f"WARNING: at {s:,} records the engines produced different rows/tokens: {r['rows']}/{r['tokens']} vs {twin['rows']}/{twin['tokens']}")
    n, big = args.records, args.records * args.scale
    ray_n, ds_n, ray_big, ds_big = by.get(("ray", n)), by.get(("datasets", n)), by.get(("ray", big)), by.get(("datasets", big))
    summary: dict[str, Any] = {}
    print()
    if ray_n and ds_n:
        summary["throughput_ratio"] = ray_n["tokens_per_s"] / ds_n["tokens_per_s"]
        summary["throughput_ratio_incl_ray_init"] = ray_n["tokens_per_s_incl_init"] / ds_n["tokens_per_s"]
        summary["cpu_efficiency_ratio"] = (ray_n["tokens"] / ray_n["cpu_seconds_timed"]) / (ds_n["tokens"] / ds_n["cpu_seconds_timed"])
        print(TARGETS["throughput"].line(summary["throughput_ratio"], f"{n:,} records"))
        print(f"  counting ray.init too: {summary['throughput_ratio_incl_ray_init']:.2f}x")
        print(f"  tokens per CPU second, ray / datasets: {summary['cpu_efficiency_ratio']:.2f}x (on an idle machine, where datasets "
              "keeps every core busy, the throughput ratio cannot exceed this)")
        pairs = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(groups[("ray", n)], groups[("datasets", n)])]
        if len(pairs) > 1:
            summary["throughput_ratio_pairs"] = pairs
            print(f"  run by run (adjacent runs share the machine's load): {', '.join(f'{x:.2f}x' for x in pairs)}")
        others = [r["other_cpus"] for r in results]
        print(f"  other processes kept {min(others):.2f}-{max(others):.2f} of {os.cpu_count()} CPUs busy during the runs: "
              "wall-clock figures are noisy when that is high, CPU seconds less so")
    if ray_n and ray_big:
        summary["memory_ratio"] = ray_big["peak_rss_bytes"] / ray_n["peak_rss_bytes"]
        print(TARGETS["memory"].line(summary["memory_ratio"], f"{big:,} vs {n:,} records ({args.scale}x), summed RSS"))
    if ds_n and ds_big:
        summary["datasets_memory_ratio"] = ds_big["peak_rss_bytes"] / ds_n["peak_rss_bytes"]
        print(f"  for context, datasets' peak memory ratio at {args.scale}x corpus: {summary['datasets_memory_ratio']:.2f}x")
    if ray_big and ds_big:
        summary["throughput_ratio_at_scale"] = ray_big["tokens_per_s"] / ds_big["tokens_per_s"]
        print(f"  for context, throughput ratio at {big:,} records: {summary['throughput_ratio_at_scale']:.2f}x")
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/data_pipeline.py",
        description="Tokens/s of the caregpt Ray Data pipeline vs datasets.Dataset.map(num_proc=2) on the same jsonl, tokenizer "
        "(bench34m preset) and template, and the Ray pipeline's peak memory when the corpus grows --scale times. Prints "
        "`throughput ratio` and `peak memory ratio` with their targets; never fails on a target.")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 records, scale 2")
    parser.add_argument("--records", type=int, default=50_000, help="records in the throughput corpus: --data repeated (default 50000)")
    parser.add_argument("--scale", type=int, default=10, help="the memory test's large corpus is --records x --scale (default 10)")
    parser.add_argument("--skip-memory", action="store_true", help="throughput at --records only (no large corpus, no memory ratio)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine at --records, alternating engines; medians reported (default 1)")
    parser.add_argument("--engines", default="ray,datasets", help="comma-separated subset of ray,datasets (default: both)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="source alpaca jsonl to repeat (default: %(default)s)")
    parser.add_argument("--template", default="chatml", help="chat template, both sides (default: chatml)")
    parser.add_argument("--cutoff-len", type=int, default=1024, help="cutoff_len, both sides (default: 1024)")
    parser.add_argument("--tokenizer", help="reuse this tokenizer/model dir instead of building the bench34m one")
    parser.add_argument("--workers", type=int, default=2, help="Ray tokenizer actors (num_workers of build_token_dataset; default 2)")
    parser.add_argument("--num-proc", type=int, default=2, help="num_proc of datasets' map (default 2)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="logical CPUs of the embedded Ray (default: workers + 2)")
    parser.add_argument("--block-mb", type=float, default=None, help="DataContext.target_max_block_size in MiB (default: Ray's)")
    parser.add_argument("--tokenizers-parallelism", choices=("true", "false"), default="false", help="TOKENIZERS_PARALLELISM, both engines")
    parser.add_argument("--iter-batch-size", type=int, default=256, help="rows per consumed batch, both engines (default 256)")
    parser.add_argument("--iter-format", choices=("numpy", "pyarrow"), default="numpy", help="consumed batch format, both engines")
    parser.add_argument("--interval", type=float, default=0.2, help="memory sampling interval in seconds (default 0.2)")
    parser.add_argument("--pss-interval", type=float, default=0.0, metavar="S",
                        help="also sample summed PSS every S seconds (costly: perturbs timing; default 0 = off)")
    parser.add_argument("--json", metavar="OUT", help="also write every measurement and the ratios to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (corpora, tokenizer, logs)")
    parser.add_argument("--verbose", action="store_true", help="stream the children's Ray / datasets output")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.scale = min(args.records, 2000), min(args.scale, 2)
    if min(args.records, args.scale, args.workers, args.num_proc, args.repeat) < 1:
        parser.error("--records, --scale, --workers, --num-proc and --repeat must be >= 1")
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if set(args.engines) - set(CHILDREN):
        parser.error(f"--engines: unknown engine(s) {sorted(set(args.engines) - set(CHILDREN))}; choose from ray, datasets")
    return args


def main(argv: list[str] | None = None) -> int:
    if harness.child_main(CHILDREN, argv):
        return 0
    args = parse_args(argv)
    harness.require_files(Path(args.data))
    started = time.perf_counter()
    with harness.work_dir(None, args.keep, "caregpt-bench-data-") as workdir:
        if args.tokenizer:
            tokenizer = args.tokenizer
        else:
            from caregpt.models.tiny import build_tiny_model

            t = time.perf_counter()
            corpus = [p for p in (Path(args.data), PRETRAIN_TEXT) if p.is_file()]
            tokenizer = str(build_tiny_model("bench34m", corpus, workdir / "bench34m", seed=0))
            print(f"[bench] tokenizer built in {time.perf_counter() - t:.1f} s", flush=True)
        results = []
        for size in [args.records] if args.skip_memory else [args.records, args.records * args.scale]:
            data = write_corpus(Path(args.data), size, workdir / f"sft_{size}.jsonl")
            print(f"[bench] corpus {data.name}: {size:,} records, {data.stat().st_size / (1 << 20):,.0f} MiB", flush=True)
            for i, engine in enumerate(e for _ in range(args.repeat if size == args.records else 1) for e in args.engines):
                spec = {"records": size, "data": str(data), "tokenizer": tokenizer, "template": args.template,
                        "cutoff_len": args.cutoff_len, "workers": args.workers, "ray_cpus": args.ray_cpus or args.workers + 2,
                        "num_proc": args.num_proc, "block_mb": args.block_mb, "tokenizers_parallelism": args.tokenizers_parallelism,
                        "iter_batch_size": args.iter_batch_size, "iter_format": args.iter_format, "interval": args.interval,
                        "pss_interval": args.pss_interval, "workdir": str(workdir), "verbose": args.verbose}
                result = harness.run_child(__file__, engine, spec, workdir, verbose=args.verbose, tag=f"_{size}_{i}")
                print(f"  {engine:<9} {result['tokens']:>12,} tokens in {result['seconds']:6.1f} s = {result['tokens_per_s']:>10,.0f} "
                      f"tokens/s, {result['cpu_seconds_timed']:5.1f} CPU s, peak RSS {_mib(result['peak_rss_bytes']):,.0f} MiB", flush=True)
                results.append(result)
            if size != args.records:
                data.unlink()
        summary = report(results, args)
        total = time.perf_counter() - started
        print(f"\n[bench] total run time {total:.0f} s")
        harness.write_json(args.json, {"settings": vars(args), "results": results, "summary": summary, "run_seconds": total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
