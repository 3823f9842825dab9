"""The pipeline's `deploy` step: serve the model with Ray Serve, ask one question over HTTP, stream the answer.

The answer goes through the same path a user's client takes (the `openai` SDK against the served
OpenAI-compatible API), so a finished pipeline proves the whole chain. With `keep_running: true` the
application stays up after the pipeline ends (on a cluster: until `serve shutdown`).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

DEFAULT_QUESTION = "我最近经常头痛，晚上睡不好，需要去医院看哪个科？"
# step options that belong to the step, not to the Serve settings
STEP_KEYS = ("question", "max_tokens", "keep_running", "output_dir")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy_and_ask(step) -> dict[str, Any]:
    from openai import OpenAI
    from ray import serve

    from caregpt.serve.app import build_app
    from caregpt.serve.config import build_serve_config

    values = dict(step.values)
    question = values.get("question", DEFAULT_QUESTION)
    max_tokens = int(values.get("max_tokens", 64))
    keep_running = bool(values.get("keep_running", False))
    settings = {k: v for k, v in values.items() if k not in STEP_KEYS}
    settings.setdefault("port", _free_port())
    settings.setdefault("app_name", f"pipeline-{step.name}")
    settings.setdefault("route_prefix", f"/{step.name}")
    config = build_serve_config(settings, f"deploy step {step.name!r}")
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=config.app_name, route_prefix=config.route_prefix, blocking=False)
    base_url = f"http://{config.host}:{config.port}{config.route_prefix.rstrip('/')}/v1"
    key = (config.api_keys or ["not-needed"])[0]
    try:
        client = OpenAI(base_url=base_url, api_key=key, max_retries=2, timeout=300)
        model = client.models.list().data[0].id
        print(f"    served at {base_url} (model {model})\n    Q: {question}\n    A: ", end="", flush=True)
        start = time.perf_counter()
        first = None
        parts: list[str] = []
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                max_tokens=max_tokens, temperature=0, stream=True)
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                first = first or time.perf_counter()
                parts.append(delta)
                print(delta, end="", flush=True)
        print(flush=True)
        answer = "".join(parts)
        result = {"base_url": base_url, "model": model, "question": question, "answer": answer, "answer_chars": len(answer),
                  "stream_chunks": len(parts), "ttft_seconds": round((first or time.perf_counter()) - start, 3),
                  "seconds": round(time.perf_counter() - start, 3), "kept_running": keep_running}
    finally:
        if not keep_running:
            serve.delete(config.app_name)
    step.output_dir.mkdir(parents=True, exist_ok=True)
    (step.output_dir / "deploy_result.json").write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    return result
