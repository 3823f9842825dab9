"""GPU readiness in one run: the platform's own training stage and serving engine, in-process, on one GPU.

Three checks, each through the code `caregpt train` / `caregpt serve` run (no Ray, TRL or DeepSpeed
needed: they are blocked for the whole run, as if not installed):

1. **bf16 SFT with packing** on a random-init ~1.1B Llama (TinyLlama shape): synthetic SFT samples
   of 64-1024 tokens packed by ``caregpt.data.packing.PackBatch`` into ``--seq-len`` rows, loaded by
   ``caregpt.models.loader.load_model``, trained by the stage's ``make_trainer`` (CareTrainer,
   PadCollator with the block-diagonal mask). Prints tokens/s, MFU against the card's dense bf16
   peak (target >= 40%) and peak GPU memory.
   MFU counts 6*N + 12*L*d*S FLOPs per token (N: parameters without the input embedding; the
   attention term as in the PaLM paper, causal not halved), over the measured steps after warm-up.
2. **QLoRA memory** (when bitsandbytes is importable): the same model loaded 4-bit with LoRA on
   every linear layer and activation checkpointing; peak memory and tokens/s.
3. **Serving engine throughput**: the model loaded by ``caregpt.models.inference.load_for_inference``,
   served by ``caregpt.serve.hf_engine.TransformersEngine`` (continuous batching); output tokens/s
   at concurrency 1 and 32 (``--answer-tokens`` each, eos ignored) and their ratio.

Needs torch, transformers, peft and the platform's light dependencies (pyyaml, numpy, pyarrow,
pydantic). Where pydantic is missing (the stock GPU image), carry its wheels; see --help's epilog.

    python benchmarks/gpu_check.py            # on a GPU: < 8 minutes on one H100
    python benchmarks/gpu_check.py --smoke    # tiny sizes, runs on a CPU in about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

# dense bf16 peak (TFLOP/s) by device-name fragment; --peak-tflops overrides
BF16_PEAK_TFLOPS = {"H200": 989.5, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.5, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
MFU_TARGET = 0.40
FORBIDDEN = ("ray", "trl", "deepspeed")
CARRY_HINT = (
    "Missing Python packages on a GPU machine without network are carried as wheels (pydantic and the "
    "pydantic-core it pins, ~2.5 MB): here, python -m pip download --no-deps --only-binary=:all: --python-version 3.12 "
    "--implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 "
    "pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions; there, python3 -m pip install -q --no-index "
    "--no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:platform python3 benchmarks/gpu_check.py"
)

FULL = dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000, seq_len=2048, batch=8, steps=20, warmup=4,
            qlora_steps=6, samples=1200, answer_tokens=128, prompt_tokens=128)
SMOKE = dict(hidden=64, intermediate=176, layers=2, heads=4, kv_heads=2, vocab=512, seq_len=128, batch=2, steps=3, warmup=1,
             qlora_steps=2, samples=64, answer_tokens=8, prompt_tokens=16)


def _say(text: str) -> None:
    print(f"[gpu_check] {text}", flush=True)


def build_model_dir(out: Path, size: dict, device: str) -> Path:
    """A random-init Llama saved as safetensors, with a word-level tokenizer over its whole vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        hidden_size=size["hidden"], intermediate_size=size["intermediate"], num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"], vocab_size=size["vocab"],
        max_position_embeddings=max(2048, size["seq_len"]), tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16 if device == "cuda" else torch.float32).save_pretrained(str(out))
    del model
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, size["vocab"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<pad>")
    fast.save_pretrained(str(out))
    return out


def packed_dataset(size: dict, seed: int = 0):
    """Synthetic SFT samples (prompt masked, answer labelled), packed the way `caregpt data` packs them."""
    import numpy as np

    from caregpt.data.packing import PackBatch
    from caregpt.data.templates import IGNORE_INDEX
    from caregpt.train.data import TokenDataset

    rng = np.random.default_rng(seed)
    longest = min(1024, size["seq_len"])
    ids, labels = [], []
    for _ in range(size["samples"]):
        n = int(rng.integers(min(64, longest // 2), longest + 1))
        row = rng.integers(3, size["vocab"], n, dtype=np.int32)
        lab = row.copy()
        lab[: n // 3] = IGNORE_INDEX  # the prompt third carries no loss, as in SFT
        ids.append(row)
        labels.append(lab)
    return TokenDataset(PackBatch(size["seq_len"])({"input_ids": ids, "labels": labels}))


def run_config(model_dir: Path, out: Path, size: dict, gpu: bool, steps: int, **extra):
    from caregpt.config.loader import load_config

    values = dict(
        model_name_or_path=str(model_dir), stage="sft", finetuning_type="full", template="default", cutoff_len=size["seq_len"],
        packing=True, per_device_train_batch_size=size["batch"], gradient_accumulation_steps=1, max_steps=steps, learning_rate=1e-4,
        warmup_steps=0, logging_steps=10_000, save_steps=10_000, bf16=gpu, gradient_checkpointing=False, output_dir=str(out),
        use_gpu=gpu, seed=0,
    )
    values.update(extra)
    return load_config(None, values)


def flops_per_token(model, seq_len: int) -> float:
    cfg = model.config
    embed = model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in model.parameters()) - embed
    return 6.0 * params + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def train_stage(config, dataset, tokenizer, gpu: bool, warmup: int) -> dict:
    """Run the stage's trainer for config.train.max_steps; time the steps after `warmup`."""
    import torch
    from transformers import TrainerCallback

    from caregpt.models.adapters import apply_finetuning
    from caregpt.models.loader import load_model, validate_model
    from caregpt.train.worker import make_trainer, training_arguments

    validate_model(config)  # the driver-side checks `caregpt train` runs first
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = apply_finetuning(load_model(config, for_training=True, device="cuda" if gpu else "cpu"), config)
    args = training_arguments(config, config.train.output_dir, None, has_eval=False, use_gpu=gpu)
    trainer = make_trainer(config, model, tokenizer, args, dataset, None, gpu)
    marks: dict = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                if gpu:
                    torch.cuda.synchronize()
                marks["start"], marks["tokens"] = time.perf_counter(), trainer.real_tokens

    trainer.add_callback(Clock())
    trainer.train()
    if gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - marks["start"]
    tokens = trainer.real_tokens - marks["tokens"]
    result = {
        "steps_timed": config.train.max_steps - warmup,
        "tokens_per_s": tokens / elapsed,
        "flops_per_token": flops_per_token(trainer.model, config.data.cutoff_len),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "loss": next((h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h), None),
    }
    del trainer, model
    if gpu:
        torch.cuda.empty_cache()
    return result


async def _generate(engine, prompts: list[list[int]], answer_tokens: int) -> tuple[int, float]:
    from caregpt.serve.engine import GenerationRequest
    from caregpt.serve.sampling import SamplingParams

    params = SamplingParams(max_tokens=answer_tokens, temperature=0.0, ignore_eos=True)

    async def one(i: int, ids: list[int]) -> int:
        count = 0
        async for out in engine.generate(GenerationRequest(f"check-{i}-{time.monotonic_ns()}", ids, params)):
            count = out.num_tokens
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return sum(counts), time.perf_counter() - start


def engine_check(model_dir: Path, size: dict, device: str) -> dict:
    import numpy as np

    from caregpt.models.inference import InferenceSpec, load_for_inference
    from caregpt.serve.hf_engine import TransformersEngine

    loaded = load_for_inference(InferenceSpec(str(model_dir), template="default", device=device))
    engine = TransformersEngine(loaded.model, loaded.tokenizer, template_stops=loaded.template.stop_strings, max_batch_size=32,
                                max_model_len=size["prompt_tokens"] + size["answer_tokens"] + 64)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, size["vocab"], size["prompt_tokens"]).tolist() for _ in range(32)]
    try:
        asyncio.run(_generate(engine, prompts[:2], 4))  # warm-up: kernels, cache allocation
        one_tokens, one_s = asyncio.run(_generate(engine, prompts[:1], size["answer_tokens"]))
        many_tokens, many_s = asyncio.run(_generate(engine, prompts, size["answer_tokens"]))
    finally:
        engine.shutdown()
    c1, c32 = one_tokens / one_s, many_tokens / many_s
    return {"c1_tokens_per_s": c1, "c32_tokens_per_s": c32, "ratio": c32 / c1, "tokens": [one_tokens, many_tokens]}


def sft_check(model_dir: Path, tmp: Path, size: dict, tokenizer, gpu: bool, peak: float | None) -> tuple[dict, str]:
    import torch

    data = packed_dataset(size)
    try:
        sft = train_stage(run_config(model_dir, tmp / "sft", size, gpu, size["steps"]), data, tokenizer, gpu, size["warmup"])
    except torch.cuda.OutOfMemoryError:
        size["batch"] = max(1, size["batch"] // 2)  # a smaller card: one retry at half the rows per step
        _say(f"out of memory: retrying SFT with --batch {size['batch']}")
        torch.cuda.empty_cache()
        sft = train_stage(run_config(model_dir, tmp / "sft2", size, gpu, size["steps"]), data, tokenizer, gpu, size["warmup"])
    sft["mfu"] = sft["tokens_per_s"] * sft["flops_per_token"] / (peak * 1e12) if peak else None
    mfu = f"{100 * sft['mfu']:.1f}% (target >= {100 * MFU_TARGET:.0f}%, peak {peak:.0f} TFLOP/s)" if peak else "n/a (no bf16 peak known: --peak-tflops)"
    mem = f"{sft['peak_memory_gib']:.1f} GiB" if sft["peak_memory_gib"] is not None else "n/a on CPU"
    return sft, f"{'bf16' if gpu else 'fp32'} packed SFT: {sft['tokens_per_s']:,.0f} tokens/s over {sft['steps_timed']} steps, MFU {mfu}, peak memory {mem}"


def qlora_check(model_dir: Path, tmp: Path, size: dict, tokenizer, gpu: bool) -> tuple[dict | None, str]:
    if importlib.util.find_spec("bitsandbytes") is None:
        return None, "skipped (bitsandbytes is not importable here)"
    config = run_config(model_dir, tmp / "qlora", size, gpu, size["qlora_steps"] + 1, finetuning_type="lora", lora_target="all",
                        quantization_bit=4, gradient_checkpointing=True)
    qlora = train_stage(config, packed_dataset(size, seed=1), tokenizer, gpu, 1)
    mem = f"{qlora['peak_memory_gib']:.1f} GiB" if qlora["peak_memory_gib"] is not None else "n/a on CPU"
    return qlora, f"4-bit base + LoRA on every linear layer: peak memory {mem}, {qlora['tokens_per_s']:,.0f} tokens/s"


def engine_line(eng: dict) -> tuple[dict, str]:
    return eng, (f"{eng['c1_tokens_per_s']:,.0f} output tokens/s at concurrency 1, {eng['c32_tokens_per_s']:,.0f} at 32 "
                 f"({eng['ratio']:.1f}x)")


def peak_tflops(override: float | None) -> tuple[float | None, str]:
    import torch

    if override:
        return override, "--peak-tflops"
    if not torch.cuda.is_available():
        return None, "cpu"
    name = torch.cuda.get_device_name(0)
    for fragment, value in BF16_PEAK_TFLOPS.items():
        if fragment in name:
            return value, name
    return None, name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=CARRY_HINT)
    parser.add_argument("--smoke", action="store_true", help="tiny model and few steps (CPU is fine): checks the script, not the card")
    parser.add_argument("--steps", type=int, help="SFT steps (default 20; 3 with --smoke); the first --warmup are not timed")
    parser.add_argument("--batch", type=int, help="packed rows per step (default 8 x 2048 tokens)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, when its name is not in the built-in table")
    parser.add_argument("--skip", action="append", default=[], choices=["sft", "qlora", "engine"], help="leave out a check (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    for name in FORBIDDEN:
        # as absent as on the GPU image: `import ray` raises ImportError and find_spec says None, so
        # transformers / accelerate take their no-DeepSpeed paths and any platform import of them fails loudly
        sys.modules[name] = None  # type: ignore[assignment]
    missing = [name for name in ("torch", "transformers", "peft", "yaml", "numpy", "pyarrow", "pydantic") if importlib.util.find_spec(name) is None]
    if missing:
        _say(f"missing packages: {', '.join(missing)}. {CARRY_HINT}")
        return 2
    import torch

    gpu = torch.cuda.is_available() and not args.smoke
    size = dict(SMOKE if args.smoke else FULL)
    size.update({k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v})
    device = "cuda" if gpu else "cpu"
    if not gpu and not args.smoke:
        _say("no GPU here: running the --smoke sizes instead")
        size = dict(SMOKE)
    peak, card = peak_tflops(args.peak_tflops)
    import peft
    import transformers

    _say(f"device {card}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    if int(transformers.__version__.split(".")[0]) < 5:
        _say("warning: the platform is written for transformers >= 5.20 (pyproject.toml); carry that wheel if a check fails")
    results: dict = {"device": card, "sizes": size}
    failed: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        model_dir = build_model_dir(Path(tmp) / "model", size, device)
        from caregpt.models.inference import load_tokenizer

        tokenizer = load_tokenizer(str(model_dir))
        _say(f"random-init Llama ({size['layers']} layers, d={size['hidden']}) written in {time.perf_counter() - started:.0f} s")
        checks = {
            "sft": lambda: sft_check(model_dir, Path(tmp), size, tokenizer, gpu, peak),
            "qlora": lambda: qlora_check(model_dir, Path(tmp), size, tokenizer, gpu),
            "engine": lambda: engine_line(engine_check(model_dir, size, device)),
        }
        for name, check in checks.items():
            if name in args.skip:
                continue
            try:  # one check failing (an old transformers on the image, say) still lets the others report
                results[name], line = check()
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                results[name], line = {"error": f"{type(exc).__name__}: {exc}"}, f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"
                failed.append(name)
            _say(f"{name}: {line}")
            if gpu:
                torch.cuda.empty_cache()
    results["without"] = list(FORBIDDEN)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    _say(f"done in {results['wall_s']:.0f} s, with {', '.join(FORBIDDEN)} blocked" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
