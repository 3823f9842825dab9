"""`colocate_router: true`: a single-model app as one deployment, the router calling the engine in-process.

The same API as the two-deployment app (streamed and whole answers, usage, errors); the app has no
LLMServer deployment, and a config with adapters is refused.

Run: PYTHONPATH=platform:. .venv/bin/python -m pytest tests/e2e/test_serve_colocated.py -q
"""

from __future__ import annotations


import httpx
import pytest

from tests.e2e.serve_support import delete_soon, deploy

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

APP, PREFIX = "colocated", "/colo"


@pytest.fixture(scope="module")
def app(serve_http, tiny_model) -> str:
    settings = {"model_name_or_path": tiny_model, "served_model_name": "tiny-medical", "colocate_router": True, "num_cpus": 0.5,
                "default_max_tokens": 16, "max_model_len": 512, "disclaimer": False, "request_timeout_s": 60}
    deploy(APP, PREFIX, settings)
    yield f"{serve_http}{PREFIX}"
    delete_soon(APP)


def test_one_deployment_answers_streamed_and_whole(app):
    import openai
    from ray import serve

    assert set(serve.status().applications[APP].deployments) == {"OpenAIRouter"}
    client = openai.OpenAI(base_url=f"{app}/v1", api_key="none", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "头痛怎么办"}]
    whole = client.chat.completions.create(model="tiny-medical", messages=messages, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="tiny-medical", messages=messages, max_tokens=12, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer either way
    assert chunks[-1].usage.completion_tokens == 12
    completion = client.completions.create(model="tiny-medical", prompt=["发烧", "咳嗽"], max_tokens=5, n=2, extra_body={"ignore_eos": True})
    assert len(completion.choices) == 4 and completion.usage.completion_tokens == 20
    assert httpx.get(f"{app}/ready", timeout=30).status_code == 200
    # a client cannot pick an adapter through Serve's multiplexing header: the router alone names it
    sneaky = httpx.post(f"{app}/v1/chat/completions", json={"model": "tiny-medical", "messages": messages, "max_tokens": 3},
                        headers={"serve_multiplexed_model_id": "../../etc"}, timeout=60)
    assert sneaky.status_code == 200


def test_adapters_need_the_two_deployment_app(tiny_model, tmp_path):
    from caregpt.config.loader import ConfigError
    from caregpt.serve.config import build_serve_config

    with pytest.raises(ConfigError, match="colocate_router"):
        build_serve_config({"model_name_or_path": tiny_model, "colocate_router": True, "adapters_dir": str(tmp_path)})
