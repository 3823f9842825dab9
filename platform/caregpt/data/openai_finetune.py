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

import argparse
import json
import os
import sys
import time
from pathlib import Path

from caregpt.data.openai_export import DEFAULT_MAX_TOKENS, validate_chat_file

TERMINAL = {"succeeded", "failed", "cancelled"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caregpt openai-finetune", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--training_file", "--training-file", required=True, help="chat fine-tuning JSONL (e.g. from `caregpt data export`)")
    parser.add_argument("--validation_file", "--validation-file", default=None, help="optional validation JSONL in the same format")
    parser.add_argument("--model", required=True, help="base model to fine-tune, e.g. gpt-4o-mini-2024-07-18")
    parser.add_argument("--base_url", "--base-url", "--api_base", "--api-base", dest="base_url", default="https://api.openai.com/v1",
                        help="OpenAI-compatible API, e.g. caregpt's own app with `finetune:` set (default: https://api.openai.com/v1)")
    parser.add_argument("--api_key_env", "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (default: OPENAI_API_KEY)")
    parser.add_argument("--suffix", default=None, help="up to 64 characters added to the fine-tuned model's name")
    parser.add_argument("--n_epochs", "--n-epochs", type=int, default=None, help="training epochs (default: the service chooses)")
    parser.add_argument("--seed", type=int, default=None, help="training seed, for reproducible jobs")
    parser.add_argument("--max_tokens_per_example", "--max-tokens-per-example", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"token limit used by the local check (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--wait", action="store_true", help="poll the job until it succeeds, fails or is cancelled")
    parser.add_argument("--poll_interval", "--poll-interval", type=float, default=30.0, help="seconds between polls with --wait (default 30)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per API request (default 120)")
    parser.add_argument("--max_retries", "--max-retries", type=int, default=3, help="retries per API request (the client's own backoff; default 3)")
    parser.add_argument("--skip_validation", "--skip-validation", action="store_true", help="upload without the local format check")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    api_key = os.environ.get(args.api_key_env, "")
    if not api_key:
        print(f"caregpt openai-finetune: error: set the API key in the environment variable {args.api_key_env} (--api_key_env)", file=sys.stderr)
        return 2
    if not args.skip_validation:
        for path in filter(None, (args.training_file, args.validation_file)):
            problem = _check(path, args.max_tokens_per_example)
            if problem:
                print(f"caregpt openai-finetune: error: {problem}", file=sys.stderr)
                return 2
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
