"""`caregpt predict [CONFIG.yaml] [--key value ...]`: batch prediction with CareGPT's flags.

CareGPT's predict command (`train_bash.py --do_predict --predict_with_generate ...`) runs with
`caregpt predict` (or `caregpt train`) in its place. Sampling keys (--do_sample, --temperature, --top_p,
--top_k, --repetition_penalty, --max_new_tokens) are the run config's generation group, so they work in a
YAML file too. When model_name_or_path or template is not given, the ones the (last) adapter was trained
with are used, from the caregpt_config.yaml that training wrote beside it.
"""

from __future__ import annotations

import json
import sys

from caregpt.config.verb import verb_main

SUMMARY = (
    "Generate answers for a dataset with a pool of model actors on Ray Data (num_workers actors; one GPU each with "
    "--use_gpu, else CPU), from a base model + checkpoint_dir adapters or a merged model. Writes "
    "output_dir/generated_predictions.jsonl (prompt, label, prediction, and id / department fields when the data has "
    "them) and output_dir/predict_results.json (counts, invalid records with file:line, speed; with --do_eval also "
    "BLEU-4 and ROUGE-1/2/L). Decoding is greedy unless --do_sample. Invalid records are reported; the exit code is 1 "
    "when there were any, unless --skip_invalid.\n\n"
    "Example (CareGPT's predict command):\n"
    "  caregpt predict --stage sft --model_name_or_path BASE --checkpoint_dir ADAPTER --dataset NAME --dataset_dir DIR\n"
    "      --template chatml --do_predict --predict_with_generate --max_samples 100 --per_device_eval_batch_size 8\n"
    "      --max_new_tokens 128 --output_dir OUT"
)

# the run-config groups that matter to prediction (finetune: for quantised bases / stage compatibility)
HELP_GROUPS = ("model", "data", "generation", "train", "ray")


def help_text() -> str:
    from caregpt.config.help import render_help, run_sections

    return render_help("caregpt predict [CONFIG.yaml] [--key value ...]", SUMMARY, run_sections(HELP_GROUPS))


def parse(argv: list[str]):
    """(RunConfig, GenerationSettings) from `[CONFIG.yaml] [--key value ...]`: one loader, sampling keys included."""
    from caregpt.eval.predict import settings_for
    from caregpt.models.adapter_check import load_with_checkpoint_defaults

    config, _ = load_with_checkpoint_defaults(argv, "predict")
    return config, settings_for(config)


@verb_main("predict", help_text, log=True)
def main(argv: list[str]) -> int:
    from caregpt.console import quiet_at_terminal
    from caregpt.eval.predict import PREDICTIONS_NAME, run_prediction

    config, settings = parse(argv)
    with quiet_at_terminal(config.train.output_dir):
        outcome = run_prediction(config, settings)
    shown = {k: v for k, v in outcome.results.items() if k.startswith("predict_") or k in ("records", "predicted", "invalid", "prompt_truncated")}
    print(f"\npredictions: {outcome.output_dir / PREDICTIONS_NAME}\n" + json.dumps(shown, ensure_ascii=False, indent=2))
    if outcome.invalid:
        for example in outcome.invalid_examples:
            print(f"  invalid {example['loc']}: {example['error']}", file=sys.stderr)
        if not config.data.skip_invalid:
            print(f"caregpt predict: {outcome.invalid} invalid record(s) were not predicted (see above); fix them, or pass "
                  "--skip_invalid to accept this", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
