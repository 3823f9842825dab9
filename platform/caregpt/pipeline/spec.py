"""The pipeline file: named steps, each one platform command, run in order in one run directory.

    name: demo
    run_dir: .demo/run
    defaults: {template: chatml, cutoff_len: 256, dataset_dir: ...}   # training-style steps get these
    steps:
      - {name: model, uses: new-model, with: {preset: tiny, corpus: ...}}
      - {name: pt,  uses: pt,  from: model, with: {dataset: medical_pt, finetuning_type: full}}
      - {name: sft, uses: sft, from: pt,    with: {dataset: medical_sft}}
      - {name: dpo, uses: dpo, from: sft,   with: {dataset: medical_pref, finetuning_type: lora}}
      - {name: export, uses: export, from: dpo}
      - {name: eval, uses: predict, from: export, with: {dataset: medical_sft, do_eval: true}}
      - {name: deploy, uses: deploy, from: export, with: {question: ...}}

`from: STEP` hands that step's model (and adapter) to this one; `${steps.NAME.KEY}` inside a value
refers to an earlier step's output (output_dir, model_name_or_path, checkpoint_dir).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from caregpt.config.loader import ConfigError, nearest_key

TRAIN_STAGES = ("pt", "sft", "rm", "dpo", "ppo")
# steps whose options are RunConfig keys (defaults apply to them)
CONFIG_STEPS = TRAIN_STAGES + ("prepare", "predict", "tune")
STEP_KINDS = ("new-model",) + CONFIG_STEPS + ("eval", "export", "deploy")
KIND_HELP = {
    "new-model": "build a tiny Llama model + tokenizer (caregpt new-model options: preset, corpus, seed)",
    "pt": "continued pretraining (caregpt train --stage pt)",
    "sft": "supervised fine-tuning (caregpt train --stage sft)",
    "rm": "reward model (caregpt train --stage rm)",
    "dpo": "direct preference optimisation (caregpt train --stage dpo)",
    "ppo": "PPO against a reward model or rule (caregpt train --stage ppo)",
    "prepare": "tokenize datasets once into parquet (caregpt data prepare)",
    "tune": "Ray Tune search over a stage (caregpt tune; `tune:` section inside `with`)",
    "predict": "batch generation (+ BLEU/ROUGE with do_eval) on Ray Data (caregpt predict)",
    "eval": "metrics: generation file, multiple-choice exam, triage, safety (caregpt eval)",
    "export": "merge adapters into a standalone model directory (caregpt export)",
    "deploy": "serve the model with Ray Serve, ask one streamed question, then stop (unless keep_running)",
}


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    """Unique step name; also the folder of its outputs inside run_dir."""
    uses: str
    """What the step runs: one of STEP_KINDS."""
    from_: str | None = Field(default=None, alias="from")
    """An earlier step whose model (and adapter) this step starts from."""
    config: str | None = None
    """A YAML file with the step's options (keys in `with` override it)."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    """The step's options: config keys of that command."""


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    run_dir: str
    """Every step writes under run_dir/<step name>; the report goes to run_dir."""
    defaults: dict[str, Any] = Field(default_factory=dict)
    """Config keys given to every training / prepare / predict / tune step (a step's own keys win)."""
    steps: list[StepSpec]


def load_pipeline(path: str | Path) -> PipelineSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline is a mapping with run_dir and steps")
    raw.setdefault("run_dir", str(Path("runs") / path.stem))
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    # relative paths mean relative to the working directory, as in every training config
    spec.run_dir = str(Path(spec.run_dir).resolve())
    check_steps(spec, source=str(path))
    return spec


def check_steps(spec: PipelineSpec, source: str = "pipeline") -> None:
    """Names unique, kinds known, `from` pointing back: all before anything runs."""
    if not spec.steps:
        raise ConfigError(f"{source}: no steps; add at least one under `steps:`")
    seen: list[str] = []
    for i, step in enumerate(spec.steps):
        where = f"{source}: step {i + 1} ({step.name!r})"
        if step.uses not in STEP_KINDS:
            hint = nearest_key(step.uses, STEP_KINDS)
            raise ConfigError(f"{where}: unknown step kind uses={step.uses!r}" + (f"; did you mean {hint!r}?" if hint else "")
                              + f"; valid kinds: {', '.join(STEP_KINDS)}")
        if step.name in seen:
            raise ConfigError(f"{where}: the name {step.name!r} is used twice; step names must be unique")
        if not step.name.replace("-", "_").isidentifier():
            raise ConfigError(f"{where}: step names are letters, digits, - and _ (they become folder names)")
        if step.from_ is not None and step.from_ not in seen:
            later = step.from_ in [s.name for s in spec.steps]
            raise ConfigError(f"{where}: from={step.from_!r} " + ("comes later; a step can only start from an earlier one"
                              if later else f"is not a step; earlier steps: {', '.join(seen) or 'none'}"))
        if step.config and not Path(step.config).is_file():
            raise ConfigError(f"{where}: config file not found: {step.config}")
        seen.append(step.name)
