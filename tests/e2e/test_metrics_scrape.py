"""Our training metrics reach Prometheus: a real cluster, a real Trainer, a real scrape.

start.sh gives every node a fixed `--metrics-export-port`. A short CareTrainer run (caregpt's HF
Trainer) with TrainMetricsCallback registered the way the worker registers it runs in an actor
pinned to the worker node; the test then does what
Prometheus would do: read the service-discovery file Ray keeps for its nodes, scrape every target,
and find the caregpt_train_* series (exported as ray_caregpt_train_*) with the run's values. Ray's
metrics agent exports every few seconds, so the scrape polls.

Run: PYTHONPATH=platform .venv/bin/python -m pytest tests/e2e/test_metrics_scrape.py -q -s
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from caregpt.train.metrics import METRIC_NAMES
from tests.e2e.cluster_helpers import START, client_env, http_get, local_cluster, node_names, run, show, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]

# The actor is detached so its series stay exported after the driver exits; stop.sh ends it.
DRIVER = r"""
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


def test_training_metrics_are_scraped_from_the_worker_node(tiny_model, tmp_path):
    t0 = time.monotonic()
    timings = {}
    with local_cluster(CAREGPT_RAY_NUM_CPUS="1", CAREGPT_RAY_WORKER_NUM_CPUS="1") as info:
        started = run(["bash", START], info["env"], timeout=240)
        assert started.returncode == 0, show(started)
        timings["start"] = time.monotonic() - t0
        nodes = {line.split()[0]: int(line.split()[3]) for line in
                 (info["tmp"] / "caregpt-local" / "nodes").read_text().splitlines() if line and not line.startswith("#")}
        for name, port in nodes.items():
            assert f"http://127.0.0.1:{port}/metrics" in started.stdout, (name, started.stdout)

        # the Prometheus hookup the README describes: Ray's own config points at its discovery file
        prom_yml = info["tmp"] / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"
        discovery = info["tmp"] / "session_latest" / "prom_metrics_service_discovery.json"
        wait_for(lambda: prom_yml.is_file() and str(discovery.name) in prom_yml.read_text(), 60, what=str(prom_yml))

        run_name = f"scrape-{tmp_path.name}"
        t = time.monotonic()
        driven = run([sys.executable, "-c", DRIVER, tiny_model, run_name, tmp_path / "hf"], client_env(info),
                     timeout=450, cwd=str(tmp_path))
        assert driven.returncode == 0, show(driven)
        result = json.loads(next(l for l in driven.stdout.splitlines() if l.startswith("RESULT "))[7:])
        assert node_names(info)[result["node_id"]] == "worker" and result["steps"] == 3
        timings["short_run"] = time.monotonic() - t
        t = time.monotonic()

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
        timings["scrape_wait"] = time.monotonic() - t
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
    timings["total"] = time.monotonic() - t0
    print("\nmetrics scrape timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
