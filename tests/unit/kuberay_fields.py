"""A small validator for KubeRay manifests (ray.io/v1 RayCluster, RayJob, RayService).

No package on PyPI carries KubeRay's CRD schema (the ones that talk to KubeRay, such as
codeflare-sdk and krayne, ship no CRD), and the CRDs themselves live only in the KubeRay
repository and Helm chart. So this checks what KubeRay's API reference (ray.io/v1) documents:
which fields are required, their types and enums, and which field names exist. The API server
prunes or rejects unknown fields, so a typo such as `workerGroupSpec` would silently vanish; this
catches it. Pod templates get the core Kubernetes checks that matter here: containers with name
and image, env entries with exactly one of value/valueFrom, and secretKeyRef with name and key.

validate(doc) returns a list of "path: problem" strings, empty when the manifest is fine.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

# field -> expected type(s); "!" marks the fields the API reference lists without `omitempty`
RAY_CLUSTER_SPEC = {
    "headGroupSpec!": dict, "workerGroupSpecs": list, "rayVersion": str, "enableInTreeAutoscaling": bool,
    "autoscalerOptions": dict, "headServiceAnnotations": dict, "suspend": bool, "managedBy": str,
    "gcsFaultToleranceOptions": dict, "authOptions": dict, "upgradeStrategy": dict,
}
HEAD_GROUP = {"template!": dict, "rayStartParams": dict, "serviceType": str, "headService": dict,
              "enableIngress": bool}
WORKER_GROUP = {"groupName!": str, "template!": dict, "rayStartParams": dict, "replicas": int,
                "minReplicas": int, "maxReplicas": int, "numOfHosts": int, "scaleStrategy": dict,
                "idleTimeoutSeconds": int, "suspend": bool}
AUTOSCALER = {"resources": dict, "image": str, "imagePullPolicy": str, "env": list, "envFrom": list,
              "volumeMounts": list, "securityContext": dict, "idleTimeoutSeconds": int, "upscalingMode": str,
              "version": str}
GCS_FT = {"redisAddress": str, "redisUsername": dict, "redisPassword": dict, "externalStorageNamespace": str}
AUTH = {"mode": str}
RAY_JOB_SPEC = {"entrypoint": str, "rayClusterSpec": dict, "clusterSelector": dict, "runtimeEnvYAML": str,
                "jobId": str, "metadata": dict, "shutdownAfterJobFinishes": bool, "ttlSecondsAfterFinished": int,
                "activeDeadlineSeconds": int, "backoffLimit": int, "submissionMode": str,
                "submitterPodTemplate": dict, "submitterConfig": dict, "suspend": bool, "entrypointNumCpus": (int, float),
                "entrypointNumGpus": (int, float), "entrypointResources": str, "deletionStrategy": dict, "managedBy": str}
RAY_SERVICE_SPEC = {"serveConfigV2": str, "rayClusterConfig!": dict, "upgradeStrategy": dict,
                    "serveService": dict, "excludeHeadPodFromServeSvc": bool, "rayClusterDeletionDelaySeconds": int}
ENUMS = {"authOptions.mode": {"disabled", "token"},
         "autoscalerOptions.upscalingMode": {"Default", "Aggressive", "Conservative"},
         "submissionMode": {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}}


def _fields(obj: Any, spec: dict[str, Any], path: str, errors: list[str]) -> None:
    if not isinstance(obj, dict):
        errors.append(f"{path}: must be an object, got {type(obj).__name__}")
        return
    known = {k.rstrip("!"): t for k, t in spec.items()}
    for key in (k.rstrip("!") for k in spec if k.endswith("!")):
        if key not in obj:
            errors.append(f"{path}.{key}: required field missing")
    for key, value in obj.items():
        if key not in known:
            errors.append(f"{path}.{key}: unknown field (KubeRay ray.io/v1 has no such field)")
        elif known[key] is int and isinstance(value, bool) or not isinstance(value, known[key]):
            errors.append(f"{path}.{key}: must be {getattr(known[key], '__name__', known[key])}, got {type(value).__name__}")


def _string_map(obj: Any, path: str, errors: list[str]) -> None:
    """rayStartParams is map[string]string: `num-cpus: 0` (an int) is rejected by the CRD."""
    for key, value in (obj or {}).items():
        if not isinstance(value, str):
            errors.append(f"{path}.{key}: must be a string (quote it), got {type(value).__name__}")


def _credential(obj: Any, path: str, errors: list[str]) -> None:
    if not isinstance(obj, dict) or len([k for k in ("value", "valueFrom") if k in obj]) != 1:
        errors.append(f"{path}: needs exactly one of value / valueFrom")
        return
    if "valueFrom" in obj:
        _value_from(obj["valueFrom"], f"{path}.valueFrom", errors)


def _value_from(obj: Any, path: str, errors: list[str]) -> None:
    sources = [k for k in ("secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef") if k in (obj or {})]
    if len(sources) != 1:
        errors.append(f"{path}: needs exactly one source (secretKeyRef, configMapKeyRef, ...)")
        return
    ref = obj[sources[0]]
    if sources[0] in ("secretKeyRef", "configMapKeyRef"):
        for key in ("name", "key"):
            if not isinstance(ref.get(key), str) or not ref.get(key):
                errors.append(f"{path}.{sources[0]}.{key}: required string")


def _pod_template(obj: dict, path: str, errors: list[str]) -> None:
    containers = (obj.get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        errors.append(f"{path}.spec.containers: at least one container is required")
        return
    for i, container in enumerate(containers):
        where = f"{path}.spec.containers[{i}]"
        if not isinstance(container.get("name"), str) or not DNS_LABEL.match(container["name"]):
            errors.append(f"{where}.name: required DNS label")
        if not isinstance(container.get("image"), str) or not container["image"]:
            errors.append(f"{where}.image: required")
        for j, env in enumerate(container.get("env") or []):
            if not isinstance(env.get("name"), str):
                errors.append(f"{where}.env[{j}].name: required string")
            has = [k for k in ("value", "valueFrom") if k in env]
            if len(has) > 1:
                errors.append(f"{where}.env[{j}]: value and valueFrom are exclusive")
            if "value" in env and not isinstance(env["value"], str):
                errors.append(f"{where}.env[{j}].value: must be a string (quote it)")
            if "valueFrom" in env:
                _value_from(env["valueFrom"], f"{where}.env[{j}].valueFrom", errors)


def _cluster_spec(spec: Any, path: str, errors: list[str]) -> None:
    _fields(spec, RAY_CLUSTER_SPEC, path, errors)
    if not isinstance(spec, dict):
        return
    head = spec.get("headGroupSpec")
    if isinstance(head, dict):
        _fields(head, HEAD_GROUP, f"{path}.headGroupSpec", errors)
        _string_map(head.get("rayStartParams"), f"{path}.headGroupSpec.rayStartParams", errors)
        if isinstance(head.get("template"), dict):
            _pod_template(head["template"], f"{path}.headGroupSpec.template", errors)
    names = []
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        where = f"{path}.workerGroupSpecs[{i}]"
        _fields(group, WORKER_GROUP, where, errors)
        if not isinstance(group, dict):
            continue
        names.append(group.get("groupName"))
        _string_map(group.get("rayStartParams"), f"{where}.rayStartParams", errors)
        if isinstance(group.get("template"), dict):
            _pod_template(group["template"], f"{where}.template", errors)
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        wanted = group.get("replicas", low)
        if all(isinstance(v, int) for v in (low, high, wanted)) and not 0 <= low <= wanted <= high:
            errors.append(f"{where}: needs 0 <= minReplicas <= replicas <= maxReplicas, got {low}/{wanted}/{high}")
    if len(names) != len(set(names)):
        errors.append(f"{path}.workerGroupSpecs: groupName must be unique, got {names}")
    for key, spec_fields in (("autoscalerOptions", AUTOSCALER), ("gcsFaultToleranceOptions", GCS_FT), ("authOptions", AUTH)):
        if isinstance(spec.get(key), dict):
            _fields(spec[key], spec_fields, f"{path}.{key}", errors)
    ft = spec.get("gcsFaultToleranceOptions")
    if isinstance(ft, dict):
        if not ft.get("redisAddress"):
            errors.append(f"{path}.gcsFaultToleranceOptions.redisAddress: required for the Redis backend")
        for key in ("redisUsername", "redisPassword"):
            if key in ft:
                _credential(ft[key], f"{path}.gcsFaultToleranceOptions.{key}", errors)
    for dotted, allowed in ENUMS.items():
        outer, _, inner = dotted.partition(".")
        value = (spec.get(outer) or {}).get(inner) if inner else None
        if inner and value is not None and value not in allowed:
            errors.append(f"{path}.{dotted}: must be one of {sorted(allowed)}, got {value!r}")


def validate(doc: Any) -> list[str]:
    errors: list[str] = []
    if not isinstance(doc, dict):
        return ["manifest: must be a mapping"]
    if doc.get("apiVersion") != "ray.io/v1":
        errors.append(f"apiVersion: must be ray.io/v1, got {doc.get('apiVersion')!r}")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: required lowercase DNS name, got {name!r}")
    kind, spec = doc.get("kind"), doc.get("spec")
    if kind == "RayCluster":
        _cluster_spec(spec, "spec", errors)
    elif kind == "RayJob":
        _fields(spec, RAY_JOB_SPEC, "spec", errors)
        if isinstance(spec, dict):
            if "rayClusterSpec" not in spec and "clusterSelector" not in spec:
                errors.append("spec: needs rayClusterSpec (or clusterSelector for an existing cluster)")
            if "rayClusterSpec" in spec:
                _cluster_spec(spec["rayClusterSpec"], "spec.rayClusterSpec", errors)
            if spec.get("submissionMode", "K8sJobMode") not in ENUMS["submissionMode"]:
                errors.append(f"spec.submissionMode: must be one of {sorted(ENUMS['submissionMode'])}")
            if "runtimeEnvYAML" in spec and not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
                errors.append("spec.runtimeEnvYAML: must hold a YAML mapping (a runtime_env)")
    elif kind == "RayService":
        _fields(spec, RAY_SERVICE_SPEC, "spec", errors)
        if isinstance(spec, dict):
            _cluster_spec(spec.get("rayClusterConfig"), "spec.rayClusterConfig", errors)
            serve = yaml.safe_load(spec.get("serveConfigV2") or "null")
            apps = serve.get("applications") if isinstance(serve, dict) else None
            if not isinstance(apps, list) or not apps:
                errors.append("spec.serveConfigV2: must be a Serve config with a non-empty `applications` list")
            for i, app in enumerate(apps or []):
                for key in ("name", "import_path"):
                    if not isinstance(app.get(key), str):
                        errors.append(f"spec.serveConfigV2.applications[{i}].{key}: required string")
    else:
        errors.append(f"kind: must be RayCluster, RayJob or RayService, got {kind!r}")
    return errors
