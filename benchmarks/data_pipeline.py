"""Benchmark: the caregpt Ray Data tokenization pipeline vs Hugging Face `datasets`.

Both sides do the same work on the same data: read the jsonl, validate + normalise every record
(`caregpt.data.formats.normalize`), render the chat template and tokenize with the SAME
`caregpt.data.tokenize.BatchTokenizer` and the same tokenizer, so the comparison is about the
engine, not the tokenization code.

* caregpt:  `build_token_dataset(config, tokenizer, num_workers)` on an embedded local Ray,
            consumed with `iter_batches` as a trainer would.
* datasets: `load_dataset("json")` + `Dataset.map(batched=True, num_proc=2)` (normalise + tokenize
            in the map), caching disabled and a fresh cache dir, then iterated the same way.

Measured, in one run:

1. throughput (tokens/s) of both at N records (default 50,000: the shared SFT file repeated);
2. peak memory (summed RSS of every process involved) of both at N and at 10N records: a
   streaming pipeline should need about the same memory for a 10x larger corpus.

Every measurement runs in a fresh Python subprocess (this same file, `--_child`), so one
measurement's imports, caches and allocator state never count in another's memory, and each Ray
measurement starts and shuts down its own embedded Ray. Memory is sampled every 0.2 s in a
background thread of that subprocess: its own process tree (for Ray: gcs_server, raylet and every
worker it forks) plus any process whose command line names the session dir of ITS OWN
`ray.init` (other people's Ray on the same machine is never counted).

Targets (printed, never asserted): throughput ratio caregpt/datasets >= 1.0x; peak-memory ratio
of the Ray pipeline at 10N vs N <= 1.3x.

Run `python benchmarks/data_pipeline.py --help` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sft_toyhom_im_department.jsonl"
TOKENIZER_CORPUS = [DEFAULT_DATA, REPO.parent / "shared" / "data" / "pretrain_medicalgpt_fever.txt"]
RESULT_TAG = "BENCH_RESULT "
THROUGHPUT_TARGET = 1.0
MEMORY_TARGET = 1.3


# ---------------------------------------------------------------------------------------------
# memory sampling
# ---------------------------------------------------------------------------------------------
def _pss(pid: int) -> int:
    """Proportional set size from /proc/<pid>/smaps_rollup (shared pages split between sharers).
    Expensive: the kernel walks the page tables (tens of ms for a Ray worker), so it is opt-in."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Peak of the summed RSS of this process, its descendants and the processes of our own Ray
    session, sampled every `interval` seconds; CPU time of the same processes.

    Kept cheap, because it runs inside the measured process on a 2-core machine: each tick reads
    /proc/PID/stat(m) of the known processes; the walk of the process table (our descendants, and
    every command line naming our Ray session dir) runs once per scan_interval; PSS only when asked.
    """

    def __init__(self, interval: float = 0.2, pss_interval: float = 0.0, scan_interval: float = 1.0):
        import psutil

        super().__init__(daemon=True, name="memory-sampler")
        self.psutil = psutil
        self.interval = interval
        self.pss_interval = pss_interval
        self.scan_interval = scan_interval
        self.root = psutil.Process()
        self.markers: list[str] = []  # session dirs of our own ray.init
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_breakdown: dict[str, int] = {}
        self.peak_processes = 0
        self.samples = 0
        self.busy_seconds = 0.0  # wall time spent sampling (its own overhead)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._labels: dict[int, str] = {}
        self._cpu: dict[int, float] = {}  # last seen user+system CPU seconds per process
        self._cpu_label: dict[int, str] = {}
        self._session_roots: dict[int, Any] = {}  # processes found by the session-dir scan
        self._known: dict[int, Any] = {}  # the processes measured on each tick
        self._last_scan = 0.0
        self._last_pss = 0.0
        self._root_cmdline = self.root.cmdline()

    def _label(self, proc) -> str:
        """Which kind of process, for the breakdowns (cached per pid once it is final)."""
        label = self._labels.get(proc.pid)
        if label is None:
            name = proc.name()
            if proc.pid == self.root.pid:
                label = "driver"
            elif name.startswith("ray::MapWork"):  # /proc comm is cut at 15 characters
                label = "ray map actors"
            elif name == "ray::IDLE":
                label = "idle ray workers"
            elif name.startswith("ray::"):
                label = "other ray workers"  # Ray Data's stats / autoscaling / location actors, tasks
            elif name in ("raylet", "gcs_server"):
                label = name
            elif proc.cmdline() == self._root_cmdline:
                label = "forked children"
            elif any("/ray/" in part for part in proc.cmdline()):
                # Ray's agents and log monitor; a worker not yet renamed to ray::... is not cached
                label = "idle ray workers" if "default_worker.py" in " ".join(proc.cmdline()) else "ray agents"
            else:
                label = name
            if label in ("driver", "raylet", "gcs_server", "ray map actors", "forked children", "ray agents"):
                self._labels[proc.pid] = label
        return label

    def _processes(self, now: float) -> dict[int, Any]:
        """The processes to measure: re-discovered once per scan_interval (walking the process table
        costs milliseconds), the known ones re-read on every tick."""
        psutil = self.psutil
        if now - self._last_scan < self.scan_interval and self._known:
            return self._known
        self._last_scan = now
        if self.markers:
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = " ".join(proc.info.get("cmdline") or [])
                if any(marker in cmdline for marker in self.markers):
                    self._session_roots.setdefault(proc.pid, proc)
        procs = {self.root.pid: self.root}
        for root in [self.root, *self._session_roots.values()]:
            procs.setdefault(root.pid, root)
            try:
                for child in root.children(recursive=True):
                    procs.setdefault(child.pid, self._known.get(child.pid, child))
            except psutil.Error:
                pass
        self._known = procs
        return procs

    def sample(self) -> None:
        with self._lock:
            started = time.perf_counter()
            self._sample(started)
            self.busy_seconds += time.perf_counter() - started

    def _sample(self, now: float) -> None:
        psutil = self.psutil
        rss_total = pss_total = 0
        breakdown: dict[str, int] = {}
        counted = 0
        with_pss = self.pss_interval > 0 and now - self._last_pss >= self.pss_interval
        if with_pss:
            self._last_pss = now
        for pid, proc in self._processes(now).items():
            try:
                rss = proc.memory_info().rss
                times = proc.cpu_times()
                label = self._label(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                self._session_roots.pop(pid, None)
                self._last_scan = 0.0  # something ended: look for new processes on the next tick
                continue
            self._cpu[pid] = times.user + times.system
            self._cpu_label[pid] = label
            counted += 1
            rss_total += rss
            breakdown[label] = breakdown.get(label, 0) + rss
            if with_pss:
                pss_total += _pss(pid)
        self.samples += 1
        self.peak_pss = max(self.peak_pss, pss_total)
        if rss_total > self.peak_rss:
            self.peak_rss = rss_total
            self.peak_breakdown = breakdown
            self.peak_processes = counted

    @property
    def cpu_seconds(self) -> float:
        """CPU time of every process seen (a process that ended between two samples loses up to
        one interval of it)."""
        return sum(self._cpu.values())

    def mark(self) -> dict[int, float]:
        """Sample now; CPU seconds used so far per process (to subtract start-up from a timed region)."""
        self.sample()
        with self._lock:
            return dict(self._cpu)

    def cpu_since(self, before: dict[int, float]) -> dict[str, float]:
        """CPU seconds per kind of process since `before` (a `mark()`), sampling once more now."""
        after = self.mark()
        out: dict[str, float] = {}
        for pid, seconds in after.items():
            label = self._cpu_label.get(pid, "?")
            out[label] = out.get(label, 0.0) + seconds - before.get(pid, 0.0)
        return dict(sorted(((k, round(v, 2)) for k, v in out.items() if v > 0.005), key=lambda kv: -kv[1]))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()  # one last look


# ---------------------------------------------------------------------------------------------
# the datasets baseline: normalise + tokenize inside one batched map
# ---------------------------------------------------------------------------------------------
class NormalizeAndTokenize:
    """`datasets.Dataset.map(batched=True, with_indices=True)` function: raw json columns in,
    the columns of `BatchTokenizer` out. Invalid records are dropped here, as `only_valid` does
    in the Ray pipeline. The tokenizer is loaded on first use in each map process (the analogue of
    a Ray actor's constructor) and is not pickled with the function."""

    def __init__(self, path: str, attr_json: str, tokenizer_path: str, template: str, cutoff_len: int):
        self.path = path
        self.attr_json = attr_json
        self.tokenizer_path = tokenizer_path
        self.template = template
        self.cutoff_len = cutoff_len
        self._tokenizer = None
        self._attr = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None, "_attr": None}

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        from caregpt.data.formats import normalize
        from caregpt.data.registry import DatasetAttr
        from caregpt.data.tokenize import BatchTokenizer

        if self._tokenizer is None:
            self._attr = DatasetAttr(**json.loads(self.attr_json))
            self._tokenizer = BatchTokenizer(self.tokenizer_path, "sft", self.template, self.cutoff_len)
        names = list(batch)
        columns: dict[str, list] = {"loc": [], "dataset": [], "roles": [], "contents": []}
        for offset, index in enumerate(indices):
            value = {name: batch[name][offset] for name in names}
            row = normalize(value, f"{self.path}:{index + 1}", self._attr, "sft").to_row()
            if row["error"]:
                continue
            for name in columns:
                columns[name].append(row[name])
        return self._tokenizer(columns)


# ---------------------------------------------------------------------------------------------
# child processes: one measurement each
# ---------------------------------------------------------------------------------------------
def _set_tokenizers_parallelism(value: str) -> None:
    if value == "unset":
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = value


def child_ray(spec: dict[str, Any]) -> dict[str, Any]:
    sampler = MemorySampler(spec["interval"], spec["pss_interval"])
    sampler.start()
    _set_tokenizers_parallelism(spec["tokenizers_parallelism"])
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import pyarrow.compute as pc
    import ray
    import ray.data

    from caregpt.config.loader import load_config
    from caregpt.data.pipeline import build_token_dataset

    t_init = time.perf_counter()
    ray.init(num_cpus=spec["ray_cpus"], include_dashboard=False, configure_logging=False,
             log_to_driver=spec["verbose"])
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    sampler.markers.append(session_dir)
    init_s = time.perf_counter() - t_init

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = spec["verbose"]
    if spec["block_mb"]:
        ctx.target_max_block_size = int(spec["block_mb"] * (1 << 20))
    if spec["max_tasks_in_flight_per_actor"]:
        ctx.max_tasks_in_flight_per_actor = spec["max_tasks_in_flight_per_actor"]

    cpu0 = sampler.mark()
    t0 = time.perf_counter()
    config = load_config(None, {
        "dataset": spec["data"], "dataset_dir": str(Path(spec["data"]).parent), "stage": "sft",
        "template": spec["template"], "cutoff_len": str(spec["cutoff_len"]),
    })
    ds, _plan = build_token_dataset(config, spec["tokenizer"], spec["workers"])
    tokens = rows = 0
    first_batch_s = None
    for batch in ds.iter_batches(batch_size=spec["iter_batch_size"], batch_format=spec["iter_format"]):
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - t0
        lengths = batch["length"]
        tokens += int(pc.sum(lengths).as_py() if spec["iter_format"] == "pyarrow" else lengths.sum())
        rows += len(lengths)
    elapsed = time.perf_counter() - t0
    cpu = sampler.cpu_since(cpu0)
    sampler.stop()
    ray.shutdown()
    return {
        "engine": "ray", "records": spec["records"], "rows": rows, "tokens": tokens,
        "seconds": elapsed, "ray_init_seconds": init_s, "first_batch_seconds": first_batch_s,
        "tokens_per_s": tokens / elapsed, "tokens_per_s_incl_init": tokens / (elapsed + init_s),
        "cpu_seconds_timed": sum(cpu.values()), "cpu_seconds_timed_breakdown": cpu,
        **_memory(sampler), "session_dir": session_dir,
    }


def child_datasets(spec: dict[str, Any]) -> dict[str, Any]:
    sampler = MemorySampler(spec["interval"], spec["pss_interval"])
    sampler.start()
    _set_tokenizers_parallelism(spec["tokenizers_parallelism"])
    cache_dir = Path(tempfile.mkdtemp(prefix="hf-cache-", dir=spec["workdir"]))
    os.environ["HF_DATASETS_CACHE"] = str(cache_dir)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    tempfile.tempdir = str(cache_dir)  # where map writes its (uncached) temporary arrow files
    import dataclasses

    import datasets
    import pyarrow.compute as pc

    from caregpt.data.registry import resolve_datasets

    datasets.disable_caching()
    if not spec["verbose"]:
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    (attr,) = resolve_datasets([spec["data"]], Path(spec["data"]).parent)
    fn = NormalizeAndTokenize(spec["data"], json.dumps(dataclasses.asdict(attr)), spec["tokenizer"],
                              spec["template"], spec["cutoff_len"])

    cpu0 = sampler.mark()
    t0 = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=spec["data"], split="train", cache_dir=str(cache_dir))
    tokenized = raw.map(fn, batched=True, with_indices=True, num_proc=spec["num_proc"],
                        remove_columns=raw.column_names)
    map_s = time.perf_counter() - t0
    tokens = rows = 0
    for batch in tokenized.with_format("numpy" if spec["iter_format"] == "numpy" else "arrow").iter(batch_size=spec["iter_batch_size"]):
        lengths = batch["length"]
        tokens += int(pc.sum(lengths).as_py() if spec["iter_format"] == "pyarrow" else lengths.sum())
        rows += len(lengths)
    elapsed = time.perf_counter() - t0
    cpu = sampler.cpu_since(cpu0)
    sampler.stop()
    return {
        "engine": "datasets", "records": spec["records"], "rows": rows, "tokens": tokens,
        "seconds": elapsed, "map_seconds": map_s, "tokens_per_s": tokens / elapsed,
        "cpu_seconds_timed": sum(cpu.values()), "cpu_seconds_timed_breakdown": cpu,
        **_memory(sampler),
    }


def _memory(sampler: MemorySampler) -> dict[str, Any]:
    return {
        "peak_rss_bytes": sampler.peak_rss, "peak_pss_bytes": sampler.peak_pss or None,
        "peak_rss_breakdown": dict(sorted(sampler.peak_breakdown.items(), key=lambda kv: -kv[1])),
        "peak_processes": sampler.peak_processes, "memory_samples": sampler.samples,
        "sampler_busy_seconds": round(sampler.busy_seconds, 2),
        "cpu_seconds": sampler.cpu_seconds,
    }


def run_child(spec: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its result dict."""
    log_path = Path(spec["workdir"]) / f"{spec['engine']}-{spec['records']}.log"
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if verbose else log, text=True, check=False)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
        elif verbose:
            print(line)
    if proc.returncode != 0 or result is None:
        tail = "" if verbose else log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"{spec['engine']} run at {spec['records']} records failed (exit {proc.returncode}):\n{tail}")
    return result


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def write_corpus(source: Path, records: int, out: Path) -> Path:
    """The source file's records repeated (in order) up to `records` lines."""
    lines = [line for line in source.read_bytes().splitlines() if line.strip()]
    with open(out, "wb") as handle:
        full, rest = divmod(records, len(lines))
        block = b"\n".join(lines) + b"\n"
        for _ in range(full):
            handle.write(block)
        if rest:
            handle.write(b"\n".join(lines[:rest]) + b"\n")
    return out


def build_tokenizer(workdir: Path) -> str:
    """The bench34m preset's 8k-vocab tokenizer, trained on the shared data (its model weights are
    built too, by the same call, and ignored)."""
    from caregpt.models.tiny import build_tiny_model

    return str(build_tiny_model("bench34m", [p for p in TOKENIZER_CORPUS if p.is_file()], workdir / "bench34m", seed=0))


def _mib(value: int | float | None) -> str:
    return "-" if not value else f"{value / (1 << 20):,.0f}"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (engine, records): the median of every numeric field over the repeats."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["engine"], r["records"]), []).append(r)
    out = {}
    for key, runs in groups.items():
        merged: dict[str, Any] = dict(runs[0])
        for field, value in runs[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and field != "records":
                values = [run[field] for run in runs if isinstance(run.get(field), (int, float))]
                merged[field] = _median(values)
        merged["runs"] = len(runs)
        merged["tokens_per_s_all"] = [run["tokens_per_s"] for run in runs]
        merged["peak_rss_breakdown"] = max(runs, key=lambda run: run["peak_rss_bytes"])["peak_rss_breakdown"]
        out[key] = merged
    return out


def print_report(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    by = aggregate(results)
    n, big = args.records, args.records * args.scale
    names = {"ray": f"caregpt ray ({args.workers} tokenizer actors)", "datasets": f"datasets map (num_proc={args.num_proc})"}
    with_pss = any(r["peak_pss_bytes"] for r in by.values())
    header = (f"{'engine':<34}{'records':>9}{'runs':>5}{'tokens':>13}{'seconds':>9}{'tokens/s':>11}{'CPU s':>8}"
              f"{'peak RSS MiB':>14}" + (f"{'peak PSS MiB':>14}" if with_pss else ""))
    print()
    if any(r["runs"] > 1 for r in by.values()):
        print("(medians over the runs)")
    print(header)
    print("-" * len(header))
    for (engine, size), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0] != "ray")):
        print(f"{names[engine]:<34}{size:>9,}{r['runs']:>5}{int(r['tokens']):>13,}{r['seconds']:>9.1f}{r['tokens_per_s']:>11,.0f}"
              f"{r['cpu_seconds_timed']:>8.1f}{_mib(r['peak_rss_bytes']):>14}" + (f"{_mib(r['peak_pss_bytes']):>14}" if with_pss else ""))
    print()
    for (engine, size), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0] != "ray")):
        if engine == "ray":
            parts = ", ".join(f"{k} {_mib(v)}" for k, v in r["peak_rss_breakdown"].items())
            print(f"ray at {size:,}: ray.init {r['ray_init_seconds']:.1f} s (not in the timing), first batch after "
                  f"{r['first_batch_seconds']:.1f} s; RSS at the peak (MiB): {parts}")
        else:
            print(f"datasets at {size:,}: load_dataset + map {r['map_seconds']:.1f} s, iterating {r['seconds'] - r['map_seconds']:.1f} s")
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_seconds_timed_breakdown"].items())
        print(f"  CPU seconds in the timed region: {cpu}")
    summary: dict[str, Any] = {"aggregated": {f"{e}@{s}": v for (e, s), v in by.items()}}
    for r in results:
        twin = by.get(("datasets" if r["engine"] == "ray" else "ray", r["records"]))
        if twin and (r["tokens"] != twin["tokens"] or r["rows"] != twin["rows"]):
            print(f"WARNING: {r['engine']} at {r['records']:,} records produced {r['rows']:,} rows / {r['tokens']:,} tokens, "
                  f"the other engine {int(twin['rows']):,} / {int(twin['tokens']):,} (they should be equal)")
    ray_n, ds_n = by.get(("ray", n)), by.get(("datasets", n))
    ray_big, ds_big = by.get(("ray", big)), by.get(("datasets", big))
    print()
    if ray_n and ds_n:
        ratio = ray_n["tokens_per_s"] / ds_n["tokens_per_s"]
        incl = ray_n["tokens_per_s_incl_init"] / ds_n["tokens_per_s"]
        summary.update(throughput_ratio=ratio, throughput_ratio_incl_ray_init=incl)
        print(f"throughput ratio (caregpt ray / datasets num_proc={args.num_proc}): {ratio:.2f}x (target >= {THROUGHPUT_TARGET:.1f}x)")
        print(f"  counting ray.init too: {incl:.2f}x")
        efficiency = (ray_n["tokens"] / ray_n["cpu_seconds_timed"]) / (ds_n["tokens"] / ds_n["cpu_seconds_timed"])
        summary["cpu_efficiency_ratio"] = efficiency
        print(f"  tokens per CPU second, ray / datasets: {efficiency:.2f}x (on an idle machine, where datasets keeps "
              "every core busy, the throughput ratio cannot exceed this)")
        pairs = [(a["tokens_per_s"] / b["tokens_per_s"]) for a, b in zip(
            [r for r in results if r["engine"] == "ray" and r["records"] == n],
            [r for r in results if r["engine"] == "datasets" and r["records"] == n])]
        if len(pairs) > 1:
            summary["throughput_ratio_pairs"] = pairs
            print(f"  run by run (adjacent runs share the machine's load): {', '.join(f'{x:.2f}x' for x in pairs)}")
        loads = [r["load_after"] for r in results if "load_after" in r]
        if loads and max(loads) > (os.cpu_count() or 1):
            print(f"  note: the machine was busy (load average up to {max(loads):.1f} on {os.cpu_count()} CPUs); "
                  "wall-clock figures are noisy, CPU seconds less so")
    if ray_n and ray_big:
        mem = ray_big["peak_rss_bytes"] / ray_n["peak_rss_bytes"]
        summary["memory_ratio"] = mem
        print(f"peak memory ratio at {args.scale}x corpus: {mem:.2f}x (target <= {MEMORY_TARGET:.1f}x)")
        if ray_n["peak_pss_bytes"] and ray_big["peak_pss_bytes"]:
            summary["memory_ratio_pss"] = ray_big["peak_pss_bytes"] / ray_n["peak_pss_bytes"]
            print(f"  by PSS (shared pages counted once): {summary['memory_ratio_pss']:.2f}x")
    if ds_n and ds_big:
        summary["datasets_memory_ratio"] = ds_big["peak_rss_bytes"] / ds_n["peak_rss_bytes"]
        print(f"  for context, datasets' peak memory ratio at {args.scale}x corpus: {summary['datasets_memory_ratio']:.2f}x")
    if ray_big and ds_big:
        summary["throughput_ratio_at_scale"] = ray_big["tokens_per_s"] / ds_big["tokens_per_s"]
        print(f"  for context, throughput ratio at {big:,} records: {summary['throughput_ratio_at_scale']:.2f}x")
    return summary


EPILOG = """
output: a table per engine and corpus size (tokens, seconds, tokens/s, CPU seconds of all processes
in the timed region, peak summed RSS and PSS), where the memory went at the peak, and the lines
  throughput ratio (caregpt ray / datasets num_proc=2): R.RRx (target >= 1.0x)
  peak memory ratio at 10x corpus: M.MMx (target <= 1.3x)
Timing starts after ray.init (a trainer has Ray up already; ray.init is reported separately and in a
second ratio) and before build_token_dataset / load_dataset, and ends after the last batch is consumed.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/data_pipeline.py",
        description=(
            "Tokens/s of the caregpt Ray Data pipeline (build_token_dataset, consumed with iter_batches) vs "
            "datasets.Dataset.map(batched=True, num_proc=2), both reading, validating, templating and tokenizing "
            "the same jsonl with the same BatchTokenizer, tokenizer (bench34m preset, 8k vocab) and template; and "
            "the peak memory (summed RSS of all processes) of the Ray pipeline when the corpus grows --scale times. "
            "Prints both ratios; never fails on a target."),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=50_000,
                        help="records in the throughput corpus: the shared SFT file (7,644 records) repeated; also the "
                             "small size of the memory test (default: 50000)")
    parser.add_argument("--scale", type=int, default=10,
                        help="the memory test's large corpus has --records x --scale records (default: 10)")
    parser.add_argument("--workers", type=int, default=2,
                        help="Ray tokenizer actors, the num_workers of build_token_dataset (default: 2)")
    parser.add_argument("--skip-memory", action="store_true",
                        help="run only the throughput measurement at --records (no large corpus, no memory ratio)")
    parser.add_argument("--json", metavar="OUT", help="also write every measurement and the ratios to this JSON file")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per engine at --records, alternating the engines; medians are reported. On a shared "
                             "machine use 3 or more (default: 1)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help=f"source jsonl (alpaca format) to repeat (default: {DEFAULT_DATA})")
    parser.add_argument("--template", default="chatml", help="chat template, both sides (default: chatml)")
    parser.add_argument("--cutoff-len", type=int, default=1024, help="cutoff_len, both sides (default: 1024)")
    parser.add_argument("--tokenizer", help="use this tokenizer/model dir instead of building the bench34m one (saves ~10 s)")
    parser.add_argument("--num-proc", type=int, default=2, help="num_proc of datasets' map (default: 2)")
    parser.add_argument("--engines", default="ray,datasets", help="which engines to run, comma-separated (default: ray,datasets)")
    tuning = parser.add_argument_group("Ray tuning knobs (the library's own settings are untouched)")
    tuning.add_argument("--ray-cpus", type=int, default=None,
                        help="logical CPUs of the embedded Ray (default: workers + 2: read tasks, tokenizer actors, each "
                             "holding one logical CPU, and the driver can co-exist, as caregpt.runtime does)")
    tuning.add_argument("--block-mb", type=float, default=None,
                        help="DataContext.target_max_block_size in MiB (default: Ray's, 128)")
    tuning.add_argument("--max-tasks-in-flight-per-actor", type=int, default=None,
                        help="DataContext.max_tasks_in_flight_per_actor (default: Ray's)")
    tuning.add_argument("--tokenizers-parallelism", choices=("true", "false", "unset"), default="false",
                        help="TOKENIZERS_PARALLELISM for both engines: whether each worker's Rust tokenizer may use "
                             "threads of its own (default: false, as the test suite runs)")
    tuning.add_argument("--iter-batch-size", type=int, default=256,
                        help="rows per batch when consuming the result, both engines (default: 256)")
    tuning.add_argument("--iter-format", choices=("numpy", "pyarrow"), default="numpy",
                        help="batch format when consuming the result, both engines: numpy (Ray's default, what a "
                             "torch collate starts from) or pyarrow (no per-row conversion) (default: numpy)")
    misc = parser.add_argument_group("measurement")
    misc.add_argument("--interval", type=float, default=0.2, help="memory sampling interval in seconds (default: 0.2)")
    misc.add_argument("--pss-interval", type=float, default=0.0, metavar="SECONDS",
                      help="also sample the summed PSS (shared pages split between the processes that map them) "
                           "every SECONDS; it reads /proc/PID/smaps_rollup, which costs tens of ms of kernel time per "
                           "Ray process, so it perturbs the timing (default: 0, off)")
    misc.add_argument("--keep", action="store_true", help="keep the temp dir (corpora, tokenizer, per-run logs) and print its path")
    misc.add_argument("--verbose", action="store_true", help="show the measurement subprocesses' Ray / datasets output")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.records, args.scale, args.workers, args.num_proc, args.repeat) < 1:
        parser.error("--records, --scale, --workers, --num-proc and --repeat must be >= 1")
    unknown = {e.strip() for e in args.engines.split(",")} - {"ray", "datasets"}
    if unknown:
        parser.error(f"--engines: unknown engine(s) {sorted(unknown)}; choose from ray, datasets")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        spec = json.loads(args._child)
        result = (child_ray if spec["engine"] == "ray" else child_datasets)(spec)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="caregpt-bench-data-"))
    try:
        sizes = [args.records] if args.skip_memory else [args.records, args.records * args.scale]
        print(f"workdir {workdir}; machine: {os.cpu_count()} CPUs, Python {platform.python_version()}")
        t = time.perf_counter()
        tokenizer = args.tokenizer or build_tokenizer(workdir)
        print(f"tokenizer {tokenizer} ({time.perf_counter() - t:.1f} s to build)" if not args.tokenizer else f"tokenizer {tokenizer}")
        results = []
        for size in sizes:
            data = write_corpus(Path(args.data), size, workdir / f"sft_{size}.jsonl")
            print(f"corpus {data.name}: {size:,} records, {data.stat().st_size / (1 << 20):,.0f} MiB")
            runs = [engine for _ in range(args.repeat if size == args.records else 1) for engine in engines]
            for engine in runs:
                spec = {
                    "engine": engine, "records": size, "data": str(data), "tokenizer": tokenizer,
                    "template": args.template, "cutoff_len": args.cutoff_len, "workers": args.workers,
                    "ray_cpus": args.ray_cpus or args.workers + 2, "num_proc": args.num_proc,
                    "block_mb": args.block_mb, "max_tasks_in_flight_per_actor": args.max_tasks_in_flight_per_actor,
                    "tokenizers_parallelism": args.tokenizers_parallelism, "iter_batch_size": args.iter_batch_size,
                    "iter_format": args.iter_format,
                    "interval": args.interval, "pss_interval": args.pss_interval, "workdir": str(workdir), "verbose": args.verbose,
                }
                result = run_child(spec, args.verbose)
                result["load_after"] = os.getloadavg()[0]
                print(f"  {engine:<9} {result['tokens']:>12,} tokens in {result['seconds']:6.1f} s "
                      f"= {result['tokens_per_s']:>10,.0f} tokens/s, {result['cpu_seconds_timed']:5.1f} CPU s, "
                      f"peak RSS {_mib(result['peak_rss_bytes'])} MiB (load average {result['load_after']:.1f})", flush=True)
                results.append(result)
            if size != args.records:
                data.unlink()
        summary = print_report(results, args)
        total = time.perf_counter() - started
        print(f"\ntotal run time {total:.0f} s")
        if args.json:
            settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
            Path(args.json).write_text(json.dumps({
                "settings": settings, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "results": results, "summary": summary, "run_seconds": total,
            }, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
