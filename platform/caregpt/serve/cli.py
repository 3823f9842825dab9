"""`caregpt serve`: run the OpenAI-compatible chat API on Ray Serve until Ctrl-C.

    caregpt serve --model_name_or_path outputs/merged --template llama2
    caregpt serve --model_name_or_path base --checkpoint_dir outputs/sft-lora     # base + adapter
    caregpt serve --model_name_or_path base --adapters_dir outputs/adapters        # many adapters by name
    caregpt serve serve_apps/configs/chat_tiny_cpu.yaml --port 8001               # a Serve config

Ctrl-C (or SIGTERM) drains: the application is deleted through Serve, which stops sending new
requests to the replicas and lets running ones finish for up to graceful_shutdown_timeout_s.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from caregpt.config.loader import ConfigError

logger = logging.getLogger("caregpt.serve")

USAGE = "usage: caregpt serve [CONFIG.yaml] [--key value ...]"
SUMMARY = (
    "Serve a model (a merged model directory, or base + checkpoint_dir adapter, plus any number of LoRA adapters "
    "under adapters_dir chosen by `model` name) behind an OpenAI-compatible API on Ray Serve: POST /v1/chat/completions "
    "(SSE streaming), POST /v1/completions, GET /v1/models, /health, /ready. CONFIG.yaml holds the keys below, or is a "
    "Ray Serve config (applications: [{import_path: serve_apps.chat:build_app, args: {...}}], deployments: [...]); "
    "flags override it. API keys also come from the CAREGPT_API_KEYS environment variable (comma separated)."
)


def _help() -> str:
    from caregpt.config.help import render_help
    from caregpt.serve.config import ServeConfig

    return render_help(USAGE.removeprefix("usage: "), SUMMARY, [("Serve", ServeConfig)])


def _overrides(serve_doc: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(deployment options by name, http_options, application entry) from a Serve config document."""
    if not serve_doc:
        return {}, {}, {}
    app = serve_doc["applications"][0]
    deployments = {}
    for entry in app.get("deployments") or []:
        entry = dict(entry)
        deployments[entry.pop("name")] = entry
    return deployments, dict(serve_doc.get("http_options") or {}), app


def _wait_for_stop() -> None:
    stop = threading.Event()

    def handler(signum, _frame):
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    from caregpt.serve.app import build_app
    from caregpt.serve.config import load_serve_config
    from caregpt.serve.loading import preflight

    try:
        config, serve_doc = load_serve_config(argv)
        deployments, http_options, app_entry = _overrides(serve_doc)
        preflight(config)
        app = build_app(config, deployments)
    except ConfigError as exc:
        print(f"caregpt serve: error: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from caregpt.runtime import ensure_ray

    # Shut Serve and Ray down at the end only if this process started them (never a cluster it joined).
    embedded = not (config.ray_address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
    ensure_ray(config.ray_address)
    # host / port: a flag wins over the Serve config's http_options, which win over the defaults
    from caregpt.config.loader import split_argv

    flags = split_argv(argv)[2]
    http = {"host": config.host, "port": config.port, **http_options}
    http.update({key: getattr(config, key) for key in ("host", "port") if key in flags})
    name = app_entry.get("name", config.app_name)
    route_prefix = app_entry.get("route_prefix", config.route_prefix)
    serve.start(http_options=http)
    logger.info("deploying %s (this loads the model on every replica)...", name)
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    base = f"http://{http['host']}:{http['port']}{route_prefix.rstrip('/')}"
    print(f"\nCareGPT API ready: {base}/v1  (model: {config.model_name})\n"
          f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{config.model_name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"你好\"}}]}}'\n"
          "Ctrl-C drains running requests and stops.", flush=True)
    try:
        _wait_for_stop()
    finally:
        print("draining: finishing running requests, then stopping...", flush=True)
        serve.delete(name)
        if embedded:
            serve.shutdown()
            ray.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
