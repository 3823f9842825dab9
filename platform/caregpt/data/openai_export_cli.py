"""`caregpt data export`: a registered SFT dataset as OpenAI chat fine-tuning JSONL, or feedback as preference pairs.

    caregpt data export --format openai-chat --dataset medical_sft,medical_sharegpt --dataset_dir data --output train.jsonl
    caregpt data export --format openai-chat --validate train.jsonl
    caregpt data export --format preference --feedback STATE_DIR --output pairs.jsonl   (ratings from POST /v1/feedback)

Exit codes: 0 every record exported (or the file is valid); 1 some records were rejected (the file holds the valid
ones) or fewer than 10 examples; 2 bad arguments, an unknown dataset or a dataset of the wrong kind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from caregpt.config.loader import ConfigError
from caregpt.data.openai_export import DEFAULT_MAX_TOKENS, export_openai_chat, validate_chat_file

FORMATS = ("openai-chat", "preference")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caregpt data export",
        description="Export registered SFT datasets (alpaca with history, sharegpt; resolved through dataset_info.json as "
        "training does) to OpenAI's chat fine-tuning JSONL, validated as the service validates it: roles, order "
        "(user/assistant alternating, ending with assistant), no empty content, a token limit per example. Records "
        "that fail are reported with file:line and left out.",
    )
    parser.add_argument("--format", default="openai-chat", choices=FORMATS,
                        help="openai-chat (default): SFT datasets as chat JSONL; preference: the fine-tuning service's feedback "
                             "ratings as OpenAI preference (DPO) JSONL (chosen = suggested or up-rated answer, rejected = down-rated)")
    parser.add_argument("--feedback", default=None, help="--format preference: the fine-tuning service's state_dir (default <storage_root>/state)")
    parser.add_argument("--api_key_env", "--api-key-env", default=None,
                        help="--format preference: export only the ratings made with the API key in this environment variable")
    parser.add_argument("--dataset", help="dataset names from dataset_info.json, or data file paths, comma separated")
    parser.add_argument("--dataset_dir", "--dataset-dir", default="data", help="folder holding dataset_info.json (default: data)")
    parser.add_argument("--dataset_info", "--dataset-info", default=None, help="registry file instead of DATASET_DIR/dataset_info.json")
    parser.add_argument("--output", help="the chat JSONL to write")
    parser.add_argument("--system", default=None, help="system message for records that have none of their own")
    parser.add_argument("--max_tokens_per_example", "--max-tokens-per-example", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"token limit of one example (default {DEFAULT_MAX_TOKENS}, gpt-4o / gpt-4o-mini; gpt-3.5-turbo: 16385)")
    parser.add_argument("--tokenizer", default=None,
                        help="local Hugging Face tokenizer folder to count tokens with (default: a deliberately high character estimate)")
    parser.add_argument("--max_samples", "--max-samples", type=int, default=None, help="export at most this many records per dataset")
    parser.add_argument("--last_turn_only", "--last-turn-only", action="store_true",
                        help='train only on the last assistant turn: earlier assistant turns get "weight": 0')
    parser.add_argument("--report", default=None, help="also write the report as JSON here")
    parser.add_argument("--validate", metavar="FILE", default=None, help="only validate an existing chat JSONL file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.format == "preference":
        return _export_preference(args)
    try:
        if args.validate:
            if not Path(args.validate).is_file():
                raise ConfigError(f"file not found: {args.validate}")
            report = validate_chat_file(args.validate, args.max_tokens_per_example, args.tokenizer)
        else:
            if not args.dataset or not args.output:
                raise ConfigError("--dataset and --output are required (or --validate FILE)")
            datasets = [d.strip() for d in args.dataset.split(",") if d.strip()]
            report = export_openai_chat(datasets, args.dataset_dir, args.output, dataset_info=args.dataset_info, system=args.system,
                                        max_tokens=args.max_tokens_per_example, tokenizer=args.tokenizer,
                                        max_samples=args.max_samples, last_turn_only=args.last_turn_only)
    except ConfigError as exc:
        print(f"caregpt data export: error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 1 if report.rejected or report.file_errors else 0


def _export_preference(args) -> int:
    import os

    from caregpt.finetune.feedback import export_preference

    try:
        if not args.feedback or not args.output:
            raise ConfigError("--format preference needs --feedback STATE_DIR and --output FILE")
        if args.dataset or args.validate:
            raise ConfigError("--format preference reads ratings from --feedback; --dataset / --validate belong to --format openai-chat")
        key = None
        if args.api_key_env:
            key = os.environ.get(args.api_key_env)
            if not key:
                raise ConfigError(f"the environment variable {args.api_key_env} (--api_key_env) is empty")
        report = export_preference(args.feedback, args.output, api_key=key)
    except ConfigError as exc:
        print(f"caregpt data export: error: {exc}", file=sys.stderr)
        return 2
    print(report.format() + f"\n-> {args.output}")
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.pairs else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
