"""The CareGPT chat API as a Ray Serve application builder.

    serve run serve_apps.chat:build_app model_name_or_path=outputs/merged template=llama2
    serve run serve_apps/configs/chat_tiny_cpu.yaml          # a Serve config pointing here
    caregpt serve --model_name_or_path outputs/merged        # the same app, started by caregpt

`serve run` starts Ray Serve's proxy alone, which has no header timeout: anything reachable by
untrusted clients goes through caregpt's front proxy (`caregpt serve` starts it; otherwise run
`python -m caregpt.serve.front --listen 0.0.0.0:8000 --upstream 127.0.0.1:8001` with Serve's
http_options on 127.0.0.1:8001, as cluster/kuberay/rayservice-chat.yaml does).

`args` are the settings of `caregpt serve --help` (flat keys; lists comma separated on the
command line). The application is an OpenAI-compatible router (deployment `OpenAIRouter`) in
front of the model deployment (`LLMServer`); a Serve config's `deployments:` section tunes either.
"""

from __future__ import annotations

from typing import Any

from caregpt.serve.app import build_app as _build


def build_app(args: dict[str, Any]):
    """Serve calls this with the application's `args`; returns the bound application."""
    return _build(dict(args))
