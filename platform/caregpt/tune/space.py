"""The `tune:` section of a training YAML: parsed and validated on the driver, before Ray starts.

A tune YAML is a normal training YAML (the base config every trial starts from) plus one mapping:

    tune:
      search_space:
        lora_rank: {type: grid, values: [4, 8]}
        learning_rate: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
        alpha_over_rank: 2          # derived: lora_alpha = 2 x lora_rank in every trial
      num_samples: 1
      metric: eval_loss
      scheduler: {type: asha, grace_period: 2, reduction_factor: 2}

Nothing here imports Ray: a bad search space is reported in a second, naming the key and a fix.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError, build_config, nearest_key, read_yaml, resolve_paths, split_argv
from caregpt.config.specs import GROUPS, RunConfig, field_meta, key_owner

# type -> the spec fields it takes; `high` is inclusive for the integer types (Ray's is exclusive)
SPACE_TYPES = {
    "choice": ("values",),
    "grid": ("values",),
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "randint": ("low", "high"),
    "lograndint": ("low", "high"),
}
SEARCH_ALGS = ("random", "optuna", "hyperopt")
SCHEDULERS = ("asha", "fifo")
DERIVED_KEYS = ("alpha_over_rank",)

TUNE_KEYS = {
    "search_space": "mapping config key -> {type: choice|grid|uniform|loguniform|randint|lograndint, values: [..] | low: .., high: ..}; "
    "a bare list is a grid; `alpha_over_rank: K` (or a spec) sets lora_alpha = K x lora_rank per trial",
    "num_samples": "trials to sample (default 1); with grid keys, every grid point is run num_samples times",
    "metric": "metric to optimise, as the stage reports it (default eval_loss; eval_* metrics need val_size > 0)",
    "mode": "min or max (default min)",
    "max_concurrent_trials": "trials running at once (default: as many as the cluster's resources fit)",
    "scheduler": "asha (default) or fifo, or {type: asha, grace_period: STEPS, reduction_factor: R} (defaults: first eval, 2)",
    "search_alg": "random (default; grid + random sampling), optuna or hyperopt (need the package; no grid keys)",
    "name": "experiment name (default: the base output_dir's folder name); the same name resumes the experiment",
    "storage_path": "where Ray Tune keeps the experiment (default: base storage_path, else OUTPUT_DIR/ray_tune)",
    "max_failures": "times a failed trial is retried before it is marked errored (default 0); the experiment goes on",
}

_DATA_REASON = "changes the tokenized data (prepared once for all trials) or the model it comes from"


def _why_fixed(name: str) -> str | None:
    """Why a key cannot be searched, from its field metadata (config/specs.py): one declaration for every reader."""
    meta = field_meta(name)
    if meta.get("tune"):
        return meta["tune"]
    if meta["role"] == "data":
        return _DATA_REASON
    if meta["role"] == "operational":
        return "does not change what is trained (or sets where a trial runs): set it once in the base config"
    return None


FIXED_KEYS = {name: why for name in key_owner() if (why := _why_fixed(name))}


@dataclass
class ParamSpec:
    key: str
    type: str
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None


@dataclass
class TuneSpec:
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    alpha_over_rank: float | None = None  # a fixed ratio; a searched one lives in search_space
    num_samples: int = 1
    metric: str = "eval_loss"
    mode: str = "min"
    max_concurrent_trials: int | None = None
    scheduler: str = "asha"
    grace_period: int | None = None  # optimizer steps; None: the first evaluation
    reduction_factor: float = 2.0
    search_alg: str = "random"
    name: str | None = None
    storage_path: str | None = None
    max_failures: int = 0

    def grid_size(self) -> int:
        return math.prod(len(p.values or []) for p in self.search_space.values() if p.type == "grid")

    def trial_count(self) -> int:
        return self.grid_size() * self.num_samples


def _is_int_key(key: str) -> bool:
    annotation = GROUPS[key_owner()[key]].model_fields[key].annotation
    args = set(typing.get_args(annotation)) or {annotation}
    return int in args and float not in args


def _check_value(base: dict[str, tuple[Any, str]], key: str, value: Any, where: str) -> Any:
    """Each candidate value must make a valid config on its own: fail here, not in trial 7 an hour later.

    Returns the value as the config reads it (YAML's `1e-4` string -> 0.0001), so tables and
    samplers see numbers; list keys come back as `a,b` text (Tune walks lists as nested spaces).
    """
    if key in DERIVED_KEYS:
        value = _number(value, where)
        if value <= 0:
            raise ConfigError(f"{where}: {key} must be a positive number, got {value!r}")
        return value
    try:
        canonical = build_config({**base, key: (value, where)}).flat()[key]
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return ",".join(map(str, canonical)) if isinstance(canonical, list) else canonical


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return value


def parse_param(key: str, raw: Any, base: dict[str, tuple[Any, str]]) -> ParamSpec:
    where = f"tune.search_space.{key}"
    if isinstance(raw, list):
        raw = {"type": "grid", "values": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected {{type: ..., values: [...]}} or {{type: ..., low: .., high: ..}}, got {raw!r}")
    unknown = [k for k in raw if k not in ("type", "values", "low", "high")]
    if unknown:
        hint = nearest_key(str(unknown[0]), ["type", "values", "low", "high"])
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}" + (f"; did you mean {hint!r}?" if hint else "; fields are type, values, low, high"))
    kind = str(raw.get("type", "")).lower()
    if kind not in SPACE_TYPES:
        hint = nearest_key(kind, list(SPACE_TYPES))
        raise ConfigError(f"{where}: type {raw.get('type')!r} is not one of {', '.join(SPACE_TYPES)}" + (f" (did you mean {hint!r}?)" if hint else ""))
    missing = [f for f in SPACE_TYPES[kind] if f not in raw]
    extra = [f for f in ("values", "low", "high") if f in raw and f not in SPACE_TYPES[kind]]
    if missing or extra:
        raise ConfigError(f"{where}: type {kind} takes {' and '.join(SPACE_TYPES[kind])}" + (f"; missing {', '.join(missing)}" if missing else f"; remove {', '.join(extra)}"))
    if kind in ("choice", "grid"):
        values = raw["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values must be a non-empty list, got {values!r}")
        values = [_check_value(base, key, value, f"{where} value {value!r}") for value in values]
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"{where}.values repeats a value: {values}")
        return ParamSpec(key, kind, values=values)
    low, high = _number(raw["low"], f"{where}.low"), _number(raw["high"], f"{where}.high")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(f"{where}: {kind} needs low > 0, got {low}")
    integer_key = key not in DERIVED_KEYS and _is_int_key(key)
    if kind.endswith("randint"):
        if low != int(low) or high != int(high):
            raise ConfigError(f"{where}: {kind} takes whole-number low and high, got {low} and {high}")
        low, high = int(low), int(high)
    elif integer_key:
        raise ConfigError(f"{where}: {key} is an integer key; use type randint or lograndint instead of {kind}")
    for value in (low, high):
        _check_value(base, key, value, f"{where} bound {value!r}")
    return ParamSpec(key, kind, low=low, high=high)


def _int(raw: dict[str, Any], key: str, default: Any, minimum: int) -> Any:
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"tune.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _scheduler(raw: Any, spec: TuneSpec) -> None:
    if raw is None:
        return
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"tune.scheduler: expected asha, fifo or {{type: asha, grace_period: N, reduction_factor: R}}, got {raw!r}")
    for key in raw:
        if key not in ("type", "grace_period", "reduction_factor"):
            hint = nearest_key(str(key), ["type", "grace_period", "reduction_factor"])
            raise ConfigError(f"tune.scheduler: unknown field {key!r}" + (f"; did you mean {hint!r}?" if hint else "; fields are type, grace_period, reduction_factor"))
    kind = str(raw.get("type", "asha")).lower()
    if kind not in SCHEDULERS:
        raise ConfigError(f"tune.scheduler.type must be one of {', '.join(SCHEDULERS)}, got {raw.get('type')!r}")
    spec.scheduler = kind
    spec.grace_period = _int({"grace_period": raw.get("grace_period")}, "grace_period", None, 1)
    factor = _number(raw.get("reduction_factor", 2), "tune.scheduler.reduction_factor")
    if factor <= 1:
        raise ConfigError(f"tune.scheduler.reduction_factor must be > 1 (the fraction 1/R of trials kept at each rung), got {factor}")
    spec.reduction_factor = float(factor)


def parse_tune(raw: Any, base: dict[str, tuple[Any, str]]) -> TuneSpec:
    """raw: the `tune:` mapping; base: the base config values (key -> (value, source)), already valid."""
    if not isinstance(raw, dict):
        raise ConfigError(f"tune: expected a mapping with search_space, metric, ...; got {raw!r}")
    for key in raw:
        if key not in TUNE_KEYS:
            hint = nearest_key(str(key), list(TUNE_KEYS))
            raise ConfigError(f"unknown tune key {key!r}" + (f"; did you mean {hint!r}?" if hint else f"; tune keys: {', '.join(TUNE_KEYS)}"))
    space = raw.get("search_space")
    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.search_space is required: a mapping of config key -> {type: ..., values | low, high}")
    config = build_config(base)
    spec = TuneSpec()
    owners = key_owner()
    for key, value in space.items():
        key = str(key)
        if key not in owners and key not in DERIVED_KEYS:
            hint = nearest_key(key, [*owners, *DERIVED_KEYS])
            raise ConfigError(f"tune.search_space: unknown config key {key!r}" + (f"; did you mean {hint!r}?" if hint else "; run `caregpt train --help` for the keys"))
        if key in FIXED_KEYS:
            raise ConfigError(f"tune.search_space.{key} cannot be searched: it {FIXED_KEYS[key]}")
        if key == "alpha_over_rank" and not isinstance(value, (dict, list)):
            spec.alpha_over_rank = float(_check_value(base, key, value, "tune.search_space.alpha_over_rank"))
            continue
        spec.search_space[key] = parse_param(key, value, base)
    if "alpha_over_rank" in space and "lora_alpha" in space:
        raise ConfigError("tune.search_space: alpha_over_rank derives lora_alpha; search one of lora_alpha and alpha_over_rank, not both")
    lora_keys = [k for k in space if k.startswith("lora_") or k == "alpha_over_rank"]
    if lora_keys and "finetuning_type" not in space and config.finetune.finetuning_type != "lora":
        raise ConfigError(f"tune.search_space: {', '.join(lora_keys)} only act with finetuning_type lora (the base config has {config.finetune.finetuning_type!r})")
    spec.num_samples = _int(raw, "num_samples", 1, 1)
    spec.max_concurrent_trials = _int(raw, "max_concurrent_trials", None, 1)
    spec.max_failures = _int(raw, "max_failures", 0, 0)
    spec.metric = str(raw.get("metric", "eval_loss")).strip()
    if not spec.metric:
        raise ConfigError("tune.metric must name a metric the stage reports, e.g. eval_loss")
    spec.mode = str(raw.get("mode", "min")).lower()
    if spec.mode not in ("min", "max"):
        raise ConfigError(f"tune.mode must be min or max, got {raw.get('mode')!r}")
    if spec.metric.startswith("eval_") and not config.data.val_size:
        raise ConfigError(f"tune.metric={spec.metric} is measured on held-out data, but val_size is 0: set val_size (e.g. 0.1) in the base config")
    _scheduler(raw.get("scheduler"), spec)
    spec.search_alg = str(raw.get("search_alg", "random")).lower()
    if spec.search_alg not in SEARCH_ALGS:
        raise ConfigError(f"tune.search_alg must be one of {', '.join(SEARCH_ALGS)}, got {raw.get('search_alg')!r}")
    if spec.search_alg != "random":
        grids = [k for k, p in spec.search_space.items() if p.type == "grid"]
        if grids:
            raise ConfigError(f"tune.search_alg={spec.search_alg} cannot run grid keys ({', '.join(grids)}): use type choice, or search_alg random")
    for key in ("name", "storage_path"):
        if raw.get(key) is not None:
            setattr(spec, key, str(raw[key]))
    if spec.name is not None and ("/" in spec.name or not spec.name.strip()):
        raise ConfigError(f"tune.name must be a plain folder name, got {spec.name!r}")
    return spec


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Local paths made absolute against this directory (the one rule of config.loader.resolve_paths):
    Tune runs each trial in a working directory of its own."""
    config = build_config({k: (v, "base config") for k, v in values.items()})
    plain, resolved = config.flat(), resolve_paths(config).flat()
    return {k: resolved[k] if k in resolved and resolved[k] != plain[k] else v for k, v in values.items()}


def load_tune_config(config_path: str | None, overrides: dict[str, Any] | None = None) -> tuple[RunConfig, dict[str, Any], TuneSpec]:
    """(base RunConfig, base flat values as given, TuneSpec). Overrides: flat keys, or `tune.KEY` for tune scalars."""
    data = read_yaml(config_path) if config_path else {}
    raw_tune = dict(data.pop("tune", None) or {})
    base = {str(k): (v, f"from {config_path}") for k, v in data.items()}
    for key, value in (overrides or {}).items():
        if key.startswith("tune."):
            raw_tune[key[5:]] = _scalar(value)
        else:
            base[key] = (value, "from the command line")
    config = build_config(base)
    spec = parse_tune(raw_tune, base)
    return config, {k: v for k, (v, _) in base.items()}, spec


def load_tune_values(values: dict[str, Any], source: str) -> tuple[RunConfig, dict[str, Any], TuneSpec]:
    """A tune config given as values (the pipeline's tune step): base keys plus a `tune` mapping."""
    values = dict(values)
    raw_tune = dict(values.pop("tune", None) or {})
    base = {str(k): (v, f"from {source}") for k, v in values.items()}
    config = build_config(base)
    return config, {k: v for k, (v, _) in base.items()}, parse_tune(raw_tune, base)


def load_from_argv(argv: list[str]) -> tuple[RunConfig, dict[str, Any], TuneSpec]:
    try:
        config_path, _, flags = split_argv(argv)
    except ConfigError as exc:
        raise ConfigError(f"expected exactly one CONFIG.yaml with a tune: section ({exc})") from None
    if config_path is None:
        raise ConfigError("expected exactly one CONFIG.yaml with a tune: section, got none")
    return load_tune_config(config_path, flags)


def _scalar(value: Any) -> Any:
    """`--tune.num_samples 4` arrives as text: read it as YAML would."""
    import yaml

    return yaml.safe_load(value) if isinstance(value, str) else value


def trial_values(base_values: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """One trial's flat config: the base values, the sampled ones on top, lora_alpha derived when asked."""
    values = {**base_values, **{k: v for k, v in params.items() if k not in DERIVED_KEYS}}
    ratio = params.get("alpha_over_rank")
    if ratio is not None:
        rank = values.get("lora_rank", RunConfig().finetune.lora_rank)
        values["lora_alpha"] = float(ratio) * int(rank)
    return values
