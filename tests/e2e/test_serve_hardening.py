"""The served API against hostile clients (issue 16): a real Serve app on 127.0.0.1, the front proxy before it.

- slow headers: thousands of connections that never finish their headers, from several processes,
  are closed by the server itself within 20 s while normal requests keep succeeding;
- client strings: a patient id or a 250 KB string as `model` never reaches /metrics or the logs;
- per-request caps (n, prompts, total tokens) are clear 400s, and one big request does not starve
  a small one;
- overload: beyond max_pending_requests, 503s arrive within 1 s;
- a cheap length bound: 16 concurrent 1 MB bodies of 28,001 turns are refused quickly.

The number of slow connections is CAREGPT_SLOW_HEADER_CONNECTIONS (default 18,000, the issue's
figure; the machines allow 20,000 open files per process).

Run: PYTHONPATH=platform:. .venv/bin/python -m pytest tests/e2e/test_serve_hardening.py -q
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_support import delete_soon, deploy, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

KEY = "sk-hardening"
APP = "hardening"
PREFIX = "/hard"
PATIENT = "patient-110105196803151233"
SETTINGS = {
    "served_model_name": "tiny-medical",
    "api_keys": [KEY],
    "default_max_tokens": 16,
    "max_model_len": 512,
    "num_cpus": 0.5,
    "router_num_cpus": 0.1,
    "max_batch_size": 4,
    "max_n": 4,
    "max_prompts": 16,
    "max_total_tokens": 2048,
    "max_sequences_per_request": 4,
    "max_pending_requests": 24,
    "request_timeout_s": 120,
    "disclaimer": False,
}
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def app(serve_http, tiny_model) -> dict:
    deploy(APP, PREFIX, {"model_name_or_path": tiny_model, **SETTINGS})
    yield {"url": f"{serve_http}{PREFIX}", "upstream": serve_http}
    delete_soon(APP)


@pytest.fixture(scope="module")
def front(app, ray_address) -> dict:
    """The front proxy as it runs in the Docker image and the KubeRay sidecar: its own process, sending requests
    straight to the app's router replica (Serve direct ingress, on in the test Ray as `caregpt serve` turns it on)."""
    port = free_port()
    upstream = app["upstream"].removeprefix("http://")
    proc = subprocess.Popen([sys.executable, "-m", "caregpt.serve.front", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--direct_app", APP],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_ADDRESS": ray_address})
    line = proc.stdout.readline()
    assert "listening" in line, line
    said: list[str] = []
    threading.Thread(target=lambda: said.extend(proc.stdout), daemon=True).start()  # keeps the pipe drained too
    deadline = time.monotonic() + 30
    while not any("forwarding to 1 local ingress replica(s) directly" in line for line in said):
        assert time.monotonic() < deadline and proc.poll() is None, f"the front never got the router replica's port: {said[-5:]}"
        time.sleep(0.2)
    yield {"url": f"http://127.0.0.1:{port}{PREFIX}", "port": port}
    proc.terminate()
    proc.wait(timeout=30)


def chat(url: str, timeout: float = 60, **fields) -> httpx.Response:
    body = {"model": "tiny-medical", "messages": [{"role": "user", "content": "头痛怎么办"}], "max_tokens": 4, **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=timeout)


def test_slow_headers_are_closed_by_the_server_and_normal_requests_succeed(front):
    total = int(os.environ.get("CAREGPT_SLOW_HEADER_CONNECTIONS", "18000"))
    workers = 6
    procs = [subprocess.Popen([sys.executable, "-m", "tests.e2e.slow_headers", "127.0.0.1", str(front["port"]), str(total // workers), "40"],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2]) for _ in range(workers)]
    try:
        opened = [json.loads(p.stdout.readline()) for p in procs]
        all_open = time.monotonic()
        assert sum(o["opened"] for o in opened) >= total * 0.95, opened
        # while they are held (or being closed), normal requests get through
        replies = [chat(front["url"], timeout=30) for _ in range(3)]
        assert [r.status_code for r in replies] == [200, 200, 200], [r.text[:200] for r in replies]
        results = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.kill()
    print(f"\nslow-header connections: {sum(o['opened'] for o in opened)} opened; closed {sum(r['closed'] for r in results)}, "
          f"last close {max(r['last_close_s'] for r in results):.1f} s after its process finished opening")
    assert sum(r["still_open"] for r in results) == 0, results
    assert max(r["last_close_s"] for r in results) <= 20, results
    assert time.monotonic() - all_open < 60
    assert chat(front["url"]).status_code == 200


def _metrics_text() -> str:
    import ray

    port = ray._private.worker._global_node.metrics_export_port
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_client_strings_never_reach_metric_labels_or_logs(app):
    import ray

    assert chat(app["url"], model=PATIENT).status_code == 404
    assert chat(app["url"], model="x" * 250_000).status_code == 400
    for i in range(20):  # many distinct names must not mint label values
        assert chat(app["url"], model=f"{PATIENT}-{i}").status_code == 404
    assert chat(app["url"]).status_code == 200
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:  # Ray's metrics agent exports every few seconds
        text = _metrics_text()
        if 'status="404"' in text and "caregpt_requests_total" in text:
            break
        time.sleep(2)
    ours = [line for line in text.splitlines() if "caregpt_requests_total{" in line]  # Ray may prefix the name with ray_
    assert any('model="unknown"' in line and 'status="404"' in line for line in ours), ours
    assert any('model="tiny-medical"' in line for line in ours), ours
    assert "110105196803151233" not in text and "xxxxxxxxxx" not in text
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    access = []
    for path in logs.glob("*OpenAIRouter*"):
        content = path.read_text(errors="replace")
        assert "110105196803151233" not in content and "x" * 100 not in content, path
        access += [line for line in content.splitlines() if "caregpt_access" in line]
    assert access and all(len(line) < 2000 for line in access)


def test_per_request_caps_are_clear_400s(app):
    def complete(**fields):
        body = {"model": "tiny-medical", "prompt": "发烧", "max_tokens": 4, **fields}
        return httpx.post(f"{app['url']}/v1/completions", json=body, headers=HEADERS, timeout=60)

    too_many_n = chat(app["url"], n=5)
    too_many_prompts = complete(prompt=["发烧"] * 17)
    too_many_tokens = complete(prompt=["发烧"] * 16, n=4, max_tokens=64)  # 4,096 > max_total_tokens 2,048
    for resp, param, limit in ((too_many_n, "n", "max_n"), (too_many_prompts, "prompt", "max_prompts"), (too_many_tokens, "max_tokens", "max_total_tokens")):
        assert resp.status_code == 400, resp.text[:300]
        error = resp.json()["error"]
        assert error["param"] == param and limit in error["message"], error
    assert complete(prompt=["发烧"] * 16, n=2, max_tokens=8).status_code == 200


def test_a_large_request_does_not_starve_a_small_one(app):
    """16 prompts x n=2 against a batch of 4: the small request waits for one turn, not for all of them."""

    async def race():
        async with httpx.AsyncClient(timeout=300, headers=HEADERS) as client:
            # long enough that the big request is still running when the small one arrives, even on an idle machine
            big_body = {"model": "tiny-medical", "prompt": ["发烧咳嗽"] * 16, "n": 2, "max_tokens": 60, "ignore_eos": True}
            small_body = {"model": "tiny-medical", "messages": [{"role": "user", "content": "头痛"}], "max_tokens": 8, "ignore_eos": True}

            async def timed(path, body, delay):
                await asyncio.sleep(delay)
                start = time.monotonic()
                resp = await client.post(f"{app['url']}{path}", json=body)
                return resp, time.monotonic() - start, time.monotonic()

            return await asyncio.gather(timed("/v1/completions", big_body, 0), timed("/v1/chat/completions", small_body, 0.3))

    (big, big_s, big_end), (small, small_s, small_end) = asyncio.run(race())
    assert big.status_code == 200 and small.status_code == 200
    assert big.json()["usage"]["completion_tokens"] == 16 * 2 * 60
    print(f"\nbig request {big_s:.1f} s, small request {small_s:.1f} s")
    assert small_end < big_end and small_s < 0.5 * big_s, (small_s, big_s)


def test_overload_is_answered_with_503_within_a_second(app):
    async def flood():
        async with httpx.AsyncClient(timeout=300, headers=HEADERS, limits=httpx.Limits(max_connections=100)) as client:
            body = {"model": "tiny-medical", "messages": [{"role": "user", "content": "头痛"}], "max_tokens": 48, "ignore_eos": True}

            async def one():
                start = time.monotonic()
                resp = await client.post(f"{app['url']}/v1/chat/completions", json=body)
                return resp, time.monotonic() - start

            return await asyncio.gather(*(one() for _ in range(60)))

    results = asyncio.run(flood())
    busy = [s for r, s in results if r.status_code == 503]
    ok = [r for r, _ in results if r.status_code == 200]
    assert busy and ok and len(busy) + len(ok) == len(results), [r.status_code for r, _ in results]
    assert all(int(r.headers["retry-after"]) >= 1 for r, _ in results if r.status_code == 503)
    busy.sort()
    print(f"\n503s: {len(busy)}, median {busy[len(busy) // 2]:.2f} s, slowest {busy[-1]:.2f} s")
    # The bound is 1 s (it measured a 6.4 s median). On the shared 2-core machine (load average ~20) the
    # 60 connections alone take most of a second to set up, so the slowest gets twice that.
    assert busy[len(busy) // 2] < 1.0 and busy[-1] < 2.0, busy[-5:]


def test_huge_conversations_are_refused_before_tokenizing(app):
    """16 concurrent ~1 MB bodies of 28,001 turns: each a context-length 400, all within seconds."""
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "痛"} for i in range(28_001)]
    raw = json.dumps({"model": "tiny-medical", "messages": turns, "max_tokens": 4}, ensure_ascii=False, separators=(",", ":")).encode()
    assert 900_000 < len(raw) < 1_048_576, len(raw)

    async def send_all():
        async with httpx.AsyncClient(timeout=120, headers={**HEADERS, "Content-Type": "application/json"}) as client:
            start = time.monotonic()
            replies = await asyncio.gather(*(client.post(f"{app['url']}/v1/chat/completions", content=raw) for _ in range(16)))
            return replies, time.monotonic() - start

    replies, took = asyncio.run(send_all())
    print(f"\n16 x {len(raw) // 1000} KB conversations refused in {took:.1f} s")
    assert all(r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded" for r in replies), replies[0].text[:300]
    assert took < 15
    assert chat(app["url"]).status_code == 200
