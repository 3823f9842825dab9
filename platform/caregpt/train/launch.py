"""The driver side of `caregpt train`: validate, tokenize with Ray Data, run Ray Train, collect outputs.

Every check that can fail on the driver runs before any worker is reserved. A run is named from
its output_dir and a hash of the settings that shape the model, so running the same command again
after the driver died finds the same Ray Train run and resumes from its latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError, config_to_json, save_resolved
from caregpt.config.specs import RunConfig, keys_with

logger = logging.getLogger(__name__)

# Keys that do not change what is trained (declared as field metadata in config/specs.py): changing them
# must not start a new run.
OPERATIONAL_KEYS = frozenset(keys_with(role="operational"))
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
SUPPORTED_STAGES = ("pt", "sft", "rm", "dpo", "ppo")


@dataclass
class TrainOutcome:
    output_dir: Path
    metrics: dict[str, Any]
    run_name: str
    storage_path: str


def run_name(config: RunConfig) -> str:
    shaping = {k: v for k, v in config.flat().items() if k not in OPERATIONAL_KEYS}
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{Path(config.train.output_dir).name or 'run'}-{config.finetune.stage}-{digest}"


def _storage(config: RunConfig, output_dir: Path) -> str:
    if config.ray.storage_path:
        path = config.ray.storage_path
        return path if "://" in path else str(Path(path).resolve())
    return str(output_dir / "ray_storage")


def _resources(config: RunConfig) -> tuple[dict[str, float] | None, int | None]:
    """(resources per worker, torch threads per worker).

    CPU runs without explicit resources reserve one logical CPU per worker and split this machine's
    physical cores across the workers as torch threads (all workers of a local run share them).
    """
    if config.ray.resources_per_worker:
        cpus = config.ray.resources_per_worker.get("CPU")
        return config.ray.resources_per_worker, int(cpus) if cpus else None
    if config.ray.use_gpu:
        return None, None
    import os

    return {"CPU": 1}, max(1, (os.cpu_count() or 1) // config.ray.num_workers)


def check_loggers(config: RunConfig) -> None:
    """report_to: every logger named must be importable here (and so, in one environment, on the workers)."""
    import importlib.util

    if config.train.loggers and config.finetune.stage == "ppo":
        raise ConfigError(f"report_to={','.join(config.train.report_to)} is not available for the ppo stage (its metrics go to "
                          "trainer_log.jsonl and Ray): drop report_to")
    missing = [name for name in config.train.loggers if importlib.util.find_spec(LOGGER_PACKAGES[name]) is None]
    if missing:
        hint = " ".join(LOGGER_PACKAGES[m] for m in missing)
        raise ConfigError(f"report_to={','.join(config.train.report_to)} needs {', '.join(missing)}, which is not installed: "
                          f"pip install {hint} (or drop it from report_to)")


def precision_note(config: RunConfig, doing: str = "trains") -> str | None:
    """One line saying which precision a CPU run really uses when --fp16 / --bf16 asks for another."""
    if config.ray.use_gpu:
        return None
    if config.train.fp16:
        return (f"fp16 needs a GPU (float16 mixed precision with loss scaling); this CPU run (use_gpu false) {doing} in "
                "float32 instead. Pass --use_gpu on a GPU cluster" + (", or --bf16 for bfloat16 autocast on CPU" if doing == "trains" else ""))
    if config.train.bf16:
        if doing != "trains":
            return f"bf16 on CPU: this run {doing} in float32 (bfloat16 only speeds up training here)"
        return "bf16 on CPU: weights stay float32, matrix products run in bfloat16 autocast (torch CPU mixed precision)"
    return None


def preflight(config: RunConfig):
    """All driver-side checks; returns the data plan. Raises ConfigError with a fix."""
    from caregpt.data.pipeline import plan_data
    from caregpt.models.loader import validate_model

    check_loggers(config)
    if config.finetune.stage not in SUPPORTED_STAGES:
        raise ConfigError(f"stage {config.finetune.stage!r} is not available in this release; stages that train now: {', '.join(SUPPORTED_STAGES)}")
    facts = validate_model(config)
    if config.finetune.stage == "ppo":
        from caregpt.train.ppo import validate_ppo

        validate_ppo(config)
    plan = plan_data(config)
    output_dir = Path(config.train.output_dir).resolve()
    if (output_dir / "all_results.json").exists() and not config.train.overwrite_output_dir:
        raise ConfigError(f"{output_dir} already holds a finished run (all_results.json): pass --overwrite_output_dir to train into it again, or choose another output_dir")
    return plan, facts


def run_training(config: RunConfig) -> TrainOutcome:
    import ray.train
    from ray.train.torch import TorchTrainer

    from caregpt.data.prepare import prepare
    from caregpt.runtime import ensure_ray
    from caregpt.train.worker import train_loop

    plan, facts = preflight(config)
    logger.info("model %s: %s", config.model.model_name_or_path, facts)
    note = precision_note(config)
    if note:
        logger.warning(note)
    output_dir = Path(config.train.output_dir).resolve()
    storage = _storage(config, output_dir)
    name = run_name(config)
    if config.train.overwrite_output_dir and "://" not in storage:
        shutil.rmtree(Path(storage) / name, ignore_errors=True)  # start over instead of resuming
    ensure_ray(config.ray.ray_address)
    # tokenized data lives beside the checkpoints: on a multi-node cluster storage_path is the shared filesystem
    cache_root = Path(storage) / "tokenized" if "://" not in storage else None
    data_path, manifest = prepare(config, config.model.model_name_or_path, cache_root=cache_root)
    logger.info("training data: %s records used, %s rejected (%s)", manifest["records_used"], manifest["records_rejected"], data_path)
    resources, threads = _resources(config)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config_to_json(config), "data_path": str(data_path), "threads": threads},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.ray.num_workers,
            use_gpu=config.ray.use_gpu,
            resources_per_worker=resources,
            placement_strategy=config.ray.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.ray.num_to_keep or config.train.save_total_limit),
            failure_config=ray.train.FailureConfig(max_failures=config.ray.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a final checkpoint; see the Ray Train logs under {storage}/{name}")
    metrics = collect_outputs(result.checkpoint, output_dir, config, manifest)
    return TrainOutcome(output_dir=output_dir, metrics=metrics, run_name=name, storage_path=storage)


def collect_outputs(checkpoint, output_dir: Path, config: RunConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Final checkpoint -> output_dir, each file written under a temporary name then renamed."""
    from caregpt.train.worker import FINAL_MARKER, TENSORBOARD_DIR

    output_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as directory:
        board = Path(directory) / TENSORBOARD_DIR
        if board.is_dir():  # report_to tensorboard: rank 0's event files
            shutil.copytree(board, output_dir / TENSORBOARD_DIR, dirs_exist_ok=True)
        for source in Path(directory).iterdir():
            # training_args.bin is a pickle; the resolved YAML config beside it says the same, safely
            if source.name in (FINAL_MARKER, "training_args.bin") or not source.is_file():
                continue
            partial = output_dir / (source.name + ".partial")
            shutil.copy2(source, partial)
            partial.replace(output_dir / source.name)
    results_path = output_dir / "all_results.json"
    metrics = json.loads(results_path.read_text()) if results_path.is_file() else {}
    metrics.update(records_used=manifest["records_used"], records_rejected=manifest["records_rejected"])
    results_path.write_text(json.dumps(metrics, indent=2))
    save_resolved(config, output_dir)
    if config.train.plot_loss:
        from caregpt.train.plotting import plot_loss

        keys = ("reward_mean", "kl") if config.finetune.stage == "ppo" else ("loss", "eval_loss")
        plot_loss(output_dir / "trainer_log.jsonl", output_dir, keys=keys, title=output_dir.name)
    return metrics
