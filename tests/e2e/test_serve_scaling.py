"""Autoscaling and fault tolerance of the served API, on real Ray Serve with the tiny model.

- Autoscaling: a sustained concurrent load scales the model deployment from 1 to >= 2 replicas
  (small CPU fractions per replica make room on 2 cores), and it scales back to 1 after the load.
- Fault: a model replica is SIGKILLed during a 300-request load at concurrency 16; with the openai
  SDK's default retries >= 99% of the requests succeed, and the replica count is back within 30 s.

Run: .venv/bin/pytest tests/e2e/test_serve_scaling.py -q
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.e2e.serve_support import delete_soon, deploy, running_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "孩子发烧咳嗽怎么办？"}]


def settings(tiny_model: str, **extra) -> dict:
    return {
        "model_name_or_path": tiny_model,
        "served_model_name": "tiny",
        "template": "chatml",
        "num_cpus": 0.2,
        "router_num_cpus": 0.1,
        "max_model_len": 512,
        "max_batch_size": 8,
        **extra,
    }


async def _load(url: str, stop: asyncio.Event, concurrency: int, max_tokens: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=120)
    done = 0

    async def worker():
        nonlocal done
        while not stop.is_set():
            stream = await client.chat.completions.create(
                model="tiny", messages=MESSAGES, max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True}
            )
            async for _ in stream:
                pass
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _wait_until(predicate, timeout_s: float, every_s: float = 0.5) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        await asyncio.sleep(every_s)
    return None


def test_autoscaling_up_under_load_and_back_down(serve_http, tiny_model):
    name, prefix = "serve_autoscale", "/autoscale"
    autoscaling = {
        "min_replicas": 1, "initial_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
        "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5, "look_back_period_s": 2,
    }
    deploy(name, prefix, settings(tiny_model, max_ongoing_requests=8), {"LLMServer": {"autoscaling_config": autoscaling}})
    url = f"{serve_http}{prefix}"
    try:
        assert running_replicas(name) == 1

        async def scenario():
            stop = asyncio.Event()
            load = asyncio.create_task(_load(url, stop, concurrency=12, max_tokens=96))
            up = await _wait_until(lambda: running_replicas(name) >= 2, timeout_s=150)
            peak = running_replicas(name)
            stop.set()
            served = await load
            down = await _wait_until(lambda: running_replicas(name) == 1, timeout_s=150) if up is not None else None
            return up, peak, served, down

        up, peak, served, down = asyncio.run(scenario())
        print(f"autoscaling: >=2 replicas after {up} s of load (peak {peak}), {served} answers, back to 1 after {down} s")
        assert up is not None, "no second replica under sustained load"
        assert peak >= 2 and served > 0
        assert down is not None, "replicas did not scale back down to 1 after the load stopped"
    finally:
        delete_soon(name)


def _replica_pids(app: str) -> list[int]:
    import ray
    from ray.util.state import list_actors

    # our own cluster's address: other local Ray instances may run on this machine too
    address = ray.get_runtime_context().gcs_address
    actors = list_actors(address=address, filters=[("class_name", "=", f"ServeReplica:{app}:LLMServer"), ("state", "=", "ALIVE")], raise_on_missing_output=False)
    return [a.pid for a in actors if a.pid]


def test_replica_killed_during_load(serve_http, tiny_model):
    from openai import AsyncOpenAI

    name, prefix = "serve_fault", "/fault"
    deploy(name, prefix, settings(tiny_model, num_replicas=2, max_ongoing_requests=16))
    url = f"{serve_http}{prefix}"
    try:
        assert running_replicas(name) == 2
        victims = _replica_pids(name)
        assert len(victims) == 2

        async def watch_recovery(killed_at: float) -> float | None:
            """Seconds from the kill until 2 replicas run again, the killed one replaced (None: not within 60 s)."""
            while time.monotonic() - killed_at < 60:
                count = await asyncio.to_thread(running_replicas, name)
                pids = await asyncio.to_thread(_replica_pids, name)
                if count == 2 and victims[0] not in pids and len(pids) == 2:
                    return time.monotonic() - killed_at
                await asyncio.sleep(0.25)
            return None

        async def scenario():
            client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=60)  # default max_retries=2
            todo = list(range(300))
            outcomes: list[bool] = []
            watcher: list[asyncio.Task] = []

            async def worker():
                while todo:
                    todo.pop()
                    try:
                        reply = await client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0)
                        outcomes.append(bool(reply.choices) and reply.usage.completion_tokens > 0)
                    except Exception:  # noqa: BLE001 - a failed request is counted, not raised
                        outcomes.append(False)
                    if len(outcomes) >= 40 and not watcher:
                        os.kill(victims[0], signal.SIGKILL)
                        watcher.append(asyncio.create_task(watch_recovery(time.monotonic())))

            await asyncio.gather(*(worker() for _ in range(16)))
            assert watcher, "the load ended before the replica was killed"
            return outcomes, await watcher[0]

        outcomes, recovered_s = asyncio.run(scenario())
        print(f"fault: {sum(outcomes)}/300 succeeded, 2 replicas again {recovered_s} s after the SIGKILL")
        assert len(outcomes) == 300
        assert sum(outcomes) >= 297, f"only {sum(outcomes)} of 300 requests succeeded"
        assert recovered_s is not None and recovered_s <= 30, f"2 replicas were not running again within 30 s of the kill ({recovered_s})"
    finally:
        delete_soon(name)
