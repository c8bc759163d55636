"""Critic-free advantages: a baseline from the other responses to the same prompt, no value model.

The rollout batch holds ``K`` responses per prompt, in consecutive rows (``group_size = K``): rows
``g*K ... g*K + K - 1`` answer prompt ``g``. Each response gets one sequence-level advantage, given to every one
of its tokens. Subtracting what the other answers to the *same* prompt scored removes the prompt's difficulty
from the signal: with one answer per prompt and an untrained critic, that difficulty (an easy sentence, a short
prompt) dominates the policy gradient.
"""

from __future__ import annotations

import torch

from rewardmix.algos.gae import compute_gae


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) scores as (B / K, K) groups, with the shape checks every estimator needs."""
    if scores.dim() != 1:
        raise ValueError(f"expected (B,) scores, got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"a group baseline needs group_size >= 2, got {group_size}")
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    return scores.reshape(-1, group_size)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out: each score minus the mean of the other ``K - 1`` scores of its group.

    Args:
        scores: (B,) sequence-level rewards (score, KL penalty included if any), groups in consecutive rows.
        group_size: K, the responses per prompt (>= 2).

    Returns:
        (B,) advantages; they sum to 0 within each group.

    Reference: Ahmadian et al. 2024 ("Back to Basics", RLOO) Eq. 4; Kool et al. 2019:
        A_i = r_i - 1/(K-1) * sum_{j != i} r_j = K/(K-1) * (r_i - mean(r)).
    """
    g = _groups(scores, group_size)
    k = group_size
    baseline = (g.sum(dim=1, keepdim=True) - g) / (k - 1)  # mean of the other K - 1
    return (g - baseline).reshape(-1)


def group_advantages(
    scores: torch.Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: each score minus its group's mean, divided by the group's std when ``scale_by_std``.

    The same z-score within a prompt's group is the per-component normalization ``normalize: group`` of the
    composite reward (GDPO: each reward component standardized in its group before they are combined).

    Args:
        scores: (B,) sequence-level rewards, groups in consecutive rows.
        group_size: K (>= 2).
        scale_by_std: Divide by the group's (unbiased) standard deviation + ``eps`` (GRPO); False keeps the
            mean-centred score (Dr. GRPO, which argues the scaling over-weights near-unanimous groups).
        eps: Added to the std, so a group whose scores are all equal gets advantages 0, not NaN.

    Returns:
        (B,) advantages; they sum to 0 within each group.

    Reference: Shao et al. 2024 (DeepSeekMath, GRPO) §4.1.2: A_i = (r_i - mean(r)) / std(r);
        Liu et al. 2025 (Dr. GRPO) §3: A_i = r_i - mean(r).
    """
    g = _groups(scores, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def reinforce_pp_advantages(
    rewards: torch.Tensor, response_mask: torch.Tensor, *, gamma: float = 1.0, group_size: int = 1
) -> torch.Tensor:
    """REINFORCE++: per-token returns-to-go of the KL-shaped rewards, no critic (normalize them afterwards).

    Each token's advantage is the discounted sum of the per-token rewards from it to the end of its response,
    ``A_t = sum_{s >= t} gamma^(s - t) r_s`` with ``r_s = -beta * KL_s`` plus the score on the last token: the
    KL penalty stays per token, as in PPO, unlike RLOO/GRPO, which fold it into one sequence reward. The method
    then normalizes the advantages over the whole batch (global batch normalization; the caller whitens).

    With ``group_size`` K >= 2 the mean total reward of each prompt's group is subtracted from its responses'
    last-token reward first (the "REINFORCE++-baseline" variant): every token's advantage then has the group
    baseline removed, and the first token's advantages of a group sum to 0 when ``gamma`` is 1.

    Args:
        rewards: (B, T) per-token rewards (:func:`~rewardmix.algos.kl.kl_shaped_rewards`).
        response_mask: (B, T) True on valid response tokens (right-padded; every row has >= 1).
        gamma: Discount over response tokens, in [0, 1].
        group_size: K responses per prompt in consecutive rows; 1: no baseline.

    Returns:
        (B, T) advantages, 0 on padding.

    Reference: Hu 2025 (REINFORCE++, arXiv 2501.03262) §3: token-level KL penalty in the reward,
        A_t = sum_{s >= t} gamma^(s-t) r_s, normalized over the global batch; its baseline variant subtracts
        the group mean reward. Computed as GAE with V = 0 and lambda = 1 (Schulman et al. 2016 Eq. 18).
    """
    mask = response_mask.bool()
    if group_size > 1:
        totals = (rewards * mask).sum(dim=1)  # R_i = sum_t r_t = score_i - beta * sum_t KL_t
        baseline = _groups(totals, group_size).mean(dim=1).repeat_interleave(group_size)  # mean_g(R)
        last = mask.long().cumsum(dim=1) == mask.sum(dim=1, keepdim=True)  # the last valid token
        rewards = rewards - torch.where(last & mask, baseline.unsqueeze(1), 0.0)  # r_T <- r_T - mean_g(R)
    advantages, _ = compute_gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return advantages


def broadcast_to_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Give each response's sequence-level advantage to each of its valid tokens; 0 on padding.

    Args:
        advantages: (B,) one value per response.
        response_mask: (B, T) True on valid response tokens.

    Returns:
        (B, T) float tensor.
    """
    if advantages.dim() != 1 or response_mask.dim() != 2 or advantages.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"expected (B,) advantages and a (B, T) mask, got {tuple(advantages.shape)} and "
            f"{tuple(response_mask.shape)}"
        )
    return torch.where(response_mask.bool(), advantages.unsqueeze(1), 0.0)


def group_pair_accuracy(scores: torch.Tensor, correct: torch.Tensor, group_size: int) -> tuple[float, int]:
    """How often a score ranks a correct answer above a wrong answer to the same prompt.

    Over every pair (i, j) in a group with ``correct[i]`` and not ``correct[j]``: the fraction with
    ``scores[i] > scores[j]``, a tie counting one half. It measures a reward on the policy's *own* samples,
    where a reward model trained on other answers can be blind (the policy drifts off its training data).

    Args:
        scores: (B,) one score per response (a reward component, or the combined score).
        correct: (B,) bool, whether each response is right (e.g. its label equals the gold label).
        group_size: K, responses per prompt in consecutive rows.

    Returns:
        ``(accuracy, pairs)``; accuracy is NaN when no group has both a right and a wrong answer.
    """
    s = _groups(scores.to(torch.float64), group_size)
    c = correct.bool().reshape(s.shape)
    # (G, K, K): pair (i, j) counts when i is right and j is wrong
    counted = c.unsqueeze(2) & ~c.unsqueeze(1)
    diff = s.unsqueeze(2) - s.unsqueeze(1)
    agree = (diff > 0).double() + 0.5 * (diff == 0).double()
    pairs = int(counted.sum())
    if pairs == 0:
        return float("nan"), 0
    return float((agree * counted).sum()) / pairs, pairs
