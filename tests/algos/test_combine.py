"""Tier-1 tests for rewardmix.algos.combine: combinators, transforms, running statistics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmix.algos import combine as C
from rewardmix.algos.combine import (
    COMBINATORS,
    RunningMeanStd,
    bounded_to_logit,
    calibrate,
    clip_scores_symmetric,
    combine_constrained,
    combine_min,
    combine_sum,
    combine_threshold,
    combine_weighted,
    get_combinator,
    logit_to_bounded,
    multiplier_step,
    register_combinator,
)

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)

finite = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False, allow_infinity=False)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


@st.composite
def score_matrix(draw: st.DrawFn, min_c: int = 1, max_c: int = 5) -> torch.Tensor:
    b = draw(st.integers(1, 6))
    c = draw(st.integers(min_c, max_c))
    values = draw(st.lists(finite, min_size=b * c, max_size=b * c))
    return torch.tensor(values, dtype=F64).reshape(b, c)


# ----------------------------------------------------------------------------------------------------------
# Combinators: hand computations
# ----------------------------------------------------------------------------------------------------------


def test_sum_hand() -> None:
    # row 0: 1 + 2 + 3 = 6; row 1: -1 + 0.5 + 0.25 = -0.25
    out = combine_sum(t([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.25]]))
    torch.testing.assert_close(out, torch.tensor([6.0, -0.25], dtype=F64), rtol=0, atol=1e-12)


def test_weighted_crs_quarter() -> None:
    # CRS crs_rlfh_025: w = 0.25 on [pref, abs] -> 0.25 * pref + 0.75 * abs
    # row 0: 0.25 * 2 + 0.75 * (-1) = 0.5 - 0.75 = -0.25; row 1: 0.25 * 4 + 0.75 * 8 = 1 + 6 = 7
    out = combine_weighted(t([[2.0, -1.0], [4.0, 8.0]]), weights=[0.25, 0.75])
    torch.testing.assert_close(out, torch.tensor([-0.25, 7.0], dtype=F64), rtol=0, atol=1e-12)


def test_weighted_normalizes_by_sum() -> None:
    # weights [1, 3] -> [0.25, 0.75]: 0.25 * 2 + 0.75 * (-1) = -0.25
    out = combine_weighted(t([[2.0, -1.0]]), weights=[1.0, 3.0])
    torch.testing.assert_close(out, torch.tensor([-0.25], dtype=F64), rtol=0, atol=1e-12)


def test_weighted_unnormalized_is_weighted_sum() -> None:
    # weights [1, 3] as given: 1 * 2 + 3 * (-1) = -1; three components: 2*1 + 0*5 + 0.5*4 = 4
    out = combine_weighted(t([[2.0, -1.0]]), weights=[1.0, 3.0], normalize=False)
    torch.testing.assert_close(out, torch.tensor([-1.0], dtype=F64), rtol=0, atol=1e-12)
    out3 = combine_weighted(t([[1.0, 5.0, 4.0]]), weights=torch.tensor([2.0, 0.0, 0.5]), normalize=False)
    torch.testing.assert_close(out3, torch.tensor([4.0], dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("weights", "normalize", "match"),
    [
        ([1.0], True, "one weight per component"),
        ([1.0, 2.0, 3.0], True, "one weight per component"),
        ([[0.5, 0.5]], True, "one weight per component"),
        ([-0.5, 1.5], True, "non-negative"),
        ([-0.5, 1.5], False, "non-negative"),
        ([math.nan, 1.0], True, "finite"),
        ([0.0, 0.0], True, "sum to zero"),
    ],
)
def test_weighted_validation(weights: list, normalize: bool, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        combine_weighted(t([[1.0, 2.0]]), weights=weights, normalize=normalize)


def test_weighted_zero_weights_allowed_without_normalize() -> None:
    # all-zero weights are a valid (if useless) weighted sum: 0
    out = combine_weighted(t([[1.0, 2.0]]), weights=[0.0, 0.0], normalize=False)
    torch.testing.assert_close(out, torch.tensor([0.0], dtype=F64), rtol=0, atol=0)


def test_threshold_hand_rllr() -> None:
    # RLLR Eq. 4 with λ = 3:
    #   r1 = 2 < 3  -> r1 + r2 = 2 + 0.5 = 2.5
    #   r1 = 5 >= 3 -> λ + r2  = 3 + 0.5 = 3.5
    #   r1 = 3 = λ  -> "≥ λ" branch: λ + r2 = 3 + 0.5 = 3.5 (also = r1 + r2; the mix is continuous)
    #   r1 = -4     -> -4 + 1 = -3 (no lower cap)
    scores = t([[2.0, 0.5], [5.0, 0.5], [3.0, 0.5], [-4.0, 1.0]])
    out = combine_threshold(scores, threshold=3.0)
    torch.testing.assert_close(out, torch.tensor([2.5, 3.5, 3.5, -3.0], dtype=F64), rtol=0, atol=1e-12)


def test_threshold_more_components_caps_first_only() -> None:
    # C = 3, λ = 1: min(4, 1) + 2 + 5 = 8; min(0.5, 1) + 2 + 5 = 7.5 (components 2..C never capped)
    out = combine_threshold(t([[4.0, 2.0, 5.0], [0.5, 2.0, 5.0]]), threshold=1.0)
    torch.testing.assert_close(out, torch.tensor([8.0, 7.5], dtype=F64), rtol=0, atol=1e-12)


def test_threshold_keeps_nan() -> None:
    # a NaN label reward must not be silently replaced by λ + r2
    out = combine_threshold(t([[math.nan, 0.5]]), threshold=3.0)
    assert torch.isnan(out).all()


def test_threshold_validation() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        combine_threshold(t([[1.0], [2.0]]), threshold=3.0)
    with pytest.raises(ValueError, match="finite"):
        combine_threshold(t([[1.0, 2.0]]), threshold=math.inf)


def test_min_hand() -> None:
    out = combine_min(t([[1.0, -2.0, 3.0], [0.5, 0.25, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([-2.0, 0.25], dtype=F64), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [torch.zeros(3, dtype=F64), torch.zeros(2, 2, 2, dtype=F64)])
def test_combinators_reject_bad_shapes(bad: torch.Tensor) -> None:
    for name, fn in [("sum", combine_sum), ("min", combine_min)]:
        with pytest.raises(ValueError, match=r"\(B, C\)"):
            fn(bad)
        assert COMBINATORS[name] is fn
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        combine_weighted(bad, weights=[1.0, 1.0])


def test_combinators_reject_integer_scores() -> None:
    with pytest.raises(ValueError, match="floating point"):
        combine_sum(torch.tensor([[1, 2]]))


# ----------------------------------------------------------------------------------------------------------
# Combinators: properties
# ----------------------------------------------------------------------------------------------------------


@SETTINGS
@given(scores=score_matrix(min_c=2), lam=finite)
def test_threshold_equals_eq4_branches_and_is_at_most_sum(scores: torch.Tensor, lam: float) -> None:
    out = combine_threshold(scores, threshold=lam)
    r1, rest = scores[:, 0], scores[:, 1:].sum(dim=-1)
    # literal Eq. 4: r1 + r2 if r1 < λ else λ + r2
    literal = torch.where(r1 < lam, r1 + rest, lam + rest)
    torch.testing.assert_close(out, literal, rtol=0, atol=1e-12)
    # min(r1, λ) + r2 <= r1 + r2
    assert bool((out <= combine_sum(scores) + 1e-12).all())


@SETTINGS
@given(r2=finite, lam=finite, gap=st.floats(min_value=1e-9, max_value=1e-3))
def test_threshold_continuous_at_lambda(r2: float, lam: float, gap: float) -> None:
    # approaching λ from below (r1 + r2 branch) and from above (λ + r2 branch) gives λ + r2
    scores = t([[lam - gap, r2], [lam, r2], [lam + gap, r2]])
    out = combine_threshold(scores, threshold=lam)
    assert abs(out[0].item() - (lam + r2)) <= gap + 1e-12
    assert out[1].item() == pytest.approx(lam + r2, abs=1e-12)
    assert out[2].item() == pytest.approx(lam + r2, abs=1e-12)


@SETTINGS
@given(
    scores=score_matrix(min_c=2),
    lam=finite,
    weights=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=5, max_size=5),
    bump=st.floats(min_value=0.0, max_value=50.0),
    data=st.data(),
)
def test_combinators_monotone_in_each_component(
    scores: torch.Tensor, lam: float, weights: list[float], bump: float, data: st.DataObject
) -> None:
    # raising one component never lowers the combined score (non-negative weights)
    c = scores.shape[1]
    w = weights[:c]
    if sum(w) == 0:
        w = [1.0] * c
    j = data.draw(st.integers(0, c - 1))
    bumped = scores.clone()
    bumped[:, j] += bump
    fns = [
        lambda s: combine_sum(s),
        lambda s: combine_weighted(s, weights=w),
        lambda s: combine_weighted(s, weights=w, normalize=False),
        lambda s: combine_threshold(s, threshold=lam),
        lambda s: combine_min(s),
    ]
    for fn in fns:
        assert bool((fn(bumped) >= fn(scores) - 1e-9).all())


@SETTINGS
@given(
    column=st.lists(finite, min_size=1, max_size=6),
    weights=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=5).filter(
        lambda w: sum(w) > 1e-3
    ),
)
def test_weighted_average_of_identical_components_is_identity(
    column: list[float], weights: list[float]
) -> None:
    x = torch.tensor(column, dtype=F64)
    scores = x[:, None].expand(-1, len(weights)).contiguous()
    torch.testing.assert_close(combine_weighted(scores, weights=weights), x, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(scores=score_matrix(), data=st.data())
def test_sum_and_min_permutation_invariant(scores: torch.Tensor, data: st.DataObject) -> None:
    perm = data.draw(st.permutations(range(scores.shape[1])))
    permuted = scores[:, list(perm)]
    torch.testing.assert_close(combine_sum(permuted), combine_sum(scores), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(combine_min(permuted), combine_min(scores), rtol=0, atol=0)


@SETTINGS
@given(
    scores=score_matrix(),
    weights=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=5, max_size=5),
)
def test_weighted_matches_python_loop(scores: torch.Tensor, weights: list[float]) -> None:
    # vectorized == loop reference sum_i (w_i / sum w) * s_i
    w = weights[: scores.shape[1]]
    if sum(w) == 0:
        w = [1.0] * len(w)
    total = sum(w)
    expected = [sum(wi / total * s for wi, s in zip(w, row, strict=True)) for row in scores.tolist()]
    out = combine_weighted(scores, weights=w)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------
# Constrained combinator and its dual ascent
# ----------------------------------------------------------------------------------------------------------


def test_constrained_hand() -> None:
    scores = t([[4.0, 1.0], [2.0, 0.5]])
    # mu = 0: the sum; mu_1 = 0.25 on the first: 0.75 * 4 + 1 = 4, 0.75 * 2 + 0.5 = 2
    assert combine_constrained(scores, multipliers=[0.0, 0.0]).tolist() == [5.0, 2.5]
    assert combine_constrained(scores, multipliers=[0.25, 0.0]).tolist() == [4.0, 2.0]
    # mu_1 = 1.5 > 1: the capped component now lowers the score (-0.5 * 4 + 1 = -1)
    assert combine_constrained(scores, multipliers=[1.5, 0.0]).tolist() == [-1.0, -0.5]


def test_constrained_validation() -> None:
    with pytest.raises(ValueError, match="one multiplier per component"):
        combine_constrained(t([[1.0, 2.0]]), multipliers=[0.0])
    with pytest.raises(ValueError, match=">= 0"):
        combine_constrained(t([[1.0, 2.0]]), multipliers=[-0.1, 0.0])
    with pytest.raises(ValueError, match="finite"):
        multiplier_step(0.0, math.nan, 1.0, lr=0.1)
    with pytest.raises(ValueError, match="lr > 0"):
        multiplier_step(0.0, 1.0, 1.0, lr=0.0)
    with pytest.raises(ValueError, match="kp >= 0"):
        multiplier_step(0.0, 1.0, 1.0, lr=0.1, kp=-1.0)


def test_multiplier_step_hand() -> None:
    # plain dual ascent (kp 0): above the target the multiplier rises by lr * gap; below it falls, never under 0
    assert multiplier_step(0.0, 5.0, 3.0, lr=0.1) == pytest.approx((0.2, 0.2))
    assert multiplier_step(0.5, 2.0, 3.0, lr=0.1) == pytest.approx((0.4, 0.4))
    assert multiplier_step(0.05, 0.0, 3.0, lr=0.1) == (0.0, 0.0)
    # PI: the proportional term adds kp * gap to the multiplier, not to the integral
    assert multiplier_step(0.5, 4.0, 3.0, lr=0.1, kp=1.0) == pytest.approx((0.6, 1.6))
    assert multiplier_step(0.5, 2.0, 3.0, lr=0.1, kp=1.0) == pytest.approx((0.4, 0.0))


@SETTINGS
@given(target=finite, start=st.floats(0.0, 5.0), lr=st.floats(0.01, 0.5), kp=st.floats(0.0, 0.5))
def test_multiplier_holds_a_linear_response_at_its_target(
    target: float, start: float, lr: float, kp: float
) -> None:
    # A "policy" whose mean score falls linearly with the multiplier, E[s](mu) = target + 2 - mu, is at its
    # target where mu = 2: the iteration converges there with or without the proportional term. (Gains this
    # large against a response this fast can cycle: lr = kp = 1 goes 0, 4, 0, 4 ...; real policies respond
    # over many steps.)
    integral, mu = start, start
    for _ in range(3000):
        integral, mu = multiplier_step(integral, target + 2.0 - mu, target, lr=lr, kp=kp)
    assert mu == pytest.approx(2.0, abs=1e-5)


@SETTINGS
@given(scores=score_matrix(min_c=2), mu=st.floats(0.0, 1.0), data=st.data())
def test_constrained_with_multipliers_up_to_one_is_monotone_and_at_most_sum(
    scores: torch.Tensor, mu: float, data: st.DataObject
) -> None:
    c = scores.shape[1]
    j = data.draw(st.integers(0, c - 1))
    multipliers = [0.0] * c
    multipliers[j] = mu
    out = combine_constrained(scores, multipliers=multipliers)
    expected = combine_sum(scores) - mu * scores[:, j]
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    bumped = scores.clone()
    bumped[:, j] += 1.0
    assert bool((combine_constrained(bumped, multipliers=multipliers) >= out - 1e-9).all())


def test_registry_builtins() -> None:
    assert {"sum", "weighted", "threshold", "min"} <= set(COMBINATORS)
    assert get_combinator("sum") is combine_sum
    assert get_combinator("weighted") is combine_weighted
    assert get_combinator("threshold") is combine_threshold
    assert get_combinator("min") is combine_min


def test_registry_unknown_lists_names() -> None:
    with pytest.raises(ValueError, match="unknown combinator 'nope'") as info:
        get_combinator("nope")
    for name in ("sum", "weighted", "threshold", "min"):
        assert repr(name) in str(info.value)


def test_registry_rejects_duplicates_and_empty_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_combinator("sum")
    with pytest.raises(ValueError, match="non-empty"):
        register_combinator("")
    assert COMBINATORS["sum"] is combine_sum


def test_registry_custom_combinator(monkeypatch: pytest.MonkeyPatch) -> None:
    # isolate the global registry so this test leaves no trace
    monkeypatch.setattr(C, "COMBINATORS", dict(C.COMBINATORS))

    @C.register_combinator("max_plus")
    def combine_max_plus(scores: torch.Tensor, *, bonus: float) -> torch.Tensor:
        return scores.max(dim=-1).values + bonus

    fn = C.get_combinator("max_plus")
    assert fn is combine_max_plus
    # max(1, 4) + 0.5 = 4.5
    torch.testing.assert_close(fn(t([[1.0, 4.0]]), bonus=0.5), torch.tensor([4.5], dtype=F64))
    with pytest.raises(ValueError, match="already registered"):
        C.register_combinator("max_plus")


def test_registry_config_style_call() -> None:
    # how a config uses it: name + keyword params
    fn = get_combinator("threshold")
    torch.testing.assert_close(fn(t([[5.0, 0.5]]), **{"threshold": 3.0}), torch.tensor([3.5], dtype=F64))


# ----------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------


def test_bounded_to_logit_crs_thesis_numbers() -> None:
    # CRS §5.4: scores 0.6914, 0.4258, 0.3496, 0.3398 "converted back to logits" are
    # 0.8067, -0.2990, -0.6208, -0.6642. All four are consistent to 4 decimals:
    # log(0.6914/0.3086) = 0.80667, log(0.4258/0.5742) = -0.29901,
    # log(0.3496/0.6504) = -0.62080, log(0.3398/0.6602) = -0.66419.
    p = torch.tensor([0.6914, 0.4258, 0.3496, 0.3398], dtype=F64)
    logits = bounded_to_logit(p)
    expected = torch.tensor([0.8067, -0.2990, -0.6208, -0.6642], dtype=F64)
    torch.testing.assert_close(logits.round(decimals=4), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(logits, expected, rtol=0, atol=5e-5)


def test_bounded_to_logit_hand_and_clamp() -> None:
    # logit(0.5) = 0; logit(0.75) = log 3; p = 0 and 1 clamp to eps: ±log((1 - eps) / eps)
    eps = 1e-6
    out = bounded_to_logit(torch.tensor([0.5, 0.75, 0.0, 1.0], dtype=F64), eps=eps)
    big = math.log((1 - eps) / eps)
    torch.testing.assert_close(
        out, torch.tensor([0.0, math.log(3.0), -big, big], dtype=F64), rtol=1e-12, atol=1e-9
    )


def test_bounded_to_logit_validation() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bounded_to_logit(torch.tensor([0.5, 1.5], dtype=F64))
    with pytest.raises(ValueError, match="eps"):
        bounded_to_logit(torch.tensor([0.5], dtype=F64), eps=0.0)


@SETTINGS
@given(st.lists(st.floats(min_value=-12.0, max_value=12.0), min_size=1, max_size=8))
def test_logit_round_trip(values: list[float]) -> None:
    x = torch.tensor(values, dtype=F64)
    torch.testing.assert_close(bounded_to_logit(logit_to_bounded(x), eps=1e-12), x, rtol=1e-9, atol=1e-9)
    p = logit_to_bounded(x)
    torch.testing.assert_close(logit_to_bounded(bounded_to_logit(p, eps=1e-12)), p, rtol=1e-12, atol=1e-15)


def test_logit_to_bounded_hand() -> None:
    # sigmoid(0) = 0.5; sigmoid(log 3) = 3 / 4
    out = logit_to_bounded(torch.tensor([0.0, math.log(3.0)], dtype=F64))
    torch.testing.assert_close(out, torch.tensor([0.5, 0.75], dtype=F64), rtol=0, atol=1e-15)


def test_clip_scores_symmetric_crs_table8() -> None:
    # CRS Table 8: score clip 4 -> [-4, 4]
    x = torch.tensor([-6.0, -1.0, 3.9, 4.0, 9.0], dtype=F64)
    out = clip_scores_symmetric(x, clip=4.0)
    torch.testing.assert_close(out, torch.tensor([-4.0, -1.0, 3.9, 4.0, 4.0], dtype=F64), rtol=0, atol=0)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="positive"):
            clip_scores_symmetric(x, clip=bad)


def test_calibrate_hand() -> None:
    # reference [1, 2, 3, 4]: mean 2.5, population var (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    x = torch.tensor([2.5, 2.5 + math.sqrt(1.25), 0.0], dtype=F64)
    expected = torch.tensor([0.0, 1.0, -2.5 / math.sqrt(1.25)], dtype=F64)
    torch.testing.assert_close(calibrate(x, reference=ref), expected, rtol=0, atol=1e-12)


def test_calibrate_keeps_dtype_and_validates() -> None:
    x32 = torch.tensor([1.0, 2.0], dtype=torch.float32)
    assert calibrate(x32, reference=torch.tensor([0.0, 2.0])).dtype == torch.float32
    with pytest.raises(ValueError, match="at least 2"):
        calibrate(x32, reference=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="zero spread"):
        calibrate(x32, reference=torch.tensor([3.0, 3.0, 3.0]))
    with pytest.raises(ValueError, match="finite"):
        calibrate(x32, reference=torch.tensor([3.0, math.inf]))


@SETTINGS
@given(st.lists(finite, min_size=2, max_size=30).filter(lambda v: max(v) - min(v) > 1e-3))
def test_calibrate_reference_becomes_standard(values: list[float]) -> None:
    # calibrating the reference on itself gives mean 0 and population std 1
    ref = torch.tensor(values, dtype=F64)
    z = calibrate(ref, reference=ref)
    assert abs(z.mean().item()) < 1e-9
    assert z.var(correction=0).item() == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------
# RunningMeanStd
# ----------------------------------------------------------------------------------------------------------


def test_running_hand() -> None:
    # [1, 2] then [3, 4, 5]: mean 3, population var (4 + 1 + 0 + 1 + 4) / 5 = 2
    rms = RunningMeanStd()
    rms.update(torch.tensor([1.0, 2.0]))
    assert (rms.count, rms.mean, rms.var) == (2, 1.5, 0.25)
    rms.update(torch.tensor([[3.0, 4.0, 5.0]]))
    assert rms.count == 5
    assert rms.mean == pytest.approx(3.0, abs=1e-15)
    assert rms.var == pytest.approx(2.0, abs=1e-15)
    assert rms.std == pytest.approx(math.sqrt(2.0), abs=1e-15)
    assert rms.m2 == pytest.approx(10.0, abs=1e-14)


def test_running_normalize_hand() -> None:
    rms = RunningMeanStd.from_moments(count=5, mean=3.0, m2=20.0)  # var 4, std 2
    x = torch.tensor([3.0, 7.0, -1.0], dtype=F64)
    torch.testing.assert_close(rms.normalize(x, eps=0.0), torch.tensor([0.0, 2.0, -2.0], dtype=F64))
    torch.testing.assert_close(
        rms.normalize(x, shift_mean=False, eps=0.0), torch.tensor([1.5, 3.5, -0.5], dtype=F64)
    )
    # eps is added to the std: 4 / (2 + 2) = 1
    torch.testing.assert_close(
        rms.normalize(torch.tensor([7.0], dtype=F64), eps=2.0), torch.tensor([1.0], dtype=F64)
    )
    assert rms.normalize(x.float()).dtype == torch.float32


def test_running_empty_and_validation() -> None:
    rms = RunningMeanStd()
    assert math.isnan(rms.var) and math.isnan(rms.std)
    with pytest.raises(ValueError, match="no scores"):
        rms.normalize(torch.zeros(2))
    rms.update(torch.zeros(0))  # empty update is a no-op
    assert rms == RunningMeanStd()
    with pytest.raises(ValueError, match="finite"):
        rms.update(torch.tensor([1.0, math.nan]))
    assert rms.count == 0  # failed update leaves the state untouched
    with pytest.raises(ValueError, match="count >= 0"):
        RunningMeanStd.from_moments(count=-1, mean=0.0, m2=0.0)
    with pytest.raises(ValueError, match="keys"):
        rms.load_state_dict({"count": 1, "mean": 0.0})


def test_running_state_dict_round_trip() -> None:
    a = RunningMeanStd()
    a.update(torch.tensor([0.5, -1.0, 2.0]))
    b = RunningMeanStd()
    b.load_state_dict(a.state_dict())
    assert b == a
    b.update(torch.tensor([3.0]))
    assert b != a  # independent objects


chunks_strategy = st.lists(st.lists(finite, min_size=0, max_size=12), min_size=1, max_size=6).filter(
    lambda chunks: sum(map(len, chunks)) > 0
)


@SETTINGS
@given(chunks=chunks_strategy)
def test_running_chunked_and_merged_equal_whole(chunks: list[list[float]]) -> None:
    whole = torch.tensor([v for chunk in chunks for v in chunk], dtype=F64)
    mean, var = whole.mean().item(), whole.var(correction=0).item()

    streamed = RunningMeanStd()
    for chunk in chunks:
        streamed.update(torch.tensor(chunk, dtype=F64))

    # per-shard statistics folded with merge (how workers combine gathered (count, mean, m2))
    shards = [RunningMeanStd.from_tensor(torch.tensor(chunk, dtype=F64)) for chunk in chunks]
    merged = RunningMeanStd()
    for shard in shards:
        merged = merged.merge(RunningMeanStd.from_moments(**shard.state_dict()))

    # merging in reverse order (any tree of merges) gives the same answer
    reverse = RunningMeanStd()
    for shard in reversed(shards):
        reverse = shard.merge(reverse)

    for stats in (streamed, merged, reverse):
        assert stats.count == whole.numel()
        assert math.isclose(stats.mean, mean, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(stats.var, var, rel_tol=1e-9, abs_tol=1e-9)


def test_running_merge_does_not_modify_inputs() -> None:
    a = RunningMeanStd.from_tensor(torch.tensor([1.0, 2.0]))
    b = RunningMeanStd.from_tensor(torch.tensor([10.0]))
    a_state, b_state = a.state_dict(), b.state_dict()
    merged = a.merge(b)
    # [1, 2, 10]: mean 13/3, population var ((1-13/3)^2 + (2-13/3)^2 + (10-13/3)^2) / 3 = 146/9
    m = 13.0 / 3.0
    var = ((1 - m) ** 2 + (2 - m) ** 2 + (10 - m) ** 2) / 3.0
    assert merged.mean == pytest.approx(m, abs=1e-14)
    assert merged.var == pytest.approx(var, abs=1e-13)
    assert a.state_dict() == a_state and b.state_dict() == b_state


def test_running_float32_input_uses_float64() -> None:
    # float32 input, statistics held as float64 (Python floats): a large offset with a small spread
    x = torch.tensor([1e4, 1e4 + 0.25, 1e4 + 0.5], dtype=torch.float32)
    rms = RunningMeanStd.from_tensor(x)
    # values are exactly representable: mean 1e4 + 0.25, var (0.0625 + 0 + 0.0625) / 3
    assert rms.mean == 1e4 + 0.25
    assert rms.var == pytest.approx(0.125 / 3, rel=1e-12)
