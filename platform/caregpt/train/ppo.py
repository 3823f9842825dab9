"""Stage ppo: PPO with a KL penalty, run by every Ray Train worker (``ppo_loop``).

One step, on every worker:
1. draw prompts from (seed, step, rank) alone, so a resumed or re-run step sees the same prompts
   and samples the same responses, wherever the last checkpoint happened to be;
2. sample responses with the policy, score them with the reward (:mod:`caregpt.train.rewards`);
3. log-probs of the policy and of the reference (the same weights with the LoRA adapter off: no
   second copy of the model), values from a linear head on the last hidden state;
4. per-token rewards = -kl_coef * KL, plus the score on the last token; GAE; whitened advantages;
5. ppo_epochs passes over minibatches; DDP averages the gradients across workers.

Batch keys, read as LLaMA-Factory / MedicalGPT read them for PPO: each worker rolls out
per_device_train_batch_size x gradient_accumulation_steps prompts per step, and each minibatch of
per_device_train_batch_size is one optimizer step. The learning rate is constant.
"""

from __future__ import annotations

import json
import logging
import sys
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from caregpt.config.loader import ConfigError
from caregpt.train import ppo_math as pm
from caregpt.train.rewards import validate_reward

logger = logging.getLogger(__name__)

VALUE_COEF = 0.1  # squared value errors are larger than the surrogate; unweighted they would dominate the gradient
KL_HORIZON = 10000  # samples over which the adaptive KL coefficient may change by e^(+-0.2) (Ziegler et al.)
STATE_FILE = "ppo_state.pt"  # optimizer, KL coefficient, step: tensors / dicts / numbers only (weights_only)
VALUE_HEAD_FILE = "value_head.safetensors"
HISTORY_FILE = "ppo_history.json"


def validate_ppo(config) -> None:
    """Driver-side checks for stage ppo (reward, finetuning type, data shape); ConfigError with a fix."""
    validate_reward(config)
    if config.finetune.finetuning_type != "lora":
        raise ConfigError(
            f"stage ppo trains LoRA adapters only (finetuning_type lora, QLoRA included), not {config.finetune.finetuning_type!r}: "
            "the reference policy is the same weights with the adapter switched off, full/freeze PPO would need a second full copy"
        )
    if config.data.packing:
        raise ConfigError("stage ppo samples one prompt per row: set packing false")


# ---- prompts ---------------------------------------------------------------------------------


def load_prompts(dataset) -> list[np.ndarray]:
    prompts = [p for p in (pm.prompt_of(row["input_ids"], row["labels"]) for row in (dataset[i] for i in range(len(dataset)))) if p is not None]
    if not prompts:
        raise ValueError("no row of the PPO data has an answer to take a prompt from (all labels are IGNORE_INDEX)")
    return prompts


# ---- model -----------------------------------------------------------------------------------


class PolicyWithValue(nn.Module):
    """Policy and value head in one module, so one DDP wrapper syncs the gradients of both."""

    def __init__(self, policy: nn.Module, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(hidden_size, 1)
        # zero start: values begin at 0 instead of noise, so the first advantages are just the rewards
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, sequences: torch.Tensor, attention: torch.Tensor, response_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits predicting each response token, value of the state before it), both [batch, response_len, ...]."""
        out = self.policy(**_model_inputs(sequences, attention, response_len), output_hidden_states=True)
        hidden = out.hidden_states[-1][:, -response_len - 1 : -1]
        return out.logits[:, :-1], self.value_head(hidden.float()).squeeze(-1)


def _model_inputs(sequences: torch.Tensor, attention: torch.Tensor, response_len: int) -> dict[str, Any]:
    # positions count real tokens only, as generate() did for the left-padded prompts; the
    # logits are needed at the response positions alone (the vocabulary-wide tensor is the big one)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": sequences, "attention_mask": attention, "position_ids": positions, "logits_to_keep": response_len + 1, "use_cache": False}


@torch.no_grad()
def reference_logprobs(policy: nn.Module, sequences: torch.Tensor, attention: torch.Tensor, responses: torch.Tensor, temperature: float) -> torch.Tensor:
    with policy.disable_adapter():  # the base weights are the reference: PPO starts from them
        logits = policy(**_model_inputs(sequences, attention, responses.shape[1])).logits[:, :-1]
    return pm.logprobs_from_logits(logits / temperature, responses)


def _no_dropout(model: nn.Module) -> None:
    # with dropout the policy would not be the one that sampled: ratios start away from 1 and the
    # KL to the reference is noise. Zeroed, train and eval modes compute the same function.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _generation_config(config, tokenizer, policy):
    from transformers import GenerationConfig

    eos = policy.generation_config.eos_token_id if policy.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    eos = sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None})
    # a fresh config, not the model's: any repetition penalty / top-p it ships would make the
    # sampling distribution differ from the softmax(logits / temperature) that the ratios use
    return GenerationConfig(
        do_sample=True, temperature=config.finetune.ppo_temperature, top_k=0, top_p=1.0, max_new_tokens=config.generation.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True,
    )


# ---- rollout and update ----------------------------------------------------------------------


@dataclass
class Rollout:
    sequences: torch.Tensor  # [B, P + T] left-padded prompt + response
    attention: torch.Tensor
    responses: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T]
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor  # [B]
    kl: torch.Tensor  # [B] sum of per-token KL (k1) over each response


@torch.no_grad()
def rollout(module: PolicyWithValue, prompts: list[np.ndarray], tokenizer, reward_fn, generation, config, kl_coef: float, device) -> Rollout:
    ft = config.finetune
    prompt_ids, prompt_mask = (t.to(device) for t in pm.left_pad(prompts, tokenizer.pad_token_id))
    module.eval()
    sequences = module.policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation)
    responses = sequences[:, prompt_ids.shape[1] :]
    mask = pm.response_mask(responses, generation.eos_token_id)
    attention = torch.cat([prompt_mask, mask], dim=1)
    logits, values = module(sequences, attention, responses.shape[1])
    logprobs = pm.logprobs_from_logits(logits / ft.ppo_temperature, responses)
    ref = reference_logprobs(module.policy, sequences, attention, responses, ft.ppo_temperature)
    # prompts keep their chat template (a reward model scores templated text), lose the left padding
    prompt_texts = tokenizer.batch_decode([p.tolist() for p in prompts], skip_special_tokens=False)
    scores = reward_fn(prompt_texts, tokenizer.batch_decode(responses, skip_special_tokens=True)).to(device).float()
    kl = pm.kl_estimate(logprobs, ref) * mask
    rewards = pm.penalised_rewards(scores, kl, mask, kl_coef)
    advantages, returns = pm.gae(rewards, values, mask, ft.ppo_gamma, ft.ppo_lambda)
    return Rollout(sequences, attention, responses, mask, logprobs, values * mask, pm.masked_whiten(advantages, mask), returns, scores, kl.sum(1))


def ppo_update(model: nn.Module, optimizer, params: list[nn.Parameter], roll: Rollout, config) -> dict[str, float]:
    """ppo_epochs passes over the rollout in shuffled minibatches; one optimizer step each."""
    ft, size = config.finetune, config.train.per_device_train_batch_size
    response_len, totals, updates = roll.responses.shape[1], {"policy_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "loss": 0.0}, 0
    model.train()
    for _ in range(ft.ppo_epochs):
        order = torch.randperm(len(roll.scores), device=roll.scores.device)
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            logits, values = model(roll.sequences[idx], roll.attention[idx], response_len)
            logprobs = pm.logprobs_from_logits(logits / ft.ppo_temperature, roll.responses[idx])
            pg, clipfrac = pm.policy_loss(logprobs, roll.logprobs[idx], roll.advantages[idx], roll.mask[idx], ft.ppo_clip_range)
            vf, _ = pm.value_loss(values, roll.values[idx], roll.returns[idx], roll.mask[idx], ft.ppo_value_clip)
            loss = pg + VALUE_COEF * vf
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces the gradients here
            torch.nn.utils.clip_grad_norm_(params, config.train.max_grad_norm)
            optimizer.step()
            for key, value in (("policy_loss", pg), ("value_loss", vf), ("clipfrac", clipfrac), ("loss", loss)):
                totals[key] += float(value.detach())
            updates += 1
    return {k: v / max(updates, 1) for k, v in totals.items()}


def step_metrics(roll: Rollout, update: dict[str, float], kl_coef: float, device) -> dict[str, float]:
    """This worker's numbers, averaged over all workers (equal batch sizes: the mean of means is the mean)."""
    local = {
        "reward_mean": roll.scores.mean().item(),
        "reward_sq": (roll.scores**2).mean().item(),
        "kl": roll.kl.mean().item(),
        "response_len": roll.mask.sum(1).float().mean().item(),
        **update,
    }
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = torch.tensor(list(local.values()), dtype=torch.float64, device=device)
        torch.distributed.all_reduce(values)
        local = dict(zip(local, (values / torch.distributed.get_world_size()).tolist()))
    local["reward_std"] = math.sqrt(max(local.pop("reward_sq") - local["reward_mean"] ** 2, 0.0))
    local["kl_coef"] = kl_coef
    return local


# ---- checkpoints and outputs -----------------------------------------------------------------


def _save_weights(directory: Path, module: PolicyWithValue) -> None:
    from safetensors.torch import save_file

    from caregpt.models.adapters import save_trained

    directory.mkdir(parents=True, exist_ok=True)
    save_trained(module.policy, directory)  # adapter_model.safetensors + adapter_config.json: usable as is
    save_file({k: v.contiguous() for k, v in module.value_head.state_dict().items()}, str(directory / VALUE_HEAD_FILE))


def save_state(directory: Path, module: PolicyWithValue, optimizer, kl_ctl: pm.AdaptiveKLController, step: int, logs: dict) -> None:
    """A resumable checkpoint. No RNG state: every step reseeds from (seed, step, rank)."""
    _save_weights(directory, module)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "kl_controller": kl_ctl.state_dict()}, directory / STATE_FILE)
    (directory / HISTORY_FILE).write_text(json.dumps(logs))


def load_state(directory: Path, module: PolicyWithValue, optimizer, kl_ctl: pm.AdaptiveKLController) -> tuple[int, dict]:
    """Weights, optimizer and KL coefficient from a checkpoint; returns (its step, {"history", "window"})."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from safetensors.torch import load_file

    device = next(module.parameters()).device
    set_peft_model_state_dict(module.policy, load_peft_weights(str(directory), device=str(device)))
    module.value_head.load_state_dict(load_file(str(directory / VALUE_HEAD_FILE), device=str(device)))
    state = torch.load(directory / STATE_FILE, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    kl_ctl.load_state_dict(state["kl_controller"])
    return int(state["step"]), json.loads((directory / HISTORY_FILE).read_text())


def window_mean(window: list[dict[str, float]]) -> dict[str, float]:
    """One log entry for the steps since the last one (as the HF Trainer averages its loss): single
    PPO steps are noisy. step and kl_coef are the latest values, not averages."""
    entry = {k: sum(m[k] for m in window) / len(window) for k in window[-1]}
    entry.update(step=window[-1]["step"], kl_coef=window[-1]["kl_coef"])
    return entry


def final_results(history: list[dict], resumed_from: int, prompts: int) -> dict[str, float]:
    last = history[-1]
    extra = {"reward_mean_first": history[0]["reward_mean"], "reward_mean_last": last["reward_mean"], "kl_last": last["kl"]}
    return {**last, **extra, "resumed_from_step": resumed_from, "prompts": prompts}


def write_final(directory: Path, module: PolicyWithValue, tokenizer, history: list[dict], metrics: dict) -> None:
    """The FINAL_MARKER layout of worker.py: adapter, tokenizer, trainer_log.jsonl, all_results.json, marker."""
    from caregpt.train.trainer import write_history
    from caregpt.train.worker import FINAL_MARKER

    _save_weights(directory, module)
    tokenizer.save_pretrained(str(directory))
    write_history(history, directory / "trainer_log.jsonl")
    (directory / "all_results.json").write_text(json.dumps(metrics, indent=2))
    (directory / FINAL_MARKER).write_text(json.dumps({"metrics": metrics}))


def _progress(step: int, total: int, metrics: dict[str, float], seconds_per_step: float) -> None:
    # the shape of the sft progress line, with what PPO is judged by in place of the loss
    filled, remaining = int(20 * step / total), seconds_per_step * (total - step)
    parts = [f"step {step}/{total}", f"reward {metrics['reward_mean']:.4f}", f"kl {metrics['kl']:.3f}", f"kl_coef {metrics['kl_coef']:.4f}"]
    parts += [f"len {metrics['response_len']:.1f}", f"eta {int(remaining // 60)}m{int(remaining % 60):02d}s"]
    sys.__stdout__.write(f"[caregpt] [{'#' * filled}{'.' * (20 - filled)}] " + " | ".join(parts) + "\n")  # see trainer._progress_line
    sys.__stdout__.flush()


def total_steps(config, prompts: int, world: int) -> int:
    """max_steps, else num_train_epochs passes' worth of prompts at the global rollout size."""
    if config.train.max_steps > 0:
        return config.train.max_steps
    rollout_size = config.train.per_device_train_batch_size * config.train.gradient_accumulation_steps * world
    return max(1, math.ceil(config.train.num_train_epochs * prompts / rollout_size))


# ---- the worker loop -------------------------------------------------------------------------


def _build(config, device) -> tuple[PolicyWithValue, Any]:
    from caregpt.data.tokenize import load_tokenizer
    from caregpt.models.adapters import apply_finetuning
    from caregpt.models.loader import load_model

    # adapters in checkpoint_dir are merged into the base, never kept training: the base with the
    # PPO adapter switched off is the reference, and it must be the model PPO starts from (the SFT one)
    config = config.model_copy(update={"finetune": config.finetune.model_copy(update={"resume_lora_training": False})})
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    torch.manual_seed(config.train.seed)  # same adapter / value head init on every rank (DDP also broadcasts rank 0's)
    policy = apply_finetuning(load_model(config, for_training=True, device=str(device)), config)
    _no_dropout(policy)
    return PolicyWithValue(policy, policy.config.hidden_size).to(device), tokenizer


def _report(metrics: dict, directory: Path | None, rank: int, name: str | None = None) -> None:
    """Every worker reports (Ray Train expects all of them); only rank 0 wrote, so only it hands a checkpoint over."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if directory is not None and rank == 0 else None
    ray.train.report(metrics=dict(metrics), checkpoint=checkpoint, checkpoint_dir_name=name if checkpoint else None)


def ppo_loop(config, loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from caregpt.train.data import TokenDataset
    from caregpt.train.rewards import get_reward
    from caregpt.train.worker import _restore, quiet_ray_train_logs, scratch_dir

    quiet_ray_train_logs()
    validate_ppo(config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if loop_config.get("threads") and not config.ray.use_gpu:
        torch.set_num_threads(int(loop_config["threads"]))
    local_root = scratch_dir(context, "ppo")
    resume_path, final = _restore(local_root)
    if final is not None:  # finished before the driver died: hand the result over again
        _report(final["metrics"], Path(resume_path), rank)
        return

    device = ray.train.torch.get_device()
    prompts = load_prompts(TokenDataset.from_parquet(loop_config["data_path"]))
    module, tokenizer = _build(config, device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    kl_ctl = pm.AdaptiveKLController(config.finetune.ppo_kl_coef, config.finetune.ppo_target_kl, KL_HORIZON)
    start, logs = load_state(Path(resume_path), module, optimizer, kl_ctl) if resume_path else (0, {"history": [], "window": []})
    model = ray.train.torch.prepare_model(module, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": False})
    reward_fn, generation = get_reward(config, device), _generation_config(config, tokenizer, module.policy)
    t = config.train
    total, batch, began = total_steps(config, len(prompts), world), t.per_device_train_batch_size * t.gradient_accumulation_steps, time.perf_counter()
    if rank == 0:
        logger.info("ppo: %d prompts, steps %d..%d, %d rollouts per step on each of %d workers", len(prompts), start + 1, total, batch, world)
    for step in range(start + 1, total + 1):
        torch.manual_seed(pm.step_seed(t.seed, step, rank))  # sampling and minibatch order: reproducible per step
        chosen = [prompts[i] for i in pm.sample_indices(len(prompts), batch, t.seed, step, rank)]
        kl_coef = kl_ctl.value
        roll = rollout(module, chosen, tokenizer, reward_fn, generation, config, kl_coef, device)
        metrics = {"step": step, **step_metrics(roll, ppo_update(model, optimizer, params, roll, config), kl_coef, device)}
        kl_ctl.update(metrics["kl"], n_steps=batch * world)
        logs["window"].append(metrics)
        if step % t.logging_steps == 0 or step == total:
            metrics = window_mean(logs["window"])
            logs["history"].append(metrics)
            logs["window"] = []
            if rank == 0:
                _progress(step, total, metrics, (time.perf_counter() - began) / (step - start))
        if step % t.save_steps == 0 and step < total:
            directory = local_root / f"checkpoint-{step}"
            if rank == 0:
                save_state(directory, module, optimizer, kl_ctl, step, logs)
            _report(metrics, directory, rank, f"checkpoint-{step:06d}")
        elif not logs["window"]:  # just logged
            _report(metrics, None, rank)

    results = final_results(logs["history"], start, len(prompts))
    if rank == 0:
        write_final(local_root / "final", module, tokenizer, logs["history"], results)
    _report({**results, "final": 1.0}, local_root / "final", rank, "final")
    shutil.rmtree(local_root, ignore_errors=True)
