"""A fine-tuning job request (OpenAI's fields) -> the method and the `caregpt train` keys it runs with.

    OpenAI field                          caregpt train key                 "auto" / unset
    method.type supervised | dpo          stage: sft | dpo                  supervised
    hyperparameters.n_epochs              num_train_epochs                  finetune.default_n_epochs (3)
    hyperparameters.batch_size            per_device_train_batch_size       finetune.default_batch_size (4)
    hyperparameters.learning_rate_multiplier
                                          learning_rate = base_learning_rate x multiplier
                                                                            multiplier 1 (base 2e-4, LoRA)
    dpo.hyperparameters.beta              dpo_beta                          0.1
    seed                                  seed                              a random seed, recorded on the job
    (always)                              finetuning_type: lora, lora_rank / lora_target from the settings,
                                          template of the served model, cutoff_len from the settings

Hyperparameters may come at the top level (OpenAI's older spelling) or under method.<type>.hyperparameters;
giving both is refused. Unknown fields, and fields this trainer cannot honour, are refused with the reason.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from caregpt.finetune.settings import FinetuneSettings

SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
COMMON = {"n_epochs", "batch_size", "learning_rate_multiplier"}
ALLOWED = {"supervised": COMMON, "dpo": COMMON | {"beta"}}
REQUEST_FIELDS = {"model", "training_file", "validation_file", "suffix", "seed", "hyperparameters", "method", "integrations", "metadata"}


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class JobPlan:
    method: dict[str, Any]  # OpenAI's method object with every hyperparameter resolved (what the API answers)
    seed: int
    suffix: str | None


def _number(name: str, value: Any, kind: type, low: float, high: float | None) -> Any:
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise RequestError(f"hyperparameter {name} must be \"auto\" or a {'whole ' if kind is int else ''}number, got {value!r}", f"hyperparameters.{name}")
    if value < low or (high is not None and value > high):
        raise RequestError(f"hyperparameter {name} must be between {low} and {high}, got {value}" if high else f"hyperparameter {name} must be at least {low}, got {value}", f"hyperparameters.{name}")
    return kind(value)


def plan_job(body: dict[str, Any], settings: FinetuneSettings) -> JobPlan:
    unknown = sorted(set(body) - REQUEST_FIELDS)
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; a fine-tuning job takes {', '.join(sorted(REQUEST_FIELDS - {'integrations', 'metadata'}))}", unknown[0], "unknown_parameter")
    if body.get("integrations"):
        raise RequestError("integrations (e.g. Weights & Biases) are not available on this server; metrics are in the job's events", "integrations", "unsupported_parameter")
    if body.get("metadata"):
        raise RequestError("metadata is not stored by this server; leave it out", "metadata", "unsupported_parameter")
    if body.get("validation_file"):
        raise RequestError("validation_file is not supported by this trainer yet (it evaluates on a held-out split of the training file); "
                           "leave it out, or put those examples into the training file", "validation_file", "unsupported_parameter")
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict) or method.get("type") not in ALLOWED:
        raise RequestError(f"method.type must be one of {', '.join(ALLOWED)} on this server", "method.type")
    kind = method["type"]
    extra = sorted(set(method) - {"type", kind})
    if extra:
        raise RequestError(f"method has {extra[0]!r}, which does not match method.type {kind!r}", f"method.{extra[0]}")
    nested = (method.get(kind) or {}).get("hyperparameters") or {}
    top = body.get("hyperparameters") or {}
    if not isinstance(nested, dict) or not isinstance(top, dict):
        raise RequestError("hyperparameters must be an object", "hyperparameters")
    if nested and top:
        raise RequestError("give hyperparameters either at the top level or under method, not both", "hyperparameters")
    given = nested or top
    bad = sorted(set(given) - ALLOWED[kind])
    if bad:
        raise RequestError(f"hyperparameter {bad[0]!r} is not available for {kind}; valid: {', '.join(sorted(ALLOWED[kind]))}", f"hyperparameters.{bad[0]}")
    resolved: dict[str, Any] = {
        "n_epochs": _number("n_epochs", given.get("n_epochs"), int, 1, settings.max_n_epochs) or settings.default_n_epochs,
        "batch_size": _number("batch_size", given.get("batch_size"), int, 1, 256) or settings.default_batch_size,
        "learning_rate_multiplier": _number("learning_rate_multiplier", given.get("learning_rate_multiplier"), float, 1e-6, 100.0) or 1.0,
    }
    if kind == "dpo":
        beta = _number("beta", given.get("beta"), float, 1e-6, 100.0)
        resolved["beta"] = 0.1 if beta is None else beta
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.match(suffix)):
        raise RequestError("suffix must be 1-64 letters, digits, '-' or '_' (it becomes part of the model name)", "suffix")
    seed = body.get("seed")
    if seed is None:
        seed = random.randint(0, 2**31 - 1)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1:
        raise RequestError("seed must be an integer from 0 to 2147483647", "seed")
    return JobPlan(method={"type": kind, kind: {"hyperparameters": resolved}}, seed=seed, suffix=suffix)


def train_args(method: dict[str, Any], seed: int, settings: FinetuneSettings, *, base_model: str, template: str,
               dataset_dir: str, output_dir: str) -> dict[str, Any]:
    """The `caregpt train` settings of one job (the documented mapping above)."""
    kind = method["type"]
    hp = method[kind]["hyperparameters"]
    args: dict[str, Any] = {
        "logging_steps": 1,
        "save_steps": 1000000,
        **settings.extra_train_args,
        "stage": "sft" if kind == "supervised" else "dpo",
        "do_train": True,
        "model_name_or_path": base_model,
        "dataset": "train",
        "dataset_dir": dataset_dir,
        "template": template,
        "cutoff_len": settings.cutoff_len,
        "finetuning_type": "lora",
        "lora_rank": settings.lora_rank,
        "lora_target": settings.lora_target,
        "num_train_epochs": float(hp["n_epochs"]),
        "per_device_train_batch_size": hp["batch_size"],
        "learning_rate": settings.base_learning_rate * hp["learning_rate_multiplier"],
        "seed": seed,
        "output_dir": output_dir,
        "overwrite_output_dir": True,
    }
    if kind == "dpo":
        args["dpo_beta"] = hp["beta"]
    if settings.job_num_gpus:
        args["use_gpu"] = True
        args["resources_per_worker"] = {"GPU": settings.job_num_gpus, "CPU": settings.job_num_cpus}
    else:
        args["resources_per_worker"] = {"CPU": settings.job_num_cpus}
    return args
