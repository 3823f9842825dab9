"""End-to-end test of cluster/local/: a real two-node Ray cluster on this machine.

start.sh brings up a head node (no CPU: no training worker can land there) and a worker node
(own temp dir, free ports), a separate client process connects with the env file start.sh writes
and runs one task on each node, the dashboard HTTP API is exercised, start_worker.sh adds a second
worker node `node_b`, `ray job submit` trains with 2 Ray Train workers placed SPREAD, one on each
worker node (was tests/e2e/test_two_node_cluster.py, with a cluster and a training run of its own),
our training metrics are scraped from the worker node as Prometheus would (was
tests/e2e/test_metrics_scrape.py, another cluster of its own), and stop.sh must take down exactly
this cluster, all three nodes. A finalizer always runs stop.sh.

Run: PYTHONPATH=platform .venv/bin/python -m pytest tests/e2e/test_local_cluster.py -q -s
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from caregpt.train.metrics import METRIC_NAMES
from tests.e2e.cluster_helpers import client_env as cluster_client_env
from tests.e2e.cluster_helpers import (START_WORKER, STATUS, http_get, node_names, small_train_config, state_list,
                                       wait_for)

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
START = REPO / "cluster" / "local" / "start.sh"
STOP = REPO / "cluster" / "local" / "stop.sh"

HEAD_CPUS = 0  # no training worker can land on the head: SPREAD must use both worker nodes (the node_b part)
WORKER_CPUS = 2
NODE_B_CPUS = 2

# Runs in a separate interpreter so the auth env vars are in place before `import ray`
# and this pytest process keeps no Ray state.
PROBE = r"""
import json, os
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()

pinned = {}
for n in nodes:
    strategy = NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
    cpus = 1 if n["Resources"].get("CPU", 0) >= 1 else 0  # the head offers no CPU
    pinned[n["NodeID"]] = ray.get(where.options(num_cpus=cpus, scheduling_strategy=strategy).remote(), timeout=60)
by_resource = ray.get(where.options(resources={"worker_node": 1}).remote(), timeout=60)
print("PROBE " + json.dumps({
    "nodes": [{"id": n["NodeID"], "resources": n["Resources"]} for n in nodes],
    "pinned": pinned,
    "worker_node_task": by_resource,
}))
ray.shutdown()
"""

# Our training metrics reach Prometheus (was tests/e2e/test_metrics_scrape.py): start.sh gives every node a fixed
# `--metrics-export-port`. A short CareTrainer run (caregpt's HF Trainer) with TrainMetricsCallback registered the
# way the worker registers it runs in an actor pinned to the worker node; the test then does what Prometheus would
# do: read the service-discovery file Ray keeps for its nodes, scrape every target, and find the caregpt_train_*
# series (exported as ray_caregpt_train_*) with the run's values. Ray's metrics agent exports every few seconds,
# so the scrape polls. The actor is detached so its series stay exported after the driver exits; stop.sh ends it.
METRICS_DRIVER = r"""
import json, os, sys
import ray

model_path, run_name = sys.argv[1], sys.argv[2]
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)

@ray.remote(num_cpus=0, resources={"worker_node": 0.01})
class ShortRun:
    def train(self, model_path, run_name, out):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
        from caregpt.train.metrics import TrainMetricsCallback
        from caregpt.train.trainer import CareTrainer

        tok = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path)
        texts = ["fever and cough for three days", "headache after a fall", "chest pain at night", "rash on both arms"]
        rows = [dict(input_ids=ids) for ids in (tok(t)["input_ids"] for t in texts * 4)]
        pad = tok.pad_token_id or 0

        def collate(batch):  # what caregpt's collator hands CareTrainer: padded ids + the real token count
            n = max(len(r["input_ids"]) for r in batch)
            ids = torch.tensor([r["input_ids"] + [pad] * (n - len(r["input_ids"])) for r in batch])
            labels = torch.tensor([r["input_ids"] + [-100] * (n - len(r["input_ids"])) for r in batch])
            return {"input_ids": ids, "labels": labels, "real_tokens": sum(len(r["input_ids"]) for r in batch)}

        args = TrainingArguments(output_dir=out, max_steps=3, logging_steps=1, per_device_train_batch_size=4,
                                 report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                                 train_sampling_strategy="sequential")
        trainer = CareTrainer(model=model, args=args, train_dataset=rows, data_collator=collate)
        trainer.add_callback(TrainMetricsCallback.for_trainer(trainer, run=run_name, rank=0))
        trainer.train()
        steps = [h for h in trainer.state.log_history if "loss" in h]
        return {"node_id": ray.get_runtime_context().get_node_id(), "last": steps[-1], "steps": len(steps),
                "real_tokens": trainer.real_tokens}

actor = ShortRun.options(name="caregpt-metrics-probe", namespace="caregpt-tests", lifetime="detached").remote()
print("RESULT " + json.dumps(ray.get(actor.train.remote(model_path, run_name, sys.argv[3]), timeout=400)))
"""

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        match = SAMPLE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        out.append((match["name"], labels, float(match["value"])))
    return out


def _ray_bin() -> Path | None:
    venv_ray = REPO / ".venv" / "bin" / "ray"
    if venv_ray.exists():
        return venv_ray
    found = shutil.which("ray")
    return Path(found) if found else None


def _free_ports(n: int) -> list[int]:
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


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            out[key] = value
    return out


def _session_ids(tmp: Path) -> set[int]:
    return {int(p.read_text()) for p in (tmp / "caregpt-local").glob("*.sid")}


def _live_pids_in_sessions(sids: set[int]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) not in sids:
                continue
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.append(pid)
    return pids


def _http(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _run(cmd, env, timeout, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], env=env, timeout=timeout, capture_output=True, text=True,
        start_new_session=True, **kw,
    )


def _show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


@pytest.fixture
def cluster_env():
    if not sys.platform.startswith("linux") or shutil.which("bash") is None:
        pytest.skip("needs Linux and bash")
    ray_bin = _ray_bin()
    if ray_bin is None:
        pytest.skip("no ray executable (.venv/bin/ray or PATH)")

    # Short path on purpose: Ray's unix sockets live under it (AF_UNIX limit 107 bytes).
    tmp = Path(tempfile.mkdtemp(prefix="cgray-", dir="/tmp"))
    gcs_port, dash_port = _free_ports(2)
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("RAY_") and not k.startswith("CAREGPT_RAY")
    }
    env.update(
        RAY_BIN=str(ray_bin),
        CAREGPT_RAY_PORT=str(gcs_port),
        CAREGPT_DASHBOARD_PORT=str(dash_port),
        CAREGPT_RAY_TMP=str(tmp),
        CAREGPT_RAY_NUM_CPUS=str(HEAD_CPUS),
        CAREGPT_RAY_WORKER_NUM_CPUS=str(WORKER_CPUS),
        CAREGPT_RAY_OBJECT_STORE_BYTES=str(200 * 1024 * 1024),
        CAREGPT_RAY_START_TIMEOUT="60",
    )
    if "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in os.environ:  # the suite's short Ray Train poll (tests/conftest.py)
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
    info = {"env": env, "tmp": tmp, "gcs_port": gcs_port, "dash_port": dash_port,
            "ray_bin": ray_bin, "dash_url": f"http://127.0.0.1:{dash_port}"}
    try:
        yield info
    finally:
        try:
            _run(["bash", STOP], env, timeout=90)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def test_local_two_node_cluster(cluster_env, tiny_model, test_data, tmp_path):
    env, tmp = cluster_env["env"], cluster_env["tmp"]
    gcs_port, dash_port = cluster_env["gcs_port"], cluster_env["dash_port"]
    dash_url = f"http://127.0.0.1:{dash_port}"
    t0 = time.monotonic()
    timings = {}

    # --- start --------------------------------------------------------------
    started = _run(["bash", START], env, timeout=150)
    timings["start"] = time.monotonic() - t0
    assert started.returncode == 0, _show(started)
    assert f"127.0.0.1:{gcs_port}" in started.stdout
    assert dash_url in started.stdout
    assert "ray job submit" in started.stdout

    env_file = tmp / "cluster.env"
    client = _read_env_file(env_file)
    assert client["RAY_ADDRESS"] == f"127.0.0.1:{gcs_port}"
    assert client["RAY_API_SERVER_ADDRESS"] == dash_url
    assert client["RAY_AUTH_MODE"] == "token"
    token_path = Path(client["RAY_AUTH_TOKEN_PATH"])
    token = token_path.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600

    sids = _session_ids(tmp)
    assert len(sids) == 2, sids
    assert _live_pids_in_sessions(sids)

    # --- a second start.sh on the same port refuses clearly -----------------
    again = _run(["bash", START], env, timeout=30)
    assert again.returncode == 2, _show(again)
    assert "already running" in again.stderr

    # --- client: 2 alive nodes, one task pinned to each ----------------------
    t = time.monotonic()
    client_env = {**env, **client}
    probe = _run([sys.executable, "-c", PROBE], client_env, timeout=120, cwd=str(tmp))
    timings["probe"] = time.monotonic() - t
    assert probe.returncode == 0, _show(probe)
    line = next(l for l in probe.stdout.splitlines() if l.startswith("PROBE "))
    result = json.loads(line[len("PROBE "):])

    nodes = {n["id"]: n["resources"] for n in result["nodes"]}
    assert len(nodes) == 2, nodes
    heads = [i for i, r in nodes.items() if r.get("head_node") == 1]
    workers = [i for i, r in nodes.items() if r.get("worker_node") == 1]
    assert len(heads) == 1 and len(workers) == 1 and heads != workers, nodes
    assert nodes[heads[0]].get("CPU", 0) == HEAD_CPUS  # Ray leaves a resource of 0 out
    assert nodes[workers[0]]["CPU"] == WORKER_CPUS

    pinned = result["pinned"]
    assert pinned == {node_id: node_id for node_id in nodes}, pinned
    assert len(set(pinned.values())) == 2
    assert result["worker_node_task"] == workers[0]

    # --- dashboard HTTP API on 127.0.0.1, token protected --------------------
    status, body = _http(f"{dash_url}/api/authentication_mode")
    assert status == 200 and json.loads(body)["authentication_mode"] == "token", body
    status, _ = _http(f"{dash_url}/api/version")
    assert status == 401
    status, body = _http(f"{dash_url}/api/version", token=token)
    assert status == 200, body
    assert json.loads(body)["ray_version"]
    status, body = _http(f"{dash_url}/api/jobs/", token=token)
    assert status == 200 and isinstance(json.loads(body), list), body

    # --- our training metrics are scraped from the worker node (was tests/e2e/test_metrics_scrape.py) -----
    t = time.monotonic()
    _training_metrics_are_scraped_from_the_worker_node(cluster_env, started, tiny_model, tmp_path)
    timings["metrics scrape"] = time.monotonic() - t

    # --- a second worker node (was tests/e2e/test_two_node_cluster.py) ------------------------------
    t = time.monotonic()
    names = _add_node_b(cluster_env)
    timings["node_b"] = time.monotonic() - t

    # --- ray job submit, as printed by start.sh: jobs/train.py trains on the cluster, 2 workers SPREAD ----
    # (the two-node test's `caregpt train` as a cluster client was a second run of the same job: a driver joining
    # a cluster through RAY_ADDRESS is this job's driver, the probe above and tests/e2e/test_seed_commands.py)
    t = time.monotonic()
    job_env = {**client_env}
    job_env.pop("RAY_AUTH_TOKEN", None)
    out = tmp_path / "out"
    config = small_train_config(tmp_path, tiny_model, test_data, num_workers=2, placement_strategy="SPREAD")
    ray = str(cluster_env["ray_bin"])
    submission = f"caregpt-test-{os.getpid()}"
    submitted = _run([ray, "job", "submit", "--address", dash_url, "--submission-id", submission,
                      "--runtime-env", REPO / "cluster" / "runtime_env.yaml", "--working-dir", REPO,
                      "--", "python", "jobs/train.py", config], job_env, timeout=600)
    timings["train job"] = time.monotonic() - t
    assert submitted.returncode == 0, _show(submitted)
    assert "training finished" in submitted.stdout  # the job's logs were followed to the end
    assert "joining the Ray cluster at" in submitted.stdout + submitted.stderr  # the driver joined this cluster
    status = _run([ray, "job", "status", "--address", dash_url, submission], job_env, timeout=60)
    assert f"Job '{submission}' succeeded" in status.stdout, _show(status)  # `ray job status` wording in 2.60
    assert (out / "adapter_model.safetensors").is_file() and (out / "trainer_log.jsonl").is_file()
    assert json.loads((out / "all_results.json").read_text())["step"] == 3
    _assert_one_train_worker_on_each_worker_node(cluster_env, names)

    # --- stop: exactly our processes (all three nodes), ports closed, idempotent ---------------
    by_node = {p.stem: int(p.read_text()) for p in (tmp / "caregpt-local").glob("*.sid")}
    assert set(by_node) == {"head", "worker", "node_b"}, by_node
    assert set(by_node.values()) >= sids
    sids = set(by_node.values())
    t = time.monotonic()
    stopped = _run(["bash", STOP], env, timeout=120)
    timings["stop"] = time.monotonic() - t
    assert stopped.returncode == 0, _show(stopped)
    assert _live_pids_in_sessions(sids) == []
    assert not _port_open(gcs_port)
    assert not _port_open(dash_port)
    assert not env_file.exists()
    assert not token_path.exists()

    twice = _run(["bash", STOP], env, timeout=60)
    assert twice.returncode == 0, _show(twice)
    assert "no running cluster processes" in twice.stdout

    timings["total"] = time.monotonic() - t0
    print("\nlocal cluster timings (s): "
          + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))


def _training_metrics_are_scraped_from_the_worker_node(info: dict, started: subprocess.CompletedProcess, tiny_model: str, tmp_path: Path) -> None:
    """The checks of the former tests/e2e/test_metrics_scrape.py, on this test's cluster (METRICS_DRIVER above)."""
    nodes = {line.split()[0]: int(line.split()[3]) for line in
             (info["tmp"] / "caregpt-local" / "nodes").read_text().splitlines() if line and not line.startswith("#")}
    for name, port in nodes.items():
        assert f"http://127.0.0.1:{port}/metrics" in started.stdout, (name, started.stdout)

    # the Prometheus hookup the README describes: Ray's own config points at its discovery file
    prom_yml = info["tmp"] / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"
    discovery = info["tmp"] / "session_latest" / "prom_metrics_service_discovery.json"
    wait_for(lambda: prom_yml.is_file() and str(discovery.name) in prom_yml.read_text(), 60, what=str(prom_yml))

    run_name = f"scrape-{tmp_path.name}"
    driven = _run([sys.executable, "-c", METRICS_DRIVER, tiny_model, run_name, tmp_path / "hf"], cluster_client_env(info),
                  timeout=450, cwd=str(tmp_path))
    assert driven.returncode == 0, _show(driven)
    result = json.loads(next(l for l in driven.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert node_names(info)[result["node_id"]] == "worker" and result["steps"] == 3

    def ours_on(target: str) -> dict[str, float] | None:
        """Our run's series on one target; None when it does not answer (Prometheus: target down)."""
        try:
            status, body = http_get(f"http://{target}/metrics", timeout=10)
        except OSError:
            return None
        if status != 200:
            return None
        return {name: value for name, labels, value in _samples(body)
                if name.startswith("ray_caregpt_train_") and labels.get("run") == run_name and labels.get("rank") == "0"}

    def scrape_all() -> dict[str, dict[str, float] | None]:
        targets = json.loads(discovery.read_text())[0]["targets"]
        found = {t: ours_on(t) for t in targets}
        worker = found.get(next(t for t in targets if t.endswith(f":{nodes['worker']}"))) or {}
        return found if "ray_caregpt_train_tokens_per_second" in worker else None

    found = wait_for(scrape_all, 90, interval=2, what=f"ray_caregpt_train_* of run {run_name} on the worker node")
    worker_target = next(t for t in found if t.endswith(f":{nodes['worker']}"))
    series = found[worker_target]
    last = result["last"]
    # every training gauge this CPU run can set is exported (GPU memory only exists with CUDA)
    cpu_names = {f"ray_{n}" for n in METRIC_NAMES if "gpu_memory" not in n}
    assert cpu_names <= set(series), sorted(cpu_names - set(series))
    assert not any("gpu_memory" in n for n in series)
    assert series["ray_caregpt_train_loss"] == pytest.approx(last["loss"])
    assert series["ray_caregpt_train_learning_rate"] == pytest.approx(last["learning_rate"])
    assert series["ray_caregpt_train_grad_norm"] == pytest.approx(last["grad_norm"])
    assert series["ray_caregpt_train_step"] == 3
    assert series["ray_caregpt_train_tokens_seen"] == result["real_tokens"] > 0  # CareTrainer's own count
    assert series["ray_caregpt_train_tokens_per_second"] > 0
    # every target is this cluster's and answers: nodes, dashboard and autoscaler (start.sh gives
    # the last two free ports instead of Ray's fixed 44227/44217, which other clusters here hold)
    assert all(v is not None for v in found.values()), found
    # exported by the node the work ran on, not by the head
    head_target = next(t for t in found if t.endswith(f":{nodes['head']}"))
    assert found[head_target] == {}  # the head answered, without this run's series


def _add_node_b(info: dict) -> dict[str, str]:
    """The node checks of the former tests/e2e/test_two_node_cluster.py: start_worker.sh adds `node_b` (its own
    raylet, object store, agents, metrics port and custom resource); status.sh lists it. Returns node_id -> name."""
    env = info["env"]
    added = _run(["bash", START_WORKER, "node_b"], {**env, "CAREGPT_RAY_NODE_NUM_CPUS": str(NODE_B_CPUS)}, timeout=180)
    assert added.returncode == 0, _show(added)

    # the same name twice is refused without touching the running node
    again = _run(["bash", START_WORKER, "node_b"], env, timeout=60)
    assert again.returncode == 2 and "already started" in again.stderr, _show(again)

    names = node_names(info)
    alive = {n["node_id"] for n in state_list(info, "nodes", state="ALIVE")}
    assert sorted(names.values()) == ["head", "node_b", "worker"] and set(names) == alive, names
    node_b = next(n for n in state_list(info, "nodes") if names.get(n["node_id"]) == "node_b")
    assert node_b["resources_total"]["CPU"] == NODE_B_CPUS and not node_b["is_head_node"], node_b

    status = _run(["bash", STATUS], env, timeout=120)
    assert status.returncode == 0 and "node_b" in status.stdout, _show(status)
    return names


def _assert_one_train_worker_on_each_worker_node(info: dict, names: dict[str, str]) -> None:
    """Placement (the former tests/e2e/test_two_node_cluster.py): `num_workers: 2, placement_strategy: SPREAD` put
    one RayTrainWorker on each worker node; the head offers no CPU, so neither could land there."""
    workers = state_list(info, "actors", class_name="RayTrainWorker")
    assert len(workers) == 2, workers
    placed = [names[w["node_id"]] for w in workers]
    assert len(set(placed)) == 2, f"SPREAD put both workers on {placed}"
    assert "head" not in placed  # the head offers no CPU: the workers had to use both worker nodes
    assert all(w["state"] == "DEAD" for w in workers)  # the run is over and its workers are gone
