"""Pairwise stages on preference data: the reward model (rm) and DPO.

Both read tokenized pairs (chosen_* / rejected_* columns) and put chosen and rejected sequences of a
batch into one padded tensor (chosen rows first), so one forward pass scores both sides.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from caregpt.data.templates import IGNORE_INDEX
from caregpt.train.trainer import CareTrainer


class PairCollator:
    def __init__(self, pad_token_id: int, pad_multiple: int = 1):
        self.pad_token_id = pad_token_id
        self.pad_multiple = max(1, pad_multiple)

    def __call__(self, features: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        rows = [(f["chosen_input_ids"], f["chosen_labels"]) for f in features] + [(f["rejected_input_ids"], f["rejected_labels"]) for f in features]
        width = -(-max(len(ids) for ids, _ in rows) // self.pad_multiple) * self.pad_multiple
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, labs) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
            labels[i, : len(ids)] = torch.from_numpy(labs.astype(np.int64))
            attention[i, : len(ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "real_tokens": attention.sum()}


class _StatsMixin:
    """Averages per-step statistics (accuracy, margins) into the Trainer's own log lines.

    These trainers return a per-micro-batch MEAN loss; the Trainer divides it by
    gradient_accumulation_steps only when it believes the model takes no loss kwargs, so each
    __init__ says so after the Trainer's own __init__ guessed otherwise.
    """

    def _record(self, **values: torch.Tensor) -> None:
        prefix = "" if self.model.training else "eval_"
        for key, value in values.items():
            self._stats[prefix + key].append(float(value.detach().float().mean()))

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        prefix = "eval_" if any(k.startswith("eval_") for k in logs) else ""
        for key in [k for k in self._stats if k.startswith(prefix) and (prefix or not k.startswith("eval_"))]:
            values = self._stats.pop(key)
            logs[key] = sum(values) / len(values)
        super().log(logs, *args, **kwargs)


class RewardTrainer(_StatsMixin, CareTrainer):
    """Bradley-Terry reward model: loss = -log sigmoid(r_chosen - r_rejected)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self._stats: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        real = inputs.pop("real_tokens", None)
        if real is not None and model.training:
            self.real_tokens += int(real)
        inputs.pop("labels", None)
        rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.squeeze(-1).float()
        chosen, rejected = rewards.chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()
        self._record(accuracy=(chosen > rejected).float(), margin=chosen - rejected, reward_chosen=chosen, reward_rejected=rejected)
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of the labelled tokens of each row (causal shift applied)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


class DPOTrainer(_StatsMixin, CareTrainer):
    """Direct Preference Optimization against a frozen reference.

    With LoRA the reference is the same network with its adapter switched off, so no second copy of
    the weights is held; for freeze/full fine-tuning a frozen copy is made once at start.
    """

    def __init__(self, *args: Any, beta: float = 0.1, loss_type: str = "sigmoid", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self._stats = defaultdict(list)
        self.beta, self.loss_type = beta, loss_type
        self.reference = None
        if not hasattr(self.model, "disable_adapter"):
            import copy

            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)

    def _reference_logps(self, model, inputs) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                logits = self.reference(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            else:
                unwrapped = self.accelerator.unwrap_model(model)
                with unwrapped.disable_adapter():
                    logits = unwrapped(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            return sequence_logps(logits, inputs["labels"])

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        real = inputs.pop("real_tokens", None)
        if real is not None and model.training:
            self.real_tokens += int(real)
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        policy = sequence_logps(logits, inputs["labels"])
        reference = self._reference_logps(model, inputs)
        pc, pr = policy.chunk(2)
        rc, rr = reference.chunk(2)
        margin = (pc - rc) - (pr - rr)  # implicit reward difference, before beta
        if self.loss_type == "sigmoid":
            loss = -F.logsigmoid(self.beta * margin)
        elif self.loss_type == "hinge":
            loss = torch.relu(1 - self.beta * margin)
        else:  # ipo: regress the log-ratio gap onto 1 / (2 beta)
            loss = (margin - 1 / (2 * self.beta)) ** 2
        chosen_reward, rejected_reward = self.beta * (pc - rc).detach(), self.beta * (pr - rr).detach()
        self._record(
            rewards_chosen=chosen_reward, rewards_rejected=rejected_reward,
            rewards_margin=chosen_reward - rejected_reward, rewards_accuracy=(chosen_reward > rejected_reward).float(),
        )
        loss = loss.mean()
        return (loss, {"logits": logits}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
