"""Load what a model replica serves: the tokenizer, the base model (with checkpoint_dir merged), adapters.

The base and its checkpoint_dir adapters go through :mod:`caregpt.models.inference`, the one
inference loader (device, dtype, quantisation, safetensors only, no remote code unless allowed). An adapter requested by name is
merged into its own copy of the base: generation then runs at full speed with no per-token
adapter cost, at the price of one model copy per loaded adapter (bounded by
``max_loaded_adapters`` and unloaded least-recently-used first). That suits the small models the
transformers engine is for; the vLLM engine keeps one base and applies LoRA per request instead.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError, load_config
from caregpt.serve.config import ServeConfig

logger = logging.getLogger("caregpt.serve.loading")


def run_config(config: ServeConfig):
    """The RunConfig the shared model loader takes, built from the serve settings."""
    values: dict[str, Any] = {
        "model_name_or_path": config.model_name_or_path,
        "checkpoint_dir": config.checkpoint_dir or None,
        "trust_remote_code": config.trust_remote_code,
        "quantization_bit": config.quantization_bit,
        "attn_implementation": config.attn_implementation,
        # only the model keys matter; `full` skips the LoRA-target checks, QLoRA needs `lora`
        "finetuning_type": "lora" if config.quantization_bit else "full",
        "lora_target": "all",
    }
    return load_config(None, values)


def inference_spec(config: ServeConfig, device: str | None = None):
    """The shared inference loader's spec for the served base model."""
    from caregpt.models.inference import InferenceSpec

    return InferenceSpec(
        model_name_or_path=config.model_name_or_path,
        adapters=tuple(config.checkpoint_dir or ()),
        template=config.template or None,
        quantization_bit=config.quantization_bit,
        trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation,
        device=device,
    )


def load_tokenizer(config: ServeConfig):
    from caregpt.models.inference import load_tokenizer as load

    return load(config.model_name_or_path, trust_remote_code=config.trust_remote_code)


def load_base_model(config: ServeConfig, device: str | None = None) -> Any:
    """The served base model in eval mode, checkpoint_dir adapters merged in order."""
    from caregpt.models.inference import load_inference_model
    from caregpt.models.loader import validate_model

    validate_model(run_config(config))  # a wrong path or a non-adapter checkpoint_dir fails here with one clear message
    return load_inference_model(inference_spec(config, device))


def adapter_model(base: Any, adapter_dir: Path) -> Any:
    """A copy of the base with one adapter merged (the base itself stays untouched for other requests)."""
    import torch

    from caregpt.models.inference import attach_adapters

    with torch.no_grad():
        copy_ = copy.deepcopy(base)
    return attach_adapters(copy_, [str(adapter_dir)], merge=True).eval()


def preflight(config: ServeConfig) -> None:
    """Cheap checks on the driver before any replica starts: paths exist and are what they claim to be."""
    from caregpt.models.inference import check_adapter_dir
    from caregpt.models.loader import resolve_model_source

    resolve_model_source(run_config(config))  # ConfigError naming the problem
    for adapter in config.checkpoint_dir or []:
        check_adapter_dir(adapter)  # an adapter directory with safetensors weights, as the replicas will load it
    if config.adapters_dir and not Path(config.adapters_dir).expanduser().is_dir():
        raise ConfigError(f"adapters_dir {config.adapters_dir!r} is not a directory")
    if config.engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:  # the replicas may run elsewhere, with vllm installed
            logger.warning("engine: vllm, but vllm is not installed here; the model replicas need it (pip install vllm)")
