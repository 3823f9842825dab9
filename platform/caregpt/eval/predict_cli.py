"""`caregpt predict [CONFIG.yaml] [--key value ...]`: batch prediction with CareGPT's flags.

CareGPT's predict command (`train_bash.py --do_predict --predict_with_generate ...`) runs with
`caregpt predict` in its place. Sampling flags that have no place in a training config
(--do_sample, --temperature, --top_p, --top_k, --repetition_penalty) are read here; everything else is the
run config. When model_name_or_path or template is not given, the ones the (last) adapter was trained
with are used, from the caregpt_config.yaml that training wrote beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from caregpt.config.loader import ConfigError

logger = logging.getLogger("caregpt.eval.predict")

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

SAMPLING_HELP = """Sampling options (prediction only):
  --do_sample [true|false]   sample instead of greedy decoding (default: false; greedy is deterministic)
  --temperature float        sampling temperature (default: 1.0)
  --top_p float              nucleus sampling mass (default: 1.0)
  --top_k int                sample among the k most likely tokens (default: 50)
  --repetition_penalty float penalise repeated tokens, >1 discourages (default: 1.0: off)
"""

# the run-config groups that matter to prediction (finetune: for quantised bases / stage compatibility)
HELP_GROUPS = ("model", "data", "train", "ray")
_TRUE = {"1", "true", "yes", "on"}


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value not in _TRUE | {"0", "false", "no", "off"}:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in _TRUE


def _sampling_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--do_sample", "--do-sample", type=_bool, nargs="?", const=True, default=False)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_p", "--top-p", type=float, default=1.0)
    parser.add_argument("--top_k", "--top-k", type=int, default=50)
    parser.add_argument("--repetition_penalty", "--repetition-penalty", type=float, default=1.0)
    return parser


def help_text() -> str:
    from caregpt.config.help import options_help

    return f"usage: caregpt predict [CONFIG.yaml] [--key value ...]\n\n{SUMMARY}\n\n{SAMPLING_HELP}\n{options_help(HELP_GROUPS)}"


def parse(argv: list[str]):
    """(RunConfig, GenerationSettings) from `[CONFIG.yaml] [--key value ...]`."""
    from caregpt.eval.generation import GenerationSettings
    from caregpt.models.adapter_check import load_with_checkpoint_defaults

    sampling, rest = _sampling_parser().parse_known_args(argv)
    config, _ = load_with_checkpoint_defaults(rest)
    settings = GenerationSettings(
        max_new_tokens=config.train.max_new_tokens,
        do_sample=sampling.do_sample,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        repetition_penalty=sampling.repetition_penalty,
    )
    if settings.do_sample and settings.temperature <= 0:
        raise ConfigError(f"--temperature {settings.temperature} must be > 0 with --do_sample (or drop --do_sample for greedy)")
    return config, settings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from caregpt.eval.predict import PREDICTIONS_NAME, run_prediction

    try:
        config, settings = parse(argv)
        outcome = run_prediction(config, settings)
    except ConfigError as exc:
        print(f"caregpt predict: error: {exc}", file=sys.stderr)
        return 2
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
