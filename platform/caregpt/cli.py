"""`caregpt <verb>`: the one command-line entry point.

Run-config verbs (`train`, `data check`, `data prepare`) take `[CONFIG.yaml] [--key value ...]` in the
CareGPT / LLaMA-Factory spelling, so `python src/train_bash.py --stage sft ...` becomes
`caregpt train --stage sft ...` with nothing else changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from caregpt import __version__
from caregpt.config.loader import ConfigError

logger = logging.getLogger("caregpt")

RUN_USAGE = "[CONFIG.yaml] [--key value ...]"


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _run_config_help(verb: str, summary: str, groups: tuple[str, ...]) -> str:
    from caregpt.config.help import options_help

    return f"usage: caregpt {verb} {RUN_USAGE}\n\n{summary}\n\n{options_help(groups)}"


def _wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _tokenizer_for(config) -> str:
    if not config.model.model_name_or_path:
        raise ConfigError("model_name_or_path is required: the tokenizer comes from the model directory")
    return config.model.model_name_or_path


def cmd_data(argv: list[str]) -> int:
    action = argv[0] if argv and not argv[0].startswith("-") else None
    if action in DATA_TOOLS:
        return _delegate(DATA_TOOLS[action])(argv[1:])
    if action not in ("check", "prepare"):
        print(
            "usage: caregpt data {check,prepare,deid,export,download} ...\n\n"
            "  check    count records, show invalid ones with file:line, token length statistics\n"
            "  prepare  tokenize once into parquet (reused by training; --overwrite_cache to redo)\n"
            "  deid     mask personal identifiers (names, ID numbers, phones, emails, addresses, record numbers, dates)\n"
            "  export   a registered SFT dataset to OpenAI chat fine-tuning JSONL (--format openai-chat), validated;\n"
            "           or the fine-tuning service's feedback ratings as preference (DPO) pairs (--format preference)\n"
            "  download public medical datasets (resumable, sha256-checked), converted and registered (--list)\n\n"
            "Run `caregpt data ACTION --help` for an action's options.\n"
        )
        return 0 if _wants_help(argv) else 2
    rest = argv[1:]
    if _wants_help(rest):
        summary = {
            "check": "Validate datasets: records, valid, invalid (first few with file:line and why), token lengths "
            "under the template and tokenizer (model_name_or_path), and how many exceed cutoff_len.",
            "prepare": "Tokenize the datasets with the Ray Data pipeline into parquet (tokenized_path, or a cache "
            "folder keyed by a fingerprint of data + tokenizer + settings).",
        }[action]
        print(_run_config_help(f"data {action}", summary, ("model", "data", "finetune")))
        return 0
    from caregpt.config.loader import load_from_argv
    from caregpt.runtime import ensure_ray

    parsed = argparse.ArgumentParser(add_help=False)
    parsed.add_argument("--json", action="store_true")
    extra, remaining = parsed.parse_known_args(rest)
    config = load_from_argv(remaining)
    from caregpt.data.pipeline import plan_data

    plan_data(config)  # every config / registry problem surfaces here, before Ray starts
    ensure_ray(config.ray.ray_address)
    if action == "check":
        from caregpt.data.check import check_data

        report = check_data(config, config.model.model_name_or_path)
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2) if extra.json else report.format())
        return 1 if report.invalid else 0
    from caregpt.data.prepare import prepare

    path, manifest = prepare(config, _tokenizer_for(config))
    print(f"tokenized data: {path}")
    print(json.dumps(manifest, ensure_ascii=False, indent=2))
    return 0


def cmd_new_model(argv: list[str]) -> int:
    from caregpt.models.tiny import PRESETS

    parser = argparse.ArgumentParser(
        prog="caregpt new-model",
        description="Build a small Llama-architecture model from scratch: a byte-level BPE tokenizer trained on your "
        "text (Chinese-capable, ChatML chat template) and randomly initialised weights, saved as a normal Hugging Face "
        "model directory (safetensors) that every stage, eval and serving can load by path.",
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model size (default: tiny, a few million parameters)")
    parser.add_argument("--corpus", required=True, help="text to train the tokenizer on: .txt/.json/.jsonl/.csv files, comma separated")
    parser.add_argument("--output_dir", "--output-dir", required=True, help="where the model directory is written")
    parser.add_argument("--vocab_size", "--vocab-size", type=int, default=None, help="tokenizer vocabulary size (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output_dir")
    args = parser.parse_args(argv)
    from caregpt.models.tiny import build_tiny_model

    corpus = [c.strip() for c in args.corpus.split(",") if c.strip()]
    path = build_tiny_model(args.preset, corpus, args.output_dir, vocab_size=args.vocab_size, seed=args.seed, overwrite=args.overwrite)
    print(path)
    return 0


def cmd_train(argv: list[str]) -> int:
    if _wants_help(argv):
        print(_run_config_help(
            "train",
            "Train a stage (pt, sft, rm, dpo, ppo) on Ray Train: tokenize with Ray Data, run N workers (DDP or DeepSpeed), "
            "checkpoint to storage_path, resume when run again, write the adapter/model, trainer_log.jsonl, "
            "all_results.json and (with --plot_loss) training_loss.png into output_dir.\n"
            "Every train_bash.py command of CareGPT works with `caregpt train` in its place.",
            ("model", "data", "finetune", "train", "ray"),
        ))
        return 0
    from caregpt.config.loader import load_from_argv
    from caregpt.train.launch import run_training

    outcome = run_training(load_from_argv(argv))
    shown = {k: outcome.metrics[k] for k in ("step", "train_loss", "eval_loss", "tokens_seen", "records_used", "records_rejected") if k in outcome.metrics}
    print(f"\ntraining finished: {outcome.output_dir}\n" + json.dumps(shown, indent=2))
    return 0


def cmd_tune(argv: list[str]) -> int:
    from caregpt.tune.cli import main as tune_main

    return tune_main(argv)


def _delegate(module: str) -> Callable[[list[str]], int]:
    """A verb implemented by `main(argv)` in another module, imported only when that verb runs."""

    def run(argv: list[str]) -> int:
        import importlib

        return int(importlib.import_module(module).main(argv) or 0)

    return run


DATA_TOOLS = {"deid": "caregpt.data.deid_cli", "export": "caregpt.data.openai_export_cli", "download": "caregpt.data.download_cli"}

VERBS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (cmd_train, "train a stage (pt, sft, rm, dpo, ppo) on Ray Train with CareGPT's flags"),
    "tune": (cmd_tune, "search LoRA rank / alpha / learning rate (any keys) with Ray Tune over a training stage"),
    "predict": (_delegate("caregpt.eval.predict_cli"), "batch generation over a dataset on Ray Data model actors (+ BLEU/ROUGE)"),
    "eval": (_delegate("caregpt.eval.cli"), "metrics: generation (BLEU-4, ROUGE), multiple-choice exams, run comparison"),
    "export": (_delegate("caregpt.models.export_cli"), "merge LoRA/QLoRA adapters into a standalone model directory"),
    "serve": (_delegate("caregpt.serve.cli"), "OpenAI-compatible chat API on Ray Serve (autoscaled; merged models or many LoRA adapters)"),
    "kb": (_delegate("caregpt.kb.cli"), "knowledge base: ingest documents, search (BM25 / dense / hybrid), info"),
    "triage": (_delegate("caregpt.medical.triage_cli"), "recommend departments (导诊) for a symptom description, with reasons"),
    "chat": (_delegate("caregpt.chat"), "chat in the terminal with a served API (--api-base) or a local model (streaming)"),
    "webui": (_delegate("caregpt.webui"), "Gradio web chat against any OpenAI-compatible API (streaming, citations)"),
    "distill": (_delegate("caregpt.distill.cli"), "generate training / knowledge data from any OpenAI-compatible teacher model"),
    "openai-finetune": (_delegate("caregpt.data.openai_finetune"), "upload a chat JSONL and start a fine-tuning job on an OpenAI-compatible service"),
    "run": (_delegate("caregpt.pipeline.cli"), "run a pipeline: new-model, pt, sft, dpo, ..., eval, export, deploy in order"),
    "data": (cmd_data, "datasets: check, prepare (tokenize), deid (mask identifiers), export (OpenAI chat JSONL), download (public sets)"),
    "new-model": (cmd_new_model, "build a tiny Llama-architecture model + tokenizer from local text"),
}


def _usage() -> str:
    lines = [f"caregpt {__version__}: train, evaluate and serve medical LLMs on Ray", "", "usage: caregpt <verb> [options]", "", "verbs:"]
    lines += [f"  {name:<16}{summary}" for name, (_, summary) in VERBS.items()]
    lines += ["", "Run `caregpt <verb> --help` for the options of a verb."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        from caregpt.config.loader import nearest_key

        hint = nearest_key(verb, list(VERBS))
        print(f"caregpt: unknown verb {verb!r}" + (f"; did you mean {hint!r}?" if hint else "") + "\n\n" + _usage(), file=sys.stderr)
        return 2
    _setup_logging()
    try:
        return VERBS[verb][0](rest)
    except ConfigError as exc:
        # a configuration problem: one clear line, no traceback
        print(f"caregpt {verb}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        from caregpt._extras import MissingExtra
        from caregpt.data.check import InvalidDataError

        if isinstance(exc, MissingExtra):  # an optional extra is not installed: say what to install
            print(f"caregpt {verb}: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, InvalidDataError):
            print(f"caregpt {verb}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
