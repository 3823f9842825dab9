"""The OpenAI-compatible API on real Ray Serve over HTTP: the official `openai` client, curl-style JSON.

One app (tests/e2e/serve_support.py): the tiny model, two LoRA adapters served by name through
multiplexing with room for one loaded adapter per replica (so switching evicts), and an API key.

Run: .venv/bin/pytest tests/e2e/test_serve_api.py -q
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_support import ADAPTERS

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

QUESTION = [{"role": "system", "content": "你是一名医生。"}, {"role": "user", "content": "孩子发烧39度，咳嗽，怎么办？"}]


@pytest.fixture(scope="module")
def client(chat_app):
    from openai import OpenAI

    return OpenAI(base_url=f"{chat_app['url']}/v1", api_key=chat_app["key"], timeout=60)


def greedy(client, model: str, messages=QUESTION, max_tokens: int = 24) -> str:
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
    return reply.choices[0].message.content


def test_model_list_has_base_and_adapters_only(client, chat_app):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == chat_app["model"]
    assert sorted(ids[1:]) == sorted(ADAPTERS)  # `not_an_adapter` (no adapter_config.json) is not listed
    assert client.models.retrieve(ADAPTERS[0]).id == ADAPTERS[0]


def test_chat_completion(client, chat_app):
    reply = client.chat.completions.create(model=chat_app["model"], messages=QUESTION, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == chat_app["model"]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 12


def test_streaming_chat_matches_the_whole_answer(client, chat_app):
    whole = client.chat.completions.create(model=chat_app["model"], messages=QUESTION, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model=chat_app["model"], messages=QUESTION, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert text == whole.choices[0].message.content  # greedy: the stream is the same answer, in pieces
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and not chunks[-1].choices
    assert usage_chunks[0].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_raw_sse_ends_with_done(chat_app):
    body = {"model": chat_app["model"], "messages": QUESTION, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{chat_app['url']}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {chat_app['key']}"}, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_sampling_seed_n_and_stop(client, chat_app):
    kwargs = dict(model=chat_app["model"], messages=QUESTION, max_tokens=16, temperature=1.0, top_p=0.95)
    first = client.chat.completions.create(seed=11, n=2, **kwargs)
    again = client.chat.completions.create(seed=11, n=2, **kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]  # seeded: reproducible
    other = client.chat.completions.create(seed=12, n=1, **kwargs)
    assert other.choices[0].message.content != first.choices[0].message.content
    assert first.usage.completion_tokens >= 2  # both choices counted

    # stop: cut a known greedy answer (of an adapter: the base model's is all newlines) at a piece of it
    text = greedy(client, ADAPTERS[0], max_tokens=24)
    assert len(text) >= 4
    marker = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.chat.completions.create(model=ADAPTERS[0], messages=QUESTION, temperature=0, max_tokens=24, stop=[marker])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(marker)]


def test_text_completions(client, chat_app):
    reply = client.completions.create(model=chat_app["model"], prompt="发烧的常见原因", max_tokens=10, temperature=0)
    assert reply.object == "text_completion" and len(reply.choices) == 1
    assert reply.usage.completion_tokens <= 10
    streamed = client.completions.create(model=chat_app["model"], prompt="发烧的常见原因", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text
    echoed = client.completions.create(model=chat_app["model"], prompt="发烧", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("发烧")
    batch = client.completions.create(model=chat_app["model"], prompt=["发烧", "咳嗽"], max_tokens=4, temperature=0, n=2)
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]


def test_adapters_by_name_differ_from_base_and_survive_eviction(client, chat_app):
    base = greedy(client, chat_app["model"])
    first = {name: greedy(client, name) for name in ADAPTERS}  # one loaded adapter per replica: the 2nd evicts the 1st
    assert all(text != base for text in first.values()), "an adapter with non-zero weights must change the answer"
    assert first[ADAPTERS[0]] != first[ADAPTERS[1]]
    # loaded again after eviction (and concurrently with the base): same answers
    async def again():
        from openai import AsyncOpenAI

        aclient = AsyncOpenAI(base_url=f"{chat_app['url']}/v1", api_key=chat_app["key"], timeout=60)
        names = [ADAPTERS[0], chat_app["model"], ADAPTERS[1], ADAPTERS[0]]
        replies = await asyncio.gather(*(aclient.chat.completions.create(model=n, messages=QUESTION, temperature=0, max_tokens=24) for n in names))
        return dict(zip(range(len(names)), (r.choices[0].message.content for r in replies))), names

    texts, names = asyncio.run(again())
    for i, name in enumerate(names):
        assert texts[i] == (base if name == chat_app["model"] else first[name])


def test_caregpt_readme_curl_request(chat_app):
    """The seed README's request: temperature/top_p/max_new_tokens all 0 mean greedy with the default length."""
    body = {"model": chat_app["model"], "messages": [{"role": "user", "content": "你好"}], "temperature": 0, "top_p": 0, "max_new_tokens": 0, "stream": False}
    resp = httpx.post(f"{chat_app['url']}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {chat_app['key']}", "accept": "application/json"}, timeout=60)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert 0 < data["usage"]["completion_tokens"] <= chat_app["settings"]["default_max_tokens"]


def test_health_ready_and_cors(chat_app):
    assert httpx.get(f"{chat_app['url']}/health", timeout=30).json() == {"status": "ok"}
    ready = httpx.get(f"{chat_app['url']}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    preflight = httpx.options(
        f"{chat_app['url']}/v1/chat/completions",
        headers={"Origin": "https://chat.example.org", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"},
        timeout=30,
    )
    assert preflight.status_code == 200
    assert preflight.headers.get("access-control-allow-origin") in ("*", "https://chat.example.org")


def _serve_logs() -> list[Path]:
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    return sorted(logs.glob("replica_*OpenAIRouter*.log")) + sorted(logs.glob("replica_*LLMServer*.log"))


def test_access_log_records_requests_without_their_text(client, chat_app):
    secret = "PATIENT-ZHANG-SAN-13800000000"
    reply = client.chat.completions.create(model=chat_app["model"], messages=[{"role": "user", "content": f"{secret} 头痛"}], max_tokens=4)
    found = None
    for _ in range(40):  # log files are flushed asynchronously
        text = "\n".join(p.read_text(errors="replace") for p in _serve_logs())
        if reply.id in text:
            found = text
            break
        asyncio.run(asyncio.sleep(0.25))
    assert found is not None, "the access log line of the request was not found in the replica logs"
    line = next(line for line in found.splitlines() if reply.id in line)
    record = json.loads(line[line.index('{"event"') :])
    assert record["status"] == 200 and record["prompt_tokens"] > 0 and record["key_id"] and chat_app["key"] not in line
    assert secret not in found  # neither the access log nor any other replica log holds the message text


def test_base_plus_checkpoint_dir_equals_the_adapter_served_by_name(client, chat_app, adapters_dir):
    """`--checkpoint_dir` merges the adapter at load time: the answer is the one of the multiplexed adapter."""
    from tests.e2e.serve_support import delete_soon, deploy

    settings = {**chat_app["settings"], "checkpoint_dir": [str(adapters_dir / ADAPTERS[1])], "adapters_dir": None, "served_model_name": "merged"}
    deploy("serve_merged", "/merged", settings)
    try:
        from openai import OpenAI

        merged = OpenAI(base_url=f"{chat_app['base']}/merged/v1", api_key=chat_app["key"], timeout=60)
        assert [m.id for m in merged.models.list().data] == ["merged"]
        assert greedy(merged, "merged") == greedy(client, ADAPTERS[1])
    finally:
        delete_soon("serve_merged")


def test_prometheus_metrics_are_exported(client, chat_app):
    import time

    import ray

    client.chat.completions.create(model=chat_app["model"], messages=QUESTION, max_tokens=4)
    port = ray._private.worker.global_worker.node.metrics_export_port
    names = ("caregpt_requests_total", "caregpt_time_to_first_token_ms", "caregpt_output_tokens_total", "caregpt_engine_queue_length")
    text = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # metrics reach the node's exporter every few seconds
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(name in text for name in names):
            break
        time.sleep(2)
    missing = [name for name in names if name not in text]
    assert not missing, f"metrics not exported: {missing}"
