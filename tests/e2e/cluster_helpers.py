"""Helpers for tests that drive cluster/local/*.sh: private temp dirs, free ports, the
client env file, the dashboard's REST state API with the cluster's token, and scraping.

Every cluster is started through the real scripts and always stopped through stop.sh, which
touches only the processes of its own temp dir (other people's Rays share this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "cluster" / "local"
START, STOP, STATUS = LOCAL / "start.sh", LOCAL / "stop.sh", LOCAL / "status.sh"
START_WORKER, RESTART_HEAD = LOCAL / "start_worker.sh", LOCAL / "restart_head.sh"


def ray_bin() -> Path | None:
    venv_ray = REPO / ".venv" / "bin" / "ray"
    if venv_ray.exists():
        return venv_ray
    found = shutil.which("ray")
    return Path(found) if found else None


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            out[key] = value
    return out


def run(cmd, env, timeout, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, timeout=timeout, capture_output=True,
                          text=True, start_new_session=True, **kw)


def show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


@contextmanager
def local_cluster(**settings: str):
    """A private temp dir and free ports for start.sh; yields the info dict; always runs stop.sh.

    settings are extra CAREGPT_RAY_* variables (e.g. CAREGPT_RAY_NUM_CPUS="0").
    """
    if not sys.platform.startswith("linux") or shutil.which("bash") is None:
        pytest.skip("cluster/local needs Linux and bash")
    ray = ray_bin()
    if ray is None:
        pytest.skip("no ray executable (.venv/bin/ray or PATH)")
    # short on purpose: Ray's unix sockets live below it (AF_UNIX paths are limited to 107 bytes)
    tmp = Path(tempfile.mkdtemp(prefix="cgray-", dir="/tmp"))
    gcs_port, dash_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CAREGPT_RAY"))}
    env.update(RAY_BIN=str(ray), CAREGPT_RAY_TMP=str(tmp), CAREGPT_RAY_PORT=str(gcs_port),
               CAREGPT_DASHBOARD_PORT=str(dash_port), CAREGPT_RAY_OBJECT_STORE_BYTES=str(200 * 1024 * 1024),
               CAREGPT_RAY_START_TIMEOUT="90", **settings)
    if "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in os.environ:  # the suite's short Ray Train poll (tests/conftest.py)
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
    info = {"env": env, "tmp": tmp, "gcs_port": gcs_port, "dash_port": dash_port, "ray_bin": ray,
            "dash_url": f"http://127.0.0.1:{dash_port}"}
    try:
        yield info
    finally:
        try:
            run(["bash", STOP], env, timeout=120)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def client_env(info: dict) -> dict[str, str]:
    """The environment a client process needs: the cluster's env file over the test's env."""
    env = {**info["env"], **read_env_file(info["tmp"] / "cluster.env")}
    env.pop("RAY_AUTH_TOKEN", None)  # it would win over RAY_AUTH_TOKEN_PATH
    return env


def token(info: dict) -> str:
    return Path(read_env_file(info["tmp"] / "cluster.env")["RAY_AUTH_TOKEN_PATH"]).read_text().strip()


def http_get(url: str, bearer: str | None = None, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if bearer:
        req.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def state_list(info: dict, kind: str, **filters: str) -> list[dict]:
    """GET /api/v0/<kind> (nodes, actors, placement_groups) with equality filters, detail on."""
    query = [("detail", "1"), ("limit", "1000")]
    for key, value in filters.items():
        query += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
    url = f"{info['dash_url']}/api/v0/{kind}?{urllib.parse.urlencode(query)}"
    status, body = http_get(url, token(info), timeout=30)
    assert status == 200, f"{url} -> {status}: {body[:500]}"
    return json.loads(body)["data"]["result"]["result"]


def node_names(info: dict) -> dict[str, str]:
    """node_id -> the node's name in $tmp/caregpt-local/nodes (by its custom resource)."""
    names = {}
    table = [line.split() for line in (info["tmp"] / "caregpt-local" / "nodes").read_text().splitlines()
             if line and not line.startswith("#")]
    for node in state_list(info, "nodes"):
        for name, _cpus, resource, _port in table:
            if node["resources_total"].get(resource):
                names[node["node_id"]] = name
    return names


def wait_for(predicate, timeout: float, interval: float = 1.0, what: str = "condition"):
    """Poll predicate() until it returns something truthy; return it, or fail with `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # a node still booting, a connection refused while restarting
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def small_train_config(tmp_path: Path, tiny_model: str, test_data: Path, **overrides) -> Path:
    """A short LoRA SFT run of the tiny model on the test data, as a YAML a cluster job trains from; output in tmp_path/out."""
    import yaml

    from tests.conftest import TEST_REGISTRY

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": tiny_model, "dataset": "toyhom_sft", "dataset_dir": str(test_data),
        "dataset_info": str(TEST_REGISTRY), "template": "chatml",
        "cutoff_len": 128, "max_samples": 32, "finetuning_type": "lora", "lora_target": "all",
        "per_device_train_batch_size": 4, "max_steps": 3, "logging_steps": 1, "save_steps": 100,
        "output_dir": str(tmp_path / "out"), "tokenized_path": str(tmp_path / "tok"), **overrides,
    }))
    return config
