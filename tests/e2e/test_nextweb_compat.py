"""ChatGPT-Next-Web (NextChat) against the real Serve API: its CORS preflight, its model list call and its
streaming chat request, with the headers and body that client sends (docs/clients.md has the settings)."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]
ORIGIN = "http://localhost:3000"  # where a self-hosted Next-Web page runs


def test_cors_preflight_for_the_browser_client(chat_app):
    response = httpx.options(f"{chat_app['url']}/v1/chat/completions", headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-requested-with",
    }, timeout=30)
    assert response.status_code in (200, 204), response.text
    allowed_origin = response.headers.get("access-control-allow-origin")
    assert allowed_origin in ("*", ORIGIN)
    assert "POST" in response.headers.get("access-control-allow-methods", "").upper()
    allowed_headers = response.headers.get("access-control-allow-headers", "").lower()
    assert allowed_headers == "*" or all(h in allowed_headers for h in ("authorization", "content-type"))


def test_model_list_and_streaming_chat_as_next_web_sends_them(chat_app):
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Authorization": f"Bearer {chat_app['key']}",
        "x-requested-with": "XMLHttpRequest",
        "Origin": ORIGIN,
    }
    models = httpx.get(f"{chat_app['url']}/v1/models", headers=headers, timeout=30)
    assert models.status_code == 200 and models.headers.get("access-control-allow-origin") in ("*", ORIGIN)
    names = [m["id"] for m in models.json()["data"]]
    assert chat_app["model"] in names

    # NextChat's default request: its own system prompt, sampling knobs, penalties at 0, no max_tokens
    body = {
        "messages": [
            {"role": "system", "content": "\nYou are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2021-09\n"
                                          "Current model: tiny-medical\nCurrent time: 2026/11/30 09:00:00\nLatex inline: $x^2$ \n"},
            {"role": "user", "content": "发烧三天了，应该怎么办？"},
        ],
        "stream": True,
        "model": chat_app["model"],
        "temperature": 0.5,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_p": 1,
    }
    chunks, done = [], False
    with httpx.stream("POST", f"{chat_app['url']}/v1/chat/completions", headers=headers, json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers.get("access-control-allow-origin") in ("*", ORIGIN)
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                done = True
                break
            chunks.append(json.loads(payload))
    assert done, "the stream must end with data: [DONE] (NextChat stops reading there)"
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text, "no content arrived"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
