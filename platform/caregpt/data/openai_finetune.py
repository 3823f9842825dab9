"""`caregpt openai-finetune`: upload a chat fine-tuning file and start a job with the official `openai` client.

    export OPENAI_API_KEY=...
    caregpt openai-finetune --training_file train.jsonl --model gpt-4o-mini-2024-07-18 [--validation_file val.jsonl]
                            [--base_url https://api.openai.com/v1] [--suffix caregpt] [--n_epochs 3] [--wait]

The file is validated locally first (openai_export.validate_chat_file) and refused with file:line reasons if the
service would refuse it, so no upload is wasted. The job id, status and (with --wait) the fine-tuned model name
are printed as JSON; the API key is read from --api_key_env and never printed.
Exit codes: 0 job created (or, with --wait, succeeded); 1 the job failed or was cancelled; 2 invalid file or arguments,
or the API refused the request.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pydantic import AliasChoices, Field

from caregpt.config.loader import ConfigError
from caregpt.config.specs import Spec
from caregpt.config.verb import verb_main
from caregpt.data.openai_export import DEFAULT_MAX_TOKENS, validate_chat_file

TERMINAL = {"succeeded", "failed", "cancelled"}


class FinetuneArgs(Spec):
    training_file: str
    """Chat fine-tuning JSONL (e.g. from `caregpt data export`)."""

    validation_file: str | None = None
    """Optional validation JSONL in the same format."""

    model: str
    """Base model to fine-tune, e.g. gpt-4o-mini-2024-07-18."""

    base_url: str = Field(default="https://api.openai.com/v1", validation_alias=AliasChoices("base_url", "api_base"))
    """OpenAI-compatible API, e.g. caregpt's own app with `finetune:` set."""

    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never printed)."""

    suffix: str | None = None
    """Up to 64 characters added to the fine-tuned model's name."""

    n_epochs: int | None = Field(default=None, gt=0)
    """Training epochs (default: the service chooses)."""

    seed: int | None = None
    """Training seed, for reproducible jobs."""

    max_tokens_per_example: int = Field(default=DEFAULT_MAX_TOKENS, gt=0)
    """Token limit used by the local check."""

    wait: bool = False
    """Poll the job until it succeeds, fails or is cancelled."""

    poll_interval: float = Field(default=30.0, gt=0)
    """Seconds between polls with --wait."""

    timeout: float = Field(default=120.0, gt=0)
    """Seconds per API request."""

    max_retries: int = Field(default=3, ge=0)
    """Retries per API request (the client's own backoff)."""

    skip_validation: bool = False
    """Upload without the local format check."""


USAGE = "caregpt openai-finetune --training_file FILE --model MODEL [--key value ...]"


def _parse(argv: list[str]) -> FinetuneArgs:
    from caregpt.config.loader import load_verb

    return load_verb(argv, {"finetune": FinetuneArgs}, verb="openai-finetune", config_file=False)[0]["finetune"]


def _check(path: str, max_tokens: int) -> str | None:
    """None when the file is fine, else the message to print."""
    if not Path(path).is_file():
        return f"file not found: {path}"
    report = validate_chat_file(path, max_tokens)
    if report.rejected or report.file_errors:
        return f"{path} would be refused by the fine-tuning service:\n{report.format()}"
    return None


def _job_summary(job) -> dict:
    return {"id": job.id, "status": job.status, "model": job.model, "training_file": job.training_file,
            "validation_file": getattr(job, "validation_file", None), "fine_tuned_model": getattr(job, "fine_tuned_model", None)}


def help_text() -> str:
    from caregpt.config.help import render_help

    parts = (__doc__ or "").split("\n\n")
    return render_help(USAGE, parts[0] + "\n\n" + parts[2].strip(), [("Fine-tuning job", FinetuneArgs)])


@verb_main("openai-finetune", help_text)
def main(argv: list[str]) -> int:
    args = _parse(argv)
    api_key = os.environ.get(args.api_key_env, "")
    if not api_key:
        raise ConfigError(f"set the API key in the environment variable {args.api_key_env} (--api_key_env)")
    if not args.skip_validation:
        for path in filter(None, (args.training_file, args.validation_file)):
            problem = _check(path, args.max_tokens_per_example)
            if problem:
                raise ConfigError(problem)
    import openai

    client = openai.OpenAI(api_key=api_key, base_url=args.base_url, timeout=args.timeout, max_retries=args.max_retries)
    try:
        with open(args.training_file, "rb") as handle:
            training = client.files.create(file=handle, purpose="fine-tune")
        validation = None
        if args.validation_file:
            with open(args.validation_file, "rb") as handle:
                validation = client.files.create(file=handle, purpose="fine-tune")
        options: dict = {"validation_file": validation.id} if validation else {}
        if args.suffix:
            options["suffix"] = args.suffix
        if args.seed is not None:
            options["seed"] = args.seed
        if args.n_epochs is not None:
            options["method"] = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": args.n_epochs}}}
        job = client.fine_tuning.jobs.create(model=args.model, training_file=training.id, **options)
        print(json.dumps({"uploaded": {"training": training.id, "validation": validation.id if validation else None}, "job": _job_summary(job)}))
        while args.wait and job.status not in TERMINAL:
            time.sleep(args.poll_interval)
            job = client.fine_tuning.jobs.retrieve(job.id)
            print(json.dumps({"job": _job_summary(job)}))
    except openai.APIStatusError as exc:
        # the service's own message says what is wrong (a bad model name, a file it refused); never the key
        print(f"caregpt openai-finetune: error: the API refused the request (HTTP {exc.status_code}): {exc.message}", file=sys.stderr)
        return 2
    except openai.APIConnectionError as exc:
        print(f"caregpt openai-finetune: error: could not reach {args.base_url} ({type(exc).__name__})", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 1 if job.status in ("failed", "cancelled") else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
