"""Tier-1 tests of rewardmix.evaluation.gold: gold scores and gold comparisons by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from rewardmix.evaluation.gold import gold_judgments, gold_scores
from rewardmix.evaluation.winrate import win_rates

SCORES = {("a", "p0"): 1.0, ("a", "p1"): 3.0, ("b", "p0"): 1.05, ("b", "p1"): 2.0}
PROMPTS = [
    SimpleNamespace(id="p0", dataset="d", category=None),
    SimpleNamespace(id="p1", dataset="d", category=None),
]


def test_gold_scores_mean_and_standard_error():
    got = gold_scores(SCORES, ["a", "b"], ["p0", "p1"])
    assert got["a"].mean == 2.0 and got["a"].n == 2
    assert got["a"].se == pytest.approx(
        math.sqrt(2.0 / 2)
    )  # s^2 = ((1-2)^2 + (3-2)^2) / 1 = 2; SE = sqrt(2/2)
    assert math.isnan(gold_scores(SCORES, ["a"], ["p0"])["a"].se)  # one prompt: no spread to estimate
    with pytest.raises(KeyError):
        gold_scores(SCORES, ["c"], ["p0"])


def test_gold_judgments_with_and_without_a_tie_tolerance():
    exact = gold_judgments(SCORES, ["a", "b"], PROMPTS)
    assert [(j.model_a, j.model_b, j.prompt_id, j.verdict) for j in exact] == [
        ("a", "b", "p0", "b"),
        ("a", "b", "p1", "a"),
    ]
    assert all(not j.swapped and j.dataset == "d" for j in exact)
    tolerant = gold_judgments(SCORES, ["a", "b"], PROMPTS, tolerance=0.1)
    assert [j.verdict for j in tolerant] == ["tie", "a"]
    # through the judge's win-rate machinery: a beats b once and ties once -> 0.75
    assert win_rates(tolerant, ["a", "b"])["a"]["b"].rate == pytest.approx(0.75)
    with pytest.raises(ValueError, match="tolerance"):
        gold_judgments(SCORES, ["a", "b"], PROMPTS, tolerance=-1.0)
