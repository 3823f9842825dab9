"""`caregpt serve`: run the OpenAI-compatible chat API on Ray Serve until Ctrl-C.

    caregpt serve --model_name_or_path outputs/merged --template llama2
    caregpt serve --model_name_or_path base --checkpoint_dir outputs/sft-lora     # base + adapter
    caregpt serve --model_name_or_path base --adapters_dir outputs/adapters        # many adapters by name
    caregpt serve serve_apps/configs/chat_tiny_cpu.yaml --port 8001               # a Serve config

Clients reach caregpt's front proxy (:mod:`caregpt.serve.front`: header and body timeouts, a
connection cap) on host:port; Ray Serve's proxy listens behind it on 127.0.0.1. With an embedded
Ray, Serve's direct ingress is on and the front sends requests straight to the app's replicas on
this machine (:mod:`caregpt.serve.ingress`), Serve's proxy taking what they cannot.

Ctrl-C or SIGTERM drains: the front stops accepting and lets forwarded requests finish, then the
application is deleted through Serve. With an embedded Ray the command supervises a child in its
own session that runs Ray: SIGTERM to the whole process group (systemd, docker stop, Kubernetes)
reaches only the supervisor, which asks the child to drain, instead of killing Ray's GCS and
raylet under the running requests.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from caregpt.config.verb import verb_main

logger = logging.getLogger("caregpt.serve")

USAGE = "caregpt serve [CONFIG.yaml] [--key value ...]"
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

    return render_help(USAGE, SUMMARY, [("Serve", ServeConfig)])


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


_SUPERVISED_ENV = "CAREGPT_SERVE_SUPERVISED"


def _wait_for_stop() -> None:
    stop = threading.Event()

    def handler(signum, _frame):
        stop.set()

    parent = os.getppid()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            if os.environ.get(_SUPERVISED_ENV) == "1" and os.getppid() != parent:
                logger.warning("the supervising caregpt serve process is gone; stopping")
                return
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _supervise(argv: list[str]) -> int:
    """Run this command again as a child in its own session and pass it a stop signal (see module docstring)."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-m", "caregpt.serve.cli", *argv], env={**os.environ, _SUPERVISED_ENV: "1"}, start_new_session=True)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return child.wait()


def _free_local_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@verb_main("serve", _help)
def main(argv: list[str]) -> int:
    from caregpt.serve.app import build_app
    from caregpt.serve.config import load_serve_config
    from caregpt.serve.loading import preflight

    config, serve_doc = load_serve_config(argv)
    deployments, http_options, app_entry = _overrides(serve_doc)
    preflight(config)
    embedded = not (config.ray_address or os.environ.get("RAY_ADDRESS"))
    if embedded and os.environ.get(_SUPERVISED_ENV) != "1":
        return _supervise(argv)
    app = build_app(config, deployments)

    import ray
    from ray import serve

    from caregpt.runtime import ensure_ray

    # Shut Serve and Ray down at the end only if this process started them (never a cluster it joined).
    embedded = embedded and not ray.is_initialized()
    if config.front_proxy and embedded:
        from caregpt.serve.ingress import prefer_direct_ingress

        prefer_direct_ingress()  # the Ray started here: its replicas then serve the front directly (caregpt.serve.ingress)
    ensure_ray(config.ray_address)
    # host / port: a flag wins over the Serve config's http_options, which win over the defaults
    from caregpt.config.loader import split_argv

    flags = split_argv(argv)[2]
    http = {"host": config.host, "port": config.port, **http_options}
    http.update({key: getattr(config, key) for key in ("host", "port") if key in flags})
    name = app_entry.get("name", config.app_name)
    route_prefix = app_entry.get("route_prefix", config.route_prefix)
    public = dict(http)
    front = None
    if config.front_proxy:  # Serve's proxy goes behind the front, on loopback
        http.update(host="127.0.0.1", port=_free_local_port())
    serve.start(http_options=http)
    logger.info("deploying %s (this loads the model on every replica)...", name)
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    if config.front_proxy:
        from caregpt.serve.front import FrontProxy, FrontThread, options_from_config

        from caregpt.serve.ingress import IngressTargets

        front = FrontThread(FrontProxy(("127.0.0.1", http["port"]), **options_from_config(config)), public["host"], public["port"])
        targets = IngressTargets(name, front.proxy.set_direct_ports).start()
        targets.first_ports()
    http = public
    base = f"http://{http['host']}:{http['port']}{route_prefix.rstrip('/')}"
    print(f"\nCareGPT API ready: {base}/v1  (model: {config.model_name})\n"
          f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{config.model_name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"你好\"}}]}}'\n"
          + (f"  The front sends requests {targets.describe()}.\n" if front is not None else "")
          + "Ctrl-C drains running requests and stops.", flush=True)
    try:
        _wait_for_stop()
    finally:
        print("draining: finishing running requests, then stopping...", flush=True)
        if front is not None:  # no new requests; the forwarded ones finish (the whole stop stays within 30 s)
            targets.stop()
            front.drain(min(config.graceful_shutdown_timeout_s, 20.0))
        serve.delete(name)
        if embedded:
            serve.shutdown()
            ray.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
