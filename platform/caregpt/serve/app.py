"""Assemble the Serve application: an HTTP router in front of an autoscaled model deployment.

``build_app(settings)`` returns a bound Ray Serve application, used by ``caregpt serve``, by
``serve run serve_apps.chat:build_app key=value ...`` and by Serve config files / KubeRay
RayService (``import_path: serve_apps.chat:build_app`` with the settings as ``args``). Deployment
options set here from the settings are defaults: a Serve config's ``deployments:`` section
overrides them (that is how operators tune autoscaling without touching code).
"""

from __future__ import annotations

from typing import Any

from caregpt.config.loader import ConfigError
from caregpt.serve.config import ServeConfig, build_serve_config


def autoscaling_config(config: ServeConfig) -> dict[str, Any]:
    return {
        "min_replicas": config.min_replicas,
        "initial_replicas": max(config.min_replicas, 1),
        "max_replicas": config.max_replicas,
        "target_ongoing_requests": config.target_ongoing_requests,
        "upscale_delay_s": config.upscale_delay_s,
        "downscale_delay_s": config.downscale_delay_s,
    }


def model_deployment_options(config: ServeConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_ongoing_requests": max(config.max_ongoing_requests, config.max_batch_size),
        "max_queued_requests": config.max_queued_requests,
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": 1.0,
    }
    if config.num_replicas is not None:
        options["num_replicas"] = config.num_replicas
    else:
        options["autoscaling_config"] = autoscaling_config(config)
    return options


DEPLOYMENT_NAMES = ("OpenAIRouter", "LLMServer", "KnowledgeRetriever")
_PATH_KEYS = ("model_name_or_path", "adapters_dir", "api_keys_file", "triage_guides")


def _absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Relative paths that exist here, made absolute: replicas may not share this process's working directory."""
    from pathlib import Path

    out = dict(values)
    for key in _PATH_KEYS:
        if out.get(key) and Path(out[key]).expanduser().exists():
            out[key] = str(Path(out[key]).expanduser().resolve())
    if out.get("knowledge_bases"):
        out["knowledge_bases"] = {name: str(Path(d).expanduser().resolve()) if Path(d).expanduser().exists() else d
                                  for name, d in out["knowledge_bases"].items()}
    if out.get("checkpoint_dir"):
        out["checkpoint_dir"] = [str(Path(p).expanduser().resolve()) if Path(p).expanduser().exists() else p for p in out["checkpoint_dir"]]
    return out


def build_app(settings: ServeConfig | dict[str, Any], overrides: dict[str, dict[str, Any]] | None = None):
    """The bound application for these settings (a ServeConfig or a dict of its keys).

    overrides: deployment name -> Serve deployment options (a Serve config's `deployments:` entries),
    applied over the ones derived from the settings.
    """
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(DEPLOYMENT_NAMES)
    if unknown:
        raise ConfigError(f"unknown deployment(s) {sorted(unknown)} in the Serve config; this app has {list(DEPLOYMENT_NAMES)}")
    from caregpt.serve.router import OpenAIRouter
    from caregpt.serve.server import LLMServer

    config = settings if isinstance(settings, ServeConfig) else build_serve_config(dict(settings), "the application args")
    from caregpt.serve.loading import preflight

    preflight(config)  # fails now, on the driver, for settings that cannot work (nothing is loaded)
    values = _absolute_paths(config.public())
    model_options = model_deployment_options(config)
    if "autoscaling_config" in overrides.get("LLMServer", {}) or "num_replicas" in overrides.get("LLMServer", {}):
        model_options.pop("autoscaling_config", None)
        model_options.pop("num_replicas", None)
    retriever = _retriever(config, values, overrides)
    if config.colocate_router:  # one deployment: the router builds the model server in its own replica
        options = {**model_options, **overrides.get("LLMServer", {}), **overrides.get("OpenAIRouter", {})}
        # every HTTP request is an ongoing request of this replica; the router's admission (max_pending_requests)
        # answers 503 in OpenAI's shape before Serve's own backpressure would
        options.update(max_ongoing_requests=config.max_pending_requests + 16, max_queued_requests=-1)
        for key in ("max_ongoing_requests", "max_queued_requests"):
            if key in overrides.get("OpenAIRouter", {}):
                options[key] = overrides["OpenAIRouter"][key]
        return OpenAIRouter.options(**options).bind(None, values, retriever)
    model = LLMServer.options(**{**model_options, **overrides.get("LLMServer", {})}).bind(values)
    router_options = {
        "num_replicas": config.router_replicas,
        "ray_actor_options": {"num_cpus": config.router_num_cpus},
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": 1.0,
    }
    router = OpenAIRouter.options(**{**router_options, **overrides.get("OpenAIRouter", {})})
    return router.bind(model, values, retriever)


def _retriever(config: ServeConfig, values: dict[str, Any], overrides: dict[str, dict[str, Any]]):
    if not config.knowledge_bases:
        return None
    from caregpt.serve.knowledge import KnowledgeRetriever

    retriever_options = {"ray_actor_options": {"num_cpus": config.retriever_num_cpus}, **overrides.get("KnowledgeRetriever", {})}
    return KnowledgeRetriever.options(**retriever_options).bind(values["knowledge_bases"])
