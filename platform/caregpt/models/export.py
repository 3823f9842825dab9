"""Merge LoRA adapters into their base: a standalone Hugging Face model directory for deployment.

    base (loaded un-quantised, float32) + checkpoint_dir adapters  -> merge_and_unload (safe_merge)
      -> cast to export_dtype -> safetensors shards of at most export_size GB, tokenizer with the
         chat template the model was trained with, generation_config (stops at the template's end
         of turn), caregpt_config.yaml and the manifest caregpt_export.json

Adapters trained with QLoRA merge the same way: the base is loaded in float, not 4-bit, because
merged weights need full precision (the manifest records that the adapter saw a quantised base).
Merging happens in float32 whatever the export dtype, so the only rounding is the final cast.
The directory is written under a temporary name (``.NAME.partial-PID`` beside it) and renamed when
complete: a crash never leaves a half-exported model that looks finished (a killed export may leave
the hidden partial directory behind; it is safe to delete).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from caregpt.config.loader import RESOLVED_CONFIG_NAME, ConfigError
from caregpt.config.specs import RunConfig
from caregpt.models.adapter_check import AdapterInfo, validate_base_and_adapters, weights_fingerprint

logger = logging.getLogger("caregpt.models.export")

MANIFEST_NAME = "caregpt_export.json"
MANIFEST_VERSION = 1
DTYPES = ("auto", "float32", "float16", "bfloat16")


def _check_output_dir(output_dir: Path, protected: list[Path], overwrite: bool) -> None:
    """Refuse to write over anything we must not: a non-empty dir (unless overwrite), or our own inputs."""
    for path in protected:
        if output_dir == path or output_dir in path.parents:
            raise ConfigError(f"output_dir {output_dir} would replace the input {path}: choose a new directory for the export")
    if output_dir.is_file():
        raise ConfigError(f"output_dir {output_dir} is a file; pass a directory to create")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConfigError(f"output_dir {output_dir} is not empty: pass --overwrite to replace its contents, or choose an empty directory")


def _export_dtype(name: str, model_dir: str):
    """torch dtype of the export: `auto` keeps the base model's own (float32 when it states none)."""
    import torch

    if name not in DTYPES:
        raise ConfigError(f"export_dtype={name!r}: use one of {', '.join(DTYPES)}")
    if name == "auto":
        config_file = Path(model_dir) / "config.json"
        stated = json.loads(config_file.read_text()) if config_file.is_file() else {}
        name = str(stated.get("dtype") or stated.get("torch_dtype") or "float32")
        if name not in DTYPES:
            name = "float32"
    return getattr(torch, name)


def plan_export(config: RunConfig, overwrite: bool, export_dtype: str) -> tuple[str, list[AdapterInfo]]:
    """Driver-side checks before any weight is loaded; raises ConfigError saying what to fix."""
    model, infos = validate_base_and_adapters(config)
    output_dir = Path(config.train.output_dir).expanduser().resolve()
    protected = [Path(model).resolve()] if Path(model).exists() else []
    protected += [info.path.resolve() for info in infos]
    _check_output_dir(output_dir, protected, overwrite)
    _export_dtype(export_dtype, model)
    return model, infos


def _generation_config(model, model_dir: str, stop_ids: list[int], pad_id: int | None):
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        generation = GenerationConfig.from_model_config(model.config)
    existing = generation.eos_token_id
    existing = list(existing) if isinstance(existing, list) else ([existing] if existing is not None else [])
    generation.eos_token_id = list(dict.fromkeys(existing + stop_ids)) or None
    if generation.pad_token_id is None and pad_id is not None:
        generation.pad_token_id = pad_id
    return generation


def _adapter_entry(info: AdapterInfo) -> dict[str, Any]:
    cfg = info.adapter_config
    entry = {
        "path": str(info.path),
        "base_model_name_or_path": info.recorded_base,
        "peft_type": cfg.get("peft_type"),
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "target_modules": cfg.get("target_modules"),
        "training_config": info.training_config,
        "metrics": info.metrics,
    }
    if info.trained_bits:
        entry["note"] = f"trained with QLoRA on a {info.trained_bits}-bit base; merged into the float base weights"
    return entry


def _shards(directory: Path) -> list[dict[str, Any]]:
    return [{"file": p.name, "bytes": p.stat().st_size} for p in sorted(directory.glob("*.safetensors"))]


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    from caregpt import __version__

    return {"caregpt": __version__, "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _resolved_config(config: RunConfig, output_dir: Path, template: str | None) -> dict[str, Any]:
    """The config a later predict / serve run of the exported directory starts from."""
    flat = config.flat()
    flat.update(model_name_or_path=str(output_dir), checkpoint_dir=None, adapter_name_or_path=None, quantization_bit=None)
    # no named template: the exported tokenizer's own chat template is the one to use ("auto")
    flat["template"] = template or "auto"
    return flat


def export_model(
    config: RunConfig,
    *,
    export_size: float = 2.0,
    export_dtype: str = "auto",
    overwrite: bool = False,
    template: str | None = None,
) -> Path:
    """Merge config.model.checkpoint_dir into config.model.model_name_or_path; write config.train.output_dir.

    template: the named chat template to write as the tokenizer's chat_template (None keeps the
    tokenizer's own). Returns the export directory.
    """
    import torch
    from transformers import AutoTokenizer

    from caregpt.models.chat_jinja import template_to_jinja
    from caregpt.models.inference import InferenceSpec, bind_template, default_template, load_inference_model, stop_token_ids

    if export_size <= 0:
        raise ConfigError(f"export_size={export_size}: the shard size in GB must be > 0 (e.g. 2, or 0.5)")
    model_dir, infos = plan_export(config, overwrite, export_dtype)
    dtype = _export_dtype(export_dtype, model_dir)
    output_dir = Path(config.train.output_dir).expanduser().resolve()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=config.model.trust_remote_code, use_fast=config.model.use_fast_tokenizer)
    # no template named: keep the tokenizer's own chat template, or write the default one where it has none
    try:
        tpl = bind_template(template or default_template(tokenizer), tokenizer)
    except ConfigError as exc:
        raise ConfigError(f"template {template!r}: {exc}") from None

    # float32, un-quantised, on the CPU: merged weights must be exact, whatever the training precision
    if config.model.quantization_bit:
        logger.info("quantization_bit=%s ignored: merging loads the base in float32", config.model.quantization_bit)
    spec = InferenceSpec.from_run_config(
        config, model_name_or_path=model_dir, adapters=tuple(str(info.path) for info in infos), quantization_bit=None,
        attn_implementation="sdpa", device="cpu", bf16=False, fp16=False,  # the merge runs on the CPU, in float32
    )
    model = load_inference_model(spec)
    if model.dtype != torch.float32:  # a CPU load is float32 already; be explicit for any other path
        raise RuntimeError(f"the merge must run in float32, the base loaded as {model.dtype}")
    model = model.to(dtype)
    model.config.use_cache = True

    staging = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        model.save_pretrained(str(staging), max_shard_size=int(export_size * 1e9))
        if tpl.name != "auto":
            tokenizer.chat_template = template_to_jinja(tpl)
        tokenizer.save_pretrained(str(staging))
        pad_id = tokenizer.pad_token_id
        _generation_config(model, model_dir, stop_token_ids(tokenizer, tpl.stop_strings)[0], pad_id).save_pretrained(str(staging))
        for shard in staging.glob("*.safetensors"):
            shard.chmod(0o644)  # written 0600 by a temp-file rename; a serving user must be able to read them
        pickled = sorted(p.name for p in staging.iterdir() if p.suffix in (".bin", ".pt", ".pkl"))
        if pickled:  # pickle files run code when loaded: an export must never ship one
            raise RuntimeError(f"refusing pickle files {pickled} in the export; expected safetensors only")
        chosen = template if template else (None if tpl.name == "auto" else tpl.name)
        (staging / RESOLVED_CONFIG_NAME).write_text(
            yaml.safe_dump(_resolved_config(config, output_dir, chosen), allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        manifest = {
            "format_version": MANIFEST_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": {"path": model_dir, "weights_fingerprint": weights_fingerprint(model_dir) if Path(model_dir).is_dir() else None},
            "adapters": [_adapter_entry(info) for info in infos],
            "merge_precision": "float32",
            "dtype": str(dtype).removeprefix("torch."),
            "template": chosen or "the tokenizer's own chat_template",
            "export_size_gb": export_size,
            "shards": _shards(staging),
            "total_bytes": sum(s["bytes"] for s in _shards(staging)),
            "versions": _versions(),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
        if output_dir.exists():
            shutil.rmtree(output_dir)  # checked above: empty, or --overwrite was given
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "exported %s + %d adapter(s) -> %s (%s, %d shard(s), %.1f MB)",
        model_dir, len(infos), output_dir, manifest["dtype"], len(manifest["shards"]), manifest["total_bytes"] / 1e6,
    )
    return output_dir
