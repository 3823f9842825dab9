"""The arithmetic of PPO for language models, as small pure-torch functions.

Shapes: per-token tensors are ``[batch, response_len]``; ``mask`` is 1 on real response tokens and
0 on the padding after a response ended (responses are ragged: each stops at its own EOS). Masks
are expected to be prefixes (ones, then zeros), which is what sampling produces.

Nothing here knows about models, Ray or configs, so every formula, and the batch shaping at the
end (the prompt of an SFT row, per-step sampling, padding, response masks), is unit-tested on
hand-sized tensors (tests/unit/test_ppo_math.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from caregpt.data.templates import IGNORE_INDEX


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where mask is 1 (all of them, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked positions (0 when there is a single position)."""
    mean = masked_mean(values, mask)
    count = mask.to(values.dtype).sum()
    squares = masked_mean((values - mean) ** 2, mask)
    return squares * count / (count - 1) if count > 1 else squares * 0


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero-mean (optionally), unit-variance over the masked positions; padding comes back as 0.

    Whitening advantages makes the policy step size independent of the reward's scale, which
    differs by orders of magnitude between a 0/1 rule reward and a reward model's logits.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits` ([..., vocab]) for each token ([...]): gathers one column per position."""
    # log_softmax in float32: in bf16 the log-probabilities of unlikely tokens lose all precision
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy.

    k1 = log p - log q is unbiased and is what the reward penalty uses (Ziegler et al.); it can be
    negative on single tokens. k3 = (r - 1) - log r with r = q / p is also unbiased, never negative
    and lower-variance (Schulman's note on KL estimators): a better number to look at.
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use k1 or k3")


def penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL on every response token, plus the sequence score on its last token."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)  # index of the last real token of each response
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where V and A
    beyond a response's last real token are 0: the episode ended there, so nothing after it (the
    padding) may leak value back into it. returns = advantages + values is the value target.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        alive_next = mask[:, t + 1] if t + 1 < length else torch.zeros_like(mask[:, 0])
        delta = rewards[:, t] + gamma * next_value * alive_next - values[:, t]
        advantages[:, t] = delta + gamma * lam * next_advantage * alive_next
        next_value, next_advantage = values[:, t], advantages[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (to minimise) and the fraction of tokens where the clip was active."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    return loss, clipfrac.detach()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clip - R)^2) and the fraction where clipping won.

    V_clip keeps the new value within clip_range of the value at rollout time, so one noisy batch
    of returns cannot drag the critic (and with it the advantages of the next step) far at once.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask)
    return loss, clipfrac.detach()


class AdaptiveKLController:
    """The KL coefficient of Ziegler et al. (2019): nudged towards a target KL per sequence.

    coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon. Too much KL raises the
    penalty, too little lowers it; the clip and the horizon keep each change small. With
    target None the coefficient stays fixed.
    """

    def __init__(self, init_coef: float, target: float | None, horizon: int = 10000):
        self.value = float(init_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is None or self.target <= 0:
            return self.value
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


# ---- batch shaping --------------------------------------------------------------------------


def prompt_of(input_ids: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """The tokens before the last assistant answer (its last run of labelled tokens); None if there is none."""
    labelled = labels != IGNORE_INDEX
    starts = np.flatnonzero(labelled & ~np.concatenate([[False], labelled[:-1]]))
    if len(starts) == 0 or starts[-1] == 0:
        return None
    return np.asarray(input_ids[: starts[-1]], dtype=np.int64)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A seed from (seed, step, rank) alone: a step run again after a resume draws the same numbers."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def sample_indices(count: int, size: int, seed: int, step: int, rank: int) -> np.ndarray:
    return np.random.default_rng(step_seed(seed, step, rank)).choice(count, size=size, replace=size > count)


def left_pad(prompts: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned, so every response starts at the same column."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.from_numpy(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def response_mask(responses: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 up to and including the first EOS (stopping was the policy's choice too), 0 on what generate padded after."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device)).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).long()
