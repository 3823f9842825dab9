"""The function every Ray Train worker runs: build model + data, train (or resume), save.

Everything heavy is imported here, inside the worker, so the driver validates a config and fails
fast without torch/transformers work. The run config arrives as plain JSON.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FINAL_MARKER = "caregpt_final.json"
TENSORBOARD_DIR = "runs"  # HF's folder name for event files: OUTPUT_DIR/runs


def training_arguments(config, output_dir: str, deepspeed: dict | None, has_eval: bool, use_gpu: bool):
    from transformers import TrainingArguments

    t = config.train
    eval_steps = t.eval_steps or t.save_steps
    # seed commands carry --fp16; float16 mixed precision needs a GPU, so a CPU run trains in fp32
    # (the driver says so once: launch.precision_note)
    fp16 = t.fp16 and use_gpu
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        # transformers 5 folds the ratio into warmup_steps (a float < 1 means a fraction of all steps)
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        seed=t.seed,
        data_seed=t.seed,
        fp16=fp16,
        bf16=t.bf16,
        deepspeed=deepspeed,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # wandb / mlflow through HF's integrations (checked installed on the driver); tensorboard is added
        # by the worker itself so its event files land where the run's outputs are collected
        report_to=[r for r in t.loggers if r != "tensorboard"],
        disable_tqdm=True,  # the callback prints one progress line per logging step instead
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=use_gpu,
        ddp_find_unused_parameters=False,
        use_cpu=not use_gpu,
    )


def _restore(local_root: Path) -> tuple[str | None, dict | None]:
    """Download the latest Ray checkpoint (if any) to local disk; returns (path, final manifest)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, None
    target = local_root / "restored"
    with checkpoint.as_directory() as directory:
        shutil.copytree(directory, target, dirs_exist_ok=True)
    marker = target / FINAL_MARKER
    return str(target), (json.loads(marker.read_text()) if marker.is_file() else None)


def make_trainer(config, model, tokenizer, args, train_data, eval_data, use_gpu: bool):
    """The stage's trainer: causal LM for pt / sft, pairwise for rm / dpo (train/preference.py)."""
    from caregpt.train.data import PadCollator
    from caregpt.train.preference import DPOTrainer, PairCollator, RewardTrainer
    from caregpt.train.trainer import CareTrainer

    pad_multiple = 8 if use_gpu else 1
    common = dict(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data, processing_class=tokenizer)
    stage = config.finetune.stage
    if stage == "rm":
        return RewardTrainer(data_collator=PairCollator(tokenizer.pad_token_id, pad_multiple), **common)
    if stage == "dpo":
        return DPOTrainer(
            data_collator=PairCollator(tokenizer.pad_token_id, pad_multiple),
            beta=config.finetune.dpo_beta,
            loss_type=config.finetune.dpo_loss,
            **common,
        )
    collator = PadCollator(
        tokenizer.pad_token_id,
        pad_multiple=pad_multiple,
        varlen_attention=config.model.attn_implementation.startswith("flash_attention"),
    )
    return CareTrainer(data_collator=collator, **common)


def save_final_model(trainer, final_dir: Path, stage: str, rank: int) -> None:
    """The trained weights, as later steps load them.

    A LoRA reward model is merged into a standalone sequence-classification model, so PPO and eval
    load it by path like any other reward model; everything else saves as trained (adapter or model).
    """
    from caregpt.models.adapters import is_quantized

    model = trainer.accelerator.unwrap_model(trainer.model)
    if stage == "rm" and hasattr(model, "merge_and_unload") and not is_quantized(model) and not trainer.is_deepspeed_enabled:
        if rank == 0:
            model.merge_and_unload().save_pretrained(str(final_dir))
        return
    trainer.save_model(str(final_dir))  # every rank joins (DeepSpeed ZeRO-3 gathers weights); rank 0 writes


def _checkpoint_step(path: str | None) -> int:
    state = Path(path) / "trainer_state.json" if path else None
    return int(json.loads(state.read_text())["global_step"]) if state and state.is_file() else 0


def quiet_ray_train_logs() -> None:
    """Ray Train logs every report at INFO from its own child loggers; our progress line says what matters."""
    for name in ("ray.train", "ray.train.v2._internal.execution.context"):
        logging.getLogger(name).setLevel(logging.WARNING)


def scratch_dir(context, kind: str = "train") -> Path:
    """This rank's local working folder, named after the run.

    Named, not random: a worker restarted after a crash (or a re-run after the driver died) clears what
    its killed predecessor left behind instead of leaking a checkpoint-sized folder per failure.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", context.get_experiment_name())[:120]
    path = Path(tempfile.gettempdir()) / "caregpt-scratch" / f"{name}-{kind}-rank{context.get_world_rank()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def skip_deepspeed_cpu_shm_op() -> None:
    """On CPU, DeepSpeed's comm backend JIT-builds its shared-memory C++ op (g++ on every fresh machine, ~30 s on
    2 cores, again whenever another environment rebuilt the shared torch_extensions cache) when it starts, though
    only its inference all-reduce (AutoTP) uses it: ZeRO training reduces through torch.distributed. Marked
    unavailable, DeepSpeed skips the build and keeps the torch path."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def train_loop(loop_config: dict[str, Any]) -> None:
    import ray.train
    import torch

    from caregpt.config.deepspeed import build_deepspeed_config
    from caregpt.config.loader import config_from_json
    from caregpt.data.tokenize import load_tokenizer
    from caregpt.models.adapters import apply_finetuning
    from caregpt.models.loader import load_model
    from caregpt.train.data import TokenDataset, split_eval
    from caregpt.train.trainer import RayReportCallback, write_history

    config = config_from_json(loop_config["config"])
    if config.finetune.stage == "ppo":  # ppo_loop restores and re-reports its own checkpoints
        from caregpt.train.ppo import ppo_loop

        return ppo_loop(config, loop_config)
    # Ray Train logs every report at INFO; our progress line already says what matters per step
    quiet_ray_train_logs()
    context = ray.train.get_context()
    use_gpu = config.ray.use_gpu
    if not use_gpu and loop_config.get("threads"):
        torch.set_num_threads(int(loop_config["threads"]))
    local_root = scratch_dir(context)
    resume_path, final = _restore(local_root)
    if final is not None:
        # the run already finished (the driver died after training): hand the result over again
        ray.train.report(metrics=final["metrics"], checkpoint=ray.train.Checkpoint.from_directory(resume_path))
        return

    stage = config.finetune.stage
    from transformers import set_seed

    set_seed(config.train.seed)  # LoRA / reward-head init runs before the HF Trainer seeds anything
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    model = apply_finetuning(load_model(config, for_training=True, reward_head=stage == "rm"), config)
    data = TokenDataset.from_parquet(loop_config["data_path"])
    train_data, eval_data = split_eval(data, config.data.val_size, config.train.seed)
    deepspeed = build_deepspeed_config(config.ray.deepspeed, fp16=config.train.fp16 and use_gpu, bf16=config.train.bf16)
    if deepspeed and not use_gpu:
        skip_deepspeed_cpu_shm_op()
    args = training_arguments(config, str(local_root / "hf"), deepspeed, eval_data is not None, use_gpu)
    trainer = make_trainer(config, model, tokenizer, args, train_data, eval_data, use_gpu)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress line replaces HF's raw log dicts
    callback = RayReportCallback(trainer)
    trainer.add_callback(callback)
    from caregpt.train.metrics import TrainMetricsCallback

    # Prometheus gauges (tokens/s, loss, GPU memory) through Ray's metrics agent: the dashboard / Grafana view
    trainer.add_callback(TrainMetricsCallback.for_trainer(trainer, run=context.get_experiment_name(), rank=context.get_world_rank()))
    board = None
    if "tensorboard" in config.train.loggers:
        from transformers.integrations import TensorBoardCallback

        board = TensorBoardCallback()
        board.logging_dir = str(local_root / TENSORBOARD_DIR)  # rank 0 writes (the callback checks); collected into output_dir
        trainer.add_callback(board)
    result = trainer.train(resume_from_checkpoint=resume_path)

    final_dir = local_root / "final"
    save_final_model(trainer, final_dir, stage, context.get_world_rank())
    metrics = {**callback.last_metrics, **{k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    metrics.update(callback.run_summary())  # the run average, not the last interval's rate
    metrics.update(
        step=trainer.state.global_step,
        resumed_from_step=_checkpoint_step(resume_path),
        train_samples=len(train_data),
        train_tokens_per_epoch=train_data.num_tokens,
    )
    if stage in ("rm", "dpo"):
        # pairwise accuracy / margins: on the held-out pairs, or on the training pairs without a split
        prefix = "eval" if eval_data is not None else "train_pairs"
        scores = trainer.evaluate(eval_dataset=eval_data if eval_data is not None else train_data)
        metrics.update({k.replace("eval", prefix, 1): float(v) for k, v in scores.items() if isinstance(v, (int, float))})
    elif eval_data is not None:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    final_dir.mkdir(parents=True, exist_ok=True)
    if context.get_world_rank() == 0:
        tokenizer.save_pretrained(str(final_dir))
        if board is not None and (local_root / TENSORBOARD_DIR).is_dir():
            board.on_train_end(args, trainer.state, trainer.control)  # close the writer the final evaluation reopened
            shutil.copytree(local_root / TENSORBOARD_DIR, final_dir / TENSORBOARD_DIR, dirs_exist_ok=True)
        write_history(trainer.state.log_history, final_dir / "trainer_log.jsonl")
        (final_dir / "all_results.json").write_text(json.dumps(metrics, indent=2))
        (final_dir / FINAL_MARKER).write_text(json.dumps({"metrics": metrics}))
    ray.train.report(metrics={**metrics, "final": 1.0}, checkpoint=ray.train.Checkpoint.from_directory(str(final_dir)))
    shutil.rmtree(local_root, ignore_errors=True)
