"""Distillation on a real local Ray, over real HTTP with the real `openai` client: against our own fault-injecting
stand-in server (every seed ends generated or reported failed; a run killed half-way resumes to exactly N unique
records) and against our own Ray Serve API serving the tiny model (the same kill and resume).

Run: .venv/bin/pytest tests/e2e/test_distill.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from caregpt.distill.cli import main as distill_main
from caregpt.distill.config import build_distill_config
from caregpt.distill.run import run_distill
from caregpt.distill.seeds import seed_id
from tests.openai_fault_server import ChatStandIn, serve

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-caregpt-test-3f9a1c"  # must reach the server and never any file we write

# fault tag in the seed -> how the seed must end: generated ("ok") or the failure reason it is reported with
FAULTS = {
    "": "ok", "429once": "ok", "503once": "ok", "500twice": "ok", "timeoutonce": "ok", "garbageonce": "ok", "htmlonce": "ok",
    "500always": "server_error", "timeoutalways": "timeout", "garbagealways": "bad_response", "emptychoices": "bad_response",
    "badrequest": "client_error", "429long": "rate_limited",
}
# generated, then dropped by validation / dedup
FILTERED = {"refuse": "refusal", "english": "language", "length": "truncated"}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_faults_end_generated_or_reported_and_counts_add_up(tmp_path, ray_local, monkeypatch):
    seeds = [f"话题{i} [fault:{tag}]" if tag else f"话题{i}" for i, tag in enumerate(list(FAULTS) + list(FILTERED) + ["dup", "dup"] + [""] * 6)]
    monkeypatch.setenv("CAREGPT_TEST_TEACHER_KEY", SECRET)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"existing": {"file_name": "keep.jsonl"}}), encoding="utf-8")
    standin = ChatStandIn(retry_after=0.6, hang=1.5, api_key=SECRET)
    with serve(standin.app()) as base_url:
        config = build_distill_config({k: (v, "test") for k, v in dict(
            seeds=seeds, base_url=base_url, model="standin-teacher", api_key_env="CAREGPT_TEST_TEACHER_KEY",
            output_dir=str(tmp_path / "out"), dataset_dir=str(tmp_path), dataset_name="distilled_test",
            timeout=0.5, max_retries=3, backoff_base=0.05, backoff_max=0.2, max_retry_after=5,
            concurrency=6, num_actors=2, rate_limit=40, price_prompt_per_1k=0.01, price_completion_per_1k=0.03,
        ).items()})
        report = run_distill(config)
        server_requests = len(standin.log)

    # every seed is accounted for, and the reasons are the injected ones
    expected_failures = Counter(r for s in seeds for tag, r in FAULTS.items() if r != "ok" and s.endswith(f"[fault:{tag}]"))
    assert report.accounted and report.unique_seeds == len(seeds)
    assert report.generated + report.failed == len(seeds) and report.failed == sum(expected_failures.values())
    assert report.failures_by_reason == dict(expected_failures)
    out = tmp_path / "out"
    ids = {seed_id(config, s, 0): s for s in seeds}
    failed = {row["id"]: row["reason"] for row in _read_jsonl(out / "failures.jsonl")}
    generated = {row["id"] for row in _read_jsonl(out / "raw.jsonl")}
    assert len(failed) + len(generated) == len(seeds) and not set(failed) & generated
    for sid, seed in ids.items():
        tag = seed.split("[fault:")[1].rstrip("]") if "[fault:" in seed else ""
        assert failed.get(sid, "ok") == FAULTS.get(tag, "ok"), seed

    # every attempt was counted: the client's request count equals what the server saw
    assert report.requests == server_requests
    assert report.request_outcomes["timeout"] == 1 + (config.max_retries + 1)
    assert report.prompt_tokens > 0 and report.estimated_cost > 0
    # Retry-After was honoured on 429 and 503
    for tag in ("429once", "503once"):
        (key,) = {k for _, k, fault, _, _ in standin.log if fault == tag}
        first, second = standin.attempts[key][:2]
        assert second[0] - first[0] >= 0.6 and first[1] in ("429", "503") and second[1] == "ok"

    # validation and dedup, output in our format, registered next to the entry that was already there
    assert report.filtered_by_reason == {**{v: 1 for v in FILTERED.values()}, "near_duplicate": 1}
    records = _read_jsonl(out / "distilled_test.jsonl")
    assert len(records) == report.records_written == report.generated - report.filtered
    assert len({r["id"] for r in records}) == len(records) and all(set(r) >= {"instruction", "input", "output", "history"} for r in records)
    registry = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert registry["existing"] == {"file_name": "keep.jsonl"} and registry["distilled_test"]["file_name"] == "out/distilled_test.jsonl"
    for path in out.iterdir():
        assert SECRET not in path.read_text(encoding="utf-8"), path
    print(f"\nstand-in distillation: {report.generated} generated, {report.failed} failed in {report.elapsed_s:.1f}s "
          f"({report.seeds_per_s:.2f} seeds/s after {report.startup_s:.1f}s start-up); failures {report.failures_by_reason}")


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").split("\n")[:-1] if line.strip()]  # complete lines only


def test_killed_run_resumes_to_exactly_n_unique_records(tmp_path, ray_local):
    n = 24
    seeds = [f"第{i}号随访问题：术后第{i}天伤口有点痒" for i in range(n)]
    standin = ChatStandIn(delay=0.3)
    with serve(standin.app()) as base_url:
        config = tmp_path / "distill.yaml"
        config.write_text(yaml.safe_dump({
            "seeds": seeds, "base_url": base_url, "model": "standin-teacher", "output_dir": str(tmp_path / "out"),
            "dataset_dir": str(tmp_path), "dataset_name": "resumed", "concurrency": 2, "num_actors": 2, "rate_limit": 0,
            "timeout": 10, "max_retries": 2, "ray_address": ray_local.get_runtime_context().gcs_address,
        }, allow_unicode=True), encoding="utf-8")
        command = [sys.executable, str(REPO / "jobs" / "distill.py"), str(config)]
        env = {**os.environ, "CAREGPT_PROGRESS": "0"}
        raw = tmp_path / "out" / "raw.jsonl"

        with open(tmp_path / "first.log", "w") as log:
            first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + 180
            while len(_lines(raw)) < 4 and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        done_before = {json.loads(line)["id"] for line in _lines(raw)}
        assert 4 <= len(done_before) < n, (tmp_path / "first.log").read_text()[-3000:]

        # the re-run: the same command (here through main() in this process, on the same cluster)
        resumed = distill_main([str(config)])
        resumed_report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
        assert resumed == 0 and resumed_report["accounted"]
        assert resumed_report["already_done"] == len(done_before) and resumed_report["generated"] == n - len(done_before)
        assert distill_main([str(config)]) == 0  # and once more: nothing left to do
        answered = {seed: standin.answered(seed) for seed in seeds}

    ids = [json.loads(line)["id"] for line in _lines(raw)]
    assert len(ids) == n and len(set(ids)) == n  # exactly N records, none twice
    records = _read_jsonl(tmp_path / "out" / "resumed.jsonl")
    assert len(records) == n and len({r["id"] for r in records}) == n
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))  # the last run's
    assert report["already_done"] == n and report["requests"] == 0 and report["records_written"] == n
    # seeds finished before the kill were never asked for again
    by_id = {json.loads(line)["id"]: json.loads(line)["record"]["instruction"] for line in _lines(raw)}
    for sid in done_before:
        assert answered[by_id[sid]] == 1, by_id[sid]
    assert all(count >= 1 for count in answered.values())


@pytest.mark.slow
def test_distill_from_our_served_tiny_model_killed_and_resumed(tmp_path, ray_local, chat_app, monkeypatch):
    """The teacher is our own Ray Serve API serving the tiny model: N records, then a kill half-way and a re-run.
    It is the chat app the API tests share (tests/e2e/serve_support.py; it had an app of its own, ~8 s a deploy)."""
    n = 12
    config = tmp_path / "served.yaml"
    config.write_text(yaml.safe_dump({
        "seeds": [f"第{i}位患者：反复头痛{i}天，需要做什么检查？" for i in range(n)], "base_url": f"{chat_app['url']}/v1",
        "model": chat_app["model"], "api_key_env": "CAREGPT_TEST_TEACHER_KEY", "max_tokens": 16, "temperature": 0.8,
        "output_dir": str(tmp_path / "out"), "dataset_dir": str(tmp_path), "dataset_name": "from_served",
        "concurrency": 2, "num_actors": 2, "rate_limit": 0, "timeout": 60, "max_retries": 2,
        # a few-million-parameter model writes neither Chinese nor long answers: keep every record it makes
        "language": "any", "min_chars": 1, "drop_truncated": False, "dedup_threshold": 0,
        "ray_address": ray_local.get_runtime_context().gcs_address,
    }, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "CAREGPT_PROGRESS": "0", "CAREGPT_TEST_TEACHER_KEY": chat_app["key"]}
    raw = tmp_path / "out" / "raw.jsonl"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, str(REPO / "jobs" / "distill.py"), str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 240
        while len(_lines(raw)) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    done_before = len(_lines(raw))
    assert 2 <= done_before < n, (tmp_path / "first.log").read_text()[-3000:]

    monkeypatch.setenv("CAREGPT_TEST_TEACHER_KEY", chat_app["key"])
    assert distill_main([str(config)]) == 0  # the re-run, in this process, on the same cluster
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    ids = [json.loads(line)["id"] for line in _lines(raw)]
    assert len(ids) == n and len(set(ids)) == n
    assert report["accounted"] and report["already_done"] == done_before and report["generated"] == n - done_before
    assert report["completion_tokens"] > 0  # usage came from the served model
    records = _read_jsonl(tmp_path / "out" / "from_served.jsonl")
    assert len(records) == report["records_written"] and len({r["id"] for r in records}) == len(records)
