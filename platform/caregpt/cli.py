"""`caregpt <verb>`: the one command-line entry point.

Run-config verbs (`train`, `data check`, `data prepare`) take `[CONFIG.yaml] [--key value ...]` in the
CareGPT / LLaMA-Factory spelling, so `python src/train_bash.py --stage sft ...` becomes
`caregpt train --stage sft ...` with nothing else changed.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator

from caregpt import __version__
from caregpt.config.loader import ConfigError
from caregpt.config.fields import CommaList, Spec, key
from caregpt.config.verb import setup_logging, wants_help

logger = logging.getLogger("caregpt")

RUN_USAGE = "[CONFIG.yaml] [--key value ...]"


def _run_config_help(verb: str, summary: str, groups: tuple[str, ...]) -> str:
    from caregpt.config.help import options_help

    return f"usage: caregpt {verb} {RUN_USAGE}\n\n{summary}\n\n{options_help(groups)}"


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
        return 0 if wants_help(argv) else 2
    rest = argv[1:]
    if wants_help(rest):
        summary = {
            "check": "Validate datasets: records, valid, invalid (first few with file:line and why), token lengths "
            "under the template and tokenizer (model_name_or_path), and how many exceed cutoff_len.",
            "prepare": "Tokenize the datasets with the Ray Data pipeline into parquet (tokenized_path, or a cache "
            "folder keyed by a fingerprint of data + tokenizer + settings).",
        }[action]
        from caregpt.config.help import render_help, run_sections

        print(render_help(f"caregpt data {action} {RUN_USAGE}", summary, [*run_sections(("model", "data", "finetune")), ("Output", DataOutputArgs)]))
        return 0
    from caregpt.config.loader import load_verb, resolve_paths
    from caregpt.config.specs import GROUPS, RunConfig
    from caregpt.runtime import ensure_ray

    parts, _, _ = load_verb(rest, {**GROUPS, "output": DataOutputArgs}, verb=f"data {action}")
    config = resolve_paths(RunConfig(**{g: parts[g] for g in GROUPS}))
    extra = parts["output"]
    from caregpt.data.pipeline import plan_data

    plan_data(config)  # every config / registry problem surfaces here, before Ray starts
    ensure_ray(config.ray.ray_address)
    if action == "check":
        from caregpt.data.check import check_data

        report = check_data(config, config.model.model_name_or_path)
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2) if extra.as_json else report.format())
        return 1 if report.invalid else 0
    from caregpt.data.prepare import prepare

    path, manifest = prepare(config, _tokenizer_for(config))
    print(f"tokenized data: {path}")
    print(json.dumps(manifest, ensure_ascii=False, indent=2))
    return 0


class DataOutputArgs(Spec):
    as_json: bool = Field(default=False, validation_alias=AliasChoices("json", "as_json"))
    """data check: print the report as JSON instead of text (--json)."""


class NewModelArgs(Spec):
    preset: str = "tiny"
    """Model size: a preset of caregpt.models.tiny (tiny: a few million parameters)."""

    corpus: CommaList[str]
    """Text to train the tokenizer on: .txt/.json/.jsonl/.csv files, comma separated."""

    output_dir: Annotated[str, key(path="out")] = Field(validation_alias=AliasChoices("output_dir", "output"))
    """Where the model directory is written."""

    vocab_size: int | None = Field(default=None, ge=256)
    """Tokenizer vocabulary size (default: the preset's)."""

    seed: int = 0
    """Random seed for the weights."""

    overwrite: bool = False
    """Replace an existing non-empty output_dir."""

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        from caregpt.models.tiny import PRESETS

        if value not in PRESETS:
            raise ValueError(f"must be one of {sorted(PRESETS)}")
        return value


NEW_MODEL_SUMMARY = (
    "Build a small Llama-architecture model from scratch: a byte-level BPE tokenizer trained on your text (Chinese-capable, "
    "ChatML chat template) and randomly initialised weights, saved as a normal Hugging Face model directory (safetensors) "
    "that every stage, eval and serving can load by path."
)


def cmd_new_model(argv: list[str]) -> int:
    from caregpt.config.help import render_help
    from caregpt.config.loader import load_verb, resolve_spec_paths

    if wants_help(argv):
        print(render_help("caregpt new-model --corpus FILE[,FILE] --output_dir DIR [--key value ...]", NEW_MODEL_SUMMARY, [("New model", NewModelArgs)]))
        return 0
    parts, _, _ = load_verb(argv, {"new-model": NewModelArgs}, verb="new-model")
    args = resolve_spec_paths(parts["new-model"])
    from caregpt.models.tiny import build_tiny_model

    path = build_tiny_model(args.preset, args.corpus, args.output_dir, vocab_size=args.vocab_size, seed=args.seed, overwrite=args.overwrite)
    print(path)
    return 0


def cmd_train(argv: list[str]) -> int:
    if wants_help(argv):
        print(_run_config_help(
            "train",
            "Train a stage (pt, sft, rm, dpo, ppo) on Ray Train: tokenize with Ray Data, run N workers (DDP or DeepSpeed), "
            "checkpoint to storage_path, resume when run again, write the adapter/model, trainer_log.jsonl, "
            "all_results.json and (with --plot_loss) training_loss.png into output_dir.\n"
            "Every train_bash.py command of CareGPT works with `caregpt train` in its place: --do_predict "
            "--predict_with_generate writes generated_predictions.jsonl + predict_results.json, --do_eval "
            "--predict_with_generate writes BLEU-4 / ROUGE to eval_results.json (both on Ray Data model actors, training nothing).",
            ("model", "data", "finetune", "train", "generation", "ray"),
        ))
        return 0
    from caregpt.config.loader import load_from_argv
    from caregpt.console import quiet_at_terminal

    config = load_from_argv(argv)
    with quiet_at_terminal(config.train.output_dir):
        return run_train_verb(config)


def run_train_verb(config) -> int:
    """`caregpt train` as a typed function: train, or (do_train unset/false) predict or evaluate."""
    t = config.train
    if not t.trains:
        return _predict_or_evaluate(config)
    if t.do_predict:
        raise ConfigError("do_train together with do_predict: train first, then predict with the trained adapter "
                          "(`caregpt train --do_predict --checkpoint_dir OUTPUT_DIR --output_dir PREDICT_DIR ...`)")
    if t.do_eval and not config.data.val_size:
        raise ConfigError("do_eval while training evaluates on a held-out split, but val_size is 0: set val_size "
                          "(e.g. 0.1), or drop do_train to score generated answers with --do_eval --predict_with_generate")
    from caregpt.train.launch import run_training

    outcome = run_training(config)
    shown = {k: outcome.metrics[k] for k in ("step", "train_loss", "eval_loss", "tokens_seen", "tokens_per_second", "records_used", "records_rejected") if k in outcome.metrics}
    print(f"\ntraining finished: {outcome.output_dir}\n" + json.dumps(shown, indent=2))
    return 0


def _predict_or_evaluate(config) -> int:
    t = config.train
    if not (t.do_predict or t.do_eval):
        raise ConfigError("do_train is false and there is nothing else to do: add --do_predict (batch prediction) or "
                          "--do_eval --predict_with_generate (BLEU / ROUGE of generated answers), or drop --do_train false")
    if t.do_eval and not t.do_predict and not t.predict_with_generate:
        raise ConfigError("do_eval without do_train scores generated answers: add --predict_with_generate "
                          "(a loss-only evaluation of a checkpoint is not available)")
    from caregpt.eval.predict import EVAL_RESULTS_NAME, RESULTS_NAME, run_prediction

    mode = "predict" if t.do_predict else "eval"
    outcome = run_prediction(config, mode=mode)
    name = RESULTS_NAME if mode == "predict" else EVAL_RESULTS_NAME
    shown = {k: v for k, v in outcome.results.items() if k.startswith(f"{mode}_") or k in ("records", "predicted", "invalid")}
    print(f"\n{mode} results: {outcome.output_dir / name}\n" + json.dumps(shown, ensure_ascii=False, indent=2))
    if outcome.invalid and not config.data.skip_invalid:
        for example in outcome.invalid_examples:
            print(f"  invalid {example['loc']}: {example['error']}", file=sys.stderr)
        print(f"caregpt train: {outcome.invalid} invalid record(s) were not predicted; fix them or pass --skip_invalid", file=sys.stderr)
        return 1
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
    setup_logging()
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
