"""Tier-1 tests of the paired comparisons in rewardmix.algos.stats: exact McNemar, paired bootstrap, paired SE."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmix.algos.stats import (
    Z_95,
    clustered_standard_error,
    mcnemar_exact,
    paired_accuracy_difference,
    paired_bootstrap,
    trend,
)

FAST = settings(max_examples=50, deadline=None)

bits = st.lists(st.integers(0, 1), min_size=1, max_size=40)


# ---------------------------------------------------------------------------------------------------------
# Exact McNemar
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 5, 2 * 1 / 32),  # P[X <= 0] = C(5,0) / 2^5 = 1/32; p = 2/32 = 0.0625
        (1, 9, 2 * (1 + 10) / 1024),  # P[X <= 1] = (C(10,0) + C(10,1)) / 2^10 -> 0.021484375
        (2, 8, 2 * (1 + 10 + 45) / 1024),  # + C(10,2) = 45 -> 112/1024 = 0.109375
        (0, 1, 1.0),  # 2 * 1/2 = 1
        (5, 5, 1.0),  # b = c: the lower tail holds half the mass or more -> clamped to 1
        (0, 0, 1.0),  # no discordant item
        (3, 4, 1.0),  # 2 * (1 + 7 + 21 + 35) / 128 = 1
    ],
)
def test_mcnemar_hand_values(b, c, expected):
    assert mcnemar_exact(b, c) == expected  # exact integer tail, then one correctly rounded division


def test_mcnemar_large_n_is_exact_and_finite():
    # n = 3000 overflows 2^n as a float; the integer tail still works. b = c -> 1; b = 1400 vs c = 1600:
    # a normal approximation gives z = 200 / sqrt(3000) = 3.65 -> p ~ 2.6e-4 (continuity-corrected ~2.8e-4).
    assert mcnemar_exact(1500, 1500) == 1.0
    p = mcnemar_exact(1400, 1600)
    assert 1.5e-4 < p < 4e-4
    assert mcnemar_exact(0, 3000) == 0.0  # 2 / 2^3000 underflows to 0.0


@FAST
@given(b=st.integers(0, 200), c=st.integers(0, 200))
def test_mcnemar_is_symmetric_and_in_unit_interval(b, c):
    p = mcnemar_exact(b, c)
    assert p == mcnemar_exact(c, b)
    assert 0.0 < p <= 1.0


@FAST
@given(n=st.integers(1, 300))
def test_mcnemar_falls_as_the_imbalance_grows(n):
    # Fixed b + c = n: moving one discordant item from the smaller side to the larger never raises p, and
    # strictly lowers it while p < 1 (the tail loses the term C(n, k)).
    ps = [mcnemar_exact(k, n - k) for k in range(n // 2, -1, -1)]
    for before, after in zip(ps, ps[1:], strict=False):
        assert after <= before
        if before < 1.0:
            assert after < before


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 3)
    with pytest.raises(TypeError):
        mcnemar_exact(1.5, 3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Paired bootstrap
# ---------------------------------------------------------------------------------------------------------


def test_bootstrap_identical_inputs_give_zero_difference_and_p_one():
    a = [1.0, 0.0, 1.0, 1.0, 0.0, 0.3]
    res = paired_bootstrap(a, a, resamples=500)
    assert res == (1.0, 0.0, 0.0)  # every d* is exactly 0: both tails hold all of them


def test_bootstrap_constant_shift_excludes_zero():
    b = [0.2, 0.7, 0.1, 0.9, 0.4]
    a = [v + 0.25 for v in b]
    res = paired_bootstrap(a, b, resamples=500)
    assert res.p == 0.0  # no resampled mean difference reaches 0
    assert res.ci_low == pytest.approx(0.25, abs=1e-12) and res.ci_high == pytest.approx(0.25, abs=1e-12)


def test_bootstrap_is_deterministic_with_its_seed():
    a, b = [1, 1, 0, 1, 0, 1, 1, 0], [1, 0, 1, 0, 0, 0, 1, 0]
    first = paired_bootstrap(a, b, resamples=300, seed=3)
    assert paired_bootstrap(a, b, resamples=300, seed=3) == first
    assert paired_bootstrap(a, b, resamples=300, seed=4) != first


def test_bootstrap_matches_a_python_loop_on_the_same_draws():
    # The same torch.Generator draws, one resample at a time; p and percentiles recomputed by hand.
    a, b = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    d = [x - y for x, y in zip(a, b, strict=True)]
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(len(d), (200, len(d)), generator=generator).tolist()
    means = sorted(sum(d[i] for i in row) / len(d) for row in idx)
    below, above = sum(m <= 0 for m in means), sum(m >= 0 for m in means)

    def percentile(q):  # linear interpolation between order statistics (numpy / torch default)
        pos = q * (len(means) - 1)
        lo = math.floor(pos)
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])

    res = paired_bootstrap(a, b, resamples=200, seed=0)
    assert res.p == min(1.0, 2 * min(below, above) / 200)
    assert res.ci_low == pytest.approx(percentile(0.025), abs=1e-12)
    assert res.ci_high == pytest.approx(percentile(0.975), abs=1e-12)


def test_bootstrap_interval_agrees_with_the_normal_one_for_moderate_n():
    # n = 400, b = 60, c = 30: diff = 0.075, paired SE = sqrt((90 - 400 * 0.075^2) / 399 / 400) = 0.02325;
    # the percentile interval should be close to diff ± 1.96 SE = [0.0294, 0.1206] (within 0.01 each end).
    a = [1.0] * 60 + [0.0] * 30 + [1.0] * 200 + [0.0] * 110
    b = [0.0] * 60 + [1.0] * 30 + [1.0] * 200 + [0.0] * 110
    normal = paired_accuracy_difference(a, b)
    assert normal.diff_se == pytest.approx(math.sqrt((90 - 400 * 0.075**2) / 399 / 400), abs=1e-15)
    boot = paired_bootstrap(a, b, resamples=4000)
    assert boot.ci_low == pytest.approx(normal.ci_low, abs=0.01)
    assert boot.ci_high == pytest.approx(normal.ci_high, abs=0.01)
    assert boot.p < 0.01 and normal.mcnemar_p < 0.01  # both tests reject (McNemar: 2 P[Bin(90,.5) <= 30])


@FAST
@given(a=bits, data=st.data(), seed=st.integers(0, 5))
def test_bootstrap_swapping_models_negates_the_interval(a, data, seed):
    b = data.draw(st.lists(st.integers(0, 1), min_size=len(a), max_size=len(a)))
    ab = paired_bootstrap(a, b, resamples=200, seed=seed)
    ba = paired_bootstrap(b, a, resamples=200, seed=seed)  # same draws, every d* negated
    assert ba.p == ab.p
    assert ba.ci_low == pytest.approx(-ab.ci_high, abs=1e-12)
    assert ba.ci_high == pytest.approx(-ab.ci_low, abs=1e-12)
    assert 0.0 <= ab.p <= 1.0 and ab.ci_low <= ab.ci_high


@pytest.mark.parametrize(
    ("a", "b", "kw", "match"),
    [
        ([1.0, 0.0], [1.0], {}, "lengths differ"),
        ([], [], {}, "empty"),
        ([1.0, float("nan")], [1.0, 0.0], {}, "finite"),
        ([1.0], [0.0], {"resamples": 0}, "resamples"),
    ],
)
def test_bootstrap_invalid_inputs_raise(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, **kw)


# ---------------------------------------------------------------------------------------------------------
# Paired accuracy difference
# ---------------------------------------------------------------------------------------------------------


def test_paired_accuracy_hand_values():
    # A = [1, 1, 0, 1, 0], B = [1, 0, 1, 0, 0]: d = [0, 1, -1, 1, 0]; b = 2 (items 1, 3), c = 1 (item 2).
    # acc A = 3/5, acc B = 2/5, diff = (2 - 1) / 5 = 0.2; var(d, ddof=1) = (b + c - n diff^2) / (n - 1)
    # = (3 - 5 * 0.04) / 4 = 0.7; SE = sqrt(0.7 / 5) = sqrt(0.14); McNemar(2, 1) = min(1, 2 (1 + 3) / 8) = 1.
    res = paired_accuracy_difference([1, 1, 0, 1, 0], [True, False, True, False, False])
    assert (res.n, res.b, res.c) == (5, 2, 1)
    assert res.acc_a == pytest.approx(0.6, abs=1e-15) and res.acc_b == pytest.approx(0.4, abs=1e-15)
    assert res.diff == pytest.approx(0.2, abs=1e-15)
    assert res.diff_se == pytest.approx(math.sqrt(0.14), abs=1e-15)
    assert res.diff_se == pytest.approx(statistics.stdev([0, 1, -1, 1, 0]) / math.sqrt(5), abs=1e-15)
    assert (res.ci_low, res.ci_high) == pytest.approx(
        (0.2 - Z_95 * math.sqrt(0.14), 0.2 + Z_95 * math.sqrt(0.14))
    )
    assert res.mcnemar_p == 1.0


def test_paired_accuracy_edge_cases():
    one = paired_accuracy_difference([1], [0])  # n = 1: no sample variance, SE 0
    assert (one.diff, one.diff_se, one.b, one.c, one.mcnemar_p) == (1.0, 0.0, 1, 0, 1.0)
    same = paired_accuracy_difference([1, 0, 1], [1, 0, 1])  # agreeing everywhere: no difference, no spread
    assert (same.diff, same.diff_se, same.ci_low, same.ci_high, same.mcnemar_p) == (0.0, 0.0, 0.0, 0.0, 1.0)


@FAST
@given(a=bits, data=st.data())
def test_paired_accuracy_matches_the_sample_of_differences(a, data):
    b = data.draw(st.lists(st.integers(0, 1), min_size=len(a), max_size=len(a)))
    d = [x - y for x, y in zip(a, b, strict=True)]
    res = paired_accuracy_difference(a, b)
    assert res.diff == pytest.approx(statistics.fmean(d), abs=1e-12)
    assert res.diff == pytest.approx(res.acc_a - res.acc_b, abs=1e-12)
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    assert res.diff_se == pytest.approx(sd / math.sqrt(len(d)), abs=1e-12)
    assert res.mcnemar_p == mcnemar_exact(d.count(1), d.count(-1))
    swapped = paired_accuracy_difference(b, a)
    assert (swapped.b, swapped.c, swapped.diff_se) == (res.c, res.b, res.diff_se)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [([1, 0], [1], "lengths differ"), ([], [], "no items"), ([1, 2], [1, 0], "0/1"), ([0.5], [1], "0/1")],
)
def test_paired_accuracy_invalid_inputs_raise(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_accuracy_difference(a, b)


def test_trend_hand_computed():
    # first two [0, 0], last two [1, 1]; se = sqrt(4 * 0.1^2) / 2 = 0.1; z = 1 / 0.1 = 10
    got = trend([0.0, 0.0, 5.0, 1.0, 1.0], [0.1] * 5, 2)
    assert got.first == 0.0 and got.last == 1.0 and got.diff == 1.0
    assert got.se == pytest.approx(0.1) and got.z == pytest.approx(10.0)
    flat = trend([1.0, 1.0], [0.0, 0.0], 1)
    assert flat.diff == 0.0 and math.isnan(flat.z)
    with pytest.raises(ValueError, match="at least 2 k"):
        trend([1.0, 2.0, 3.0], [0.1] * 3, 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=4, max_size=12), st.floats(0.01, 2), st.floats(-3, 3))
def test_trend_is_shift_invariant_and_flips_sign(values, s, c):
    k = len(values) // 2
    ses = [s] * len(values)
    base = trend(values, ses, k)
    assert trend([v + c for v in values], ses, k).z == pytest.approx(base.z, abs=1e-6)
    assert trend(values[::-1], ses, k).z == pytest.approx(-base.z, abs=1e-9)


def test_clustered_standard_error_uses_group_means():
    # groups [0, 2] and [4, 6]: means 1 and 5, std (ddof 1) = 2 sqrt(2), SE = 2 sqrt(2) / sqrt(2) = 2
    assert clustered_standard_error([0.0, 2.0, 4.0, 6.0], 2) == pytest.approx(2.0)
    # K = 1: the usual s / sqrt(n): [0, 2, 4, 6] has s = sqrt(20/3), SE = sqrt(20/3) / 2
    assert clustered_standard_error([0.0, 2.0, 4.0, 6.0]) == pytest.approx(math.sqrt(20 / 3) / 2)
    assert math.isnan(clustered_standard_error([1.0, 2.0], 2))
    with pytest.raises(ValueError):
        clustered_standard_error([1.0, 2.0, 3.0], 2)
