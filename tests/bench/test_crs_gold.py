"""bench/crs_gold.py: how it names policies, finds their PPO runs and compares them on the same prompts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest


@pytest.fixture
def crs_gold(import_bench):
    return import_bench("crs_gold")


def test_policy_names_map_to_w_seed_and_the_recipes_ppo_steps(crs_gold):
    assert crs_gold.parse_policy("w025_s1") == (0.25, 1)
    assert crs_gold.parse_policy("w100") == (1.0, 0)
    assert crs_gold.parse_policy("base") is None
    run = Path("/r")
    assert crs_gold.ppo_dir(run, "w100") == run / "ppo_pref"  # the base recipe's steps keep their names
    assert crs_gold.ppo_dir(run, "w000") == run / "ppo_abs"
    assert crs_gold.ppo_dir(run, "w025") == run / "ppo_crs"
    assert crs_gold.ppo_dir(run, "w050") == run / "ppo_w050"
    assert crs_gold.ppo_dir(run, "w025_s2") == run / "ppo_w025_s2"


def test_paired_difference_by_hand(crs_gold):
    scores = {
        "a": {"p0": 2.0, "p1": 4.0, "p2": 3.0},
        "b": {"p0": 1.0, "p1": 1.0, "p2": 3.0},
        "c": {"p0": 0.0, "p1": 1.0, "p2": 1.0},
    }
    got = crs_gold.paired_difference(scores, ["a"], ["b", "c"])
    # per prompt: 2 - 0.5, 4 - 1, 3 - 2 -> [1.5, 3, 1]; mean 11/6; sample sd of the diffs / sqrt(3)
    diffs = [1.5, 3.0, 1.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert (
        got["diff"] == pytest.approx(mean) and got["se"] == pytest.approx(sd / math.sqrt(3)) and got["n"] == 3
    )
    assert got["p"] == pytest.approx(math.erfc(mean / (sd / math.sqrt(3)) / math.sqrt(2)))


def test_permutation_p_by_hand(crs_gold):
    # 2 against 2: the 6 splits give |mean differences| 2, 1, 1, 1, 1, 2 for [0, 1] vs [2, 3] (observed 2)
    assert crs_gold.permutation_p([0.0, 1.0], [2.0, 3.0]) == pytest.approx(2 / 6)
    # 3 against 3, fully separated: only the observed split and its mirror are as extreme -> 2 of 20
    assert crs_gold.permutation_p([1.0, 2.0, 3.0], [10.0, 11.0, 12.0]) == pytest.approx(0.1)
    assert crs_gold.permutation_p([1.0, 2.0], [1.0, 2.0]) == 1.0  # no difference: every split is as extreme


def test_slope_and_its_permutation_trend(crs_gold):
    xs, ys = [0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 5.0]
    b, se = crs_gold.slope(xs, ys)
    # by hand: mean x 1.5, mean y 2.75; sxy = 5.5, sxx = 5 -> b = 1.1; residuals -0.1, 0.8, -1.3, 0.6 -> SS 2.7
    assert b == pytest.approx(1.1) and se == pytest.approx(math.sqrt(2.7 / 2 / 5))
    exact = crs_gold.slope_trend([0.0, 0.0, 1.0, 1.0, 2.0, 2.0], [0.0, 0.1, 1.0, 1.1, 2.0, 2.1], draws=2000)
    assert exact["slope"] == pytest.approx(1.0) and exact["p_permutation"] < 0.05
    flat = crs_gold.slope_trend([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 2.0, 2.0, 3.0, 3.0], draws=2000)
    assert flat["slope"] == pytest.approx(0.0, abs=1e-12) and flat["p_permutation"] > 0.5


def test_adjusted_slopes_recover_a_known_plane(crs_gold):
    ws, kls = [0.0, 0.25, 0.5, 1.0, 0.0, 1.0], [1.0, 4.0, 0.25, 2.25, 9.0, 0.0]
    noise = [0.01, -0.01, 0.0, 0.01, -0.01, 0.0]
    ys = [1.0 + 2.0 * w + 3.0 * math.sqrt(k) + e for w, k, e in zip(ws, kls, noise, strict=True)]
    got = crs_gold.adjusted_slopes(ws, kls, ys)
    assert got["w_slope"] == pytest.approx(2.0, abs=0.05) and got["sqrt_kl_slope"] == pytest.approx(
        3.0, abs=0.05
    )
    assert 0 < got["w_se"] < 0.05 and 0 < got["sqrt_kl_se"] < 0.05 and got["n"] == 6
