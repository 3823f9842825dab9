"""Multi-node on one machine, for real: 2 Ray Train workers placed with SPREAD on 2 worker nodes.

start.sh brings up the head (0 CPUs, so no training worker can land there) and the first worker
node; start_worker.sh adds a second worker node `node_b` (its own raylet, object store, agents,
metrics port and custom resource). `caregpt train` then runs as a client of that cluster with
`num_workers: 2, placement_strategy: SPREAD`, and the state API must show the two RayTrainWorker
actors on two different nodes. status.sh lists node_b; stop.sh takes all three nodes down.

Run: PYTHONPATH=platform .venv/bin/python -m pytest tests/e2e/test_two_node_cluster.py -q -s
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.cluster_helpers import (REPO, START, START_WORKER, STATUS, STOP, client_env, local_cluster,
                                       node_names, port_open, run, show, small_train_config, state_list)

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]
CAREGPT = str(Path(sys.executable).parent / "caregpt")


def test_spread_training_runs_on_two_worker_nodes(tiny_model, test_data, tmp_path):
    timings = {}
    t0 = time.monotonic()
    with local_cluster(CAREGPT_RAY_NUM_CPUS="0", CAREGPT_RAY_WORKER_NUM_CPUS="2") as info:
        env = info["env"]
        started = run(["bash", START], env, timeout=240)
        assert started.returncode == 0, show(started)
        added = run(["bash", START_WORKER, "node_b"], {**env, "CAREGPT_RAY_NODE_NUM_CPUS": "2"}, timeout=180)
        assert added.returncode == 0, show(added)
        timings["start"] = time.monotonic() - t0

        # the same name twice is refused without touching the running node
        again = run(["bash", START_WORKER, "node_b"], env, timeout=60)
        assert again.returncode == 2 and "already started" in again.stderr, show(again)

        names = node_names(info)
        alive = {n["node_id"] for n in state_list(info, "nodes", state="ALIVE")}
        assert sorted(names.values()) == ["head", "node_b", "worker"] and set(names) == alive, names
        node_b = next(n for n in state_list(info, "nodes") if names.get(n["node_id"]) == "node_b")
        assert node_b["resources_total"]["CPU"] == 2 and not node_b["is_head_node"], node_b

        status = run(["bash", STATUS], env, timeout=120)
        assert status.returncode == 0 and "node_b" in status.stdout, show(status)

        # --- train: the driver is a client of the cluster (RAY_ADDRESS from the env file) ------
        t = time.monotonic()
        out = tmp_path / "out"
        config = small_train_config(tmp_path, tiny_model, test_data, max_steps=2, num_workers=2, placement_strategy="SPREAD")
        trained = run([CAREGPT, "train", config], {**client_env(info), "CAREGPT_PROGRESS": "0"}, timeout=600, cwd=str(tmp_path))
        timings["train"] = time.monotonic() - t
        assert trained.returncode == 0, show(trained)
        results = json.loads((out / "all_results.json").read_text())
        assert results["step"] == 2 and (out / "adapter_model.safetensors").is_file()

        # --- placement: one Ray Train worker on each worker node ------------------------------
        workers = state_list(info, "actors", class_name="RayTrainWorker")
        assert len(workers) == 2, workers
        placed = [names[w["node_id"]] for w in workers]
        assert len(set(placed)) == 2, f"SPREAD put both workers on {placed}"
        assert "head" not in placed  # the head offers no CPU: the workers had to use both worker nodes
        assert all(w["state"] == "DEAD" for w in workers)  # the run is over and its workers are gone

        # --- stop: all three nodes --------------------------------------------------------------
        sids = {p.stem: int(p.read_text()) for p in (info["tmp"] / "caregpt-local").glob("*.sid")}
        assert set(sids) == {"head", "worker", "node_b"}, sids
        stopped = run(["bash", STOP], env, timeout=120)
        assert stopped.returncode == 0, show(stopped)
        assert not _session_members(set(sids.values()))
        assert not port_open(info["gcs_port"]) and not port_open(info["dash_port"])
    timings["total"] = time.monotonic() - t0
    print("\ntwo-node cluster timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))


def _session_members(sids: set[int]) -> list[int]:
    """Live (non-zombie) processes in the given sessions."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) not in sids:
                continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry))
        except (OSError, IndexError):
            continue
    return pids
