"""The driver of `caregpt tune`: one Ray Tune experiment whose trials are real Ray Train runs.

Ray Train V2 + Tune: each trial is a Tune trainable (one logical CPU) that builds the stage's
TorchTrainer for its sampled config and runs fit() in a thread. `MetricForwarder`, a Ray Train
callback in the Train controller, hands every report that carries a fresh value of the metric to the
trial, and step() returns it to Tune, so ASHA sees the metric at every evaluation. Data is tokenized
once, here, and every trial reads that copy.

Layout (OUTPUT_DIR is the base config's output_dir):
    STORAGE/NAME/                  the Tune experiment (STORAGE: tune.storage_path, else OUTPUT_DIR/ray_tune)
    STORAGE/NAME/train_runs/ID/    each trial's Ray Train run and checkpoints (resumed on restart)
    OUTPUT_DIR/trials/ID/          each finished trial's adapter / model, logs and resolved config
    OUTPUT_DIR/tune_results.{csv,md}, best_config.yaml, tune_metric.png
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.train import UserCallback

from caregpt.config.loader import ConfigError, build_config, config_to_json
from caregpt.config.specs import RunConfig, key_owner
from caregpt.tune.space import TuneSpec, absolute_paths, trial_values

logger = logging.getLogger(__name__)

SPEC_FILE = "caregpt_tune.json"


@dataclass
class TuneOutcome:
    output_dir: Path
    experiment_path: str
    summary: Any  # caregpt.tune.report.Summary


class MetricForwarder(UserCallback):
    """Runs in the Ray Train controller: passes each report with a new value of the metric to the trial.

    Every report of a worker carries the latest value of every metric (the callback keeps them), so
    a training-loss log right after an evaluation repeats the old eval_loss; forwarding it would give
    ASHA a stale value at a later step. The final report (`final`) always goes: it marks a trial that
    trained to the end, as opposed to one the scheduler stopped. The first message is the controller's
    own handle, so a stopped trial can end its Train run cleanly.
    """

    def __init__(self, channel, metric: str):
        self.channel = channel
        self.metric = metric
        self._last_seen: tuple | None = None
        self._introduced = False

    def after_report(self, run_context, metrics, checkpoint):
        import ray

        if not self._introduced:
            self.channel.put(("controller", ray.get_runtime_context().current_actor))
            self._introduced = True
        latest = metrics[0]
        if self.metric not in latest:
            return  # Tune refuses results without the metric it optimises
        # eval_runtime changes at every evaluation even when the metric value happens to repeat
        seen = (latest[self.metric], latest.get("eval_runtime"))
        fresh, self._last_seen = seen != self._last_seen, seen
        if fresh or latest.get("final"):
            self.channel.put(("metrics", {k: v for k, v in latest.items() if isinstance(v, (int, float))}))


class TrialTrainable(tune.Trainable):
    """One trial: the stage's Ray Train run with the sampled values, fit() in a background thread.

    step() hands Tune one forwarded report at a time. A class (not a function) trainable, because a
    trial the scheduler stops must end its Train run itself: Tune only tears the trial actor down, and
    the Train controller dying with it would leave its workers' placement group behind.
    """

    def setup(self, config: dict[str, Any], setup: dict[str, Any]):
        import ray.train
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Queue

        from caregpt.train.worker import train_loop

        values = trial_values(setup["base_values"], config)
        values["output_dir"] = str(Path(setup["trials_dir"]) / self.trial_id)
        self.values, self.manifest, self.max_t = values, setup["manifest"], setup["max_t"]
        self.config_obj = build_config({k: (v, f"trial {self.trial_id}") for k, v in values.items()})
        self.channel = Queue(actor_options={"num_cpus": 0})  # owned by this actor: gone with it
        self.controller = None
        self.outcome: dict[str, Any] = {}
        resources, threads = _worker_resources(self.config_obj, setup["concurrent"])
        ray_cfg = self.config_obj.ray
        self.trainer = TorchTrainer(
            train_loop,
            train_loop_config={"config": config_to_json(self.config_obj), "data_path": setup["data_path"], "threads": threads},
            scaling_config=ray.train.ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu, resources_per_worker=resources, placement_strategy=ray_cfg.placement_strategy),
            run_config=ray.train.RunConfig(
                # named by trial id: a retried or restored trial finds its Train run and resumes from its checkpoint
                name=self.trial_id,
                storage_path=setup["train_storage"],
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=ray_cfg.num_to_keep or self.config_obj.train.save_total_limit),
                failure_config=ray.train.FailureConfig(max_failures=ray_cfg.max_failures),
                callbacks=[MetricForwarder(self.channel, setup["metric"])],
            ),
        )
        self.thread = threading.Thread(target=self._fit, name=f"fit-{self.trial_id}", daemon=True)
        self.thread.start()

    def _fit(self):
        try:
            self.outcome["result"] = self.trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to step(), which raises it in Tune's thread
            self.outcome["error"] = exc

    def _next(self, timeout: float):
        from ray.util.queue import Empty

        try:
            kind, item = self.channel.get(timeout=timeout)
        except Empty:
            return None
        if kind == "controller":
            self.controller = item
            return None
        return item

    def step(self) -> dict[str, Any]:
        from caregpt.train.launch import collect_outputs

        while True:
            metrics = self._next(timeout=1.0)
            if metrics is None:
                if self.thread.is_alive() or not self.channel.empty():
                    continue
            elif not metrics.get("final"):
                # an evaluation at the last step waits for the final report (same value): ASHA may have a
                # rung there, and a STOP then would end the trial before it saved its outputs
                if metrics.get("step", 0) < self.max_t:
                    return metrics
                continue
            self.thread.join()  # the final report came, or fit() ended: either way training is over
            if "error" in self.outcome:
                raise self.outcome["error"]
            result = self.outcome["result"]
            if metrics is None or result.checkpoint is None:
                raise RuntimeError(f"trial {self.trial_id}: the Train run ended without its final report; see {result.path}")
            collect_outputs(result.checkpoint, Path(self.values["output_dir"]), self.config_obj, self.manifest)
            return {**metrics, "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {}  # the trial's state is its Train run's checkpoints, which a restarted trial resumes from

    def load_checkpoint(self, checkpoint) -> None:
        pass

    def cleanup(self):
        """Stopped early (or the experiment was interrupted): end the Train run so it frees its workers."""
        import ray

        if not getattr(self, "thread", None) or not self.thread.is_alive():
            return
        while self.controller is None and not self.channel.empty():
            self._next(timeout=0.1)  # the controller's handle may still wait in the channel
        if self.controller is not None:
            try:
                # what Ray Train's own Ctrl-C handler does: stop the workers, remove their placement group
                ray.get(self.controller.abort.remote(), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass  # abort ends the controller process, so the call itself reports a dead actor
        self.thread.join(timeout=30)


def _worker_resources(config: RunConfig, concurrent: int) -> tuple[dict[str, float] | None, int | None]:
    """(resources per worker, torch threads): launch.py's rule, with the cores shared by concurrent trials."""
    if config.ray.resources_per_worker:
        cpus = config.ray.resources_per_worker.get("CPU")
        return config.ray.resources_per_worker, int(cpus) if cpus else None
    if config.ray.use_gpu:
        return None, None
    return {"CPU": 1}, max(1, (os.cpu_count() or 1) // (config.ray.num_workers * concurrent))


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def param_space(spec: TuneSpec) -> dict[str, Any]:
    space: dict[str, Any] = {}
    for key, p in spec.search_space.items():
        if p.type == "grid":
            space[key] = tune.grid_search(p.values)
        elif p.type == "choice":
            space[key] = tune.choice(p.values)
        elif p.type in ("randint", "lograndint"):
            space[key] = getattr(tune, p.type)(p.low, p.high + 1)  # our high is inclusive, Ray's exclusive
        else:
            space[key] = getattr(tune, p.type)(p.low, p.high)
    if spec.alpha_over_rank is not None:
        space["alpha_over_rank"] = spec.alpha_over_rank  # a constant: shows in the table, applied per trial
    return space


def make_searcher(spec: TuneSpec):
    if spec.search_alg == "random":
        return None  # Tune's default: grid points x random samples
    try:
        if spec.search_alg == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch()
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch()
    except (ImportError, AssertionError) as exc:
        extra = ' or pip install "caregpt[tune]"' if spec.search_alg == "optuna" else ""
        raise ConfigError(f"tune.search_alg={spec.search_alg} needs its package: pip install {spec.search_alg}{extra} ({exc})") from None


def budget_steps(config: RunConfig, spec: TuneSpec, data_rows: int) -> int:
    """Optimizer steps of a full trial (ASHA's max_t); the smallest searched batch gives the most steps."""
    if config.train.max_steps > 0:
        return config.train.max_steps
    t = config.train

    def smallest(key: str, default: int) -> int:
        p = spec.search_space.get(key)
        return int(min(p.values) if p and p.values else p.low if p else default)

    val = config.data.val_size
    rows = data_rows - (int(val) if val >= 1 else (max(1, round(data_rows * val)) if val else 0))
    batch = smallest("per_device_train_batch_size", t.per_device_train_batch_size) * config.ray.num_workers
    per_epoch = max(1, math.ceil(rows / batch) // smallest("gradient_accumulation_steps", t.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * t.num_train_epochs))


def make_scheduler(config: RunConfig, spec: TuneSpec, max_t: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    interval = (config.train.eval_steps or config.train.save_steps) if spec.metric.startswith("eval_") else config.train.logging_steps
    if interval >= max_t:
        logger.warning("%s is reported only once per trial (every %s steps, trials run %s): nothing to stop early on; set eval_steps lower", spec.metric, interval, max_t)
    if spec.scheduler == "fifo":
        return FIFOScheduler()
    grace = spec.grace_period or interval
    # time is the optimizer step, so grace_period means the same thing whatever the report frequency
    # stop_last_trials=False: a trial reaching max_t still sends its final report (outputs, `final`)
    return ASHAScheduler(time_attr="step", max_t=max_t, grace_period=min(grace, max_t), reduction_factor=spec.reduction_factor, stop_last_trials=False)


def _check_variants(config_values: dict[str, Any], spec: TuneSpec) -> None:
    """Model-level checks (lora_target names, layer counts...) for every listed value of a model key."""
    from caregpt.models.loader import validate_model

    owners = key_owner()
    for key, p in spec.search_space.items():
        if p.values and owners.get(key) in ("model", "finetune"):
            for value in p.values:
                try:
                    validate_model(build_config({k: (v, "base") for k, v in {**config_values, key: value}.items()}))
                except ConfigError as exc:
                    raise ConfigError(f"tune.search_space.{key} value {value!r}: {exc}") from None


def run_tune(base_values: dict[str, Any], spec: TuneSpec) -> TuneOutcome:
    from caregpt.data.prepare import prepare
    from caregpt.runtime import ensure_ray
    from caregpt.train.launch import OPERATIONAL_KEYS, preflight
    from caregpt.tune.report import write_reports

    values = absolute_paths(base_values)
    config = build_config({k: (v, "base config") for k, v in values.items()})
    preflight(config)
    _check_variants(values, spec)
    output_dir = Path(config.train.output_dir)
    storage = spec.storage_path or config.ray.storage_path or str(output_dir / "ray_tune")
    storage = storage if "://" in storage else str(Path(storage).resolve())
    name = spec.name or output_dir.name
    experiment_path = f"{storage.rstrip('/')}/{name}"
    # operational keys (overwrite_output_dir, logging...) may change between a run and its resumption
    recorded = {"experiment_path": experiment_path, "base": {k: v for k, v in values.items() if k not in OPERATIONAL_KEYS}, "tune": asdict(spec)}
    _check_same_experiment(output_dir, recorded, config.train.overwrite_output_dir)

    import ray

    # a trial holds one logical CPU for its driver plus its workers' resources
    trial_cpus = 1 + config.ray.num_workers * (config.ray.resources_per_worker or {}).get("CPU", 0 if config.ray.use_gpu else 1)
    wanted = math.ceil((spec.max_concurrent_trials or 0) * trial_cpus)
    # embedded Ray only: enough logical CPUs for max_concurrent_trials to run at once on a small machine
    ensure_ray(config.ray.ray_address, num_cpus=max(os.cpu_count() or 1, 4, wanted))
    cluster = ray.cluster_resources()
    fitting = max(1, int(cluster.get("CPU", 1) // trial_cpus))
    if config.ray.use_gpu:  # GPU trials pack by GPUs as well
        fitting = max(1, min(fitting, int(cluster.get("GPU", 0) // (config.ray.num_workers * (config.ray.resources_per_worker or {}).get("GPU", 1)))))
    concurrent = min(spec.max_concurrent_trials or fitting, fitting, spec.trial_count())
    cache_root = Path(storage) / "tokenized" if "://" not in storage else None
    data_path, manifest = prepare(config, config.model.model_name_or_path, cache_root=cache_root)
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in Path(data_path).glob("*.parquet"))
    max_t = budget_steps(config, spec, rows)
    logger.info("tune %s: %s trial(s) of up to %s steps, %s at a time; data %s (%s rows)", experiment_path, spec.trial_count(), max_t, concurrent, data_path, rows)
    setup = {
        "base_values": values,
        "data_path": str(data_path),
        "manifest": manifest,
        "metric": spec.metric,
        "concurrent": concurrent,
        "max_t": max_t,
        "trials_dir": str(output_dir / "trials"),
        "train_storage": f"{experiment_path}/train_runs",
    }
    trainable = tune.with_parameters(TrialTrainable, setup=setup)
    if tune.Tuner.can_restore(experiment_path):
        logger.info("resuming the experiment at %s: finished trials are kept, unfinished and errored ones run again", experiment_path)
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric,
                mode=spec.mode,
                num_samples=spec.num_samples,
                max_concurrent_trials=spec.max_concurrent_trials,
                search_alg=make_searcher(spec),
                scheduler=make_scheduler(config, spec, max_t),
                trial_dirname_creator=trial_dirname,
                reuse_actors=False,  # every trial sets up its own Train run
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            ),
        )
    tuner.fit()
    summary = write_reports(experiment_path, spec, values, output_dir)
    return TuneOutcome(output_dir=output_dir, experiment_path=experiment_path, summary=summary)


def _check_same_experiment(output_dir: Path, recorded: dict[str, Any], overwrite: bool) -> None:
    """A restart must continue the same search; a changed YAML would silently mix two experiments."""
    path = output_dir / SPEC_FILE
    previous = json.loads(path.read_text()) if path.is_file() else None
    if previous is not None and overwrite:
        experiment = previous["experiment_path"]
        if "://" not in experiment:
            shutil.rmtree(experiment, ignore_errors=True)
        shutil.rmtree(output_dir / "trials", ignore_errors=True)
    elif previous is not None and previous != json.loads(json.dumps(recorded, default=str)) and tune.Tuner.can_restore(previous["experiment_path"]):
        changed = sorted(k for k in ("experiment_path", "base", "tune") if previous.get(k) != json.loads(json.dumps(recorded[k], default=str)))
        raise ConfigError(
            f"{output_dir} holds a tune experiment started with different settings ({', '.join(changed)} changed): "
            f"run it with the same YAML to resume, pass --overwrite_output_dir to start over, or choose another output_dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=2, default=str))
