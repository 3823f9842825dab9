"""`caregpt data export`: a registered SFT dataset as OpenAI chat fine-tuning JSONL, or feedback as preference pairs.

    caregpt data export --format openai-chat --dataset medical_sft,medical_sharegpt --dataset_dir data --output train.jsonl
    caregpt data export --format openai-chat --validate train.jsonl
    caregpt data export --format preference --feedback STATE_DIR --output pairs.jsonl   (ratings from POST /v1/feedback)

Exit codes: 0 every record exported (or the file is valid); 1 some records were rejected (the file holds the valid
ones) or fewer than 10 examples; 2 bad arguments, an unknown dataset or a dataset of the wrong kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field

from caregpt.config.fields import CommaList, Spec
from caregpt.config.loader import ConfigError
from caregpt.config.verb import verb_main
from caregpt.data.openai_export import DEFAULT_MAX_TOKENS, export_openai_chat, validate_chat_file

class ExportArgs(Spec):
    format: Literal["openai-chat", "preference"] = "openai-chat"
    """openai-chat: SFT datasets as chat JSONL; preference: the fine-tuning service's feedback ratings as OpenAI
    preference (DPO) JSONL (chosen = suggested or up-rated answer, rejected = down-rated)."""

    feedback: str | None = None
    """--format preference: the fine-tuning service's state_dir (<storage_root>/state)."""

    api_key_env: str | None = None
    """--format preference: export only the ratings made with the API key in this environment variable."""

    dataset: CommaList[str] | None = None
    """Dataset names from dataset_info.json, or data file paths, comma separated."""

    dataset_dir: str = "data"
    """Folder holding dataset_info.json."""

    dataset_info: str | None = None
    """Registry file instead of DATASET_DIR/dataset_info.json."""

    output: str | None = None
    """The JSONL to write."""

    system: str | None = None
    """System message for records that have none of their own."""

    max_tokens_per_example: int = Field(default=DEFAULT_MAX_TOKENS, gt=0)
    """Token limit of one example (gpt-4o / gpt-4o-mini; gpt-3.5-turbo: 16385)."""

    tokenizer: str | None = None
    """Local Hugging Face tokenizer folder to count tokens with (default: a deliberately high character estimate)."""

    max_samples: int | None = Field(default=None, gt=0)
    """Export at most this many records per dataset."""

    last_turn_only: bool = False
    """Train only on the last assistant turn: earlier assistant turns get "weight": 0."""

    report: str | None = None
    """Also write the report as JSON here."""

    validate_file: str | None = Field(default=None, validation_alias=AliasChoices("validate", "validate_file"))
    """--validate FILE: only validate an existing chat JSONL file."""


USAGE = "caregpt data export [--format {openai-chat,preference}] [--key value ...]"
SUMMARY = (
    "Export registered SFT datasets (alpaca with history, sharegpt; resolved through dataset_info.json as training does) "
    "to OpenAI's chat fine-tuning JSONL, validated as the service validates it: roles, order (user/assistant alternating, "
    "ending with assistant), no empty content, a token limit per example. Records that fail are reported with file:line "
    "and left out."
)


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(USAGE, SUMMARY + "\n\n" + (__doc__ or "").split("\n\n", 2)[2].strip(), [("Export", ExportArgs)])


@verb_main("data export", help_text)
def main(argv: list[str]) -> int:
    from caregpt.config.loader import load_verb

    args = load_verb(argv, {"export": ExportArgs}, verb="data export", config_file=False)[0]["export"]
    if args.format == "preference":
        return _export_preference(args)
    if args.validate_file:
        if not Path(args.validate_file).is_file():
            raise ConfigError(f"file not found: {args.validate_file}")
        report = validate_chat_file(args.validate_file, args.max_tokens_per_example, args.tokenizer)
    else:
        if not args.dataset or not args.output:
            raise ConfigError("--dataset and --output are required (or --validate FILE)")
        report = export_openai_chat(args.dataset, args.dataset_dir, args.output, dataset_info=args.dataset_info, system=args.system,
                                    max_tokens=args.max_tokens_per_example, tokenizer=args.tokenizer,
                                    max_samples=args.max_samples, last_turn_only=args.last_turn_only)
    print(report.format())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 1 if report.rejected or report.file_errors else 0


def _export_preference(args) -> int:
    import os

    from caregpt.finetune.feedback import export_preference

    if not args.feedback or not args.output:
        raise ConfigError("--format preference needs --feedback STATE_DIR and --output FILE")
    if args.dataset or args.validate_file:
        raise ConfigError("--format preference reads ratings from --feedback; --dataset / --validate belong to --format openai-chat")
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ConfigError(f"the environment variable {args.api_key_env} (--api_key_env) is empty")
    report = export_preference(args.feedback, args.output, api_key=key)
    print(report.format() + f"\n-> {args.output}")
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.pairs else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
