"""The gold-reward-model protocol: a held-out reward model stands in for human judgement.

Gao, Schulman & Hilton 2022 ("Scaling Laws for Reward Model Overoptimization", arXiv 2210.10760) train a large
"gold" reward model on data the proxy reward models never see, optimize policies against the proxies, and read
every policy's quality off the gold model. Here, for the answers of several models to the same prompts:

- **gold score per model**: the mean gold score of its answers, with its standard error over prompts;
- **gold comparisons**: for every pair of models and every prompt, the answer with the higher gold score wins
  (equal within ``tolerance``: a tie). They are :class:`~rewardmix.evaluation.winrate.Judgment` objects, so the
  win-rate matrix, its SE and 95% CI, and the proxies' agreement with them come from the same functions as for an
  LLM judge (:func:`~rewardmix.evaluation.winrate.win_rates`,
  :func:`~rewardmix.evaluation.rewards.judge_agreement`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rewardmix.evaluation.winrate import Judgment, model_pairs

__all__ = ["GoldScore", "gold_judgments", "gold_scores"]


class GoldScore(NamedTuple):
    """One model's gold score over the prompts."""

    mean: float
    se: float
    """Standard error of the mean over prompts: sample std (ddof 1) / sqrt(n); NaN for n < 2."""
    n: int


def gold_scores(
    scores: Mapping[tuple[str, str], float], models: Sequence[str], prompt_ids: Sequence[str]
) -> dict[str, GoldScore]:
    """Mean gold score ± SE of each model's answers.

    Args:
        scores: ``(model, prompt_id) -> gold score`` of every answer.
        models: The models, in table order.
        prompt_ids: The prompts every model answered.

    Returns:
        Model -> :class:`GoldScore`.

    Raises:
        KeyError: An answer has no gold score.
    """
    out = {}
    for m in models:
        values = [float(scores[(m, p)]) for p in prompt_ids]
        n = len(values)
        mean = sum(values) / n if n else math.nan
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan  # s^2, ddof 1
        out[m] = GoldScore(mean, math.sqrt(var / n) if n > 1 else math.nan, n)  # SE = s / sqrt(n)
    return out


def gold_judgments(
    scores: Mapping[tuple[str, str], float],
    models: Sequence[str],
    prompts: Sequence[Any],
    *,
    tolerance: float = 0.0,
) -> list[Judgment]:
    """Every pair of models compared on every prompt by gold score: the higher one wins.

    Args:
        scores: ``(model, prompt_id) -> gold score``.
        models: The models; pairs are taken in list order (:func:`~rewardmix.evaluation.winrate.model_pairs`).
        prompts: Objects with ``id`` and, optionally, ``dataset`` and ``category`` (for the breakdowns).
        tolerance: Scores closer than this (``|a - b| <= tolerance``) are a tie; 0: only exactly equal scores.

    Returns:
        One :class:`~rewardmix.evaluation.winrate.Judgment` per pair and prompt (never swapped).
    """
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    out = []
    for a, b in model_pairs(models):
        for p in prompts:
            diff = float(scores[(a, p.id)]) - float(scores[(b, p.id)])
            verdict = "a" if diff > tolerance else "b" if diff < -tolerance else "tie"
            out.append(
                Judgment(
                    a, b, p.id, verdict, False, getattr(p, "dataset", None), getattr(p, "category", None)
                )
            )
    return out
