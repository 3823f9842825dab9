"""Run a planned pipeline: each step in order on the current Ray cluster, finished steps skipped.

A step counts as finished when its marker (run_dir/.pipeline/<name>.json) exists with the same
fingerprint (the step's resolved options). Once one step runs again, every later step runs again too:
its inputs may have changed. Inside a step, training resumes from its own checkpoints, so killing the
pipeline mid-sft and re-running it skips the finished steps and continues sft where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from caregpt.console import is_quiet
from caregpt.pipeline.plan import PlannedStep, plan
from caregpt.pipeline.report import SHOWN, collect_metrics, write_report
from caregpt.pipeline.spec import PipelineSpec

logger = logging.getLogger(__name__)
MARKERS = ".pipeline"


@dataclass
class StepRecord:
    name: str
    uses: str
    status: str  # ran | skipped | failed | not run
    seconds: float = 0.0
    output_dir: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    error: str = ""


def _values(values: dict[str, Any], source: str) -> dict[str, tuple[Any, str]]:
    return {k: (v, source) for k, v in values.items()}


def run_new_model(step: PlannedStep) -> None:
    from caregpt.models.tiny import build_tiny_model

    v = step.values
    corpus = v.get("corpus") or []
    corpus = [c.strip() for c in corpus.split(",")] if isinstance(corpus, str) else list(corpus)
    if not corpus:
        raise RuntimeError(f"step {step.name!r}: new-model needs `corpus` (text files to train the tokenizer on)")
    build_tiny_model(v.get("preset", "tiny"), corpus, step.output_dir, vocab_size=v.get("vocab_size"), seed=int(v.get("seed", 0)), overwrite=True)


def run_train(step: PlannedStep) -> None:
    from caregpt.config.loader import load_config
    from caregpt.train.launch import run_training

    run_training(load_config(None, step.values))


def run_prepare(step: PlannedStep) -> None:
    from caregpt.config.loader import load_config
    from caregpt.data.prepare import prepare

    values = {**step.values, "tokenized_path": step.values.get("tokenized_path", str(step.output_dir))}
    config = load_config(None, {k: v for k, v in values.items() if k != "output_dir"})
    _, manifest = prepare(config, config.model.model_name_or_path)
    step.output_dir.mkdir(parents=True, exist_ok=True)
    (step.output_dir / "prepare_manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2))


def run_tune(step: PlannedStep) -> None:
    from caregpt.tune.run import run_tune as tune
    from caregpt.tune.space import load_tune_values

    _config, base_values, spec = load_tune_values(step.values, f"tune step {step.name!r}")
    outcome = tune(base_values, spec)
    if outcome.summary.best is None:
        raise RuntimeError(f"tune step {step.name!r}: no trial reported {spec.metric} (see {outcome.experiment_path})")


def run_predict(step: PlannedStep) -> None:
    """The predict verb as a typed call: the step's values are its run config (generation keys included)."""
    from caregpt.config.loader import build_config, resolve_paths
    from caregpt.eval.predict import run_prediction

    config = resolve_paths(build_config(_values(step.values, f"predict step {step.name!r}"), "predict"))
    outcome = run_prediction(config)
    if outcome.invalid and not config.data.skip_invalid:
        raise RuntimeError(f"predict step {step.name!r}: {outcome.invalid} invalid record(s) were not predicted (skip_invalid: true accepts that)")


def run_export(step: PlannedStep) -> None:
    from caregpt.config.loader import build_sections, resolve_paths
    from caregpt.config.specs import GROUPS, RunConfig
    from caregpt.models.export import export_model
    from caregpt.models.export_cli import ExportArgs

    parts = build_sections(_values(step.values, f"export step {step.name!r}"), {**GROUPS, "export": ExportArgs}, "export")
    config = resolve_paths(RunConfig(**{g: parts[g] for g in GROUPS}))
    options = parts["export"]
    template = config.data.template if "template" in step.values else None
    export_model(config, export_size=options.export_size, export_dtype=options.export_dtype, overwrite=options.overwrite, template=template)


def run_eval(step: PlannedStep) -> None:
    if step.values.get("task") in ("triage", "safety", "deid"):  # the medical layer's tasks keep their own entry point
        import importlib

        argv = [f"--{k}={v}" for k, v in step.values.items() if v is not None]
        code = importlib.import_module("caregpt.medical.eval_cli").main(argv)
        if code:
            raise RuntimeError(f"eval step {step.name!r} exited with status {code}")
        return
    from caregpt.eval.cli import evaluate

    evaluate(step.values, f"eval step {step.name!r}")


def run_deploy(step: PlannedStep) -> None:
    from caregpt.pipeline.deploy import deploy_and_ask

    deploy_and_ask(step)


RUNNERS: dict[str, Callable[[PlannedStep], None]] = {
    "new-model": run_new_model,
    **{stage: run_train for stage in ("pt", "sft", "rm", "dpo", "ppo")},
    "prepare": run_prepare,
    "tune": run_tune,
    "predict": run_predict,
    "eval": run_eval,
    "export": run_export,
    "deploy": run_deploy,
}

# steps whose printout is the point (training progress lines, the deployed answer) keep it on the terminal
QUIET_EXEMPT = {"new-model", "pt", "sft", "rm", "dpo", "ppo", "prepare", "tune", "deploy"}


def _key_numbers(metrics: dict[str, Any], most: int = 4) -> str:
    """` (train_loss 6.53, step 120, ...)`: the first few of the report's headline metrics the step has."""
    shown = [f"{key} {metrics[key]:.4g}" if isinstance(metrics[key], float) else f"{key} {metrics[key]}"
             for key in SHOWN if key in metrics][:most]
    return f" ({', '.join(shown)})" if shown else ""


def _marker(run_dir: Path, name: str) -> Path:
    return run_dir / MARKERS / f"{name}.json"


def _finished(run_dir: Path, step: PlannedStep) -> dict[str, Any] | None:
    """The record of this step's earlier run, if it can stand for running it again."""
    if step.uses == "deploy" and step.values.get("keep_running"):
        return None  # its result is a running server, gone with the process that started it (make demo, run twice)
    path = _marker(run_dir, step.name)
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return done if done.get("fingerprint") == step.fingerprint else None


def run_pipeline(spec: PipelineSpec, *, only: list[str] | None = None, force_from: str | None = None) -> list[StepRecord]:
    """Run every step (or `only` some), skipping finished ones; returns one record per step."""
    from caregpt.runtime import ensure_ray

    steps = plan(spec)  # every reference and config checked before anything runs
    names = [s.name for s in steps]
    for name in (only or []) + ([force_from] if force_from else []):
        if name not in names:
            raise ValueError(f"no step named {name!r}; steps: {', '.join(names)}")
    run_dir = Path(spec.run_dir)
    (run_dir / MARKERS).mkdir(parents=True, exist_ok=True)
    records: list[StepRecord] = []
    rerun = False  # once a step runs, later ones run too
    for step in steps:
        record = StepRecord(step.name, step.uses, "not run", output_dir=str(step.output_dir))
        records.append(record)
        if only and step.name not in only:
            done = _finished(run_dir, step)
            record.status, record.metrics = ("skipped", done.get("metrics", {})) if done else ("not run", {})
            continue
        rerun = rerun or step.name == force_from
        done = None if rerun else _finished(run_dir, step)
        if done:
            record.status, record.metrics, record.seconds = "skipped", done.get("metrics", {}), done.get("seconds", 0.0)
            record.files = done.get("files", [])
            print(f"[pipeline] {step.name} ({step.uses}): finished earlier, skipped", flush=True)
            continue
        rerun = True
        print(f"[pipeline] {step.name} ({step.uses}) -> {step.output_dir}", flush=True)
        # the resolved options of every step, beside the report: how each output was made
        (run_dir / MARKERS / f"{step.name}.config.yaml").write_text(
            yaml.safe_dump({"uses": step.uses, **step.values}, allow_unicode=True, sort_keys=False), encoding="utf-8")
        ensure_ray(spec.defaults.get("ray_address"))  # once, when the first step runs: a finished pipeline starts no Ray
        start = time.perf_counter()
        try:
            # a quiet run shows the step's key numbers on its `done` line; a verb's own printout (a metrics
            # dump, a table) goes to the log with the rest, and its results are in the step's files
            printout = contextlib.redirect_stdout(sys.stderr) if is_quiet() and step.uses not in QUIET_EXEMPT else contextlib.nullcontext()
            with printout:
                RUNNERS[step.uses](step)
        except BaseException as exc:
            record.status, record.seconds, record.error = "failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
            write_report(spec, records)
            raise
        record.status, record.seconds = "ran", time.perf_counter() - start
        record.metrics, record.files = collect_metrics(step.output_dir)
        _marker(run_dir, step.name).write_text(json.dumps({
            "fingerprint": step.fingerprint, "outputs": step.outputs, "metrics": record.metrics, "files": record.files,
            "seconds": record.seconds, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }, ensure_ascii=False, indent=2))
        print(f"[pipeline] {step.name}: done in {record.seconds:.0f}s{_key_numbers(record.metrics)}", flush=True)
    write_report(spec, records)
    return records
