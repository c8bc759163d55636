"""Tier-1 tests of rewardmix.algos.advantages (RLOO, GRPO / Dr. GRPO group baselines, REINFORCE++)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmix.algos.advantages import (
    broadcast_to_tokens,
    group_advantages,
    group_pair_accuracy,
    reinforce_pp_advantages,
    rloo_advantages,
)

F64 = torch.float64


@st.composite
def grouped_scores(draw):
    k = draw(st.integers(2, 5))
    groups = draw(st.integers(1, 4))
    values = draw(st.lists(st.floats(-10, 10), min_size=k * groups, max_size=k * groups))
    return torch.tensor(values, dtype=F64), k


def test_rloo_hand_computed():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=F64)
    # K = 2: the baseline of each is the other one: [1-2, 2-1, 3-6, 6-3]
    assert rloo_advantages(scores, 2).tolist() == [-1.0, 1.0, -3.0, 3.0]
    # K = 4: baseline of 1 is (2+3+6)/3 = 11/3, so A = 1 - 11/3 = -8/3; of 6: (1+2+3)/3 = 2, A = 4
    got = rloo_advantages(scores, 4)
    assert torch.allclose(got, torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0], dtype=F64))


def test_grpo_hand_computed():
    scores = torch.tensor([1.0, 2.0, 5.0, 5.0], dtype=F64)
    # group [1, 2]: mean 1.5, unbiased std sqrt(0.5); group [5, 5]: all equal, advantages 0 (not NaN)
    got = group_advantages(scores, 2, eps=0.0 + 1e-12)
    s = math.sqrt(0.5)
    assert torch.allclose(got, torch.tensor([-0.5 / s, 0.5 / s, 0.0, 0.0], dtype=F64))
    # Dr. GRPO: mean-centred only
    assert group_advantages(scores, 2, scale_by_std=False).tolist() == [-0.5, 0.5, 0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(grouped_scores())
def test_advantages_sum_to_zero_per_group(data):
    scores, k = data
    for adv in (
        rloo_advantages(scores, k),
        group_advantages(scores, k),
        group_advantages(scores, k, scale_by_std=False),
    ):
        assert torch.allclose(
            adv.reshape(-1, k).sum(dim=1), torch.zeros(scores.numel() // k, dtype=F64), atol=1e-9
        )


@settings(max_examples=60, deadline=None)
@given(grouped_scores(), st.floats(0.1, 10), st.floats(-50, 50))
def test_grpo_invariant_to_affine_transforms(data, a, c):
    scores, k = data
    g = scores.reshape(-1, k)
    if bool((g.std(dim=1) < 1e-3).any()):  # eps matters only for (near-)constant groups
        return
    base = group_advantages(scores, k, eps=0.0)
    moved = group_advantages(a * scores + c, k, eps=0.0)
    assert torch.allclose(base, moved, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(grouped_scores(), st.floats(-50, 50))
def test_rloo_is_scaled_mean_centring_and_shift_invariant(data, c):
    scores, k = data
    centred = group_advantages(scores, k, scale_by_std=False)
    assert torch.allclose(rloo_advantages(scores, k), k / (k - 1) * centred, atol=1e-9)
    assert torch.allclose(rloo_advantages(scores + c, k), rloo_advantages(scores, k), atol=1e-9)


def test_a_better_answer_gets_a_positive_advantage():
    scores = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=F64)
    for adv in (rloo_advantages(scores, 4), group_advantages(scores, 4)):
        assert adv[2] > 0 and bool((adv[[0, 1, 3]] < 0).all())


def test_shape_errors():
    with pytest.raises(ValueError, match="groups of 3"):
        rloo_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"\(B,\) scores"):
        rloo_advantages(torch.zeros(2, 2), 2)


def test_reinforce_pp_hand_computed_returns_to_go():
    # row 0: three tokens, rewards [-0.1, -0.2, 1.0 - 0.3]; row 1: one token then padding
    rewards = torch.tensor([[-0.1, -0.2, 0.7], [2.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    got = reinforce_pp_advantages(rewards, mask)
    expected = torch.tensor([[0.4, 0.5, 0.7], [2.0, 0.0, 0.0]], dtype=F64)  # A_t = sum_{s >= t} r_s
    assert torch.allclose(got, expected)
    # gamma 0.5: A_2 = 0.7, A_1 = -0.2 + 0.35 = 0.15, A_0 = -0.1 + 0.075 = -0.025
    got = reinforce_pp_advantages(rewards, mask, gamma=0.5)
    assert torch.allclose(got[0], torch.tensor([-0.025, 0.15, 0.7], dtype=F64))


def test_reinforce_pp_baseline_subtracts_the_group_mean_total_reward():
    # group of 2: totals 1.0 and 3.0, mean 2.0, subtracted at each response's last valid token
    rewards = torch.tensor([[0.5, 0.5], [3.0, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True], [True, False]])
    got = reinforce_pp_advantages(rewards, mask, group_size=2)
    assert torch.allclose(got, torch.tensor([[-1.0, -1.5], [1.0, 0.0]], dtype=F64))


@settings(max_examples=60, deadline=None)
@given(grouped_scores(), st.integers(1, 4), st.data())
def test_reinforce_pp_first_token_advantages_sum_to_zero_per_group(data, width, draw):
    scores, k = data
    lengths = draw.draw(st.lists(st.integers(1, width), min_size=scores.numel(), max_size=scores.numel()))
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    rewards = torch.where(mask, scores.unsqueeze(1) / width, 0.0)
    adv = reinforce_pp_advantages(rewards, mask, group_size=k)
    assert torch.allclose(
        adv[:, 0].reshape(-1, k).sum(dim=1), torch.zeros(scores.numel() // k, dtype=F64), atol=1e-9
    )
    assert bool((adv[~mask] == 0).all())
    # without a baseline the first token's advantage is the response's total reward
    total = (rewards * mask).sum(dim=1)
    assert torch.allclose(reinforce_pp_advantages(rewards, mask)[:, 0], total, atol=1e-9)


def test_broadcast_to_tokens_masks_padding():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask)
    assert got.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
    with pytest.raises(ValueError):
        broadcast_to_tokens(torch.tensor([1.0]), mask)


def test_group_pair_accuracy_hand_computed():
    # group 1: right answers 0 (score 3) and 1 (score 1), wrong 2 (score 2): pairs (0,2) agree, (1,2) disagree
    # group 2: right 3 (score 0), wrong 4 and 5 (scores 0 and -1): (3,4) a tie (1/2), (3,5) agree
    scores = torch.tensor([3.0, 1.0, 2.0, 0.0, 0.0, -1.0])
    correct = torch.tensor([True, True, False, True, False, False])
    accuracy, pairs = group_pair_accuracy(scores, correct, 3)
    assert pairs == 4
    assert accuracy == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_group_pair_accuracy_without_mixed_groups_is_nan():
    accuracy, pairs = group_pair_accuracy(torch.tensor([1.0, 2.0]), torch.tensor([True, True]), 2)
    assert pairs == 0 and math.isnan(accuracy)


@settings(max_examples=40, deadline=None)
@given(grouped_scores(), st.data())
def test_group_pair_accuracy_flips_with_the_score(data, draw):
    scores, k = data
    correct = torch.tensor(
        draw.draw(st.lists(st.booleans(), min_size=scores.numel(), max_size=scores.numel()))
    )
    up, n = group_pair_accuracy(scores, correct, k)
    down, m = group_pair_accuracy(-scores, correct, k)
    assert n == m
    if n:
        assert up + down == pytest.approx(1.0)  # ties count 1/2 both ways
