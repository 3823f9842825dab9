"""What every benchmark script here shares: child processes, rounds and medians, load and CPU sampling, tables.

* ``run_child`` runs one measurement in a fresh interpreter (this same script, ``--_child NAME --_spec FILE``),
  in its own session so a timeout ends it and everything it started (an embedded Ray) together, and adds what
  the rest of the machine did meanwhile (load average, CPUs other processes kept busy).
* ``child_main`` is the other end: the child looks NAME up, runs it and prints one ``BENCH_RESULT {json}`` line.
* ``ProcessSampler`` samples RSS and CPU seconds of a process tree (and of the processes of one Ray session,
  found by its session dir) in a background thread: peaks, where the memory was at the peak, CPU per kind.
* ``Target`` and ``print_table``: targets are data (goal, direction); the verdict line is printed, never asserted.

Standard library only at import time: a peer's venv (LLaMA-Factory's) runs children of these scripts too.
Methodology: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CAREGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULT_TAG = "BENCH_RESULT "


# --------------------------------------------------------------------------------------------- data
def require_files(*paths: Path, flag: str = "--data") -> None:
    """Exit with a message saying what is missing and how to point at it (benchmarks need ../shared/data)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        sys.exit(f"benchmark data not found: {', '.join(missing)}\n"
                 f"These benchmarks read the larger data kept beside the repository in {SHARED_DATA}. Pass {flag} PATH, "
                 "set CAREGPT_SHARED_DATA=DIR, or fetch a public dataset with `caregpt data download NAME --dir DIR`.")


@contextlib.contextmanager
def work_dir(path: str | None, keep: bool, prefix: str) -> Iterator[Path]:
    """A given dir (kept) or a fresh temp dir, removed at the end unless ``keep``."""
    folder = Path(path or tempfile.mkdtemp(prefix=prefix)).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if path or keep:
            print(f"[bench] work dir kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"[bench] figures written to {path}")


# --------------------------------------------------------------------------------------------- machine load
def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat; idle and iowait excluded)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [float(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def reaped_children_cpu() -> float:
    """User + system seconds of this process's waited-for children (resource.RUSAGE_CHILDREN)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_cpus(seconds: float = 2.0) -> float:
    """How many CPUs the whole machine keeps busy over the next ``seconds``."""
    before = cpu_busy_seconds()
    time.sleep(seconds)
    return (cpu_busy_seconds() - before) / seconds


def wait_for_quiet(max_wait: float, below: float) -> dict[str, float]:
    """Wait at most ``max_wait`` s until fewer than ``below`` CPUs are busy; returns the wait and the last reading."""
    start = time.perf_counter()
    seen = busy_cpus()
    while seen >= below and time.perf_counter() - start < max_wait:
        seen = busy_cpus()
    return {"waited_seconds": round(time.perf_counter() - start, 1), "busy_cpus_at_start": round(seen, 2)}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------------- child processes
def child_main(children: dict[str, Callable[[dict[str, Any]], dict[str, Any]]], argv: list[str] | None = None) -> bool:
    """In a child (``--_child NAME --_spec FILE`` on the command line): run it, print its result; True if so."""
    argv = sys.argv[1:] if argv is None else argv
    if "--_child" not in argv:
        return False
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--_child", required=True, choices=sorted(children))
    parser.add_argument("--_spec", required=True)
    args, _ = parser.parse_known_args(argv)
    result = children[args._child](json.loads(Path(args._spec).read_text(encoding="utf-8")))
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)
    return True


def run_child(script: str | Path, name: str, spec: dict[str, Any], workdir: Path, *, python: str | Path = sys.executable,
              env: dict[str, str] | None = None, timeout: float = 1800, verbose: bool = False, tag: str = "",
              quiet_wait: float = 0.0, quiet_below: float = 0.3) -> dict[str, Any]:
    """Run child ``name`` of ``script`` in a fresh interpreter; its result plus the machine's load meanwhile.

    ``other_cpus`` = CPUs the rest of the machine kept busy: all busy time minus this child's own processes
    (the reaped ones, or the child's ``own_cpu_seconds`` when it counted processes it does not reap, Ray's).
    Raises RuntimeError with the log's tail when the child fails or prints no result.
    """
    spec_path = workdir / f"spec_{name}{tag}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    log_path = workdir / f"log_{name}{tag}.txt"
    child_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    quiet = wait_for_quiet(quiet_wait, quiet_below) if quiet_wait > 0 else {}
    print(f"[bench] {name}{tag} ... (log: {log_path})", flush=True)
    load_before, busy0, own0, start = loadavg(), cpu_busy_seconds(), reaped_children_cpu(), time.perf_counter()
    command = [str(python), str(Path(script).resolve()), "--_child", name, "--_spec", str(spec_path)]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE if verbose else log, stderr=subprocess.STDOUT,
                                env=child_env, text=True, start_new_session=True)
        try:
            if verbose:
                for line in proc.stdout:  # type: ignore[union-attr]
                    log.write(line)
                    sys.stdout.write(f"  {name}| {line}")
            code: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout"
    elapsed = time.perf_counter() - start
    busy, own = cpu_busy_seconds() - busy0, reaped_children_cpu() - own0
    text = log_path.read_text(encoding="utf-8", errors="replace")
    results = [line[len(RESULT_TAG):] for line in text.splitlines() if line.startswith(RESULT_TAG)]
    if code != 0 or not results:
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"{name} failed (exit {code}) after {elapsed:.0f}s; last lines of {log_path}:\n{tail}")
    result = json.loads(results[-1])
    own = max(own, float(result.get("own_cpu_seconds") or 0.0))
    result.update(quiet, child_seconds=round(elapsed, 1), loadavg_before=load_before, loadavg_after=loadavg(),
                  machine_busy_cpus=round(busy / elapsed, 2), other_cpus=round(max(0.0, busy - own) / elapsed, 2))
    print(f"[bench] {name}{tag} done in {elapsed:.0f}s (other processes kept {result['other_cpus']:.2f} of "
          f"{os.cpu_count()} CPUs busy; load average {result['loadavg_after'][0]:.2f})", flush=True)
    return result


def rotated(order: list[str], round_index: int) -> list[str]:
    """Round k starts k places further along, so no system always runs first (or right after a heavy one)."""
    if not order:
        return []
    k = round_index % len(order)
    return order[k:] + order[:k]


def run_rounds(script: str | Path, names: list[str], spec: dict[str, Any], workdir: Path, rounds: int, *,
               every_round: tuple[str, ...] = (), at_end: tuple[str, ...] = (),
               per_name: dict[str, dict[str, Any]] | None = None, **run: Any) -> dict[str, list[dict[str, Any]]]:
    """Each round: the ``every_round`` children (a reference probe, say), then ``names`` in rotated order; the
    ``at_end`` children once more after the last round. A failing child is recorded as ``{"error": ...}`` and the
    others go on. ``per_name`` adds run_child arguments for one child (another python, env)."""
    results: dict[str, list[dict[str, Any]]] = {}

    def one(name: str, tag: str, index: int) -> None:
        try:
            result = run_child(script, name, spec, workdir, tag=tag, **run, **(per_name or {}).get(name, {}))
        except RuntimeError as exc:
            print(f"[bench] {exc}", flush=True)
            result = {"error": str(exc)}
        results.setdefault(name, []).append({**result, "round": index})

    for index in range(rounds):
        for name in [*every_round, *rotated(names, index)]:
            one(name, f"_r{index + 1}", index + 1)
    for name in at_end:
        one(name, "_end", rounds + 1)
    return results


# --------------------------------------------------------------------------------------------- rounds and medians
def median(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def aggregate(runs: list[dict[str, Any]], keys: tuple[str, ...], how: str = "median", best: str | None = None) -> dict[str, Any]:
    """One result from several rounds: the median of each of ``keys`` (other fields from the first run), or,
    with ``how="best"``, the run with the highest ``best`` (outside load only ever slows a run down).
    Failed runs (with an ``error``) are skipped; ``rounds`` keeps every run."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "no run", "rounds": runs}
    if how == "best" and best:
        out = dict(max(ok, key=lambda r: r.get(best) or 0.0))
    else:
        out = dict(ok[0])
        out.update({key: median([r.get(key) for r in ok]) for key in keys})
    out.update(rounds=runs, runs=len(ok))
    return out


# --------------------------------------------------------------------------------------------- process sampling
def process_kind(proc, root_pid: int, root_cmdline: list[str]) -> str:
    """A readable kind for a process of a benchmark's tree: driver, raylet, ray::ActorName, ray agents..."""
    name, cmdline = proc.name(), proc.cmdline()
    cmd = " ".join(cmdline)
    if proc.pid == root_pid:
        return "driver"
    if name in ("raylet", "gcs_server"):
        return name
    if cmd.startswith("ray::"):  # Ray workers retitle themselves (ray::IDLE, ray::MapWorker(...), ray::_StatsActor.method)
        return cmd.split()[0].split("(")[0].split(".")[0]
    if "default_worker.py" in cmd:
        return "ray::IDLE"
    if "/ray/" in cmd:
        return "ray agents"
    if cmdline == root_cmdline or name.startswith("python"):
        return "child processes"  # e.g. datasets' map processes
    return (name or cmd)[:40]


class ProcessSampler(threading.Thread):
    """Summed RSS (peak) and CPU seconds per process of this process, its descendants and, once a Ray session
    dir is added to ``markers``, every process whose command line names it (never another user's Ray).

    Runs inside the measured process, so it is kept cheap: each tick re-reads the known processes; the process
    table is walked once per ``scan_interval``; PSS (page-table walks, tens of ms per Ray process) only when
    ``pss_interval`` > 0. ``keep_series`` keeps (time, CPU seconds per pid) of every tick.
    """

    def __init__(self, interval: float = 0.2, pss_interval: float = 0.0, scan_interval: float = 1.0, keep_series: bool = False):
        import psutil

        super().__init__(daemon=True, name="bench-sampler")
        self.psutil, self.interval, self.pss_interval, self.scan_interval = psutil, interval, pss_interval, scan_interval
        self.root = psutil.Process()
        self.root_cmdline = self.root.cmdline()
        self.markers: list[str] = []
        self.peak_rss = self.peak_pss = self.peak_processes = self.samples = 0
        self.peak_breakdown: dict[str, int] = {}
        self.busy_seconds = 0.0
        self.cpu: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.series: list[tuple[float, dict[int, float]]] | None = [] if keep_series else None
        self._known: dict[int, Any] = {}
        self._session_roots: dict[int, Any] = {}
        self._last_scan = self._last_pss = 0.0
        self._halt, self._lock = threading.Event(), threading.Lock()

    def _processes(self, now: float) -> dict[int, Any]:
        if now - self._last_scan < self.scan_interval and self._known:
            return self._known
        self._last_scan = now
        if self.markers:
            for proc in self.psutil.process_iter(["cmdline"]):
                if any(m in " ".join(proc.info.get("cmdline") or []) for m in self.markers):
                    self._session_roots.setdefault(proc.pid, proc)
        procs = {self.root.pid: self.root}
        for root in [self.root, *self._session_roots.values()]:
            procs.setdefault(root.pid, root)
            with contextlib.suppress(self.psutil.Error):
                for child in root.children(recursive=True):
                    procs.setdefault(child.pid, self._known.get(child.pid, child))
        self._known = procs
        return procs

    def sample(self) -> None:
        with self._lock:
            now = time.perf_counter()
            rss_total = pss_total = counted = 0
            breakdown: dict[str, int] = {}
            with_pss = self.pss_interval > 0 and now - self._last_pss >= self.pss_interval
            self._last_pss = now if with_pss else self._last_pss
            for pid, proc in self._processes(now).items():
                try:
                    rss, times = proc.memory_info().rss, proc.cpu_times()
                    kind = process_kind(proc, self.root.pid, self.root_cmdline)
                except self.psutil.Error:
                    self._session_roots.pop(pid, None)
                    self._last_scan = 0.0  # something ended: look for new processes next tick
                    continue
                self.cpu[pid], self.kind[pid] = times.user + times.system, kind
                counted, rss_total = counted + 1, rss_total + rss
                breakdown[kind] = breakdown.get(kind, 0) + rss
                pss_total += _pss(pid) if with_pss else 0
            self.samples += 1
            self.peak_pss = max(self.peak_pss, pss_total)
            if rss_total > self.peak_rss:
                self.peak_rss, self.peak_breakdown, self.peak_processes = rss_total, breakdown, counted
            if self.series is not None:
                self.series.append((now, dict(self.cpu)))
            self.busy_seconds += time.perf_counter() - now

    def mark(self) -> dict[int, float]:
        """Sample now; CPU seconds so far per process (subtract it from a later ``cpu_since``)."""
        self.sample()
        return dict(self.cpu)

    def cpu_since(self, before: dict[int, float] | None = None, group: Callable[[str], str] = str) -> dict[str, float]:
        """CPU seconds per kind (``group`` can merge kinds) since ``before``, sampling once more now."""
        after, out = self.mark(), {}
        for pid, seconds in after.items():
            label = group(self.kind.get(pid, "?"))
            out[label] = out.get(label, 0.0) + seconds - (before or {}).get(pid, 0.0)
        return dict(sorted(((k, round(v, 2)) for k, v in out.items() if v > 0.005), key=lambda kv: -kv[1]))

    def others_while_busy(self, kind: str, min_cpus: float = 0.5) -> dict[str, float] | None:
        """CPUs used by every other sampled process while processes of ``kind`` used at least ``min_cpus``."""
        if not self.series:
            return None
        seconds = other = 0.0
        for (t0, c0), (t1, c1) in zip(self.series, self.series[1:]):
            delta = {pid: c1[pid] - c0.get(pid, c1[pid]) for pid in c1}
            busy = sum(d for pid, d in delta.items() if self.kind.get(pid) == kind)
            if t1 > t0 and busy / (t1 - t0) >= min_cpus:
                seconds += t1 - t0
                other += sum(d for pid, d in delta.items() if self.kind.get(pid) != kind)
        return {"seconds": round(seconds, 1), "other_cpus": round(other / seconds, 3)} if seconds else None

    def memory(self) -> dict[str, Any]:
        return {"peak_rss_bytes": self.peak_rss, "peak_pss_bytes": self.peak_pss or None,
                "peak_rss_breakdown": dict(sorted(self.peak_breakdown.items(), key=lambda kv: -kv[1])),
                "peak_processes": self.peak_processes, "memory_samples": self.samples,
                "sampler_busy_seconds": round(self.busy_seconds, 2)}

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def _pss(pid: int) -> int:
    """Proportional set size (shared pages split between the processes mapping them), from smaps_rollup."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
        for line in handle:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------------------------- reporting
@dataclass(frozen=True)
class Target:
    """A figure's goal: ``value >= goal`` (or ``<=`` when lower is better); printed beside the figure, never asserted."""

    label: str
    goal: float
    higher_is_better: bool = True
    unit: str = "x"  # "x": a ratio; "%": a fraction printed as a percentage
    signed: bool = False  # print a sign (an overhead, a difference)

    def fmt(self, value: float, signed: bool = False) -> str:
        if self.unit == "%":
            return f"{value * 100:{'+' if signed else ''}.1f}%"
        return f"{value:.2f}x"

    def met(self, value: float) -> bool:
        return value >= self.goal if self.higher_is_better else value <= self.goal

    def line(self, value: float | None, note: str = "") -> str:
        goal = f"target {'>=' if self.higher_is_better else '<='} {self.fmt(self.goal)}"
        if value is None:
            return f"{self.label}: not measured ({goal}){'; ' + note if note else ''}"
        verdict = "meets target" if self.met(value) else "MISSES target"
        return f"{self.label}: {self.fmt(value, signed=self.signed)}  ({goal}; {verdict}){'; ' + note if note else ''}"


def fmt(value: Any, spec: str = "") -> str:
    """A table cell: '-' for missing values, else ``format(value, spec)``."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if spec else str(value)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]], markdown: bool = False) -> None:
    """Columns are (header, key in each row, format spec); the first column is left-aligned, the others right."""
    cells = [[fmt(row.get(key), spec) for _, key, spec in columns] for row in rows]
    widths = [max(len(header), *(len(r[i]) for r in cells)) for i, (header, _, _) in enumerate(columns)]

    def render(values: list[str]) -> str:
        parts = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "| " + " | ".join(parts) + " |" if markdown else "  ".join(parts)

    print(render([header for header, _, _ in columns]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|" if markdown else "-" * (sum(widths) + 2 * (len(widths) - 1)))
    for row in cells:
        print(render(row))
