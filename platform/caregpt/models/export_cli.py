"""`caregpt export [CONFIG.yaml] [--key value ...]`: merge adapters into a standalone model directory.

CareGPT's export command (`export_model.py --model_name_or_path BASE --template T --finetuning_type lora
--checkpoint_dir ADAPTER --output_dir OUT`) runs with `caregpt export` in its place. The export-only
flags (--export_size, --export_dtype, --overwrite; --export_dir as LLaMA-Factory's name for output_dir)
are read here; the rest is the usual run config, so a training YAML works too. Unset
model_name_or_path / template come from the adapter's caregpt_config.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys

from caregpt.config.loader import ConfigError

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

EXPORT_HELP = """Export options:
  --output_dir DIR (alias --export_dir)   where the merged model goes (required; must be empty unless --overwrite)
  --export_size float                     largest safetensors shard, in GB (default: 2)
  --export_dtype {auto|float32|float16|bfloat16}
                                          weight dtype of the export; auto keeps the base model's (default: auto)
  --overwrite                             replace the contents of a non-empty output_dir
"""

HELP_GROUPS = ("model",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--export_size", "--export-size", type=float, default=2.0)
    parser.add_argument("--export_dtype", "--export-dtype", default="auto")
    parser.add_argument("--export_dir", "--export-dir", default=None)
    parser.add_argument("--overwrite", action="store_true")
    return parser


def help_text() -> str:
    from caregpt.config.help import options_help

    return (
        f"usage: caregpt export [CONFIG.yaml] [--key value ...]\n\n{SUMMARY}\n\n{EXPORT_HELP}\n"
        f"{options_help(HELP_GROUPS)}  --template name  chat template written into the tokenizer "
        "(default, llama2, llama3, chatml, qwen, baichuan2, mistral, auto)\n\n"
        "Other run-config keys (e.g. from a training YAML) are accepted and recorded in caregpt_config.yaml."
    )


def parse(argv: list[str]):
    """(RunConfig, export keyword arguments) from the command line."""
    from caregpt.models.adapter_check import load_with_checkpoint_defaults

    args, rest = _parser().parse_known_args(argv)
    if args.export_dir:
        rest += ["--output_dir", args.export_dir]
    config, given = load_with_checkpoint_defaults(rest)
    if "output_dir" not in given:
        raise ConfigError("output_dir is required: pass --output_dir DIR (a new or empty directory for the merged model)")
    if not config.model.model_name_or_path:
        raise ConfigError("model_name_or_path is required (the base model the adapters were trained on): pass --model_name_or_path DIR")
    template = config.data.template if "template" in given else None
    return config, {"export_size": args.export_size, "export_dtype": args.export_dtype, "overwrite": args.overwrite, "template": template}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from caregpt.models.export import export_model

    try:
        config, options = parse(argv)
        path = export_model(config, **options)
    except ConfigError as exc:
        print(f"caregpt export: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
