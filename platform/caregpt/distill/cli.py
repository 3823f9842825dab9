"""`caregpt distill CONFIG.yaml [--key value ...]`: generate data with a teacher model.

Exit codes: 0 every seed has a record; 1 some seeds failed (re-run the same command to retry only those);
2 a configuration problem (one line saying what to fix).
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

from caregpt.config.loader import ConfigError
from caregpt.distill.config import DistillConfig, load_distill_config

USAGE = "usage: caregpt distill [CONFIG.yaml] [--key value ...]"
SUMMARY = (
    "Generate SFT records, multi-turn dialogues, preference pairs or knowledge-base documents from seeds with any "
    "OpenAI-compatible chat endpoint, as Ray Data over many concurrent requests (rate limit, retries with backoff that "
    "honour Retry-After, per-request timeouts). Re-running the same command resumes: finished seeds are skipped, "
    "never duplicated. Output is validated, de-duplicated, written in the project's data formats, registered in "
    "dataset_info.json and summarised in OUTPUT_DIR/report.json. Exit code 1 when some seeds failed (re-run to retry them)."
)


def _type_name(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return "{" + "|".join(str(a) for a in args) + "}"
    if args and get_origin(annotation) is not list:
        return " | ".join(_type_name(a) for a in args)
    if get_origin(annotation) is list:
        return "list (comma separated)"
    return getattr(annotation, "__name__", str(annotation))


def help_text(width: int = 100) -> str:
    lines = [USAGE, "", textwrap.fill(SUMMARY, width), "", "Options (YAML keys or --key value flags):"]
    for name, field in DistillConfig.model_fields.items():
        default = field.default
        shown = ""
        if default is not None and not (isinstance(default, str) and len(default) > 40):
            shown = f" (default: {default})"
        elif isinstance(default, str):
            shown = " (default: a built-in Chinese medical prompt)"
        lines.append(f"  --{name} {_type_name(field.annotation)}{shown}")
        lines.extend(textwrap.wrap(" ".join((field.description or "").split()), width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from caregpt.distill.run import run_distill

    try:
        config = load_distill_config(argv)
        report = run_distill(config)
    except ConfigError as exc:
        print(f"caregpt distill: error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 1 if report.failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
