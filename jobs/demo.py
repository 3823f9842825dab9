"""The end-to-end demo on an embedded local Ray and a tiny model built from the shipped sample data.

    make demo            (or: python jobs/demo.py --workdir .demo)

Steps, each printed as it runs: build a tiny model -> check the data -> tokenize it with Ray Data ->
pretrain (pt) -> fine-tune (sft) on Ray Train -> answer a medical question. It grows as the platform
grows (eval, export, serve).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from caregpt.resources import SAMPLE_DATA_DIR

QUESTION = "我最近经常头痛，晚上睡不好，需要去医院看哪个科？"


def step(title: str):
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def done(start: float) -> None:
    print(f"    ({time.perf_counter() - start:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".demo", help="where the model, data and outputs go (default: .demo)")
    parser.add_argument("--fresh", action="store_true", help="delete the workdir first")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)

    from caregpt.config.loader import load_config
    from caregpt.data.check import check_data
    from caregpt.data.prepare import prepare
    from caregpt.models.tiny import build_tiny_model
    from caregpt.runtime import ensure_ray

    model_dir = work / "tiny-model"
    t = step("1. Build a tiny Llama model + tokenizer from the sample data")
    if not (model_dir / "config.json").exists():
        build_tiny_model("tiny", [SAMPLE_DATA_DIR / "medical_pt.txt", SAMPLE_DATA_DIR / "medical_sft.jsonl"], model_dir, seed=0)
    print(f"    model: {model_dir}")
    done(t)

    config = load_config(None, {
        "stage": "sft", "dataset": "medical_sft", "dataset_dir": str(SAMPLE_DATA_DIR), "template": "chatml",
        "cutoff_len": "256", "model_name_or_path": str(model_dir), "tokenized_path": str(work / "tokenized" / "medical_sft"),
    })
    ensure_ray(num_cpus=4)

    t = step("2. Check the data (records, invalid ones with file:line, token lengths)")
    print(check_data(config, str(model_dir)).format())
    done(t)

    t = step("3. Tokenize with the Ray Data pipeline (parquet, reused on the next run)")
    path, manifest = prepare(config, str(model_dir))
    print(f"    {manifest['records_used']} records -> {path}")
    done(t)

    from caregpt.train.launch import run_training

    common = {"model_name_or_path": str(model_dir), "dataset_dir": str(SAMPLE_DATA_DIR), "template": "chatml", "cutoff_len": "256",
              "finetuning_type": "full", "per_device_train_batch_size": "8", "logging_steps": "5", "save_steps": "50",
              "plot_loss": "true", "learning_rate": "2e-3", "lr_scheduler_type": "cosine", "warmup_ratio": "0.05"}
    t = step("4. Continued pretraining (stage pt) on the sample medical text, on Ray Train")
    pt_dir = work / "pt"
    pt = _train_once(run_training, load_config, {**common, "stage": "pt", "dataset": "medical_pt", "num_train_epochs": "4", "output_dir": str(pt_dir)})
    print(f"    train_loss {pt['train_loss']:.3f} after {pt['step']} steps -> {pt_dir} (loss plot: training_loss.png)")
    done(t)

    t = step("5. Supervised fine-tuning (stage sft) on the sample QA, starting from the pt model")
    sft_dir = work / "sft"
    sft = _train_once(run_training, load_config, {**common, "model_name_or_path": str(pt_dir), "stage": "sft", "dataset": "medical_sft", "num_train_epochs": "6", "output_dir": str(sft_dir)})
    print(f"    train_loss {sft['train_loss']:.3f} after {sft['step']} steps -> {sft_dir}")
    done(t)

    t = step("6. Ask the fine-tuned model a medical question")
    answer = generate_answer(str(sft_dir), QUESTION)
    print(f"    Q: {QUESTION}\n    A: {answer}")
    done(t)
    print("\nDemo finished: a model of one million parameters trained for minutes: expect the style of an answer, not reliable medicine. Outputs are in", work)
    return 0


def _train_once(run_training, load_config, values: dict) -> dict:
    """Train unless this demo step already finished (then reuse its results)."""
    import json

    results = Path(values["output_dir"]) / "all_results.json"
    if results.is_file():
        return json.loads(results.read_text())
    return run_training(load_config(None, values)).metrics


def generate_answer(model_dir: str, question: str, max_new_tokens: int = 48) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from caregpt.data.templates import get_template
    from caregpt.data.tokenize import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    template = get_template("chatml", tokenizer)
    ids = template.encode_prompt(tokenizer, [{"role": "user", "content": question}])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.3, no_repeat_ngram_size=3)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


if __name__ == "__main__":
    sys.exit(main())
