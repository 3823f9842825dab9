"""The one way to load a model for inference: base + adapters, k-bit, template, generation defaults.

Serving, batch prediction, exam scoring, local chat, export and the PPO reward model all call
:func:`load_for_inference` (model, tokenizer and template) or :func:`load_inference_model` (the
weights alone), so a checkpoint behaves the same wherever it is used:

- the base goes through :func:`caregpt.models.loader.load_model` (the loader training uses:
  device, dtype, bitsandbytes 4/8-bit, safetensors only, no remote code unless asked);
- adapters (``checkpoint_dir``, one or several, applied in order) are merged into the weights
  (plain-model speed) unless the base is quantised, where merging would need full-precision
  weights: there a single adapter stays attached;
- the chat template is the one named, else the one the checkpoint recorded in its
  ``caregpt_config.yaml`` (:func:`recorded_template`), else the tokenizer's own, else ``default``;
- the generation defaults (stop token ids, stop strings that span several tokens, pad id, the
  longest context) come from the tokenizer, the model's generation config and the template.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from caregpt.config.loader import RESOLVED_CONFIG_NAME, ConfigError

logger = logging.getLogger("caregpt.models.inference")

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
DEFAULT_TEMPLATE = "default"


@dataclass(frozen=True)
class InferenceSpec:
    """What to load. Every field but the model path has the safe default."""

    model_name_or_path: str
    adapters: tuple[str, ...] = ()
    template: str | None = None  # None: recorded with the checkpoint, else the tokenizer's own, else default
    tokenizer_name_or_path: str | None = None  # None: the model's
    quantization_bit: int | None = None
    quantization_type: str = "nf4"
    double_quantization: bool = True
    trust_remote_code: bool = False
    use_fast_tokenizer: bool = True
    attn_implementation: str = "sdpa"
    device: str | None = None  # None: cuda when available, else cpu
    bf16: bool = False  # on a GPU: weights in bf16 / fp16 (default: bf16 where supported); CPU: float32
    fp16: bool = False
    reward_head: bool = False  # a sequence classifier with one output (a reward model)

    @classmethod
    def from_run_config(cls, config: Any, **overrides: Any) -> InferenceSpec:
        """The spec for a RunConfig's model settings (predict, export)."""
        mc = config.model
        values = dict(
            model_name_or_path=mc.model_name_or_path,
            adapters=tuple(mc.checkpoint_dir or ()),
            template=config.data.template,
            quantization_bit=mc.quantization_bit,
            quantization_type=mc.quantization_type,
            double_quantization=mc.double_quantization,
            trust_remote_code=mc.trust_remote_code,
            use_fast_tokenizer=mc.use_fast_tokenizer,
            attn_implementation=mc.attn_implementation,
            bf16=config.train.bf16,
            fp16=config.train.fp16,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class LoadedModel:
    """A model ready to answer: weights in eval mode, tokenizer, bound template, generation defaults."""

    model: Any
    tokenizer: Any
    template: Any  # caregpt.data.templates.Template, bound to the tokenizer
    spec: InferenceSpec
    stop_ids: list[int] = field(default_factory=list)  # eos + template stops that are one token
    text_stops: list[str] = field(default_factory=list)  # template stops that span several tokens
    pad_id: int = 0
    max_positions: int = 2048

    @property
    def device(self):
        return next(self.model.parameters()).device


# ---- what a checkpoint recorded ----------------------------------------------------------------


def _recorded(directory: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(directory).expanduser() / RESOLVED_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # an unreadable record only means "no hint here"
        logger.warning("cannot read %s; ignoring what it records", path)
        return {}
    return data if isinstance(data, dict) else {}


def recorded_template(*directories: str | Path) -> str | None:
    """The template a training run recorded in caregpt_config.yaml, looking in the directories in order."""
    for directory in directories:
        name = _recorded(directory).get("template")
        if name:
            return str(name)
    return None


def recorded_settings(adapters: Iterable[str], model: str | None = None) -> dict[str, Any]:
    """Settings a checkpoint recorded, for options the user left unset.

    With adapters: model_name_or_path and template of the last one's training record (its base).
    Without: the template of a model directory that caregpt wrote (a full fine-tune or an export);
    its model_name_or_path names the model it started from, so that one is not taken.
    """
    adapters = [a for a in adapters if a]
    if adapters:
        record = _recorded(adapters[-1])
        return {k: record[k] for k in ("model_name_or_path", "template") if record.get(k)}
    if model:
        template = recorded_template(model)
        return {"template": template} if template else {}
    return {}


def default_template(tokenizer: Any) -> str:
    """Without a named or recorded template: the tokenizer's own chat template, else ``default``."""
    return "auto" if getattr(tokenizer, "chat_template", None) else DEFAULT_TEMPLATE


def resolve_template(template: str | None, adapters: Iterable[str], model_dir: str, tokenizer: Any) -> str:
    """The template name to use: named > recorded (last adapter first, then the model) > tokenizer's > default."""
    if template:
        return template
    recorded = recorded_template(*reversed(list(adapters)), model_dir)
    if recorded:
        logger.info("using template %r recorded with the checkpoint", recorded)
        return recorded
    return default_template(tokenizer)


def bind_template(name: str, tokenizer: Any):
    from caregpt.data.templates import get_template

    try:
        return get_template(name, tokenizer)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ---- generation defaults -----------------------------------------------------------------------


def stop_token_ids(tokenizer: Any, stop_strings: Iterable[str], model: Any = None) -> tuple[list[int], list[str]]:
    """(token ids that end an answer, stop strings that span several tokens).

    The ids are the model's generation-config eos, the tokenizer's eos and every template stop that
    is one token (``<|im_end|>``: cheapest to stop on, and it never shows in the text). A longer stop
    (``\\nHuman:``) has to be matched on the text.
    """
    ids: list[int] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in [*(eos if isinstance(eos, (list, tuple)) else [eos]), tokenizer.eos_token_id]:
        if isinstance(value, int) and value >= 0:
            ids.append(value)
    multi: list[str] = []
    for text in stop_strings:
        if not text:
            continue
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(int(encoded[0]))
        elif encoded:
            multi.append(text)
    return list(dict.fromkeys(ids)), multi


def cut_at_stops(text: str, stop_strings: Iterable[str]) -> str:
    """A finished answer up to its first stop string (batched generation may run a few tokens past one)."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
    return text[:cut].strip()


def default_pad_id(tokenizer: Any, stop_ids: Iterable[int]) -> int:
    """The tokenizer's pad id, else the first stop id (rows that finished early are filled with it), else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return next((int(i) for i in stop_ids), 0)


def max_positions(model: Any) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None)


# ---- loading -----------------------------------------------------------------------------------


def _run_config(spec: InferenceSpec):
    """The RunConfig the shared weights loader takes (only its model keys matter here)."""
    from caregpt.config.loader import load_config

    values: dict[str, Any] = {
        "model_name_or_path": spec.model_name_or_path,
        "quantization_bit": spec.quantization_bit,
        "quantization_type": spec.quantization_type,
        "double_quantization": spec.double_quantization,
        "trust_remote_code": spec.trust_remote_code,
        "use_fast_tokenizer": spec.use_fast_tokenizer,
        "attn_implementation": spec.attn_implementation,
        "bf16": spec.bf16,
        "fp16": spec.fp16,
        # `full` skips the training-only checks; a quantised base is only valid with lora (QLoRA)
        "finetuning_type": "lora" if spec.quantization_bit else "full",
        "lora_target": "all",
    }
    return load_config(None, values)


def check_adapter_dir(entry: str) -> Path:
    """The adapter directory `entry`, or a ConfigError: it must hold adapter_config.json and safetensors weights."""
    path = Path(entry).expanduser()
    if not (path / ADAPTER_CONFIG_NAME).is_file():
        hint = "; it holds a full model (config.json): use it as model_name_or_path instead" if (path / "config.json").is_file() else ""
        raise ConfigError(f"checkpoint_dir entry {entry!r} is not an adapter directory (no {ADAPTER_CONFIG_NAME}){hint}")
    if not (path / ADAPTER_WEIGHTS_NAME).is_file():
        pickled = (path / "adapter_model.bin").is_file()
        raise ConfigError(
            f"{entry}: no {ADAPTER_WEIGHTS_NAME}"
            + ("; only a pickled adapter_model.bin, which is refused (it can run code when loaded): re-save it as safetensors" if pickled else "")
        )
    return path


def _recorded_base(path: Path) -> str:
    try:
        return str(json.loads((path / ADAPTER_CONFIG_NAME).read_text()).get("base_model_name_or_path") or "unknown")
    except (OSError, ValueError):
        return "unknown"


def quiet_peft():
    """peft 0.21 probes `is_gradient_checkpointing`, deprecated in transformers 5.2x: noise nobody can act on."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    return stack


def attach_adapters(model: Any, adapters: Iterable[str], *, merge: bool = True, trainable: bool = False) -> Any:
    """`model` with the LoRA adapters applied in order: merged into the weights, or attached (``merge=False``).

    Merging uses ``safe_merge`` (checks for NaNs before overwriting the base). An adapter whose
    shapes do not fit the base fails with a ConfigError naming the base it was trained on.
    """
    from peft import PeftModel

    adapters = list(adapters)
    if not merge and len(adapters) > 1:
        raise ConfigError(f"{len(adapters)} adapters {adapters} cannot stay attached together (a quantised base cannot merge them): merge them first (caregpt export)")
    for entry in adapters:
        path = check_adapter_dir(entry)
        try:
            with quiet_peft():
                model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
        except RuntimeError as exc:  # shape mismatches: the adapter was trained on another base
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = next((ln for ln in lines if "size mismatch" in ln), lines[0] if lines else repr(exc))[:300]
            raise ConfigError(
                f"adapter {entry!r} does not fit the base model: it was trained on {_recorded_base(path)!r} ({detail}); "
                f"pass that base model as --model_name_or_path"
            ) from None
        if merge:
            with quiet_peft():
                model = model.merge_and_unload(safe_merge=True)
        logger.info("%s adapter %s", "merged" if merge else "attached", entry)
    return model


def load_inference_model(spec: InferenceSpec) -> Any:
    """The weights alone, in eval mode: base (+ adapters merged, or one attached on a quantised base)."""
    from caregpt.models.adapters import is_quantized, merge_into_quantized_message
    from caregpt.models.loader import load_model

    if spec.quantization_bit and len(spec.adapters) > 1:
        raise ConfigError(merge_into_quantized_message(list(spec.adapters[:-1]), spec.quantization_bit))
    for entry in spec.adapters:
        check_adapter_dir(entry)  # before any weight is read
    model = load_model(_run_config(spec), for_training=False, device=spec.device, reward_head=spec.reward_head)
    model = attach_adapters(model, spec.adapters, merge=not is_quantized(model))
    model.eval()
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    return model


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, use_fast: bool = True):
    """The tokenizer, with eos as pad where it has none (left padding in batches needs a pad id)."""
    from caregpt.data.tokenize import load_tokenizer as _load

    try:
        return _load(name_or_path, trust_remote_code, use_fast)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {name_or_path!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None


def load_for_inference(spec: InferenceSpec) -> LoadedModel:
    """Model, tokenizer, template and generation defaults for `spec` (see the module docstring)."""
    from caregpt.models.loader import resolve_model_source

    source, _ = resolve_model_source(_run_config(spec))  # a wrong path fails here, before any weight is read
    spec = replace(spec, model_name_or_path=source)
    tokenizer = load_tokenizer(spec.tokenizer_name_or_path or source, trust_remote_code=spec.trust_remote_code, use_fast=spec.use_fast_tokenizer)
    template = bind_template(resolve_template(spec.template, spec.adapters, source, tokenizer), tokenizer)
    model = load_inference_model(spec)
    stop_ids, text_stops = stop_token_ids(tokenizer, template.stop_strings, model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        template=template,
        spec=spec,
        stop_ids=stop_ids,
        text_stops=text_stops,
        pad_id=default_pad_id(tokenizer, stop_ids),
        max_positions=max_positions(model) or 2048,
    )
