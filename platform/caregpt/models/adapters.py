"""Which parameters train: LoRA / QLoRA adapters, the last layers (freeze), or everything (full).

``apply_finetuning(load_model(config), config)`` is what a training worker runs. Adapters listed in
``checkpoint_dir`` are handled as in CareGPT: with ``resume_lora_training`` the last one keeps
training, otherwise they are all merged into the base and a fresh LoRA goes on top (DPO after SFT).
For ``freeze`` / ``full`` any listed adapters are merged into the base before training starts.

The structural helpers (:func:`find_decoder_layers`, :func:`linear_module_names`,
:func:`lora_target_names`, :func:`adapter_plan`) also work on a meta-device model, so the driver's
``validate_model`` uses the very same rules the workers apply.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caregpt.config.loader import ConfigError
from caregpt.models.inference import ADAPTER_CONFIG_NAME, attach_adapters, quiet_peft

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torch import nn

logger = logging.getLogger("caregpt.models.adapters")

# Class names rather than isinstance checks so that nothing here needs bitsandbytes imported.
_QUANTIZED_LINEAR = ("Linear4bit", "Linear8bitLt")
_LINEAR = ("Linear", "Conv1D", *_QUANTIZED_LINEAR)  # Conv1D: GPT-2 style projections
_EMBEDDING = ("Embedding",)


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder block list: the nn.ModuleList of same-type blocks holding the most parameters.

    Searching generically (instead of hard-coding ``model.model.layers``) covers GPT-2's
    ``transformer.h``, PEFT wrappers and multimodal models whose vision tower has its own,
    smaller, block list.
    """
    from torch import nn

    best: tuple[tuple[int, int], str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = (sum(p.numel() for p in module.parameters()), len(module))
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of decoder blocks (nn.ModuleList) to freeze")
    return best[1], best[2]


def _output_embedding_ids(model: nn.Module) -> set[int]:
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    return {id(out)} if out is not None else set()


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names of the linear layers that ``lora_target: all`` adapts (not the output layer).

    This mirrors PEFT's ``all-linear``, which skips the LM head: adapting it would train a
    vocabulary-sized projection and, with tied embeddings, the input embeddings too.
    """
    skip = _output_embedding_ids(model)
    names = [
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if type(module).__name__ in _LINEAR and id(module) not in skip and name
    ]
    return list(dict.fromkeys(names))  # first-seen order: q, k, v, o, gate, up, down


def lora_target_names(model: nn.Module) -> list[str]:
    """Full names of every module PEFT can put a LoRA on (linear layers and embeddings, LM head included)."""
    return [name for name, module in model.named_modules() if name and type(module).__name__ in _LINEAR + _EMBEDDING]


def unmatched_lora_targets(targets: list[str], module_names: list[str]) -> list[str]:
    """Targets that no module matches, with PEFT's rule: the full name equals it or ends with `.target`."""
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names)]


def adapter_plan(config: Any) -> tuple[list[str], str | None]:
    """(adapters to merge into the base, adapter to keep training) for config.model.checkpoint_dir."""
    adapters = list(config.model.checkpoint_dir or [])
    if adapters and config.finetune.finetuning_type == "lora" and config.finetune.resume_lora_training:
        return adapters[:-1], adapters[-1]
    return adapters, None


def merge_into_quantized_message(adapters: list[str], bits: int) -> str:
    return (
        f"cannot merge adapter(s) {adapters} into a {bits}-bit quantised base model: merging needs "
        "full-precision weights. Merge them first (load the base without quantization_bit and save it merged "
        "with save_trained(..., merge=True), i.e. the export step), then train QLoRA on the merged directory; "
        "or set resume_lora_training: true with a single adapter to keep training it."
    )


def is_quantized(model: nn.Module) -> bool:
    if getattr(model, "is_quantized", False):
        return True
    return any(type(m).__name__ in _QUANTIZED_LINEAR for m in model.modules())


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts; tied weights count once, 4-bit weights count unpacked."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if type(param).__name__ == "Params4bit":
            # Two 4-bit values per byte of storage (storage may be uint8 or a wider dtype).
            count *= 2 * param.element_size()
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def _log_trainable(model: nn.Module) -> None:
    trainable, total = trainable_parameters(model)
    pct = 100.0 * trainable / total if total else 0.0
    logger.info("trainable params: %s || all params: %s || trainable%%: %.4f", f"{trainable:,}", f"{total:,}", pct)


def _merge_adapters(model: nn.Module, adapters: list[str]) -> nn.Module:
    """The adapters folded into the base weights (the inference loader's merge, safe_merge)."""
    return attach_adapters(model, adapters, merge=True)


def _lora_config(config: Any, reward_head: bool = False):
    from peft import LoraConfig, TaskType

    ft = config.finetune
    targets = list(ft.lora_target)
    alpha = ft.effective_lora_alpha
    return LoraConfig(
        r=ft.lora_rank,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,  # keeps adapter_config.json tidy
        lora_dropout=ft.lora_dropout,
        target_modules="all-linear" if [t.lower() for t in targets] == ["all"] else targets,
        bias="none",
        # SEQ_CLS makes peft train and save the new score head along with the adapters
        task_type=TaskType.SEQ_CLS if reward_head else TaskType.CAUSAL_LM,
    )


def _apply_lora(model: nn.Module, config: Any, resume_from: str | None) -> nn.Module:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        # Freezes the base, upcasts norms / embeddings to fp32 for stable adapter training.
        # Activation checkpointing was already switched on by load_model (without the
        # deprecated transformers entry point this would call), so it is not requested here.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if resume_from is not None:
        # The saved adapter_config.json (rank, alpha, targets) wins over config.finetune.
        model = attach_adapters(model, [resume_from], merge=False, trainable=True)
        logger.info("resuming LoRA training from %s", resume_from)
        return model
    with quiet_peft():
        return get_peft_model(model, _lora_config(config, reward_head=hasattr(model, "score")))


def _apply_freeze(model: nn.Module, config: Any) -> nn.Module:
    name, layers = find_decoder_layers(model)
    n = config.finetune.num_layer_trainable
    if not 1 <= n <= len(layers):
        raise ConfigError(f"num_layer_trainable={n} but the model has {len(layers)} decoder layers: use 1..{len(layers)}")
    for param in model.parameters():
        param.requires_grad = False
    for block in layers[len(layers) - n :]:
        for param in block.parameters():
            param.requires_grad = True
    head = getattr(model, "score", None)
    for param in head.parameters() if head is not None else ():
        param.requires_grad = True  # a reward model's new head always trains
    logger.info("freeze: training the last %d of %d blocks in %s", n, len(layers), name)
    return model


def apply_finetuning(model: nn.Module, config: Any) -> nn.Module:
    """Merge / load checkpoint_dir adapters and set what trains; returns the (possibly wrapped) model."""
    kind = config.finetune.finetuning_type
    quantized = is_quantized(model)
    if quantized and kind != "lora":
        raise ConfigError(f"quantization_bit is set but finetuning_type={kind!r}: a quantised model only trains LoRA adapters (QLoRA)")
    to_merge, resume_from = adapter_plan(config)
    if to_merge and quantized:
        bits = 4 if getattr(model, "is_loaded_in_4bit", False) else 8
        raise ConfigError(merge_into_quantized_message(to_merge, bits))
    model = _merge_adapters(model, to_merge)

    if kind == "lora":
        model = _apply_lora(model, config, resume_from)
    elif kind == "freeze":
        model = _apply_freeze(model, config)
    elif kind == "full":
        for param in model.parameters():
            param.requires_grad = True
    else:  # the config spec only allows the three above
        raise ConfigError(f"unknown finetuning_type {kind!r}; use lora, freeze or full")
    _log_trainable(model)
    return model


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.iterdir() if p.is_file()}


def save_trained(model: nn.Module, output_dir: str | Path, *, merge: bool = False) -> list[str]:
    """Save the trained weights as safetensors; returns the names of the files written.

    Adapters: adapter_model.safetensors + adapter_config.json (+ PEFT's README.md). With
    ``merge=True`` the adapters are folded into the base *in place* (call it last) and a full
    model.safetensors is written instead. freeze / full: model.safetensors + config files.
    """
    from peft import PeftModel

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    before = _snapshot(out)
    if isinstance(model, PeftModel) and merge:
        if is_quantized(model):
            raise ConfigError(
                "cannot merge adapters into a quantised (QLoRA) base: save the adapter (merge=False), then merge it "
                "into the base loaded without quantization_bit (the export step)"
            )
        model = model.merge_and_unload(safe_merge=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(str(out), safe_serialization=True)
    else:
        # Training turns the KV cache off; the saved config is for inference, where it must be on.
        use_cache = model.config.use_cache
        model.config.use_cache = True
        try:
            model.save_pretrained(str(out))
        finally:
            model.config.use_cache = use_cache
    after = _snapshot(out)
    written = sorted(name for name, stamp in after.items() if before.get(name) != stamp)
    pickled = [name for name in written if name.endswith(".bin")]
    if pickled:  # pickle files execute code when loaded: never ship them
        raise RuntimeError(f"refusing pickle weight files {pickled} in {out}; expected safetensors only")
    logger.info("saved %s to %s", ", ".join(written), out)
    return written
