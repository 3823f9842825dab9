"""The cluster definitions under cluster/ are checked against what will read them, without a cloud.

- Ray cluster launcher YAML: the JSON schema shipped inside the ray package
  (ray/autoscaler/ray-schema.json), then Ray's own config preparation and validation, the
  steps `ray up` runs before it talks to a cloud.
- KubeRay manifests: KubeRay's documented required fields, types, enums and field names
  (tests/unit/kuberay_fields.py; no PyPI package ships the CRD schema), plus what caregpt needs
  from them: the job's entrypoint and config exist and fit the GPUs the manifest asks for, the
  Serve app's import path and args are accepted by caregpt's serve config.
- No plain-text secrets anywhere in cluster/; the Grafana dashboard parses and queries our
  metric names and Ray metrics that exist; the Dockerfile has the shape the manifests rely on.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from caregpt.train.metrics import METRIC_NAMES
from tests.unit.kuberay_fields import validate

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER = sorted((CLUSTER / "launcher").glob("*.yaml"))
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
SERVE_METRICS = ("caregpt_requests_total", "caregpt_request_errors_total", "caregpt_time_to_first_token_ms",
                 "caregpt_output_tokens_per_second", "caregpt_engine_queue_length")


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _containers(cluster_spec: dict):
    """The Ray container of every group (KubeRay's convention: the first; sidecars follow it)."""
    groups = [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]
    for group in groups:
        yield group["template"]["spec"]["containers"][0]


def _cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])


# --- Ray cluster launcher -------------------------------------------------------------------------

def test_there_are_cluster_definitions():
    assert LAUNCHER and {_load(p)["kind"] for p in KUBERAY} == {"RayCluster", "RayJob", "RayService"}


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_passes_rays_schema_and_config_preparation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(path)
    jsonschema.validate(config, _ray_schema())
    prepared = prepare_config(copy.deepcopy(config))  # merges the provider's defaults, as `ray up` does
    validate_config(prepared)
    head = prepared["head_node_type"]
    workers = {name: t for name, t in prepared["available_node_types"].items() if name != head}
    assert workers, "no worker node types"
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= prepared["max_workers"], name


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_keeps_the_security_and_metrics_defaults(path):
    config = _load(path)
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    for command in (head_start, worker_start):
        assert "RAY_AUTH_MODE=token" in command and "--metrics-export-port=" in command
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` (SSH tunnel)
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("CPU") == 0


def test_the_schema_check_has_teeth():
    config = _load(LAUNCHER[0])
    for broken in ({**config, "max_worker": 3},  # a typo of a top-level key
                   {**config, "available_node_types": {"head": {"resources": {"CPU": "8"}}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, _ray_schema())


# --- KubeRay --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_has_kuberays_documented_fields(path):
    assert validate(_load(path)) == []


def test_the_kuberay_validator_rejects_what_kuberay_rejects():
    doc = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    cases = {
        "headGroupSpec: required": lambda d: d["spec"].pop("headGroupSpec"),
        "workerGroupSpec: unknown field": lambda d: d["spec"].__setitem__("workerGroupSpec", []),
        "num-cpus: must be a string": lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
        "minReplicas <= replicas": lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("replicas", 99),
        "authOptions.mode: must be one of": lambda d: d["spec"]["authOptions"].__setitem__("mode", "password"),
        "image: required": lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"),
        "secretKeyRef.key: required": lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        .setdefault("env", []).append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}),
    }
    for expected, mutate in cases.items():
        broken = copy.deepcopy(doc)
        mutate(broken)
        errors = validate(broken)
        assert any(all(part in e for part in expected.split(": ")) for e in errors), (expected, errors)


def test_rayjob_runs_the_repository_training_command_on_enough_gpus():
    from caregpt.config.loader import load_config

    doc = _load(CLUSTER / "kuberay" / "rayjob-train-deepspeed.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"] and (REPO / argv[1]).is_file()
    config = load_config(REPO / argv[2], {})  # the config the job runs is a valid caregpt config
    assert config.ray.use_gpu and config.ray.deepspeed == "3" and config.ray.placement_strategy == "SPREAD"
    groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * int(c["resources"]["limits"]["nvidia.com/gpu"])
               for g in groups for c in g["template"]["spec"]["containers"])
    assert gpus >= config.ray.num_workers, f"{config.ray.num_workers} GPU workers wanted, the job's cluster has {gpus} GPUs"
    assert len(groups) == 1 and groups[0]["replicas"] >= 2  # the multi-node case: DeepSpeed across pods
    runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] and runtime_env["env_vars"]["PYTHONPATH"] == "platform"
    # outputs and Ray Train storage live on the volume mounted at the same path on every pod
    for container in _containers(doc["spec"]["rayClusterSpec"]):
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {str(Path(config.ray.storage_path).parents[-2]), "/models", "/data"} <= mounts


def test_rayservice_serves_the_chat_app_with_keys_and_redis_from_secrets():
    from caregpt.serve.app import DEPLOYMENT_NAMES
    from caregpt.serve.config import build_serve_config

    doc = _load(CLUSTER / "kuberay" / "rayservice-chat.yaml")
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    [app] = serve["applications"]
    module, _, function = app["import_path"].partition(":")
    source = REPO / (module.replace(".", "/") + ".py")
    assert function in {n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)}
    settings = build_serve_config(dict(app["args"]))  # caregpt accepts every arg
    assert settings.model_name_or_path and settings.template
    assert {d["name"] for d in app["deployments"]} <= set(DEPLOYMENT_NAMES)
    autoscaling = next(d for d in app["deployments"] if "autoscaling_config" in d)["autoscaling_config"]
    assert autoscaling["min_replicas"] <= autoscaling["initial_replicas"] <= autoscaling["max_replicas"]

    cluster = doc["spec"]["rayClusterConfig"]
    for container in _containers(cluster):  # API keys reach every replica, from a Secret
        [keys] = [e for e in container["env"] if e["name"] == "CAREGPT_API_KEYS"]
        assert set(keys) == {"name", "valueFrom"} and "secretKeyRef" in keys["valueFrom"]
    ft = cluster["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and "secretKeyRef" in ft["redisPassword"]["valueFrom"]


def test_rayservice_puts_the_front_proxy_before_serve_in_every_pod():
    """Clients reach caregpt.serve.front on the `serve` port; Ray Serve's proxy is on loopback behind it."""
    doc = _load(CLUSTER / "kuberay" / "rayservice-chat.yaml")
    http = yaml.safe_load(doc["spec"]["serveConfigV2"])["http_options"]
    assert http["host"] == "127.0.0.1"
    cluster = doc["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        containers = group["template"]["spec"]["containers"]
        [front] = [c for c in containers if "caregpt.serve.front" in c.get("command", [])]
        command = front["command"]
        assert command[command.index("--upstream") + 1] == f"127.0.0.1:{http['port']}"
        listen_port = int(command[command.index("--listen") + 1].rpartition(":")[2])
        assert {"containerPort": listen_port, "name": "serve"} in front["ports"]
        assert not any(p.get("name") == "serve" for c in containers if c is not front for p in c.get("ports", []))
        from caregpt.serve.front import parse_args

        # every flag the manifest passes exists and holds a valid value (the one loader refuses others)
        parse_args(command[command.index("caregpt.serve.front") + 1:])
    from caregpt.serve.front import main

    assert main(["--help"]) == 0


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_clusters_use_token_auth_and_one_image(path):
    doc = _load(path)
    spec = _cluster_spec(doc)
    assert spec["authOptions"]["mode"] == "token"
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    dockerfile_tag = re.search(r"docker build .* -t (\S+)", (CLUSTER / "docker" / "Dockerfile").read_text())[1]
    assert images == {dockerfile_tag}
    for container in _containers(spec):
        assert any(p.get("name") == "metrics" for p in container.get("ports", []))


# --- secrets --------------------------------------------------------------------------------------

SECRET_LIKE = [re.compile(p) for p in (
    r"AKIA[0-9A-Z]{16}", r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
    r"\bsk-[A-Za-z0-9]{20,}\b", r"\bhf_[A-Za-z0-9]{30,}\b", r"\b[0-9a-f]{48,}\b",
)]
# a whole word of a name: REDIS_PASSWORD, api-keys, authToken; not TOKENIZERS_PARALLELISM or secretKeyRef
SECRET_NAME = re.compile(r"(^|_)(password|passwd|secret|token|credentials?|api_?keys?)(_|$)")


def _secret_named(name) -> bool:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).replace("-", "_").replace(".", "_").lower()
    return bool(SECRET_NAME.search(words))


def _yaml_mappings(node, path=""):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _yaml_mappings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _yaml_mappings(value, f"{path}[{i}]")


def _secret_problems(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        text = path.read_text(errors="replace")
        problems += [f"{path}: looks like a credential: {m.group()[:12]}..." for rx in SECRET_LIKE for m in rx.finditer(text)]
        if path.suffix not in (".yaml", ".yml"):
            continue
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                problems.append(f"{path}: a Secret object with its data belongs in `kubectl create secret`, not here")
            for where, mapping in _yaml_mappings(doc):
                name = mapping.get("name", "")
                if "value" in mapping and _secret_named(name):  # env: {name: X_PASSWORD, value: ...}
                    problems.append(f"{path}{where}: {name} has a literal value; use valueFrom.secretKeyRef")
                for key, value in mapping.items():
                    is_file_reference = isinstance(value, str) and value.startswith(("/", "~/", "./"))
                    if _secret_named(key) and isinstance(value, (str, int)) and not is_file_reference:  # password: x
                        problems.append(f"{path}{where}.{key}: literal secret value")
                    if _secret_named(key) and isinstance(value, dict) and "value" in value:  # redisPassword.value
                        problems.append(f"{path}{where}.{key}.value: literal secret value")
    return problems


def test_no_plain_text_secrets_in_cluster_files():
    files = [p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) >= 10
    assert _secret_problems(files) == []


def test_the_secret_scan_finds_plain_text_secrets(tmp_path):
    samples = {
        "env.yaml": "env:\n  - {name: CAREGPT_API_KEYS, value: team-a-key}\n",
        "ft.yaml": "gcsFaultToleranceOptions:\n  redisAddress: r:6379\n  redisPassword: {value: hunter2}\n",
        "secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {keys: abc}\n",
        "plain.yaml": "redis_password: hunter2\n",
        "token.sh": "export RAY_AUTH_TOKEN=" + "ab12" * 16 + "\n",
    }
    clean = "env:\n  - name: CAREGPT_API_KEYS\n    valueFrom: {secretKeyRef: {name: keys, key: keys}}\n" \
            "  - {name: TOKENIZERS_PARALLELISM, value: 'false'}\n"
    for name, text in {**samples, "clean.yaml": clean}.items():
        (tmp_path / name).write_text(text)
        assert bool(_secret_problems([tmp_path / name])) == (name != "clean.yaml"), name


# --- Grafana ----------------------------------------------------------------------------------------

def _ray_dashboard_metric_names() -> set[str]:
    """Metric names Ray's own Grafana dashboards query (so they exist in this Ray version)."""
    folder = Path(ray.__file__).parent / "dashboard" / "modules" / "metrics" / "dashboards"
    return {m for p in folder.glob("*.py") for m in re.findall(r"\bray_[a-z0-9_]+", p.read_text())}


def test_grafana_dashboard_queries_our_metrics_next_to_rays():
    dashboard = json.loads((CLUSTER / "observability" / "grafana-caregpt.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all(e.count("(") == e.count(")") and e.count("{") == e.count("}") for e in exprs)
    used = {m for e in exprs for m in re.findall(r"\bray_[a-z0-9_]+", e)}
    ours = {f"ray_{name}" for name in (*METRIC_NAMES, *SERVE_METRICS)}
    histogram_parts = {f"ray_{n}_{s}" for n in SERVE_METRICS for s in ("bucket", "sum", "count")}
    for name in ours:  # every caregpt metric is on the dashboard (histograms through their buckets)
        assert name in used or f"{name}_bucket" in used, name
    rays = used - ours - histogram_parts
    assert rays, "no Ray metrics next to ours"
    assert rays <= _ray_dashboard_metric_names(), sorted(rays - _ray_dashboard_metric_names())
    assert all(p.get("datasource", {}).get("uid") == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "run"} <= variables


# --- Dockerfile and local scripts -------------------------------------------------------------------

def test_dockerfile_builds_a_cuda_image_with_vllm_as_a_non_root_user():
    lines = [l.strip() for l in (CLUSTER / "docker" / "Dockerfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    instructions = [l.split()[0] for l in lines if l.split()[0].isupper()]
    base = next(l for l in lines if l.startswith("ARG CUDA_IMAGE="))
    assert base.split("=", 1)[1].startswith("nvidia/cuda:") and instructions.count("FROM") == 1
    text = "\n".join(lines)
    assert re.search(r"--index-url \"?\$TORCH_INDEX_URL", text) and "download.pytorch.org/whl/cu" in text
    assert '".[vllm]"' in text and "wget" in text  # KubeRay's default probes call wget
    user = [l.split()[1] for l in lines if l.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert instructions.index("USER") > max(i for i, ins in enumerate(instructions) if ins == "RUN")


def test_local_scripts_parse_and_never_run_an_unscoped_ray_stop():
    scripts = sorted((CLUSTER / "local").glob("*.sh"))
    assert {"start.sh", "start_worker.sh", "restart_head.sh", "stop.sh", "status.sh"} <= {p.name for p in scripts}
    for script in scripts:
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, (script, checked.stderr)
        code = [l for l in script.read_text().splitlines() if not l.lstrip().startswith("#")]
        # a `ray stop` command (not the warnings that mention it): it kills every Ray on the machine
        stops = [l for l in code if re.search(r'(^|[;&|(]|\$\()\s*("?\$\{?ray_bin\}?"?|ray)\s+stop\b', l.strip())]
        assert not stops, (script, stops)
    start = (CLUSTER / "local" / "start.sh").read_text()
    assert "--dashboard-host 127.0.0.1" in start and 'CAREGPT_RAY_AUTH_MODE:-token' in start
    assert os.access(CLUSTER / "local" / "start_worker.sh", os.X_OK) and os.access(CLUSTER / "local" / "restart_head.sh", os.X_OK)
