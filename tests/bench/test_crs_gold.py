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
