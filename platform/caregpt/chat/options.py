"""Options of the chat clients (`caregpt chat`, `caregpt webui`), declared once as specs for the one loader.

A client talks to a served API (--api-base) or loads a model in this process with CareGPT's demo flags
(`--model_name_or_path --checkpoint_dir --finetuning_type lora --template`); decoding options are the
shared generation spec, with the chat defaults (temperature 0.7, top_p 0.9) where a flag sets none.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from caregpt.config.loader import ConfigError
from caregpt.config.specs import GenerationArgs, ModelArgs, Spec

CHAT_DEFAULTS = {"temperature": 0.7, "top_p": 0.9}


class ApiArgs(Spec):
    api_base: str | None = None
    """Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (/v1 is added when missing)."""

    api_key: str | None = None
    """API key (default: from the environment, see below). Never printed. Prefer the variable: a flag shows in the process list."""

    model: str | None = None
    """Model or adapter name as listed by /v1/models; default: the first one listed."""


class LocalArgs(Spec):
    template: str | None = None
    """Chat template of a local model (default, chatml, llama2, llama3, qwen, baichuan2, mistral, auto); default: the one
    the checkpoint was trained with, else the tokenizer's own (auto), else `default`."""

    finetuning_type: Literal["lora", "freeze", "full"] = "lora"
    """How checkpoint_dir was trained (CareGPT's demo flag): lora adapters are merged into the base. A freeze / full
    fine-tune is a whole model: pass it as model_name_or_path, without checkpoint_dir."""


class ConversationArgs(Spec):
    system: str | None = None
    """System prompt for the conversation."""

    seed: int | None = Field(default=None, ge=0)
    """Seed the sampler of a local model, so a session's answers repeat run to run (answer k uses seed+k)."""


def client_sections(extra: dict[str, type[Spec]] | None = None) -> dict[str, type[Spec]]:
    return {"api": ApiArgs, **(extra or {}), "conversation": ConversationArgs, "model": ModelArgs, "local": LocalArgs, "generation": GenerationArgs}


def check_mode(parts: dict[str, Any], given: set[str], verb: str) -> None:
    """Exactly one of --api-base and --model_name_or_path; local-model keys only with a local model."""
    api, model = parts["api"], parts["model"]
    if bool(api.api_base) == bool(model.model_name_or_path):
        raise ConfigError(f"pass either --api-base URL (a served model) or --model_name_or_path DIR (a local one); see `caregpt {verb} --help`")
    local_keys = sorted((set(ModelArgs.model_fields) | set(LocalArgs.model_fields) | {"seed"}) & given)
    if api.api_base and local_keys:
        raise ConfigError(f"{', '.join(local_keys)} only apply to a local model (--model_name_or_path), not to --api-base")
    if model.model_name_or_path and (given & {"api_key", "model"}):
        raise ConfigError("--api-key / --model only apply to a served model (--api-base)")
    unused = sorted(given & {"top_k", "repetition_penalty"})
    if unused:
        raise ConfigError(f"{', '.join(unused)}: the chat clients decode with temperature, top_p and max_new_tokens "
                          f"(what the OpenAI API carries); {', '.join(unused)} is not available in caregpt {verb}")
    if model.checkpoint_dir and parts["local"].finetuning_type != "lora":
        raise ConfigError(f"finetuning_type={parts['local'].finetuning_type} with checkpoint_dir: a {parts['local'].finetuning_type} "
                          "fine-tune is a whole model, pass it as --model_name_or_path (checkpoint_dir holds LoRA adapters)")


def sampling(generation: GenerationArgs) -> dict[str, Any]:
    """The shared generation spec as the chat backends take it (temperature 0: greedy)."""
    resolved = generation.resolved()
    return {"temperature": resolved["temperature"] if resolved["do_sample"] else 0.0, "top_p": resolved["top_p"],
            "max_tokens": resolved["max_new_tokens"]}


def open_local(parts: dict[str, Any]):
    """LocalChat for the model section (the inference loader of chat/local.py)."""
    from caregpt.chat.local import LocalChat

    model = parts["model"]
    extra = {k: v for k, v in model.model_dump().items() if k not in ("model_name_or_path", "checkpoint_dir", "adapter_name_or_path")
             and v != ModelArgs.model_fields[k].default}
    return LocalChat(model.model_name_or_path, checkpoint_dir=list(model.checkpoint_dir or []), template=parts["local"].template,
                     extra=extra, seed=parts["conversation"].seed)
