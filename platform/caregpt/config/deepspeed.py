"""DeepSpeed ZeRO configs for the Hugging Face Trainer integration.

`ray.deepspeed` is either a ZeRO stage ("2" / "3"), built here, or a path to a user's JSON config,
loaded as-is. Built configs leave every value the Trainer knows better to "auto": HF fills batch
sizes, accumulation and clipping from TrainingArguments when they are created, and the
hidden-size-based bucket sizes once the model is known (`trainer_config_finalize`). A literal value
there would have to be kept in sync with the flags by hand, and HF refuses a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError

BUILT_STAGES = ("2", "3")
OFFLOAD_DEVICES = ("cpu",)

# DeepSpeed's own default. HF has no "auto" for allgather_bucket_size (it only derives
# reduce_bucket_size and the stage-3 sizes from hidden_size), so a number is needed here.
ALLGATHER_BUCKET_SIZE = 500_000_000

# Mixed-precision Adam keeps 2 B fp16/bf16 weights + 2 B gradients + 12 B fp32 master weights,
# momentum and variance per parameter (the ZeRO paper's 2 + 2 + K, K = 12).
_WEIGHT_BYTES, _GRAD_BYTES, _OPTIMIZER_BYTES = 2, 2, 12
# Model states may use this share of a GPU; the rest goes to activations, comm buffers, the CUDA context.
_MODEL_STATE_SHARE = 0.6


def build_deepspeed_config(
    deepspeed: str | None, *, fp16: bool, bf16: bool, offload: str | None = None
) -> dict[str, Any] | None:
    """None -> None; "2" / "3" -> a ZeRO config built here; anything else -> a JSON file's contents.

    `fp16` / `bf16` must be the TrainingArguments flags: they are written explicitly rather than as
    "auto" so the saved config says what ran, and HF reports a mismatch if they disagree.
    `offload="cpu"` moves optimizer states (and for ZeRO-3 the parameters) to pinned CPU memory.
    """
    if fp16 and bf16:
        raise ValueError("fp16 and bf16 are mutually exclusive: choose one")
    if offload is not None and offload not in OFFLOAD_DEVICES:
        raise ValueError(f"offload={offload!r} is not supported; use one of {list(OFFLOAD_DEVICES)} or None")
    if deepspeed is None:
        return None
    value = str(deepspeed).strip()
    if value in BUILT_STAGES:
        return _zero_config(int(value), fp16=fp16, bf16=bf16, offload=offload)
    if value.isdigit():
        # "1" or "0" would otherwise be read as a (missing) file name: say what is valid instead
        raise ConfigError(f"deepspeed={value!r}: the built ZeRO stages are 2 and 3; or give a path to a JSON config")
    if offload is not None:
        # a user's JSON file is returned untouched, so the offload request would be silently lost
        raise ConfigError(f"offload={offload!r} applies to built stages only; set offload_* in {value} instead")
    return load_deepspeed_json(value)


def load_deepspeed_json(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"deepspeed config file not found: {path.resolve()} (or use deepspeed=2 / deepspeed=3)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"deepspeed config {path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"deepspeed config {path}: expected a JSON object at the top, got {type(data).__name__}")
    return data


def _zero_config(stage: int, *, fp16: bool, bf16: bool, offload: str | None) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": stage,
        # overlap gradient reduction with the backward pass; contiguous buffers avoid fragmentation
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        # ZeRO-3 gathers parameters with its own prefetch buckets; this one is a stage 1/2 setting
        zero["allgather_bucket_size"] = ALLGATHER_BUCKET_SIZE
    else:
        zero["stage3_prefetch_bucket_size"] = "auto"
        zero["stage3_param_persistence_threshold"] = "auto"
        # without it a stage-3 save writes only this rank's shard, not a loadable model
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload is not None:
        zero["offload_optimizer"] = {"device": offload, "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": offload, "pin_memory": True}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        # dynamic loss scaling (loss_scale 0) starting at 2**16, halving after 2 overflowing steps
        "fp16": {
            "enabled": fp16,
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "bf16": {"enabled": bf16},
    }


def zero_stage_for(params_billion: float, gpus: int, gpu_mem_gb: float) -> int:
    """Suggest ZeRO-2 or ZeRO-3 for full fine-tuning with Adam in mixed precision.

    Per parameter that is 16 bytes of model state: 2 (16-bit weights) + 2 (gradients) + 12 (fp32
    master weights, momentum, variance). ZeRO-2 shards gradients and optimizer states over the GPUs
    but keeps a full 16-bit copy of the weights on each, so it needs per GPU

        2 * P + (2 + 12) * P / gpus   bytes   (P = parameter count)

    Returns 2 when that fits in 60% of one GPU's memory (the rest is for activations and buffers),
    as ZeRO-2 communicates less; otherwise 3, which also shards the weights (16 * P / gpus). When
    even that does not fit, ZeRO-3 is still the answer, with offload="cpu" or more GPUs.
    Examples: 7B on 8 x 80 GB -> 2 (26 GB); 7B on 4 x 24 GB -> 3; 13B on 8 x 80 GB -> 3 (49 GB).
    LoRA / QLoRA trains few parameters, so this overestimates for them.
    """
    if params_billion <= 0 or gpus < 1 or gpu_mem_gb <= 0:
        got = f"params_billion={params_billion}, gpus={gpus}, gpu_mem_gb={gpu_mem_gb}"
        raise ValueError(f"need params_billion > 0, gpus >= 1 and gpu_mem_gb > 0; got {got}")
    # billions of parameters times bytes per parameter is GB
    zero2_gb = _WEIGHT_BYTES * params_billion + (_GRAD_BYTES + _OPTIMIZER_BYTES) * params_billion / gpus
    return 2 if zero2_gb <= _MODEL_STATE_SHARE * gpu_mem_gb else 3
