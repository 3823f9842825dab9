"""`caregpt distill CONFIG.yaml [--key value ...]`: generate data with a teacher model.

Exit codes: 0 every seed has a record; 1 some seeds failed (re-run the same command to retry only those);
2 a configuration problem (one line saying what to fix).
"""

from __future__ import annotations

from caregpt.config.verb import verb_main
from caregpt.distill.config import DistillConfig, load_distill_config

USAGE = "caregpt distill [CONFIG.yaml] [--key value ...]"
SUMMARY = (
    "Generate SFT records, multi-turn dialogues, preference pairs or knowledge-base documents from seeds with any "
    "OpenAI-compatible chat endpoint, as Ray Data over many concurrent requests (rate limit, retries with backoff that "
    "honour Retry-After, per-request timeouts). Re-running the same command resumes: finished seeds are skipped, "
    "never duplicated. Output is validated, de-duplicated, written in the project's data formats, registered in "
    "dataset_info.json and summarised in OUTPUT_DIR/report.json. Exit code 1 when some seeds failed (re-run to retry them)."
)


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(USAGE, SUMMARY, [("Distill (YAML keys or --key value flags)", DistillConfig)])


@verb_main("distill", help_text, log=True)
def main(argv: list[str]) -> int:
    from caregpt.distill.run import run_distill

    report = run_distill(load_distill_config(argv))
    print(report.format())
    return 1 if report.failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
