"""Shared pieces of the Ray Serve tests: Serve on a free port, adapters, one deployed chat app.

tests/e2e/conftest.py makes the fixtures visible to every module here. Serve and the shared chat app are
package-scoped: started once for all end-to-end modules (each start + deploy took ~11 s) and shut down when
tests/e2e ends, so their replicas' logical CPUs are free again before the Ray Tune tests of tests/ray start.
Modules that need an app of their own deploy it with `deploy` and delete it when they end.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

API_KEY = "sk-test-caregpt"
APP = "serve_api"
PREFIX = "/api"
ADAPTERS = ("cardio", "peds")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="package")
def serve_http(ray_local) -> str:
    """Serve's HTTP proxy on 127.0.0.1 and a free port (port 8000 may be held by other work); its base URL."""
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    # If Serve was already running in this Ray, its options stand: ask which port it really has.
    options = _get_global_client().http_config
    yield f"http://{options.host}:{options.port}"
    with contextlib.suppress(Exception):  # already gone is fine
        serve.shutdown()


@pytest.fixture(scope="session")
def adapters_dir(tiny_model, tmp_path_factory) -> Path:
    """Two LoRA adapters on the tiny model with non-zero weights (so their answers differ from the base)."""
    from tests.adapter_factory import make_lora_adapter

    root = tmp_path_factory.mktemp("serve_adapters")
    for seed, name in enumerate(ADAPTERS, start=1):
        make_lora_adapter(tiny_model, root / name, seed=seed, scale=1.0)
    (root / "not_an_adapter").mkdir()  # a plain folder: must be neither listed nor servable
    return root


def deploy(name: str, route_prefix: str, settings: dict, overrides: dict | None = None, timeout_s: float = 300) -> None:
    from ray import serve

    from caregpt.serve.app import build_app

    serve.run(build_app(settings, overrides), name=name, route_prefix=route_prefix, blocking=False)
    wait_running(name, timeout_s)


def wait_running(name: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploying {name} failed: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"application {name} not running after {timeout_s} s: {serve.status().applications.get(name)}")


def delete_soon(name: str) -> None:
    """Delete an app without waiting for its replicas' graceful shutdown (~2 s each time): that overlaps the next
    test, whose apps have names and route prefixes of their own; serve_http's serve.shutdown waits for everything."""
    from ray import serve

    with contextlib.suppress(Exception):  # already gone is fine
        serve.delete(name, _blocking=False)


def running_replicas(app: str, deployment: str = "LLMServer") -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return int(status.deployments[deployment].replica_states.get("RUNNING", 0))


@pytest.fixture(scope="package")
def chat_app(serve_http, tiny_model, adapters_dir) -> dict:
    """The app the API tests of every module share: tiny model, two adapters, an API key.

    Package scope, not session: replicas hold logical CPUs of the shared local Ray, and kept until the end of
    the session they starved the Ray Tune tests that run later (trials waited for CPUs forever)."""
    from ray import serve

    settings = {
        "model_name_or_path": tiny_model,
        "served_model_name": "tiny-medical",
        "adapters_dir": str(adapters_dir),
        "max_loaded_adapters": 1,  # every switch between the two adapters goes through LRU eviction
        "api_keys": [API_KEY],
        "default_max_tokens": 32,
        "max_model_len": 512,
        "num_cpus": 0.5,
        "router_num_cpus": 0.1,
        "max_batch_size": 16,
        "request_timeout_s": 60,
        # these tests compare answers token for token (stop strings, seeds, streamed vs whole); the disclaimer the
        # medical layer appends is tested on its own app (test_serve_medical.py)
        "disclaimer": False,
    }
    deploy(APP, PREFIX, settings)
    yield {"url": f"{serve_http}{PREFIX}", "base": serve_http, "model": "tiny-medical", "key": API_KEY, "settings": settings}
    with contextlib.suppress(Exception):
        serve.delete(APP)
