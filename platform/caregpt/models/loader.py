"""Check and load the base model.

``validate_model`` runs on the driver before any Ray worker starts: it reads only config.json and
builds the architecture on the meta device (no weights, no memory), so a wrong module name, a too
long cutoff_len or a missing adapter fails in seconds instead of after the cluster spun up.
``load_model`` runs in each worker and returns the plain (not yet adapted) Hugging Face model;
:func:`caregpt.models.adapters.apply_finetuning` then decides what trains.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caregpt.config.loader import ConfigError, nearest_key
from caregpt.models.adapters import (
    ADAPTER_CONFIG_NAME,
    adapter_plan,
    find_decoder_layers,
    linear_module_names,
    lora_target_names,
    merge_into_quantized_message,
    unmatched_lora_targets,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

logger = logging.getLogger("caregpt.models.loader")

_VALID_MODEL = "a local Hugging Face model directory containing config.json (e.g. one built by `python -m caregpt.models.tiny`)"
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def _offline() -> bool:
    # Read at call time: huggingface_hub snapshots HF_HUB_OFFLINE when it is first imported.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def _looks_local(name: str) -> bool:
    # Hub ids are `name` or `org/name`; anything else path-like is meant as a directory.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def resolve_model_source(config: Any) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory); ConfigError if unusable."""
    name = config.model.model_name_or_path
    if not name or not str(name).strip():
        raise ConfigError(f"model_name_or_path is not set: pass --model_name_or_path DIR, {_VALID_MODEL}")
    path = Path(str(name)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"model_name_or_path={name!r} is a file; it must be {_VALID_MODEL}")
        if not (path / "config.json").is_file():
            if (path / ADAPTER_CONFIG_NAME).is_file():
                raise ConfigError(
                    f"model_name_or_path={name!r} is a LoRA adapter, not a base model: pass its base model as "
                    f"model_name_or_path and this directory as checkpoint_dir"
                )
            raise ConfigError(f"model_name_or_path={name!r} has no config.json; it must be {_VALID_MODEL}")
        return str(path), True
    if _looks_local(str(name)):
        raise ConfigError(f"model_name_or_path={name!r} does not exist; it must be {_VALID_MODEL}")
    return str(name), False  # a hub id: resolved (cache or hub) when its config is read


def _read_hf_config(config: Any) -> PretrainedConfig:
    from transformers import AutoConfig

    source, local = resolve_model_source(config)
    offline = _offline()
    try:
        return AutoConfig.from_pretrained(
            source, trust_remote_code=config.model.trust_remote_code, local_files_only=offline and not local
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError / OSError / hub errors here
        text = str(exc)
        if "trust_remote_code" in text and not config.model.trust_remote_code:
            raise ConfigError(
                f"model {source!r} ships its own model code; set trust_remote_code: true only if you trust its source"
            ) from None
        if not local and offline:
            raise ConfigError(
                f"model_name_or_path={source!r} is not a local directory and HF_HUB_OFFLINE=1, and it is not in the "
                f"Hugging Face cache; it must be {_VALID_MODEL}"
            ) from None
        raise ConfigError(f"cannot read the model config of {source!r}: {text.splitlines()[0] if text else exc!r}") from None


def _meta_model(hf_config: PretrainedConfig, config: Any) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):  # shapes and module names only: no memory, no weights
            return AutoModelForCausalLM.from_config(hf_config, trust_remote_code=config.model.trust_remote_code)
    except ValueError as exc:
        raise ConfigError(
            f"{config.model.model_name_or_path!r} (model_type {hf_config.model_type!r}) is not a causal language model: {exc}"
        ) from None


def _check_adapter_dirs(adapters: list[str]) -> list[str]:
    problems = []
    for entry in adapters:
        path = Path(entry).expanduser()
        if not path.is_dir():
            problems.append(f"checkpoint_dir entry {entry!r} does not exist (expected an adapter directory with {ADAPTER_CONFIG_NAME})")
        elif not (path / ADAPTER_CONFIG_NAME).is_file():
            hint = (
                "; it holds a full model (config.json): use it as model_name_or_path instead"
                if (path / "config.json").is_file()
                else ""
            )
            problems.append(f"checkpoint_dir entry {entry!r} is not an adapter directory: no {ADAPTER_CONFIG_NAME}{hint}")
    return problems


def validate_model(config: Any) -> dict[str, Any]:
    """Driver-side checks of the model settings (no weights loaded). Raises ConfigError listing every problem."""
    ft, mc = config.finetune, config.model
    problems: list[str] = []
    if mc.quantization_bit and ft.finetuning_type != "lora":
        problems.append(
            f"quantization_bit={mc.quantization_bit} needs finetuning_type: lora (QLoRA trains adapters on a frozen "
            f"quantised base), got finetuning_type={ft.finetuning_type!r}; drop quantization_bit or use lora"
        )
    adapters = list(mc.checkpoint_dir or [])
    problems += _check_adapter_dirs(adapters)
    to_merge, resume_from = adapter_plan(config)
    if mc.quantization_bit and to_merge:
        problems.append(merge_into_quantized_message(to_merge, mc.quantization_bit))

    try:
        hf_config = _read_hf_config(config)
        meta = _meta_model(hf_config, config)
    except ConfigError as exc:
        raise ConfigError("; ".join([str(exc), *problems])) from None

    text_config = hf_config.get_text_config()
    _, layers = find_decoder_layers(meta)
    linear = linear_module_names(meta)
    max_positions = next((getattr(text_config, k) for k in _POSITION_KEYS if getattr(text_config, k, None)), None)

    if ft.finetuning_type == "lora" and resume_from is None:  # a resumed adapter keeps its own targets
        targets = list(ft.lora_target)
        if [t.lower() for t in targets] != ["all"]:
            bad = unmatched_lora_targets(targets, lora_target_names(meta))
            if "all" in (t.lower() for t in targets):
                problems.append(f"lora_target `all` cannot be combined with other names (got {targets})")
            elif bad:
                hints = [f"{b!r} (did you mean {h!r}?)" if (h := nearest_key(b, linear)) else repr(b) for b in bad]
                problems.append(
                    f"lora_target {', '.join(hints)} matches no module of {hf_config.model_type!r}; valid linear "
                    f"module names: {', '.join(linear)} (or `all` for every linear layer except the LM head)"
                )
    if max_positions is not None and config.data.cutoff_len > max_positions:
        problems.append(
            f"cutoff_len={config.data.cutoff_len} is larger than the model's max_position_embeddings={max_positions}; "
            f"use cutoff_len <= {max_positions}"
        )
    if ft.finetuning_type == "freeze" and not 1 <= ft.num_layer_trainable <= len(layers):
        problems.append(
            f"num_layer_trainable={ft.num_layer_trainable} but the model has {len(layers)} decoder layers; "
            f"use 1..{len(layers)}"
        )
    if problems:
        raise ConfigError("; ".join(problems))
    return {
        "model_type": hf_config.model_type,
        "num_layers": len(layers),
        "max_position_embeddings": max_positions,
        "linear_modules": linear,
    }


def resolve_dtype(config: Any, device: torch.device, *, for_training: bool = True) -> torch.dtype:
    """Weight dtype: fp32 on CPU; on GPU what the precision flags ask for, else a safe default."""
    import torch

    if device.type != "cuda":
        return torch.float32  # CPU kernels are fastest and exact in fp32; half types gain little here
    if config.train.bf16:
        return torch.bfloat16
    if config.train.fp16:
        return torch.float16
    bf16_ok = torch.cuda.is_bf16_supported()
    if not for_training:
        return torch.bfloat16 if bf16_ok else torch.float16
    if config.finetune.finetuning_type == "lora":
        # The base is frozen, so bf16 costs no accuracy; fp16 without loss scaling (off unless
        # fp16 is set) could underflow the adapter gradients, so fall back to fp32 instead.
        return torch.bfloat16 if bf16_ok else torch.float32
    return torch.float32  # full / freeze update real weights: keep fp32 master weights


def _quantization_config(config: Any, device: torch.device):
    import torch
    from transformers import BitsAndBytesConfig

    bits = config.model.quantization_bit
    if device.type == "cuda":
        compute = torch.float16 if config.train.fp16 or not torch.cuda.is_bf16_supported() else torch.bfloat16
    else:
        compute = torch.float32
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.model.quantization_type,
            bnb_4bit_use_double_quant=config.model.double_quantization,
            bnb_4bit_compute_dtype=compute,
        ), compute
    return BitsAndBytesConfig(load_in_8bit=True), compute


def _fix_bnb_cpu_inference(model: PreTrainedModel, for_training: bool) -> None:
    # bitsandbytes 0.50 repacks 4-bit weights for its AVX512-BF16 CPU kernel on the first
    # no-grad eval forward. The repack needs in_features % blocksize == 0 and out_features % 32 == 0
    # (it crashes otherwise, e.g. the tiny model's 352-wide MLP) and keeps the weights in that
    # format, which the training path does not expect. Use the portable path where it cannot apply.
    for module in model.modules():
        if type(module).__name__ != "Linear4bit" or not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        state = getattr(module.weight, "quant_state", None)
        fits = state is not None and module.in_features % state.blocksize == 0 and module.out_features % 32 == 0
        if for_training or not fits:
            module.support_avx512bf16_for_cpu = False


def load_model(config: Any, *, for_training: bool = True, device: str | None = None, reward_head: bool = False) -> PreTrainedModel:
    """The base model from config.model, on `device` (default: cuda if available, else cpu).

    The only place model weights are read (training, and inference through
    :mod:`caregpt.models.inference`): safetensors only, remote code only when asked.
    reward_head: load it as a sequence classifier with one output (the rm stage's reward model);
    the new `score` head is initialised here and trained with the adapters.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    source, local = resolve_model_source(config)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mc = config.model
    if mc.attn_implementation.startswith("flash_attention") and dev.type != "cuda":
        raise ConfigError(f"attn_implementation={mc.attn_implementation!r} needs a GPU; use sdpa on {dev.type}")
    kwargs: dict[str, Any] = {
        "trust_remote_code": bool(mc.trust_remote_code),  # never implicitly
        "attn_implementation": mc.attn_implementation,
        "dtype": resolve_dtype(config, dev, for_training=for_training),
        "local_files_only": _offline() and not local,
        "use_safetensors": True,  # pickle weight files run code when loaded: never read them
    }
    if mc.quantization_bit:
        if for_training and config.finetune.finetuning_type != "lora":
            raise ConfigError(f"quantization_bit={mc.quantization_bit} needs finetuning_type: lora (QLoRA)")
        kwargs["quantization_config"], kwargs["dtype"] = _quantization_config(config, dev)
        kwargs["device_map"] = {"": str(dev)}  # bitsandbytes quantises while loading, straight onto the device
    try:
        if reward_head:
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, **kwargs)
            if model.config.pad_token_id is None:
                # the classifier reads the score at the last non-pad token, so it must know the pad id
                model.config.pad_token_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else (model.config.eos_token_id or [0])[0]
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ImportError as exc:  # bitsandbytes / flash-attn missing or unusable on this machine
        raise ConfigError(f"cannot load {source!r} with these settings: {exc}") from None
    except OSError as exc:
        if "safetensors" in str(exc) or ".bin" in str(exc):
            raise ConfigError(f"{source!r} has no safetensors weights (pickled .bin files are refused: they run code when loaded): {str(exc).splitlines()[0]}") from None
        raise
    if mc.quantization_bit:
        _fix_bnb_cpu_inference(model, for_training)
    else:
        model.to(dev)

    if for_training:
        model.config.use_cache = False  # the cache only costs memory when every step sees a whole sequence
        if config.train.gradient_checkpointing:
            # use_reentrant=False lets gradients reach adapters even when the block inputs do not require grad
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if config.finetune.finetuning_type != "full" and not getattr(model, "_require_grads_hooks", None):
                model.enable_input_require_grads()  # frozen embeddings: make checkpointed inputs carry grad
        model.train()
    else:
        model.eval()
    logger.info(
        "loaded %s (%s, %s%s) on %s",
        source,
        type(model).__name__,
        str(kwargs["dtype"]).removeprefix("torch."),
        f", {mc.quantization_bit}-bit" if mc.quantization_bit else "",
        dev,
    )
    return model


def load_encoder(model_dir: str) -> PreTrainedModel:
    """A local text encoder (the knowledge base's embedding model) in eval mode: safetensors only, no remote code."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True, trust_remote_code=False).eval()
