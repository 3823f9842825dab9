"""Bad input against the real served API: every case gets the right 4xx in OpenAI's error shape.

Each case is sent over HTTP to the shared app (tests/e2e/serve_support.py); afterwards the server
must still answer a normal request. A few cases also go through the `openai` client to check it
raises its typed exceptions.

Run: .venv/bin/pytest tests/e2e/test_serve_bad_input.py -q
"""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

USER = [{"role": "user", "content": "头痛怎么办"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GOOD_KEY = object()  # placeholder: replaced by the app's key


def chat(**fields):
    return {"model": "tiny-medical", "messages": USER, "max_tokens": 4, **fields}


# (id, method, path, body (dict, str or bytes), auth, status, code or None, param or None)
CASES = [
    ("malformed_json", "POST", CHAT, b'{"model": "tiny-medical", "messages": [', GOOD_KEY, 400, "invalid_json", None),
    ("empty_body", "POST", CHAT, b"", GOOD_KEY, 400, "invalid_json", None),
    ("body_is_a_list", "POST", CHAT, b"[1, 2]", GOOD_KEY, 400, "invalid_json", None),
    ("missing_messages", "POST", CHAT, {"model": "tiny-medical"}, GOOD_KEY, 400, "missing_required_parameter", "messages"),
    ("empty_messages", "POST", CHAT, chat(messages=[]), GOOD_KEY, 400, None, "messages"),
    ("messages_not_a_list", "POST", CHAT, chat(messages="hello"), GOOD_KEY, 400, None, "messages"),
    ("message_without_role", "POST", CHAT, chat(messages=[{"content": "hi"}]), GOOD_KEY, 400, "missing_required_parameter", "messages.0.role"),
    ("unknown_role", "POST", CHAT, chat(messages=[{"role": "doctor", "content": "hi"}]), GOOD_KEY, 400, None, "messages.0.role"),
    ("tool_role", "POST", CHAT, chat(messages=[{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]), GOOD_KEY, 400, None, "messages.1.role"),
    ("assistant_first", "POST", CHAT, chat(messages=[{"role": "assistant", "content": "hi"}]), GOOD_KEY, 400, None, "messages"),
    ("ends_with_assistant", "POST", CHAT, chat(messages=USER + [{"role": "assistant", "content": "ok"}]), GOOD_KEY, 400, None, "messages"),
    ("system_in_the_middle", "POST", CHAT, chat(messages=USER + [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]), GOOD_KEY, 400, None, "messages.1.role"),
    ("content_is_a_number", "POST", CHAT, chat(messages=[{"role": "user", "content": 123}]), GOOD_KEY, 400, None, "messages.0.content"),
    ("content_is_null", "POST", CHAT, chat(messages=[{"role": "user", "content": None}]), GOOD_KEY, 400, None, "messages.0.content"),
    ("content_is_an_object", "POST", CHAT, chat(messages=[{"role": "user", "content": {"text": "hi"}}]), GOOD_KEY, 400, None, "messages.0.content"),
    ("image_content_part", "POST", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), GOOD_KEY, 400, "unsupported_content", "messages.0.content.0.type"),
    ("negative_max_tokens", "POST", CHAT, chat(max_tokens=-1), GOOD_KEY, 400, None, "max_tokens"),
    ("zero_max_tokens", "POST", CHAT, chat(max_tokens=0), GOOD_KEY, 400, None, "max_tokens"),
    ("huge_max_tokens", "POST", CHAT, chat(max_tokens=10**9), GOOD_KEY, 400, "context_length_exceeded", "max_tokens"),
    ("max_tokens_not_a_number", "POST", CHAT, chat(max_tokens="ten"), GOOD_KEY, 400, "invalid_type", "max_tokens"),
    ("negative_max_completion_tokens", "POST", CHAT, chat(max_completion_tokens=-5), GOOD_KEY, 400, None, "max_completion_tokens"),
    ("temperature_too_high", "POST", CHAT, chat(temperature=5), GOOD_KEY, 400, None, "temperature"),
    ("temperature_negative", "POST", CHAT, chat(temperature=-0.1), GOOD_KEY, 400, None, "temperature"),
    ("top_p_above_one", "POST", CHAT, chat(top_p=1.5), GOOD_KEY, 400, None, "top_p"),
    ("n_zero", "POST", CHAT, chat(n=0), GOOD_KEY, 400, None, "n"),
    ("n_above_server_limit", "POST", CHAT, chat(n=9), GOOD_KEY, 400, None, "n"),
    ("too_many_stops", "POST", CHAT, chat(stop=[f"s{i}" for i in range(17)]), GOOD_KEY, 400, None, "stop"),
    ("empty_stop", "POST", CHAT, chat(stop=[""]), GOOD_KEY, 400, None, "stop"),
    ("stream_not_a_bool", "POST", CHAT, chat(stream="maybe"), GOOD_KEY, 400, None, "stream"),
    ("stream_options_without_stream", "POST", CHAT, chat(stream_options={"include_usage": True}), GOOD_KEY, 400, None, "stream_options"),
    ("seed_not_an_int", "POST", CHAT, chat(seed="abc"), GOOD_KEY, 400, None, "seed"),
    ("presence_penalty_out_of_range", "POST", CHAT, chat(presence_penalty=3), GOOD_KEY, 400, None, "presence_penalty"),
    ("tools_unsupported", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), GOOD_KEY, 400, "unsupported_parameter", "tools"),
    ("logprobs_unsupported", "POST", CHAT, chat(logprobs=True), GOOD_KEY, 400, "unsupported_parameter", "logprobs"),
    ("json_response_format", "POST", CHAT, chat(response_format={"type": "json_object"}), GOOD_KEY, 400, "unsupported_parameter", "response_format"),
    ("unknown_model", "POST", CHAT, chat(model="gpt-4"), GOOD_KEY, 404, "model_not_found", "model"),
    ("plain_folder_is_not_a_model", "POST", CHAT, chat(model="not_an_adapter"), GOOD_KEY, 404, "model_not_found", "model"),
    ("adapter_path_traversal", "POST", CHAT, chat(model="../cardio"), GOOD_KEY, 400, "invalid_model_name", "model"),
    ("adapter_nested_traversal", "POST", CHAT, chat(model="cardio/../../etc"), GOOD_KEY, 400, "invalid_model_name", "model"),
    ("adapter_absolute_path", "POST", CHAT, chat(model="/etc/passwd"), GOOD_KEY, 400, "invalid_model_name", "model"),
    ("adapter_dot_dot", "POST", CHAT, chat(model=".."), GOOD_KEY, 400, "invalid_model_name", "model"),
    ("model_not_a_string", "POST", CHAT, chat(model=42), GOOD_KEY, 400, None, "model"),
    ("one_megabyte_prompt", "POST", CHAT, chat(messages=[{"role": "user", "content": "发" * 400_000}]), GOOD_KEY, 413, "request_too_large", None),
    ("prompt_longer_than_context", "POST", CHAT, chat(messages=[{"role": "user", "content": "发烧头痛咳嗽" * 600}]), GOOD_KEY, 400, "context_length_exceeded", "messages"),
    ("missing_api_key", "POST", CHAT, chat(), None, 401, "invalid_api_key", None),
    ("wrong_api_key", "POST", CHAT, chat(), "sk-wrong", 401, "invalid_api_key", None),
    ("wrong_auth_scheme", "POST", CHAT, chat(), "Basic", 401, "invalid_api_key", None),
    ("models_without_key", "GET", "/v1/models", None, None, 401, "invalid_api_key", None),
    ("completion_without_prompt", "POST", COMPLETIONS, {"model": "tiny-medical"}, GOOD_KEY, 400, "missing_required_parameter", "prompt"),
    ("completion_empty_prompt_list", "POST", COMPLETIONS, {"model": "tiny-medical", "prompt": []}, GOOD_KEY, 400, None, "prompt"),
    ("completion_prompt_not_text", "POST", COMPLETIONS, {"model": "tiny-medical", "prompt": {"a": 1}}, GOOD_KEY, 400, None, "prompt"),
    ("completion_suffix_unsupported", "POST", COMPLETIONS, {"model": "tiny-medical", "prompt": "a", "suffix": "b"}, GOOD_KEY, 400, "unsupported_parameter", "suffix"),
    # issue 16: each of these was a 500 or was accepted
    ("json_nested_10000_levels", "POST", CHAT, b'{"model": "tiny-medical", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", GOOD_KEY, 400, "invalid_json", None),
    ("lone_surrogate_in_chat", "POST", CHAT, b'{"model": "tiny-medical", "messages": [{"role": "user", "content": "a\\ud800b"}]}', GOOD_KEY, 400, "invalid_unicode", "messages.0.content"),
    ("lone_surrogate_in_prompt", "POST", COMPLETIONS, b'{"model": "tiny-medical", "prompt": "a\\ud800b"}', GOOD_KEY, 400, "invalid_unicode", "prompt"),
    ("lone_surrogate_in_prompt_list", "POST", COMPLETIONS, b'{"model": "tiny-medical", "prompt": ["ok", "\\udfff"]}', GOOD_KEY, 400, "invalid_unicode", "prompt.1"),
    ("stream_is_a_string", "POST", CHAT, chat(stream="yes"), GOOD_KEY, 400, "invalid_type", "stream"),
    ("seed_is_a_numeric_string", "POST", CHAT, chat(seed="123"), GOOD_KEY, 400, "invalid_type", "seed"),
    ("n_is_a_bool", "POST", CHAT, chat(n=True), GOOD_KEY, 400, "invalid_type", "n"),
    ("logit_bias_is_a_string", "POST", CHAT, chat(logit_bias="x"), GOOD_KEY, 400, "invalid_type", "logit_bias"),
    ("temperature_is_a_string", "POST", CHAT, chat(temperature="0.5"), GOOD_KEY, 400, "invalid_type", "temperature"),
    ("model_name_of_250kb", "POST", CHAT, chat(model="m" * 250_000), GOOD_KEY, 400, None, "model"),
    ("unknown_route", "POST", "/v1/embeddings", {"input": "x"}, GOOD_KEY, 404, "not_found", None),
    ("wrong_method", "GET", CHAT, None, GOOD_KEY, 405, None, None),
]


def send(app: dict, method: str, path: str, body, auth) -> httpx.Response:
    headers = {}
    if auth is GOOD_KEY:
        headers["Authorization"] = f"Bearer {app['key']}"
    elif auth == "Basic":
        headers["Authorization"] = f"Basic {app['key']}"
    elif auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    if isinstance(body, dict):
        content, headers["Content-Type"] = json.dumps(body, ensure_ascii=False).encode(), "application/json"
    else:
        content = body
    return httpx.request(method, f"{app['url']}{path}", content=content, headers=headers, timeout=60)


def test_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_an_openai_error(chat_app, case):
    _, method, path, body, auth, status, code, param = case
    resp = send(chat_app, method, path, body, auth)
    assert resp.status_code == status, resp.text[:500]
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    if status == 401:
        assert resp.headers.get("www-authenticate") == "Bearer"
    assert "发烧头痛咳嗽发烧" not in error["message"]  # errors never echo the conversation


def test_chunked_body_over_the_limit_is_413(chat_app):
    """No Content-Length: the limit is enforced while reading (was a 500)."""

    def body():
        yield b'{"model": "tiny-medical", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 32_768
        yield b'"}]}'

    headers = {"Authorization": f"Bearer {chat_app['key']}", "Content-Type": "application/json"}
    resp = httpx.post(f"{chat_app['url']}{CHAT}", content=body(), headers=headers, timeout=60)
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["error"]["code"] == "request_too_large"


def test_exactly_one_request_id(chat_app):
    headers = {"Authorization": f"Bearer {chat_app['key']}"}
    for resp in (httpx.post(f"{chat_app['url']}{CHAT}", json=chat(), headers=headers, timeout=60),
                 httpx.post(f"{chat_app['url']}{CHAT}", json=chat(model="gpt-4"), headers=headers, timeout=60),
                 httpx.post(f"{chat_app['url']}{CHAT}", json=chat(), timeout=60)):
        assert len(resp.headers.get_list("x-request-id")) == 1, (resp.status_code, resp.headers)


def test_openai_client_raises_typed_errors(chat_app):
    import openai

    good = openai.OpenAI(base_url=f"{chat_app['url']}/v1", api_key=chat_app["key"], max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model="no-such-model", messages=USER)
    with pytest.raises(openai.BadRequestError) as bad:
        good.chat.completions.create(model=chat_app["model"], messages=USER, temperature=9)
    assert bad.value.code == "invalid_value" and bad.value.param == "temperature"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{chat_app['url']}/v1", api_key="sk-nope", max_retries=0).models.list()


def test_server_keeps_serving_after_bad_input(chat_app):
    for case in CASES[:5]:  # a few more bad requests in a row, then a good one
        send(chat_app, *case[1:5])
    ok = send(chat_app, "POST", CHAT, chat(max_tokens=6), GOOD_KEY)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] > 0
    assert httpx.get(f"{chat_app['url']}/ready", timeout=30).status_code == 200
