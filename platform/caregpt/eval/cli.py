"""`caregpt eval`: generation metrics, multiple-choice exam accuracy, and run comparison.

    caregpt eval --task generation --predictions out/generated_predictions.jsonl [--output_dir DIR]
    caregpt eval --task choice --data exam.jsonl --model_name_or_path BASE [--checkpoint_dir ADAPTER] ...
    caregpt eval compare RUN_DIR [RUN_DIR ...]

``main`` raises ConfigError for user mistakes (the caregpt CLI prints it as one line, exit 2);
``cli_entry`` does that itself for `python -m caregpt.eval.cli` and jobs/eval.py.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from pydantic import AliasChoices, Field

from caregpt.config.loader import ConfigError
from caregpt.config.pick import pick
from caregpt.config.specs import DataArgs, GenerationArgs, ModelArgs, Spec

logger = logging.getLogger("caregpt.eval")

PREDICTIONS_FIELDS = ("prompt", "label", "prediction")
CHOICE_PREDICTIONS = "choice_predictions.jsonl"
GENERATION_SCORES = "generation_scores.jsonl"

DESCRIPTION = """\
Evaluate a model or its predictions and write eval_report.json + eval_report.md into --output_dir.

  --task generation  BLEU-4 (characters, NLTK smoothing method3) and ROUGE-1/2/L F (jieba words,
                     rouge-chinese), x100 and averaged over examples exactly as CareGPT computes them,
                     from a predictions file (jsonl: prompt, label, prediction; e.g. written by
                     `caregpt predict`). Empty predictions score 0. Per-example scores go to
                     generation_scores.jsonl.
  --task choice      multiple-choice exam accuracy (CMB / CMExam / CMMLU / MedQA style jsonl: question,
                     options {A..E}, answer "B" / "BC" / "B,C", subject), overall and per subject.
                     Per-item predictions go to choice_predictions.jsonl; unparsed ids to the report.
  compare RUN_DIR... a Markdown table of several runs side by side (best value per metric in bold).

Choice methods:
  likelihood  the question + options + "答案：" through the chat template; the option letter with the
              highest next-token probability is the answer. Multi-answer items (gold has several
              letters) take every letter at least as likely as uniform (1/number of options), always
              including the top one. One batched forward pass per batch, no generation.
  generate    greedy generation, then the answer is read from the reply ("答案是B", "B、C", "选B",
              "(C)", "正确答案：A和D", "The answer is B"); replies that name no clear option are
              counted as unparsed (and wrong).
An item is correct only if the chosen letters equal the gold letters exactly."""

EXAMPLES = """\
examples:
  caregpt eval --task choice --data ../shared/data/mcq_cmmlu_medical_test.jsonl \\
      --model_name_or_path outputs/tiny --checkpoint_dir outputs/sft --n_shot 5 --output_dir outputs/eval/cmmlu-5shot
  caregpt eval --task generation --predictions outputs/predict/generated_predictions.jsonl
  caregpt eval compare outputs/eval/cmmlu-0shot outputs/eval/cmmlu-5shot"""


class EvalArgs(Spec):
    task: Literal["generation", "choice"]
    """What to evaluate: generation (BLEU / ROUGE of a predictions file) or choice (a multiple-choice exam)."""

    output_dir: str | None = None
    """Where the report and per-item files go (default: the predictions file's folder for generation,
    outputs/eval/choice-DATA_NAME for choice)."""

    predictions: str | None = None
    """generation: jsonl with prompt, label, prediction per line (generated_predictions.jsonl)."""

    data: str | None = None
    """choice: exam jsonl to score (question, options, answer, subject; optional id)."""

    method: Literal["likelihood", "generate"] = "likelihood"
    """choice: option-letter likelihood, or generate-then-parse."""

    n_shot: int = Field(default=0, ge=0)
    """choice: worked examples before each question: the first ones of the same subject from --dev, or from --data
    itself without the scored item."""

    dev: str | None = None
    """choice: jsonl to take the --n_shot examples from (e.g. the exam's dev split)."""

    max_samples: int | None = Field(default=None, ge=1)
    """choice: score only the first N items (after --max_per_subject)."""

    max_per_subject: int | None = Field(default=None, ge=1)
    """choice: score only the first N items of each subject."""

    batch_size: int = Field(default=8, ge=1, validation_alias=AliasChoices("batch_size", "per_device_eval_batch_size"))
    """choice: questions per forward pass / generate call (alias: per_device_eval_batch_size)."""

    device: str | None = None
    """choice: cpu, cuda, cuda:1 ... (default: cuda when available)."""


# the model keys and template / cutoff_len are the run config's own fields (declared once, in config/specs.py);
# unset here means "what the adapter recorded" (template) or "the model's max positions" (cutoff_len)
EvalModel = pick(ModelArgs, ("model_name_or_path", "checkpoint_dir", "adapter_name_or_path", "trust_remote_code"), "EvalModel")
EvalPrompt = pick(DataArgs, ("template", "cutoff_len"), "EvalPrompt", template=None, cutoff_len=None)
EvalGeneration = pick(GenerationArgs, ("max_new_tokens",), "EvalGeneration", max_new_tokens=32)  # greedy: no sampling keys
SECTIONS = {"eval": EvalArgs, "model": EvalModel, "prompt": EvalPrompt, "generation": EvalGeneration}
USAGE = "caregpt eval --task {generation,choice,triage,safety,deid} [--key value ...]\n       caregpt eval compare RUN_DIR [RUN_DIR ...]"


def help_text() -> str:
    from caregpt.config.help import render_help

    return render_help(USAGE, DESCRIPTION, [("Evaluation", EvalArgs), ("Model (choice)", EvalModel), ("Prompt (choice)", EvalPrompt),
                                                 ("Generation (choice --method generate; greedy)", EvalGeneration)],
                       EXAMPLES + "\n\n--task triage, safety and deid: see `caregpt eval --task triage --help`.")


def _normalise(argv: list[str]) -> list[str]:
    # `--n-shot 5` and `--n_shot 5` mean the same, as in every other caregpt verb
    out = []
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + eq + value
        out.append(token)
    return out


def _parse(argv: list[str]) -> SimpleNamespace:
    from caregpt.config.loader import load_verb

    if not any(a == "--task" or a.startswith("--task=") for a in argv):
        raise ConfigError("--task is required: --task generation (with --predictions) or --task choice (with --data); "
                          "or `caregpt eval compare RUN_DIR...`")
    parts, _, _ = load_verb(argv, SECTIONS, verb="eval")
    return _namespace(parts)


def evaluate(values: dict[str, Any], source: str) -> dict[str, Any]:
    """The eval verb as a typed call (the pipeline's eval step): flat option values -> the report."""
    from caregpt.config.loader import build_sections

    args = _namespace(build_sections({k: (v, f"from {source}") for k, v in values.items()}, SECTIONS, "eval"))
    return run_generation(args) if args.task == "generation" else run_choice(args)


def _namespace(parts: dict[str, Any]) -> SimpleNamespace:
    from caregpt.config.loader import resolve_spec_paths

    model = resolve_spec_paths(parts["model"])
    if parts["prompt"].cutoff_len is not None and parts["prompt"].cutoff_len < 1:
        raise ConfigError(f"--cutoff_len must be a whole number >= 1, got {parts['prompt'].cutoff_len}")
    checkpoint = model.checkpoint_dir or model.adapter_name_or_path
    return SimpleNamespace(**parts["eval"].model_dump(), **parts["prompt"].model_dump(), **parts["generation"].model_dump(),
                           model_name_or_path=model.model_name_or_path, trust_remote_code=model.trust_remote_code,
                           checkpoint_dir=",".join(checkpoint) if checkpoint else None)


# ---- generation ---------------------------------------------------------------------------------

def read_predictions(path: str | Path) -> list[dict[str, str]]:
    """Records of a predictions jsonl; ConfigError naming file:line and field for anything missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"predictions file not found: {path} (expected jsonl with {', '.join(PREDICTIONS_FIELDS)})")
    rows, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            continue
        missing = [f for f in PREDICTIONS_FIELDS if f not in record]
        wrong = [f for f in PREDICTIONS_FIELDS if f in record and not isinstance(record[f], str)]
        if missing:
            problems.append(f"{path}:{number}: missing field(s) {', '.join(missing)}")
        if wrong:
            problems.append(f"{path}:{number}: field(s) {', '.join(wrong)} must be text")
        if not missing and not wrong:
            rows.append({"line": number, **{f: record[f] for f in PREDICTIONS_FIELDS}})
    if problems:
        shown = "; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
        raise ConfigError(f"predictions file {path}: {len(problems)} bad record(s): {shown}; every line needs "
                          f"{', '.join(PREDICTIONS_FIELDS)} as text")
    if not rows:
        raise ConfigError(f"predictions file {path} holds no records")
    return rows


def run_generation(args: SimpleNamespace) -> dict[str, Any]:
    from caregpt.eval.metrics import METRIC_KEYS, generation_scores, per_example_scores
    from caregpt.eval.report import write_report

    if not args.predictions:
        raise ConfigError("--task generation needs --predictions FILE (jsonl with prompt, label, prediction)")
    started = time.time()
    rows = read_predictions(args.predictions)
    preds, labels = [r["prediction"] for r in rows], [r["label"] for r in rows]
    metrics = generation_scores(preds, labels)
    out = Path(args.output_dir) if args.output_dir else Path(args.predictions).parent
    out.mkdir(parents=True, exist_ok=True)
    with (out / GENERATION_SCORES).open("w", encoding="utf-8") as handle:
        for row, scores in zip(rows, per_example_scores(preds, labels)):
            handle.write(json.dumps({"line": row["line"], **{k: scores[k] for k in METRIC_KEYS}}) + "\n")
    counts = {"examples": len(rows), "empty_predictions": sum(1 for p in preds if not p.strip())}
    config = {"task": "generation", "predictions": str(Path(args.predictions).resolve())}
    return write_report(out, task="generation", metrics=metrics, counts=counts, config=config, started=started) | {"output_dir": str(out)}


# ---- choice -------------------------------------------------------------------------------------

def _progress(total: int):
    done, step = [0], max(1, total // 10)

    def tick(n: int) -> None:
        before, done[0] = done[0], done[0] + n
        if done[0] // step != before // step or done[0] == total:
            logger.info("scored %d/%d items", done[0], total)

    return tick


def run_choice(args: SimpleNamespace) -> dict[str, Any]:
    from caregpt.eval.choice import ChoiceSettings, checkpoint_defaults, format_accuracy, load_eval_model, score_items, summarize
    from caregpt.eval.choice_data import load_items, subset
    from caregpt.eval.report import write_report

    if not args.data:
        raise ConfigError("--task choice needs --data FILE (exam jsonl with question, options, answer, subject)")
    started = time.time()
    everything = load_items(args.data)  # every data problem surfaces before a model is loaded
    items = subset(everything, args.max_samples, args.max_per_subject)
    pool = load_items(args.dev, what="dev") if args.dev else everything
    adapters = [a.strip() for a in (args.checkpoint_dir or "").split(",") if a.strip()]
    recorded = checkpoint_defaults(adapters)
    model_path = args.model_name_or_path or recorded.get("model_name_or_path")
    if not model_path:
        raise ConfigError("--task choice needs --model_name_or_path DIR (the base model; with an adapter from "
                          "`caregpt train` it is read from the adapter's caregpt_config.yaml)")
    template = args.template or recorded.get("template") or "default"
    settings = ChoiceSettings(args.method, args.n_shot, args.batch_size, args.max_new_tokens, args.cutoff_len)
    model, tokenizer, chat = load_eval_model(model_path, adapters, template=template,
                                             trust_remote_code=args.trust_remote_code, device=args.device)
    logger.info("scoring %d of %d items (%s, %d-shot)", len(items), len(everything), args.method, args.n_shot)
    rows = score_items(model, tokenizer, chat, items, pool, settings, progress=_progress(len(items)))

    out = Path(args.output_dir or Path("outputs") / "eval" / f"choice-{Path(args.data).stem}")
    out.mkdir(parents=True, exist_ok=True)
    with (out / CHOICE_PREDICTIONS).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = summarize(rows)
    metrics = {"accuracy": summary["accuracy"], "chance_accuracy": summary["chance_accuracy"],
               "majority_letter_accuracy": summary["majority_letter_accuracy"],
               "most_common_prediction_share": summary["most_common_prediction_share"],
               **{f"accuracy/{k}": s["accuracy"] for k, s in summary["subjects"].items()}}
    counts = {"items": summary["total"], "correct": summary["correct"], "unparsed": summary["unparsed"],
              "subjects": len(summary["subjects"]), "multi_answer_items": summary["multi_answer_items"],
              "truncated_prompts": summary["truncated_prompts"], "records_in_file": len(everything)}
    config = {"task": "choice", "data": str(Path(args.data).resolve()), "model_name_or_path": model_path,
              "checkpoint_dir": adapters, "template": chat.name, "method": args.method, "n_shot": args.n_shot,
              "dev": args.dev, "max_samples": args.max_samples, "max_per_subject": args.max_per_subject,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens if args.method == "generate" else None,
              "cutoff_len": args.cutoff_len, "device": str(next(model.parameters()).device),
              "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    details = {"subjects": summary["subjects"], "unparsed_ids": summary["unparsed_ids"],
               "majority_letter": summary["majority_letter"], "most_common_prediction": summary["most_common_prediction"]}
    logger.info("%s", format_accuracy(summary))
    report = write_report(out, task="choice", metrics=metrics, counts=counts, config=config, details=details, started=started)
    return report | {"output_dir": str(out)}


# ---- entry points -------------------------------------------------------------------------------

def _width(text: str) -> int:
    import unicodedata

    # Chinese subject names take two terminal columns per character
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _print_summary(report: dict[str, Any]) -> None:
    metrics = report["metrics"]
    print(f"\neval ({report['task']}) written to {report['output_dir']}")
    width = max(_width(k) for k in metrics)
    for key, value in metrics.items():
        print(f"  {key}{' ' * (width - _width(key))}  {value}")
    unparsed = report.get("details", {}).get("unparsed_ids")
    if unparsed:
        print(f"  unparsed: {len(unparsed)} item(s), ids in eval_report.json")


def main(argv: list[str]) -> int:
    """`caregpt eval ...`; returns the exit code, raises ConfigError for user mistakes."""
    argv = _normalise(list(argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0 if argv else 2
    for i, arg in enumerate(argv):  # the medical tasks live with the medical layer (caregpt.medical)
        task = arg.split("=", 1)[1] if arg.startswith("--task=") else argv[i + 1] if arg == "--task" and i + 1 < len(argv) else None
        if task in ("triage", "safety", "deid"):
            from caregpt.medical.eval_cli import main as medical_main

            return medical_main(argv)
    if argv[0] == "compare":
        if not argv[1:] or any(a in ("-h", "--help") for a in argv[1:]):
            print("usage: caregpt eval compare RUN_DIR [RUN_DIR ...]\n\nA Markdown table of the eval_report.json of "
                  "each run directory side by side: config, counts and metrics (best per metric in bold).")
            return 0 if argv[1:] else 2
        from caregpt.eval.report import compare

        print(compare(argv[1:]), end="")
        return 0
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    args = _parse(argv)
    report = run_generation(args) if args.task == "generation" else run_choice(args)
    _print_summary(report)
    return 0


def cli_entry(argv: list[str] | None = None) -> int:
    """main() with logging set up and ConfigError turned into one line on stderr (exit 2)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"caregpt eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_entry())
