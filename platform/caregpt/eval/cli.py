"""`caregpt eval`: generation metrics, multiple-choice exam accuracy, and run comparison.

    caregpt eval --task generation --predictions out/generated_predictions.jsonl [--output_dir DIR]
    caregpt eval --task choice --data exam.jsonl --model_name_or_path BASE [--checkpoint_dir ADAPTER] ...
    caregpt eval compare RUN_DIR [RUN_DIR ...]

``main`` raises ConfigError for user mistakes (the caregpt CLI prints it as one line, exit 2);
``cli_entry`` does that itself for `python -m caregpt.eval.cli` and jobs/eval.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError, nearest_key

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - a user mistake: one line, exit 2 via the main CLI
        raise ConfigError(f"{message} (see `caregpt eval --help`)")


def build_parser() -> argparse.ArgumentParser:
    usage = "caregpt eval --task {generation,choice,triage,safety,deid} [options]\n       caregpt eval compare RUN_DIR [RUN_DIR ...]"
    p = _Parser(prog="caregpt eval", usage=usage, add_help=False, description=DESCRIPTION, epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("generation", "choice"), help="what to evaluate (required)")
    p.add_argument("--output_dir", help="where the report and per-item files go (default: the predictions file's "
                   "folder for generation, outputs/eval/choice-DATA_NAME for choice)")
    g = p.add_argument_group("generation")
    g.add_argument("--predictions", help="jsonl with prompt, label, prediction per line (generated_predictions.jsonl)")
    c = p.add_argument_group("choice")
    c.add_argument("--data", help="exam jsonl to score (question, options, answer, subject; optional id)")
    c.add_argument("--model_name_or_path", help="base model directory (default: the one recorded in the adapter's "
                   "caregpt_config.yaml)")
    c.add_argument("--checkpoint_dir", "--adapter_name_or_path", dest="checkpoint_dir",
                   help="LoRA adapter directory(ies) to apply, comma separated, in training order")
    c.add_argument("--template", help="chat template (default: the adapter's training template, else `default`); "
                   "see `caregpt train --help` for the names")
    c.add_argument("--method", choices=("likelihood", "generate"), default="likelihood",
                   help="option-letter likelihood (default) or generate-then-parse")
    c.add_argument("--n_shot", type=int, default=0, help="worked examples before each question (default 0): the "
                   "first ones of the same subject from --dev, or from --data itself without the scored item")
    c.add_argument("--dev", help="jsonl to take the --n_shot examples from (e.g. the exam's dev split)")
    c.add_argument("--max_samples", type=int, help="score only the first N items (after --max_per_subject)")
    c.add_argument("--max_per_subject", type=int, help="score only the first N items of each subject")
    c.add_argument("--batch_size", "--per_device_eval_batch_size", dest="batch_size", type=int, default=8,
                   help="questions per forward pass / generate call (default 8)")
    c.add_argument("--max_new_tokens", type=int, default=32, help="reply length for --method generate (default 32)")
    c.add_argument("--cutoff_len", type=int, help="longest prompt in tokens (default: the model's max positions); "
                   "longer prompts drop shots first, then lose their beginning (counted in the report)")
    c.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    c.add_argument("--trust_remote_code", action="store_true", help="allow model code shipped in the model directory")
    return p


def _normalise(argv: list[str]) -> list[str]:
    # `--n-shot 5` and `--n_shot 5` mean the same, as in every other caregpt verb
    out = []
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + eq + value
        out.append(token)
    return out


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        known = [o for a in parser._actions for o in a.option_strings]
        hints = [f"{e!r}" + (f" (did you mean {h!r}?)" if (h := nearest_key(e.split("=")[0], known)) else "") for e in extra]
        raise ConfigError(f"unknown argument(s) {', '.join(hints)}; see `caregpt eval --help`")
    if args.task is None:
        raise ConfigError("--task is required: --task generation (with --predictions) or --task choice (with --data); "
                          "or `caregpt eval compare RUN_DIR...`")
    for name in ("n_shot", "max_samples", "max_per_subject", "batch_size", "max_new_tokens", "cutoff_len"):
        value = getattr(args, name)
        lowest = 0 if name == "n_shot" else 1
        if value is not None and value < lowest:
            raise ConfigError(f"--{name} must be a whole number >= {lowest}, got {value}")
    return args


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


def run_generation(args: argparse.Namespace) -> dict[str, Any]:
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


def run_choice(args: argparse.Namespace) -> dict[str, Any]:
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
        print(build_parser().format_help())
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
        print(build_parser().format_help())
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
