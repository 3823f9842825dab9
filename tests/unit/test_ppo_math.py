"""PPO arithmetic against numbers worked out by hand (no model, no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caregpt.train.ppo_math import (
    AdaptiveKLController,
    gae,
    kl_estimate,
    left_pad,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    penalised_rewards,
    policy_loss,
    prompt_of,
    response_mask,
    sample_indices,
    value_loss,
)


def _close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-5, atol=1e-6)


def test_masked_mean_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([1.5, 3.0])


def test_masked_whiten_is_zero_mean_unit_variance_on_real_tokens_only():
    values = torch.tensor([[1.0, 2.0, 50.0], [3.0, 4.0, 50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    out = masked_whiten(values, mask)
    real = out[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.std().item() == pytest.approx(1.0, abs=1e-4)  # unbiased, as masked_var
    assert out[:, 2].tolist() == [0.0, 0.0]


def test_logprobs_gather_the_sampled_token():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])  # probabilities (1/4, 3/4) and (1/2, 1/2)
    tokens = torch.tensor([[1, 0]])
    _close(logprobs_from_logits(logits, tokens), [[math.log(0.75), math.log(0.5)]])


def test_gae_matches_a_hand_computation_and_respects_the_mask():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]])
    # 9.0 sits on the second row's padding: it must not leak into that row's advantages
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: d2 = 2 - 0.1 = 1.9; d1 = 0.9*0.1 - 0.2 = -0.11, A1 = -0.11 + 0.72*1.9 = 1.258;
    #        d0 = 1 + 0.9*0.2 - 0.5 = 0.68, A0 = 0.68 + 0.72*1.258 = 1.58576
    # row 1 ends at t=1: d1 = 1 - 0.4 = 0.6; d0 = 0.5 + 0.9*0.4 - 0.3 = 0.56, A0 = 0.56 + 0.72*0.6 = 0.992
    _close(advantages, [[1.58576, 1.258, 1.9], [0.992, 0.6, 0.0]])
    _close(returns, [[2.08576, 1.458, 2.0], [1.292, 1.0, 0.0]])


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.25, 0.5, 0.75]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    _close(advantages, [[0.75, 0.5, 0.25]])
    _close(returns, [[1.0, 1.0, 1.0]])


def test_penalised_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = penalised_rewards(torch.tensor([10.0, 20.0]), kl, mask, kl_coef=0.5)
    _close(rewards, [[-0.5, -1.0, 8.5], [-0.5, 19.5, 0.0]])


def _ratios(*ratios: float) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.zeros(1, len(ratios))
    return torch.log(torch.tensor([ratios])), old


def test_policy_loss_clips_the_ratio_in_the_direction_of_the_advantage():
    logprobs, old = _ratios(1.5, 0.5, 1.0)
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    # 1.5 with A=1: min(1.5, 1.2) -> clipped; 0.5 with A=1: min(0.5, 0.8) = 0.5 -> not clipped; ratio 1: -A
    loss, clipfrac = policy_loss(logprobs, old, advantages, torch.ones(1, 3), clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    loss, clipfrac = policy_loss(logprobs, old, advantages, torch.tensor([[1, 1, 0]]), clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_policy_loss_gradient_vanishes_once_clipped():
    logprobs, old = _ratios(1.5)
    logprobs.requires_grad_(True)
    loss, _ = policy_loss(logprobs, old, torch.tensor([[1.0]]), torch.ones(1, 1), clip_range=0.2)
    loss.backward()
    assert logprobs.grad.item() == 0.0


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    # the new value moved towards the return by more than the clip: the unclipped error counts
    loss, clipfrac = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.ones(1, 1), 0.2)
    assert (loss.item(), clipfrac.item()) == pytest.approx((0.5, 0.0))
    # moved towards the return but beyond the clip: the clipped value (0.7) is further from 2.0 and counts
    loss, clipfrac = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    assert (loss.item(), clipfrac.item()) == pytest.approx((0.5 * 1.3**2, 1.0))


def test_kl_estimates():
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    ref = torch.tensor([math.log(0.25), math.log(0.25)])
    assert kl_estimate(logp, ref).tolist() == pytest.approx([math.log(2.0), 0.0])
    k3 = kl_estimate(logp, ref, kind="k3")
    assert k3.tolist() == pytest.approx([0.5 - 1 + math.log(2.0), 0.0])
    assert (kl_estimate(ref, logp, kind="k3") >= 0).all()  # k3 never goes negative, k1 does
    with pytest.raises(ValueError, match="k1 or k3"):
        kl_estimate(logp, ref, kind="k2")


def test_kl_controller_moves_towards_the_target_by_bounded_steps():
    high = AdaptiveKLController(0.1, target=1.0, horizon=1000)
    assert high.update(current_kl=10.0, n_steps=100) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    low = AdaptiveKLController(0.1, target=1.0, horizon=1000)
    assert low.update(current_kl=0.9, n_steps=100) == pytest.approx(0.1 * (1 - 0.1 * 0.1))  # inside the clip
    assert low.update(current_kl=0.0, n_steps=100) == pytest.approx(0.1 * 0.99 * 0.98)  # keeps falling, by at most 0.2 * 100/1000
    fixed = AdaptiveKLController(0.1, target=None)
    assert fixed.update(current_kl=100.0, n_steps=100) == 0.1
    restored = AdaptiveKLController(0.5, target=1.0)
    restored.load_state_dict(high.state_dict())
    assert restored.value == high.value


def test_prompt_is_everything_before_the_last_answer():
    ids = np.arange(10)
    # two assistant turns: labels at 3-4 and 7-8; the prompt keeps the first answer as history
    labels = np.array([-100, -100, -100, 3, 4, -100, -100, 7, 8, -100])
    assert prompt_of(ids, labels).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert prompt_of(ids, np.full(10, -100)) is None  # nothing to answer
    assert prompt_of(ids, ids) is None  # labelled from the first token: no prompt to condition on


def test_per_step_sampling_depends_on_seed_step_and_rank_only():
    first = sample_indices(64, 8, seed=0, step=3, rank=1)
    assert first.tolist() == sample_indices(64, 8, seed=0, step=3, rank=1).tolist()
    assert len(set(first.tolist())) == 8  # without replacement while there are enough prompts
    assert first.tolist() != sample_indices(64, 8, seed=0, step=3, rank=0).tolist()
    assert first.tolist() != sample_indices(64, 8, seed=0, step=4, rank=1).tolist()
    assert len(sample_indices(3, 8, seed=0, step=1, rank=0)) == 8  # fewer prompts than the batch: with replacement


def test_left_pad_right_aligns_prompts():
    ids, mask = left_pad([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_response_mask_keeps_the_first_eos_and_drops_what_follows():
    responses = torch.tensor([[9, 9, 4, 2, 2], [9, 1, 9, 4, 9], [9, 9, 9, 9, 9]])
    assert response_mask(responses, [4, 1]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
