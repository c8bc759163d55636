"""Evaluation statistics: win rates with standard error and confidence interval, correlations, accuracy, and
paired tests between two models scored on the same items (exact McNemar, paired bootstrap).

Win rates follow CRS §5.5.1 / §7.3: a judge compares model A with model B on n prompts; each outcome is
1.0 (A wins), 0.0 (B wins) or 0.5 (tie). The standard error is CRS Eq. 7.1, ``SE = sqrt(p (1 - p) / n)``,
and the 95% confidence interval is ``p ± 1.96 SE`` (the normal / Wald approximation).

Reproducing the thesis' numbers (CRS Table 23 and §7.3): Eq. 7.1 with n = 100 gives SE = 4.74% for
p = 66%, but Table 23 prints 4.76%. Every cell of Table 23 (66%: 4.76, 61%: 4.90, 63%: 4.85, 71%: 4.56,
55%: 5.0) matches ``sqrt(p (1 - p) / (n - 1))`` with n = 100 instead, i.e. the sample standard deviation
with ``ddof=1`` over sqrt(n) (what ``pandas.Series.sem`` / ``scipy.stats.sem`` return); n = 99 evaluated
prompts would give the same numbers and cannot be told apart. The printed intervals use those SEs:
``66% ± 9.33%`` = 1.96 × 4.76% (Eq. 7.1 as written gives 1.96 × 4.74% = 9.28%), ``61% ± 9.6%``,
``55% ± 9.8%``, ``71% ± 8.93%``. ``63% ± 9.33%`` matches neither (1.96 × 4.85% = 9.51%): it looks
copied from the 66% line. Here the default is Eq. 7.1 as written (``ddof=0``); pass ``ddof=1`` to
reproduce Table 23.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

Z_95 = 1.96
"""Two-sided 95% normal quantile as rounded in the thesis (exact: 1.959963984540054)."""

_WIN, _LOSS, _TIE = 1.0, 0.0, 0.5


class PairedBootstrap(NamedTuple):
    """Paired bootstrap of ``mean(a) - mean(b)`` (see :func:`paired_bootstrap`)."""

    p: float
    """Two-sided p-value ``min(1, 2 min(P*(d* <= 0), P*(d* >= 0)))``."""
    ci_low: float
    """2.5% percentile of the resampled differences."""
    ci_high: float
    """97.5% percentile of the resampled differences."""


class PairedAccuracy(NamedTuple):
    """Accuracy of model A against model B on the same n items (see :func:`paired_accuracy_difference`)."""

    n: int
    """Items both models answered."""
    acc_a: float
    """Accuracy of A."""
    acc_b: float
    """Accuracy of B."""
    diff: float
    """``acc_a - acc_b = (b - c) / n``."""
    diff_se: float
    """Standard error of ``diff`` from the per-item differences: ``sqrt(var(d) / n)``, ``ddof=1`` (0 at n = 1)."""
    ci_low: float
    """``diff - 1.96 diff_se`` (normal approximation, not clipped)."""
    ci_high: float
    """``diff + 1.96 diff_se``."""
    b: int
    """Discordant items A got right and B wrong."""
    c: int
    """Discordant items A got wrong and B right."""
    mcnemar_p: float
    """Two-sided exact McNemar p-value of ``(b, c)``."""


class WinRate(NamedTuple):
    """Win rate of model A against model B with its uncertainty (CRS Eq. 7.1)."""

    rate: float
    """``(wins + tie_value * ties) / n``."""
    wins: int
    """Outcomes equal to 1.0 (A preferred)."""
    losses: int
    """Outcomes equal to 0.0 (B preferred)."""
    ties: int
    """Outcomes equal to 0.5."""
    n: int
    """Number of comparisons."""
    se: float
    """Standard error ``sqrt(rate (1 - rate) / (n - ddof))``."""
    ci_low: float
    """``rate - z * se``; not clipped, may fall below 0."""
    ci_high: float
    """``rate + z * se``; not clipped, may exceed 1."""
    tie_rate: float
    """``ties / n``."""


# ---------------------------------------------------------------------------------------------------------
# Standard error and confidence interval
# ---------------------------------------------------------------------------------------------------------


def standard_error(p: float, n: int, *, ddof: int = 0) -> float:
    """Standard error of a proportion.

    Args:
        p: Estimated proportion (win rate) in [0, 1].
        n: Number of comparisons it was estimated from.
        ddof: Subtracted from ``n`` in the denominator. 0 is CRS Eq. 7.1 as written; 1 reproduces the
            numbers printed in CRS Table 23 (see the module docstring).

    Returns:
        ``sqrt(p (1 - p) / (n - ddof))``.

    Raises:
        ValueError: If ``p`` is outside [0, 1] or ``n - ddof < 1``.

    Reference:
        CRS Eq. 7.1.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if n - ddof < 1:
        raise ValueError(f"need n - ddof >= 1, got n={n}, ddof={ddof}")
    return math.sqrt(p * (1.0 - p) / (n - ddof))  # SE = sqrt(p (1 - p) / n)


def confidence_interval(p: float, n: int, *, z: float = Z_95, ddof: int = 0) -> tuple[float, float]:
    """Normal-approximation (Wald) confidence interval of a proportion, as used in the thesis.

    The interval is not clipped: near p = 0 or 1, or for small n, it can leave [0, 1], and at p = 0 or 1
    it has zero width. That is the formula's known weakness, kept so the thesis' numbers reproduce.

    Args:
        p: Estimated proportion in [0, 1].
        n: Number of comparisons.
        z: Normal quantile; 1.96 (thesis) for a two-sided 95% interval.
        ddof: See :func:`standard_error`.

    Returns:
        ``(p - z * SE, p + z * SE)``.

    Raises:
        ValueError: On invalid ``p``, ``n``, ``ddof`` or a non-positive ``z``.

    Reference:
        CRS §7.3 ("C.I = win rate ± (1.96 * S.E)") with CRS Eq. 7.1.
    """
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    half_width = z * standard_error(p, n, ddof=ddof)  # CI = p ± z * SE
    return p - half_width, p + half_width


# ---------------------------------------------------------------------------------------------------------
# Win rates
# ---------------------------------------------------------------------------------------------------------


def win_rate(
    outcomes: Sequence[float] | torch.Tensor,
    *,
    tie_value: float = 0.5,
    z: float = Z_95,
    ddof: int = 0,
) -> WinRate:
    """Win rate of model A against model B from judged comparisons.

    Args:
        outcomes: Shape (n,), one per comparison: 1.0 = A wins, 0.0 = B wins, 0.5 = tie.
        tie_value: Credit A gets for a tie (0.5 splits it; 0 counts ties as losses).
        z: Normal quantile of the interval (1.96 in the thesis).
        ddof: See :func:`standard_error`; 1 reproduces CRS Table 23.

    Returns:
        A :class:`WinRate`. ``se`` and the (unclipped, Wald) interval use ``rate`` as p.

    Raises:
        ValueError: If ``outcomes`` is empty, not 1-D, or holds a value other than 0, 0.5 or 1, or if
            ``tie_value`` is outside [0, 1].

    Reference:
        CRS §5.5.1 (win rate), CRS Eq. 7.1 (SE) and §7.3 (95% C.I.); RLLR Fig. 4 (tie rates).
    """
    if not 0.0 <= tie_value <= 1.0:
        raise ValueError(f"tie_value must be in [0, 1], got {tie_value}")
    values = _as_1d_float64(outcomes, "outcomes")
    n = values.numel()
    if n == 0:
        raise ValueError("outcomes is empty")
    is_win, is_loss, is_tie = values == _WIN, values == _LOSS, values == _TIE
    if not bool((is_win | is_loss | is_tie).all()):
        bad = sorted({float(v) for v in values[~(is_win | is_loss | is_tie)].tolist()})
        raise ValueError(f"outcomes must be 1.0 (win), 0.0 (loss) or 0.5 (tie); found {bad[:5]}")
    wins, losses, ties = int(is_win.sum()), int(is_loss.sum()), int(is_tie.sum())
    rate = (wins + tie_value * ties) / n  # p = (wins + tie_value * ties) / n
    low, high = confidence_interval(rate, n, z=z, ddof=ddof)
    return WinRate(
        rate=rate,
        wins=wins,
        losses=losses,
        ties=ties,
        n=n,
        se=standard_error(rate, n, ddof=ddof),
        ci_low=low,
        ci_high=high,
        tie_rate=ties / n,
    )


def win_rate_matrix(
    outcomes_by_pair: Mapping[tuple[str, str], Sequence[float] | torch.Tensor],
    models: Sequence[str],
    *,
    tie_value: float = 0.5,
    z: float = Z_95,
    ddof: int = 0,
) -> dict[str, dict[str, WinRate | None]]:
    """Win-rate matrix between models: row model against column model.

    Each pair is judged once, in one direction: ``outcomes_by_pair[(a, b)]`` holds a-vs-b outcomes. The
    mirrored cell (b, a) is computed from the flipped outcomes ``1 - o``, so wins and losses swap and ties
    stay; with ``tie_value=0.5`` its rate is exactly ``1 - rate`` and its SE the same.

    Args:
        outcomes_by_pair: ``(a, b) -> outcomes`` (1.0 = a wins, 0.0 = b wins, 0.5 = tie), shape (n_ab,).
        models: Row and column order; every model named in a key must be listed.
        tie_value: See :func:`win_rate`.
        z: See :func:`win_rate`.
        ddof: See :func:`standard_error`.

    Returns:
        ``matrix[a][b]``: the :class:`WinRate` of a against b; ``None`` on the diagonal and for pairs
        without data.

    Raises:
        ValueError: If a key names an unlisted model, pairs a model with itself, or both (a, b) and (b, a)
            are given (merge them into one direction first), or if ``models`` has duplicates.

    Reference:
        CRS Tables 10, 11 and 16 (row model vs column model), Table 23 (SE per cell), CRS Eq. 7.1.
    """
    if len(set(models)) != len(models):
        raise ValueError(f"models has duplicates: {list(models)}")
    matrix: dict[str, dict[str, WinRate | None]] = {a: dict.fromkeys(models) for a in models}
    for (a, b), outcomes in outcomes_by_pair.items():
        if a not in matrix or b not in matrix:
            raise ValueError(f"pair ({a!r}, {b!r}) names a model not in models={list(models)}")
        if a == b:
            raise ValueError(f"pair ({a!r}, {b!r}) compares a model with itself")
        if (b, a) in outcomes_by_pair:
            raise ValueError(f"both ({a!r}, {b!r}) and ({b!r}, {a!r}) given; give each pair in one direction")
        values = _as_1d_float64(outcomes, f"outcomes_by_pair[{(a, b)!r}]")
        matrix[a][b] = win_rate(values, tie_value=tie_value, z=z, ddof=ddof)
        matrix[b][a] = win_rate(1.0 - values, tie_value=tie_value, z=z, ddof=ddof)  # b vs a: o -> 1 - o
    return matrix


# ---------------------------------------------------------------------------------------------------------
# Correlation and accuracy
# ---------------------------------------------------------------------------------------------------------


def rank_with_ties(x: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Average ranks ("midranks"), 1-based: the smallest value gets rank 1, tied values share the mean
    of the ranks they occupy (e.g. ``[10, 20, 20, 30] -> [1, 2.5, 2.5, 4]``).

    Args:
        x: Values, shape (N,).

    Returns:
        float64 tensor of shape (N,).

    Raises:
        ValueError: If ``x`` is not 1-D or contains NaN.

    Reference:
        Spearman 1904; midranks for ties as in Kendall & Gibbons, *Rank Correlation Methods* §3.
    """
    values = _as_1d_float64(x, "x")
    if bool(torch.isnan(values).any()):
        raise ValueError("x contains NaN")
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    below = torch.cumsum(counts, 0) - counts  # number of values strictly smaller than each unique value
    group_rank = below + (counts + 1.0) / 2.0  # mean of ranks below+1 .. below+count
    return group_rank[inverse]


def pearson(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Pearson correlation coefficient.

    Zero variance raises instead of returning NaN, so an undefined correlation cannot slip into a table
    as a number; callers who prefer NaN catch the ``ValueError``.

    Args:
        x: Shape (N,).
        y: Shape (N,).

    Returns:
        r in [-1, 1] (clamped against rounding just outside the range).

    Raises:
        ValueError: If the lengths differ, N < 2, a value is not finite, or x or y is constant.

    Reference:
        RLLR §4.1 / Appendix A (Pearson for STS-B); CRS Fig. 27 (reward vs length correlation).
    """
    xs, ys = _paired(x, y)
    if not bool(torch.isfinite(xs).all() and torch.isfinite(ys).all()):
        raise ValueError("pearson needs finite values")
    if bool((xs == xs[0]).all()) or bool((ys == ys[0]).all()):
        raise ValueError("pearson is undefined when x or y is constant (zero variance)")
    dx, dy = xs - xs.mean(), ys - ys.mean()
    r = (dx * dy).sum() / torch.sqrt((dx * dx).sum() * (dy * dy).sum())  # r = cov(x,y) / (sd_x sd_y)
    return float(r.clamp(-1.0, 1.0))


def spearman(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties get midranks).

    Args:
        x: Shape (N,).
        y: Shape (N,).

    Returns:
        rho in [-1, 1].

    Raises:
        ValueError: As :func:`pearson` (length mismatch, N < 2, NaN, all values tied).

    Reference:
        Spearman 1904; with ties, rho = pearson(midranks(x), midranks(y)) (Kendall & Gibbons §3).
    """
    xs, ys = _paired(x, y)
    return pearson(rank_with_ties(xs), rank_with_ties(ys))  # rho = r(rank(x), rank(y))


def accuracy(pred: Sequence[object] | torch.Tensor, target: Sequence[object] | torch.Tensor) -> float:
    """Fraction of predictions equal to their target (labels may be ints, floats or strings).

    Args:
        pred: Predicted labels, shape (N,).
        target: Gold labels, shape (N,).

    Returns:
        ``mean(pred == target)`` in [0, 1].

    Raises:
        ValueError: If the lengths differ, N == 0, or a tensor is not 1-D.

    Reference:
        RLLR §4.1 (accuracy per NLU task, Table 4); RLLR Tables 5 and 9 (reward-model pair accuracy).
    """
    preds, targets = _as_list(pred, "pred"), _as_list(target, "target")
    if len(preds) != len(targets):
        raise ValueError(f"pred and target lengths differ: {len(preds)} vs {len(targets)}")
    if not preds:
        raise ValueError("accuracy of zero predictions is undefined")
    return sum(p == t for p, t in zip(preds, targets, strict=True)) / len(preds)  # acc = #correct / N


# ---------------------------------------------------------------------------------------------------------
# Paired comparisons of two models on the same items
# ---------------------------------------------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test: a binomial test on the discordant pairs.

    Under "A and B are equally accurate" each of the ``b + c`` discordant items is A's win with probability
    1/2, so with ``X ~ Bin(b + c, 1/2)`` the p-value is ``min(1, 2 P[X <= min(b, c)])``. The tail is summed in
    exact integers (``C(n, k) / 2^n``), so it holds for any n (tiny p-values underflow to 0.0).

    Args:
        b: Items model A got right and model B wrong.
        c: Items model A got wrong and model B right.

    Returns:
        p in (0, 1]; 1.0 when ``b + c == 0`` (no discordant item, no evidence either way).

    Raises:
        ValueError: If ``b`` or ``c`` is negative.

    Reference:
        McNemar 1947; the exact (binomial) form as in Agresti, *Categorical Data Analysis* (3rd ed.) §11.1.
    """
    b, c = operator.index(b), operator.index(c)
    if b < 0 or c < 0:
        raise ValueError(f"b and c must be >= 0, got b={b}, c={c}")
    n, k = b + c, min(b, c)
    term = tail = 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)  # C(n, i + 1) = C(n, i) (n - i) / (i + 1), exact
        tail += term
    return min(1.0, 2 * tail / 2**n)  # p = min(1, 2 sum_{i <= k} C(n, i) / 2^n); int / int rounds correctly


def paired_bootstrap(
    a: Sequence[float] | torch.Tensor,
    b: Sequence[float] | torch.Tensor,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedBootstrap:
    """Paired bootstrap of the mean difference ``mean(a) - mean(b)`` over items scored for both models.

    Items are resampled with replacement, the same items for ``a`` and ``b`` (so the pairing is kept), and
    each resample gives ``d* = mean(a*) - mean(b*)``. The interval is the percentile interval (2.5% and 97.5%
    quantiles of ``d*``, linear interpolation). The p-value is the two-sided percentile-bootstrap p-value
    ``p = min(1, 2 min(#{d* <= 0}, #{d* >= 0}) / resamples)``: the smallest level at which the equal-tailed
    percentile interval excludes 0. Its resolution is ``2 / resamples``; ``p = 0`` means no resample fell on
    the other side of 0 (read it as ``p < 2 / resamples``). Identical inputs give ``d* = 0`` and ``p = 1``.

    Args:
        a: Per-item values of model A (e.g. 1.0 correct, 0.0 wrong), shape (n,).
        b: Per-item values of model B on the same items, shape (n,).
        resamples: Bootstrap resamples R.
        seed: Seed of the ``torch.Generator`` drawing the resamples; same inputs and seed, same result.

    Returns:
        A :class:`PairedBootstrap` ``(p, ci_low, ci_high)``.

    Raises:
        ValueError: If the lengths differ, n == 0, a value is not finite, or ``resamples < 1``.

    Reference:
        Efron & Tibshirani, *An Introduction to the Bootstrap* (1993), §13.3 (percentile interval) and
        §16.4 (bootstrap tests); Koehn 2004, "Statistical Significance Tests for Machine Translation Evaluation".
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    xs, ys = _as_1d_float64(a, "a"), _as_1d_float64(b, "b")
    if xs.numel() != ys.numel():
        raise ValueError(f"a and b lengths differ: {xs.numel()} vs {ys.numel()}")
    if xs.numel() == 0:
        raise ValueError("a and b are empty")
    if not bool(torch.isfinite(xs).all() and torch.isfinite(ys).all()):
        raise ValueError("paired_bootstrap needs finite values")
    d = xs - ys  # per-item differences d_i = a_i - b_i
    n = d.numel()
    generator = torch.Generator().manual_seed(seed)
    rows = max(1, 2**22 // n)  # resamples per chunk: at most ~4M indices in memory at once
    means = torch.cat(
        [
            d[torch.randint(n, (min(rows, resamples - start), n), generator=generator)].mean(dim=1)
            for start in range(0, resamples, rows)
        ]
    )  # d* = mean of n differences drawn with replacement
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return PairedBootstrap(p=min(1.0, 2 * min(below, above) / resamples), ci_low=low, ci_high=high)


def paired_accuracy_difference(
    correct_a: Sequence[bool | float] | torch.Tensor,
    correct_b: Sequence[bool | float] | torch.Tensor,
    *,
    z: float = Z_95,
) -> PairedAccuracy:
    """Accuracy difference of two models on the same items, its paired standard error and McNemar test.

    With per-item differences ``d_i = a_i - b_i`` in {-1, 0, 1}, ``diff = mean(d) = (b - c) / n`` and
    ``SE = sqrt(var(d) / n)`` with the sample variance (``ddof=1``) ``(b + c - n diff^2) / (n - 1)``: items
    both models get right (or wrong) add no variance, which is why a paired SE is smaller than one built from
    the two accuracies' independent SEs.

    Args:
        correct_a: 1 (or True) where model A is right, 0 where it is wrong (an unparseable answer is wrong),
            shape (n,).
        correct_b: The same for model B on the same items, shape (n,).
        z: Normal quantile of the interval ``diff ± z SE``.

    Returns:
        A :class:`PairedAccuracy`.

    Raises:
        ValueError: If the lengths differ, n == 0, or a value is not 0 or 1.

    Reference:
        McNemar 1947 (b, c and the test); the SE is the standard error of the mean of the paired
        differences (the paired t statistic's denominator).
    """
    xs, ys = _as_1d_float64(correct_a, "correct_a"), _as_1d_float64(correct_b, "correct_b")
    if xs.numel() != ys.numel():
        raise ValueError(f"correct_a and correct_b lengths differ: {xs.numel()} vs {ys.numel()}")
    n = xs.numel()
    if n == 0:
        raise ValueError("no items to compare")
    for name, v in (("correct_a", xs), ("correct_b", ys)):
        if not bool(((v == 0) | (v == 1)).all()):
            raise ValueError(f"{name} must hold 0/1 (or booleans)")
    b, c = int((xs > ys).sum()), int((xs < ys).sum())  # A right & B wrong, A wrong & B right
    diff = (b - c) / n  # acc_a - acc_b = mean(d)
    var = max(0.0, (b + c - n * diff * diff) / (n - 1)) if n > 1 else 0.0  # sum (d - mean)^2 / (n - 1)
    se = math.sqrt(var / n)
    return PairedAccuracy(
        n=n,
        acc_a=float(xs.mean()),
        acc_b=float(ys.mean()),
        diff=diff,
        diff_se=se,
        ci_low=diff - z * se,
        ci_high=diff + z * se,
        b=b,
        c=c,
        mcnemar_p=mcnemar_exact(b, c),
    )


# ---------------------------------------------------------------------------------------------------------
# Input helpers
# ---------------------------------------------------------------------------------------------------------


def _as_1d_float64(x: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    values = (
        x.detach().to(torch.float64) if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float64)
    )
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
    return values


def _paired(
    x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = _as_1d_float64(x, "x"), _as_1d_float64(y, "y")
    if xs.numel() != ys.numel():
        raise ValueError(f"x and y lengths differ: {xs.numel()} vs {ys.numel()}")
    if xs.numel() < 2:
        raise ValueError(f"need at least 2 points, got {xs.numel()}")
    return xs, ys


def _as_list(x: Sequence[object] | torch.Tensor, name: str) -> list[object]:
    if isinstance(x, torch.Tensor):
        if x.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
        return x.tolist()
    return list(x)


class Trend(NamedTuple):
    """Mean of the last k values of a curve against the mean of its first k (see :func:`trend`)."""

    first: float
    """Mean of the first k step means."""
    last: float
    """Mean of the last k step means."""
    diff: float
    """``last - first``."""
    se: float
    """Standard error of ``diff``: ``sqrt(sum_first se_i^2 + sum_last se_i^2) / k`` (independent steps)."""
    z: float
    """``diff / se`` (inf when se is 0 and diff is not, NaN when both are 0)."""


def clustered_standard_error(x: Sequence[float] | torch.Tensor, group_size: int = 1) -> float:
    """Standard error of ``mean(x)`` when x comes in groups of ``group_size`` correlated values.

    The K answers to one prompt share its difficulty, so they are not K independent draws: the SE is taken over
    the G = n / K group means, ``std(group means, ddof=1) / sqrt(G)`` (with K = 1 the usual ``s / sqrt(n)``).

    Args:
        x: (n,) values, groups in consecutive positions.
        group_size: K (n must be a multiple of it).

    Returns:
        The SE; NaN with fewer than two groups.
    """
    t = _as_1d_float64(x, "x")
    if group_size < 1 or t.numel() % group_size:
        raise ValueError(f"{t.numel()} values do not split into groups of {group_size}")
    means = t.reshape(-1, group_size).mean(dim=1)
    if means.numel() < 2:
        return math.nan
    return float(means.std(unbiased=True) / math.sqrt(means.numel()))


def trend(means: Sequence[float], ses: Sequence[float], k: int) -> Trend:
    """Did a curve rise? The mean of its last ``k`` points against the mean of its first ``k``, in SEs.

    Each point is a batch mean with its own standard error (e.g. ``objective/score`` and
    ``objective/score_se`` of a PPO run); batches are independent draws, so the variances add.

    Args:
        means: Step means, in order (at least ``2 k``, so first and last do not overlap).
        ses: Their standard errors.
        k: Points at each end.

    Returns:
        A :class:`Trend`; ``z > 2`` is the usual "rose by more than noise" (two-sided p ~ 0.05).

    Example: means [0, 0, 1, 1] with every se 0.1, k = 2: diff = 1, se = sqrt(4 * 0.01) / 2 = 0.1, z = 10.
    """
    if len(means) != len(ses):
        raise ValueError(f"{len(means)} means and {len(ses)} standard errors")
    if k < 1 or len(means) < 2 * k:
        raise ValueError(f"need at least 2 k = {2 * k} points, got {len(means)}")
    first, last = sum(means[:k]) / k, sum(means[-k:]) / k
    se = math.sqrt(sum(s * s for s in ses[:k]) + sum(s * s for s in ses[-k:])) / k
    diff = last - first
    z = diff / se if se > 0 else (math.nan if diff == 0 else math.copysign(math.inf, diff))
    return Trend(first, last, diff, se, z)
