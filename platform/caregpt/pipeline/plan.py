"""Resolve a pipeline into concrete steps before anything runs.

Every step's outputs are known in advance (run_dir/<name>), so references between steps are resolved
and every training-style step's config is validated up front: a typo in the last step fails in a second,
not after an hour of training.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caregpt.config.loader import ConfigError, load_config, read_yaml
from caregpt.pipeline.spec import CONFIG_STEPS, TRAIN_STAGES, PipelineSpec, StepSpec

REF = re.compile(r"\$\{steps\.([A-Za-z0-9_-]+)\.([A-Za-z_]+)\}")
OUTPUT_KEYS = ("output_dir", "model_name_or_path", "checkpoint_dir")


@dataclass
class PlannedStep:
    name: str
    uses: str
    values: dict[str, Any]
    """The step's options, references resolved (config keys, or the command's own options)."""
    output_dir: Path
    outputs: dict[str, str] = field(default_factory=dict)
    """What later steps may use: output_dir, model_name_or_path and (for adapters) checkpoint_dir."""

    @property
    def fingerprint(self) -> str:
        text = json.dumps({"uses": self.uses, "values": self.values}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _resolve(value: Any, outputs: dict[str, dict[str, str]], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, outputs, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, outputs, where) for v in value]
    if not isinstance(value, str):
        return value

    def swap(match: re.Match) -> str:
        step, key = match.group(1), match.group(2)
        if step not in outputs:
            raise ConfigError(f"{where}: ${{steps.{step}.{key}}} names no earlier step; earlier steps: {', '.join(outputs) or 'none'}")
        if key not in outputs[step]:
            raise ConfigError(f"{where}: step {step!r} has no output {key!r}; it has: {', '.join(sorted(outputs[step]))}")
        return outputs[step][key]

    return REF.sub(swap, value)


def _outputs(uses: str, values: dict[str, Any], output_dir: Path) -> dict[str, str]:
    out = {"output_dir": str(output_dir)}
    if uses in TRAIN_STAGES:
        if values.get("finetuning_type", "lora") in ("lora", "qlora"):
            out["model_name_or_path"] = str(values.get("model_name_or_path", ""))
            out["checkpoint_dir"] = str(output_dir)
        else:
            out["model_name_or_path"] = str(output_dir)
    elif uses in ("new-model", "export"):
        out["model_name_or_path"] = str(output_dir)
    elif uses == "tune":
        out["model_name_or_path"] = str(values.get("model_name_or_path", ""))
        out["best_config"] = str(output_dir / "best_config.yaml")
    return out


def plan(spec: PipelineSpec) -> list[PlannedStep]:
    run_dir = Path(spec.run_dir)
    outputs: dict[str, dict[str, str]] = {}
    planned: list[PlannedStep] = []
    for i, step in enumerate(spec.steps):
        where = f"step {i + 1} ({step.name!r}, uses {step.uses})"
        values = _step_values(spec, step, outputs, run_dir)
        values = _resolve(values, outputs, where)
        output_dir = Path(values.get("output_dir", run_dir / step.name))
        values["output_dir"] = str(output_dir)
        if step.uses in CONFIG_STEPS:
            _validate_config(step, values, where)
        planned.append(PlannedStep(step.name, step.uses, values, output_dir, _outputs(step.uses, values, output_dir)))
        outputs[step.name] = planned[-1].outputs
    return planned


def _step_values(spec: PipelineSpec, step: StepSpec, outputs: dict[str, dict[str, str]], run_dir: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if step.uses in CONFIG_STEPS:
        values.update(spec.defaults)
    if step.config:
        values.update(read_yaml(step.config))
    if step.from_:
        source = outputs[step.from_]
        if "model_name_or_path" not in source:
            raise ConfigError(f"step {step.name!r}: from={step.from_!r} produces no model (it is a {source!r} step); "
                              "start from a new-model, training or export step")
        values.setdefault("model_name_or_path", source["model_name_or_path"])
        if "checkpoint_dir" in source and "checkpoint_dir" not in step.with_:
            values["checkpoint_dir"] = source["checkpoint_dir"]
    values.update(step.with_)
    if step.uses in TRAIN_STAGES:
        values["stage"] = step.uses
    return values


def _validate_config(step: StepSpec, values: dict[str, Any], where: str) -> None:
    config_values = {k: v for k, v in values.items() if k != "tune"}
    try:
        load_config(None, config_values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if step.uses == "tune" and not isinstance(values.get("tune"), dict):
        raise ConfigError(f"{where}: a tune step needs a `tune:` section (search_space, metric...) inside `with`")
