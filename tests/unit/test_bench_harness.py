"""benchmarks/harness.py: child processes (result, failure with the log's tail, timeout), rounds, medians, targets."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402

CHILD = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {bench!r})
    import harness

    def double(spec):
        return {{"value": spec["x"] * 2}}

    def fail(spec):
        print("something useful to debug with")
        raise ValueError("boom")

    def sleep(spec):
        time.sleep(60)
        return {{}}

    if __name__ == "__main__":
        harness.child_main({{"double": double, "fail": fail, "sleep": sleep}})
''')


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "bench_child.py"
    path.write_text(CHILD.format(bench=str(Path(harness.__file__).parent)))
    return path


def test_run_child_returns_the_result_with_the_machines_load(script, tmp_path):
    result = harness.run_child(script, "double", {"x": 21}, tmp_path)
    assert result["value"] == 42
    assert result["child_seconds"] >= 0 and 0 <= result["other_cpus"] and len(result["loadavg_after"]) == 3


def test_a_failing_child_raises_with_its_log_tail(script, tmp_path):
    with pytest.raises(RuntimeError, match="fail failed") as info:
        harness.run_child(script, "fail", {}, tmp_path)
    assert "something useful to debug with" in str(info.value) and "ValueError: boom" in str(info.value)


def test_a_child_past_its_timeout_is_killed(script, tmp_path):
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="exit timeout"):
        harness.run_child(script, "sleep", {}, tmp_path, timeout=1)
    assert time.perf_counter() - start < 30


def test_rounds_rotate_and_record_failures(script, tmp_path):
    results = harness.run_rounds(script, ["double", "fail"], {"x": 1}, tmp_path, 2, at_end=("double",))
    assert [r["round"] for r in results["double"]] == [1, 2, 3]
    assert all("error" in r for r in results["fail"]) and len(results["fail"]) == 2
    assert harness.rotated(["a", "b", "c"], 1) == ["b", "c", "a"]


def test_aggregate_median_and_best_skip_failed_runs():
    runs = [{"v": 1.0, "tag": "first"}, {"v": 5.0}, {"v": 3.0}, {"error": "x"}]
    assert harness.aggregate(runs, ("v",))["v"] == 3.0
    assert harness.aggregate(runs, ("v",), "best", best="v")["v"] == 5.0
    assert harness.aggregate([{"error": "only"}], ("v",))["error"] == "only"


def test_targets_print_their_verdict():
    assert harness.Target("ratio", 1.25).line(1.3) == "ratio: 1.30x  (target >= 1.25x; meets target)"
    overhead = harness.Target("overhead", 0.10, higher_is_better=False, unit="%", signed=True)
    assert overhead.line(0.186, "noisy") == "overhead: +18.6%  (target <= 10.0%; MISSES target); noisy"
    assert "not measured" in overhead.line(None)


def test_sampler_sees_this_process_memory_and_cpu():
    sampler = harness.ProcessSampler(interval=0.05)
    sampler.start()
    before = sampler.mark()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    cpu = sampler.cpu_since(before)
    sampler.stop()
    assert cpu["driver"] >= 0.2 and sampler.peak_rss > 10 << 20 and sampler.memory()["peak_rss_breakdown"]["driver"] > 0


def test_print_table(capsys):
    harness.print_table([{"n": "row", "v": 1.234, "m": None}], [("name", "n", ""), ("value", "v", ".2f"), ("missing", "m", ".1f")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "value", "missing"] and lines[2].split() == ["row", "1.23", "-"]


def test_missing_data_stops_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="benchmark data not found: .*nope.jsonl"):
        harness.require_files(tmp_path / "nope.jsonl")


BENCHMARKS = ("train_throughput.py", "data_pipeline.py", "tune_asha.py")


@pytest.mark.parametrize("script", BENCHMARKS)
def test_each_benchmark_explains_itself_and_stops_cleanly_without_data(script, tmp_path):
    import os
    import subprocess

    path = Path(harness.__file__).parent / script
    env = {**os.environ, "CAREGPT_SHARED_DATA": str(tmp_path / "no-shared-data")}
    shown = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0 and "--quick" in shown.stdout
    missing = subprocess.run([sys.executable, str(path), "--quick"], capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 1
    assert "benchmark data not found" in missing.stderr and "no-shared-data" in missing.stderr


def test_serve_load_report_prints_one_table_and_the_three_ratios_per_app(capsys):
    import serve_load
    from serve_load import Result, Sample

    def result(scenario, concurrency, wall_s, ttft):
        samples = [Sample(ttft=ttft, e2e=ttft + 1.27, tokens=128, gaps=[0.01] * 127) for _ in range(4)]
        return Result(scenario, concurrency, 4, wall_s, 4 * 128, 0, samples)

    results = {"hf-serve@32": result("hf-serve", 32, 4.0, 0.2), "in-process@1": result("in-process", 1, 8.0, 0.04)}
    for app in serve_load.RAY_APPS:
        results[f"{app}@1"] = result(app, 1, 8.0, 0.05)
        results[f"{app}@32"] = result(app, 32, 2.0, 0.1)
    report = serve_load.report(results)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("scenario"))
    assert "out tok/s" in header and "TTFT p50 ms" in header and "e2e p99 s" in header
    assert sum(line.startswith(("ray-", "hf-serve", "in-process")) for line in out.splitlines()) == 6  # a row a scenario
    for app in serve_load.RAY_APPS:
        assert f"{app}: c32 output tok/s vs transformers serve (target >= 1.2): 2.0" in out       # 256 vs 128 tok/s
        assert f"{app}: TTFT p50 c1 HTTP vs in-process (target <= 1.25): 1.25" in out             # 50 vs 40 ms
        assert f"{app}: c32 vs c1 output tok/s (target >= 6): 4.0" in out                         # 256 vs 64 tok/s
    assert report["ratios"]["ray-continuous: c32 vs c1 output tok/s (target >= 6)"] == 4.0
