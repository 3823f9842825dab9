"""Typed run specs.

Keys are flat and spelled as in CareGPT / LLaMA-Factory (`--lora_rank 8`), so every
`train_bash.py` command works unchanged; internally they are grouped by concern. The docstring
under each field is its `--help` text (pydantic `use_attribute_docstrings`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

# Spec, key, split_commas and pick are imported from here by many verbs: this module re-exports them
from caregpt.config.fields import CommaList, QuantizationBit, Spec, adopt_adapter_alias, key, split_commas  # noqa: F401
from caregpt.config.generation import GenerationArgs
from caregpt.config.pick import pick  # noqa: F401

OPS = key("operational")
DATA = key("data")
WHERE = "sets where or how a trial runs, not what it learns: set it once in the base config"


class ModelArgs(Spec):
    model_name_or_path: Annotated[str | None, key("data", path="in")] = None
    """Base model: a local Hugging Face model directory (or a hub id where a hub is reachable)."""

    checkpoint_dir: Annotated[CommaList[str] | None, key(path="in")] = None
    """Adapter checkpoint(s) to load on top of the base model, comma separated (CareGPT spelling)."""

    adapter_name_or_path: Annotated[CommaList[str] | None, key(path="in")] = None
    """Alias of checkpoint_dir (LLaMA-Factory spelling)."""

    trust_remote_code: Annotated[bool, DATA] = False
    """Allow model code shipped inside the model directory to run. Off unless you trust the source."""

    use_fast_tokenizer: Annotated[bool, DATA] = True
    """Use the Rust (fast) tokenizer."""

    quantization_bit: QuantizationBit = None
    """Load the base model quantised to 4 or 8 bits with bitsandbytes (QLoRA); requires finetuning_type lora."""

    quantization_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type for QLoRA."""

    double_quantization: bool = True
    """Quantise the quantisation constants too (saves ~0.4 bit per parameter)."""

    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "sdpa"
    """Attention kernel. FlashAttention needs a GPU and the flash-attn package."""

    use_cache: Annotated[bool, OPS] = False
    """Keep the KV cache during training (accepted for compatibility; training turns it off)."""

    @model_validator(mode="after")
    def _merge_adapter_alias(self) -> ModelArgs:
        adopt_adapter_alias(self)
        return self


class DataArgs(Spec):
    dataset: Annotated[CommaList[str] | None, DATA] = None
    """Dataset names from dataset_info.json (or paths to data files), comma separated."""

    dataset_dir: Annotated[str, key("data", path="in")] = "data"
    """Folder that holds dataset_info.json and the data files it names."""

    dataset_info: Annotated[str | None, key("data", path="in")] = None
    """Registry file to use instead of DATASET_DIR/dataset_info.json; file names stay relative to dataset_dir."""

    template: Annotated[str, DATA] = "default"
    """Chat template: auto (the tokenizer's own), default, llama2, llama3, chatml, qwen, baichuan2, mistral."""

    system: Annotated[str | None, DATA] = None
    """System prompt for every SFT / preference record that has none of its own."""

    cutoff_len: Annotated[int, DATA] = 1024
    """Maximum tokens per training sequence; longer records are truncated (sft) or split (pt)."""

    max_samples: Annotated[int | None, DATA] = None
    """Use at most this many records from each dataset (for quick runs)."""

    mix_strategy: Annotated[Literal["concat", "interleave_under", "interleave_over"], DATA] = "concat"
    """How several datasets combine: one after the other, or interleaved (stop at the shortest / longest)."""

    interleave_probs: Annotated[CommaList[float] | None, DATA] = None
    """Sampling probabilities per dataset for interleaving, comma separated."""

    overwrite_cache: Annotated[bool, key("operational", tune="changes the tokenized data (prepared once for all trials) or the model it comes from")] = False
    """Re-tokenize even if a prepared (tokenized) copy of the data exists."""

    tokenized_path: Annotated[str | None, key("operational", path="out", tune="changes the tokenized data (prepared once for all trials) or the model it comes from")] = None
    """Where `caregpt data prepare` writes / training reads the tokenized parquet copy."""

    preprocessing_num_workers: Annotated[int | None, key("operational", tune="changes the tokenized data (prepared once for all trials) or the model it comes from")] = None
    """Parallel tokenizer workers in the Ray Data pipeline (default: one per available CPU)."""

    packing: Annotated[bool, DATA] = False
    """Pack several samples into each sequence without cross-attention between them (removes padding)."""

    val_size: Annotated[float, key(tune="changes the held-out split or the seed, so trials' metrics would not be comparable")] = 0.0
    """Fraction (<1) or count (>=1) of records held out for evaluation."""

    skip_invalid: Annotated[bool, key(tune="changes the tokenized data (prepared once for all trials) or the model it comes from")] = False
    """Train on the valid records when some are invalid (they are counted and reported), instead of refusing."""

    deidentify: Annotated[bool, DATA] = False
    """Mask personal identifiers (names in clinical context, ID numbers, phones, emails, addresses, record
    numbers, dates) in every record as it is read, before templating and tokenization (see `caregpt data deid`)."""

    streaming: Annotated[bool, OPS] = False
    """Accepted for compatibility: the Ray Data pipeline always streams."""

    @field_validator("cutoff_len")
    @classmethod
    def _positive_cutoff(cls, value: int) -> int:
        if value < 8:
            raise ValueError("must be at least 8 tokens")
        return value


class FinetuneArgs(Spec):
    stage: Annotated[Literal["pt", "sft", "rm", "dpo", "ppo"], key(tune="fixes the stage: one stage per experiment")] = "sft"
    """Training stage: pretraining, supervised fine-tuning, reward model, DPO or PPO."""

    finetuning_type: Literal["lora", "freeze", "full"] = "lora"
    """Which parameters train: LoRA adapters, the last layers only (freeze), or all of them."""

    lora_target: CommaList[str] = ["q_proj", "v_proj"]
    """Module names that get LoRA adapters, comma separated, or `all` for every linear layer."""

    lora_rank: int = 8
    """LoRA rank r."""

    lora_alpha: float | None = None
    """LoRA scaling alpha; default 2 x lora_rank."""

    lora_dropout: float = 0.1
    """Dropout on the LoRA path."""

    num_layer_trainable: int = 3
    """With finetuning_type freeze: how many of the last decoder layers train."""

    resume_lora_training: bool = True
    """Keep training the adapter in checkpoint_dir (true) or merge it and start a new one (false). On a quantised base (quantization_bit) a single adapter is never merged: it keeps training, as in CareGPT."""

    dpo_beta: float = 0.1
    """DPO temperature beta."""

    dpo_loss: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    """DPO loss variant."""

    reward_model: Annotated[str | None, key(path="in")] = None
    """PPO: path of the reward model trained by the rm stage (a sequence-classification model or adapter dir)."""

    reward_function: str | None = None
    """PPO: a named rule reward instead of a reward model (see `caregpt.train.rewards`)."""

    ppo_epochs: int = 2
    """PPO: optimisation passes over each batch of generated experience."""

    ppo_clip_range: float = 0.2
    """PPO: policy ratio clipping epsilon."""

    ppo_value_clip: float = 0.2
    """PPO: value-function clipping range."""

    ppo_kl_coef: float = 0.05
    """PPO: initial coefficient of the per-token KL penalty to the reference model."""

    ppo_target_kl: float | None = 6.0
    """PPO: target KL for the adaptive KL controller (None keeps the coefficient fixed)."""

    ppo_gamma: float = 1.0
    """PPO: discount factor for GAE."""

    ppo_lambda: float = 0.95
    """PPO: GAE lambda."""

    ppo_temperature: float = 1.0
    """PPO: sampling temperature while generating experience."""

    @field_validator("lora_rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be a positive integer")
        return value

    @property
    def effective_lora_alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank


class TrainArgs(Spec):
    do_train: Annotated[bool | None, OPS] = None
    """Train. Default: true, unless --do_predict or --do_eval asks for a prediction / evaluation run instead."""

    do_eval: Annotated[bool, OPS] = False
    """With do_train: evaluate on the held-out split (val_size). Without: score generated answers on the dataset
    (BLEU-4, ROUGE-1/2/L) into output_dir/eval_results.json, training nothing (needs predict_with_generate)."""

    do_predict: Annotated[bool, OPS] = False
    """Batch prediction instead of training: output_dir/generated_predictions.jsonl and predict_results.json."""

    output_dir: Annotated[str, key(path="out", tune=WHERE)] = "outputs/run"
    """Where the adapter / model, resolved config, logs and plots go."""

    overwrite_output_dir: Annotated[bool, OPS] = False
    """Allow writing into a non-empty output_dir that holds a finished run."""

    learning_rate: float = 5e-5
    """Peak learning rate (AdamW)."""

    num_train_epochs: Annotated[float, key(tune="is the training budget, which the ASHA scheduler manages: set it once in the base config")] = 3.0
    """Passes over the data (fractions allowed); ignored when max_steps > 0."""

    max_steps: Annotated[int, key(tune="is the training budget, which the ASHA scheduler manages: set it once in the base config")] = -1
    """Total optimizer steps; overrides num_train_epochs when > 0."""

    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = "cosine"
    """Learning-rate schedule."""

    warmup_ratio: float = 0.0
    """Fraction of steps spent warming the learning rate up."""

    warmup_steps: int = 0
    """Warm-up steps (overrides warmup_ratio when > 0)."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    max_grad_norm: float = 1.0
    """Gradient clipping norm."""

    per_device_train_batch_size: int = 4
    """Samples per worker per micro-step."""

    per_device_eval_batch_size: int = 8
    """Samples per worker per evaluation / prediction step."""

    gradient_accumulation_steps: int = 1
    """Micro-steps per optimizer step. Global batch = this x per_device_train_batch_size x num_workers."""

    group_by_length: bool = True
    """Batch samples of similar length together (megabatches of 50 steps): far less padding, same data per epoch."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""

    logging_steps: Annotated[int, OPS] = 10
    """Log loss / learning rate / throughput every N optimizer steps."""

    save_steps: Annotated[int, OPS] = 500
    """Checkpoint every N optimizer steps."""

    eval_steps: Annotated[int | None, OPS] = None
    """Evaluate every N steps (default: save_steps) when do_eval is on."""

    save_total_limit: Annotated[int | None, OPS] = None
    """Keep only this many checkpoints (alias of num_to_keep)."""

    seed: Annotated[int, key(tune="changes the held-out split or the seed, so trials' metrics would not be comparable")] = 42
    """Random seed for initialisation, shuffling and dropout."""

    fp16: bool = False
    """Mixed precision with float16 (GPU)."""

    bf16: bool = False
    """Mixed precision with bfloat16 (Ampere+ GPU or CPU)."""

    plot_loss: Annotated[bool, OPS] = False
    """Save a loss curve PNG in output_dir."""

    predict_with_generate: Annotated[bool, OPS] = False
    """Generate answers when predicting / evaluating (prediction always generates; do_eval without do_train needs it)."""

    report_to: Annotated[CommaList[Literal["none", "tensorboard", "wandb", "mlflow"]], OPS] = ["none"]
    """Extra loggers besides Ray and trainer_log.jsonl, comma separated: tensorboard (event files in
    OUTPUT_DIR/runs, from rank 0), wandb, mlflow (each needs its package installed), or none."""

    @model_validator(mode="after")
    def _precision(self) -> TrainArgs:
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 are mutually exclusive: choose one")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ValueError(f"report_to lists none together with {[r for r in self.report_to if r != 'none']}: choose none or the loggers")
        return self

    @property
    def trains(self) -> bool:
        """do_train as resolved: unset means train unless a prediction / evaluation run was asked for."""
        return self.do_train if self.do_train is not None else not (self.do_predict or self.do_eval)

    @property
    def loggers(self) -> list[str]:
        return [r for r in self.report_to if r != "none"]


class RayArgs(Spec):
    ray_address: Annotated[str | None, OPS] = None
    """Ray cluster to run on (`auto`, `ray://host:10001`, ...). Default: RAY_ADDRESS, else an embedded local Ray."""

    num_workers: Annotated[int, key(tune=WHERE)] = 1
    """Ray Train workers (one per GPU on a GPU cluster)."""

    use_gpu: Annotated[bool, key(tune=WHERE)] = False
    """Give each worker a GPU."""

    resources_per_worker: Annotated[dict[str, float] | None, key(tune=WHERE)] = None
    """Resources per worker, e.g. {"CPU": 4, "GPU": 1}."""

    placement_strategy: Annotated[Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"], OPS] = "PACK"
    """How workers are placed across nodes."""

    deepspeed: Annotated[str | None, key(path="in", tune=WHERE)] = None
    """DeepSpeed ZeRO stage (2 or 3) or a path to a DeepSpeed JSON config."""

    storage_path: Annotated[str | None, key("operational", path="out")] = None
    """Where Ray Train keeps checkpoints (shared storage on multi-node). Default: OUTPUT_DIR/ray."""

    num_to_keep: Annotated[int | None, OPS] = None
    """Checkpoints kept by Ray Train (oldest removed first)."""

    max_failures: Annotated[int, OPS] = 0
    """Worker failures tolerated; the run restarts from the latest checkpoint."""

    @field_validator("deepspeed", mode="before")
    @classmethod
    def _deepspeed(cls, value: Any) -> Any:
        return None if value is None else str(value)


GROUPS: dict[str, type[Spec]] = {
    "model": ModelArgs,
    "data": DataArgs,
    "finetune": FinetuneArgs,
    "train": TrainArgs,
    "generation": GenerationArgs,
    "ray": RayArgs,
}


class RunConfig(BaseModel):
    """One training / data run: every flat key lives in exactly one group."""

    model_config = ConfigDict(extra="forbid")

    model: ModelArgs = ModelArgs()
    data: DataArgs = DataArgs()
    finetune: FinetuneArgs = FinetuneArgs()
    train: TrainArgs = TrainArgs()
    generation: GenerationArgs = GenerationArgs()
    ray: RayArgs = RayArgs()

    def flat(self) -> dict[str, Any]:
        """The flat key -> value view (what YAML files and flags use)."""
        out: dict[str, Any] = {}
        for group in GROUPS:
            out.update(getattr(self, group).model_dump(mode="json"))
        return out


def field_meta(name: str) -> dict[str, Any]:
    """The metadata of a flat key: role (shaping | operational | data), path (in | out), tune (why it is fixed)."""
    spec = GROUPS[key_owner()[name]]
    extra = spec.model_fields[name].json_schema_extra
    return {"role": "shaping", **(extra if isinstance(extra, dict) else {})}


def keys_with(**wanted: str) -> tuple[str, ...]:
    """Flat keys whose metadata matches, e.g. keys_with(role="operational"), keys_with(path="in")."""
    return tuple(k for k in key_owner() if all(field_meta(k).get(m) == v for m, v in wanted.items()))


def key_owner() -> dict[str, str]:
    """Flat key -> group name; a key defined twice would make flags ambiguous, so refuse it."""
    owners: dict[str, str] = {}
    for group, spec in GROUPS.items():
        for key in spec.model_fields:
            if key in owners:
                raise RuntimeError(f"config key {key!r} defined in both {owners[key]} and {group}")
            owners[key] = group
    return owners
