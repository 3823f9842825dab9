"""`caregpt export [CONFIG.yaml] [--key value ...]`: merge adapters into a standalone model directory.

CareGPT's export command (`export_model.py --model_name_or_path BASE --template T --finetuning_type lora
--checkpoint_dir ADAPTER --output_dir OUT`) runs with `caregpt export` in its place. The export-only
flags (--export_size, --export_dtype, --overwrite; --export_dir as LLaMA-Factory's name for output_dir)
are the export section of the one loader; the rest is the usual run config, so a training YAML works too. Unset
model_name_or_path / template come from the adapter's caregpt_config.yaml.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from caregpt.config.loader import ConfigError
from caregpt.config.specs import Spec
from caregpt.config.verb import verb_main

SUMMARY = (
    "Merge LoRA adapters (checkpoint_dir, comma separated, applied in order; QLoRA adapters too: the base is loaded in "
    "float) into the base model and write a standalone Hugging Face model directory to output_dir: safetensors shards "
    "of at most --export_size GB, the tokenizer with the chat template the model was trained with (--template, else "
    "the adapter's, else the tokenizer's own), generation_config.json, caregpt_config.yaml and caregpt_export.json "
    "(base model, adapters, their training configs and metrics, dtype, shards). Without checkpoint_dir the base is "
    "re-saved (another dtype or shard size).\n\n"
    "Example (CareGPT's export command):\n"
    "  caregpt export --model_name_or_path BASE --template chatml --finetuning_type lora --checkpoint_dir ADAPTER "
    "--output_dir MERGED\n\n"
    "Then: transformers.AutoModelForCausalLM.from_pretrained('MERGED'), or caregpt predict --model_name_or_path MERGED"
)

class ExportArgs(Spec):
    export_dir: str | None = None
    """LLaMA-Factory's name for output_dir: where the merged model goes (must be empty unless --overwrite)."""

    export_size: float = Field(default=2.0, gt=0)
    """Largest safetensors shard, in GB."""

    export_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weight dtype of the export; auto keeps the base model's."""

    overwrite: bool = False
    """Replace the contents of a non-empty output_dir."""


HELP_GROUPS = ("model", "data", "finetune")


def help_text() -> str:
    from caregpt.config.help import render_help, run_sections

    return render_help("caregpt export [CONFIG.yaml] [--key value ...]", SUMMARY, [("Export", ExportArgs), *run_sections(HELP_GROUPS)],
                       "Other run-config keys (e.g. from a training YAML) are accepted and recorded in caregpt_config.yaml; "
                       "see `caregpt train --help`.")


def parse(argv: list[str]):
    """(RunConfig, export keyword arguments) from the command line, through the one loader."""
    from caregpt.models.adapter_check import load_with_checkpoint_defaults

    config, given, extra = load_with_checkpoint_defaults(argv, "export", {"export": ExportArgs})
    options = extra["export"]
    if options.export_dir:
        if "output_dir" in given:
            raise ConfigError("pass one of --output_dir and --export_dir (the same setting), not both")
        from caregpt.config.loader import resolve_paths

        config = resolve_paths(config.model_copy(update={"train": config.train.model_copy(update={"output_dir": options.export_dir})}))
        given.add("output_dir")
    if "output_dir" not in given:
        raise ConfigError("output_dir is required: pass --output_dir DIR (a new or empty directory for the merged model)")
    if not config.model.model_name_or_path:
        raise ConfigError("model_name_or_path is required (the base model the adapters were trained on): pass --model_name_or_path DIR")
    template = config.data.template if "template" in given else None
    return config, {"export_size": options.export_size, "export_dtype": options.export_dtype, "overwrite": options.overwrite, "template": template}


@verb_main("export", help_text, log=True)
def main(argv: list[str]) -> int:
    from caregpt.models.export import export_model

    config, options = parse(argv)
    print(export_model(config, **options))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
