"""Does an adapter belong to this base model? Answered on the driver, from file headers only.

Prediction, evaluation and export all load ``base model + checkpoint_dir adapters``. Applied to the
wrong base, a LoRA adapter either crashes deep inside a Ray actor (shapes differ) or, worse, loads
fine and produces nonsense (same shapes, other weights). Both are caught here, before Ray starts:

- shapes: every tensor in ``adapter_model.safetensors`` (read from the safetensors header, no
  weights) must fit the module of the base model it targets (built on the meta device);
- identity: when the base recorded with the adapter (``adapter_config.json``
  ``base_model_name_or_path``, or ``model_name_or_path`` in the ``caregpt_config.yaml`` that training
  writes beside it) exists here and is another directory, its weights must be the same as those of
  the given base (a cheap fingerprint: file sizes plus the first and last MiB of each shard).

Errors name the adapter file, the tensor and what would fit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from caregpt.config.loader import RESOLVED_CONFIG_NAME, ConfigError
from caregpt.models.adapters import ADAPTER_CONFIG_NAME

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torch import nn

logger = logging.getLogger("caregpt.models.adapter_check")

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
RESULTS_NAME = "all_results.json"
_FINGERPRINT_BYTES = 1 << 20
_PEFT_PREFIX = "base_model.model."


@dataclass
class AdapterInfo:
    """One adapter directory and what was recorded beside it."""

    path: Path
    adapter_config: dict[str, Any]
    training_config: dict[str, Any] | None = None  # caregpt_config.yaml, when training wrote one
    metrics: dict[str, Any] | None = None  # all_results.json, when present
    shapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def recorded_base(self) -> str | None:
        return self.adapter_config.get("base_model_name_or_path")

    @property
    def trained_bits(self) -> int | None:
        """quantization_bit the adapter was trained with (QLoRA), if the training config says so."""
        return (self.training_config or {}).get("quantization_bit")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_optional_yaml(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        logger.warning("ignoring %s: not valid YAML (%s)", path, exc)
        return None
    return value if isinstance(value, dict) else None


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header (8-byte length, then JSON); no weights are read."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from None
    return {name: list(meta["shape"]) for name, meta in header.items() if name != "__metadata__"}


def read_adapter(path: str | Path) -> AdapterInfo:
    """The adapter's config, training config, metrics and tensor shapes; ConfigError if it is not one."""
    directory = Path(path).expanduser()
    config_file = directory / ADAPTER_CONFIG_NAME
    if not directory.is_dir():
        raise ConfigError(f"checkpoint_dir entry {str(path)!r} does not exist (expected an adapter directory with {ADAPTER_CONFIG_NAME})")
    if not config_file.is_file():
        hint = "; it holds a full model (config.json): use it as model_name_or_path instead" if (directory / "config.json").is_file() else ""
        raise ConfigError(f"checkpoint_dir entry {str(path)!r} is not an adapter directory: no {ADAPTER_CONFIG_NAME}{hint}")
    weights = directory / ADAPTER_WEIGHTS_NAME
    if not weights.is_file():
        pickled = (directory / "adapter_model.bin").is_file()
        raise ConfigError(
            f"{directory}: no {ADAPTER_WEIGHTS_NAME}"
            + ("; only a pickled adapter_model.bin, which is refused (it can run code when loaded): re-save it as safetensors" if pickled else "")
        )
    metrics_file = directory / RESULTS_NAME
    return AdapterInfo(
        path=directory,
        adapter_config=_read_json(config_file),
        training_config=_read_optional_yaml(directory / RESOLVED_CONFIG_NAME),
        metrics=_read_json(metrics_file) if metrics_file.is_file() else None,
        shapes=safetensors_shapes(weights),
    )


def checkpoint_defaults(adapters: list[str], model: str | None = None) -> dict[str, Any]:
    """Settings a checkpoint recorded, for flags the user left unset (see models.inference.recorded_settings)."""
    from caregpt.models.inference import recorded_settings

    return recorded_settings(adapters, model)


def load_with_checkpoint_defaults(argv: list[str]) -> tuple[Any, set[str]]:
    """`[CONFIG.yaml] [--key value ...]` like load_from_argv, plus checkpoint_defaults for unset keys.

    Returns (RunConfig, the keys the user set or the checkpoint supplied), so a caller can tell a
    chosen value from a spec default.
    """
    from caregpt.config.loader import build_config, parse_flags, read_yaml

    positional, flags = parse_flags(argv)
    yaml_files = [p for p in positional if p.endswith((".yaml", ".yml"))]
    extra = [p for p in positional if p not in yaml_files]
    if extra:
        raise ConfigError(f"unexpected argument(s) {extra}: pass options as --key value, and at most one CONFIG.yaml")
    if len(yaml_files) > 1:
        raise ConfigError(f"one config file at a time, got {yaml_files}")
    values: dict[str, tuple[Any, str]] = {}
    if yaml_files:
        values.update({str(k): (v, f"from {yaml_files[0]}") for k, v in read_yaml(yaml_files[0]).items()})
    values.update({k: (v, "from the command line") for k, v in flags.items()})
    adapters = values.get("checkpoint_dir", values.get("adapter_name_or_path", (None, "")))[0]
    if isinstance(adapters, str):
        adapters = [a.strip() for a in adapters.split(",") if a.strip()]
    adapters = [str(a) for a in adapters or []]
    model = values.get("model_name_or_path", (None, ""))[0]
    for key, value in checkpoint_defaults(adapters, model).items():
        if key not in values:
            where = f"{adapters[-1] if adapters else model}/{RESOLVED_CONFIG_NAME}"
            logger.info("%s=%s (from %s)", key, value, where)
            values[key] = (value, f"from {where}")
    return build_config(values), set(values)


def _module_fits(module: nn.Module, kind: str, shape: list[int]) -> str | None:
    """None when the tensor fits the module, else what the module would need."""
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    if weight is None:
        return f"a {name} without weights"
    if name == "Embedding":
        rows, cols = weight.shape  # (vocabulary, embedding width)
        need = {"lora_embedding_A": (1, rows), "lora_embedding_B": (0, cols)}.get(kind)
    elif name == "Conv1D":  # GPT-2 style: weight is (in, out)
        need = {"lora_A": (1, weight.shape[0]), "lora_B": (0, weight.shape[1])}.get(kind)
    else:  # Linear: weight is (out, in)
        need = {"lora_A": (1, weight.shape[1]), "lora_B": (0, weight.shape[0])}.get(kind)
    if need is None:
        return None  # an adapter kind we do not check (DoRA magnitudes and the like)
    axis, size = need
    if len(shape) != 2 or shape[axis] != size:
        what = "inputs" if axis == 1 else "outputs"
        return f"{name} with {size} {what}"
    return None


def check_shapes(info: AdapterInfo, meta_model: nn.Module, model_name: str) -> None:
    """Every tensor of the adapter must fit its module / parameter in the (meta-device) base model."""
    modules = dict(meta_model.named_modules())
    params = {name: list(p.shape) for name, p in meta_model.named_parameters()}
    problems = []
    for key, shape in sorted(info.shapes.items()):
        name = key.removeprefix(_PEFT_PREFIX)
        kind = next((k for k in ("lora_embedding_A", "lora_embedding_B", "lora_A", "lora_B") if f".{k}" in name), None)
        if kind is not None:
            target = name.split(f".{kind}", 1)[0]
            module = modules.get(target)
            if module is None:
                problems.append(f"{key} targets module {target!r}, which {model_name} does not have")
            elif (need := _module_fits(module, kind, shape)) is not None:
                problems.append(f"{key} has shape {tuple(shape)} but {target!r} in {model_name} is a {need}")
        elif name.rsplit(".", 1)[-1] in ("weight", "bias") and name in params and params[name] != shape:
            # modules_to_save copies (a reward head, resized embeddings) must match exactly
            problems.append(f"{key} has shape {tuple(shape)} but {name!r} in {model_name} is {tuple(params[name])}")
    if problems:
        more = f"; and {len(problems) - 3} more tensor(s)" if len(problems) > 3 else ""
        raise ConfigError(
            f"adapter {info.path / ADAPTER_WEIGHTS_NAME} does not fit model_name_or_path={model_name!r} "
            f"(it was trained on {info.recorded_base!r}, see {info.path / ADAPTER_CONFIG_NAME}): "
            + "; ".join(problems[:3])
            + more
            + ". Pass the base model the adapter was trained on as --model_name_or_path"
        )


def weights_fingerprint(model_dir: str | Path) -> str | None:
    """A cheap identity of a model's weights: names, sizes, first and last MiB of each safetensors file."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha1()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(_FINGERPRINT_BYTES))
            handle.seek(max(0, size - _FINGERPRINT_BYTES))
            digest.update(handle.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()


def check_identity(info: AdapterInfo, model_dir: Path) -> None:
    """The recorded base, where it exists here, must hold the same weights as the given one."""
    recorded = [info.recorded_base, (info.training_config or {}).get("model_name_or_path")]
    for name in dict.fromkeys(r for r in recorded if r):
        candidate = Path(str(name)).expanduser()
        if not (candidate / "config.json").is_file():
            continue
        if candidate.resolve() == model_dir.resolve():
            return
        mine, theirs = weights_fingerprint(model_dir), weights_fingerprint(candidate)
        if mine and theirs and mine != theirs:
            source = info.path / (ADAPTER_CONFIG_NAME if name == info.recorded_base else RESOLVED_CONFIG_NAME)
            raise ConfigError(
                f"adapter {info.path} was trained on {name!r} ({source}), whose weights differ from "
                f"model_name_or_path={str(model_dir)!r}. Pass --model_name_or_path {name} (or the directory it was copied to)"
            )
        return
    if info.recorded_base and Path(str(info.recorded_base)).name != model_dir.name:
        # the recorded base is not here (another machine, a hub id): shapes fit, so only say it
        logger.warning(
            "adapter %s was trained on %r, which is not on this machine; using %s (shapes fit)",
            info.path, info.recorded_base, model_dir,
        )


def check_task(info: AdapterInfo) -> None:
    task = info.adapter_config.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise ConfigError(
            f"{info.path / ADAPTER_CONFIG_NAME}: task_type {task!r} is not a causal language model adapter "
            "(SEQ_CLS is a reward model from the rm stage): it cannot generate text or be merged into a causal LM"
        )


def check_adapters(model_dir: str | Path, adapters: list[str], meta_model: nn.Module) -> list[AdapterInfo]:
    """Read every adapter and check it against the base model; returns what was read."""
    infos = []
    for entry in adapters:
        info = read_adapter(entry)
        check_task(info)
        check_shapes(info, meta_model, str(model_dir))
        if Path(model_dir).is_dir():
            check_identity(info, Path(model_dir))
        infos.append(info)
    return infos


def validate_base_and_adapters(config: Any) -> tuple[str, list[AdapterInfo]]:
    """Driver-side: the base model is readable and every checkpoint_dir adapter fits it.

    Returns (what to pass to from_pretrained, the adapters read). Builds the model on the meta device
    only, so this costs seconds and no memory even for a 70B base.
    """
    from caregpt.models.loader import _meta_model, _read_hf_config, resolve_model_source

    source, _ = resolve_model_source(config)
    meta = _meta_model(_read_hf_config(config), config)
    return source, check_adapters(source, list(config.model.checkpoint_dir or []), meta)
