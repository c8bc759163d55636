"""Rank aggregation for human evaluation: Tideman ranked pairs and normalized Borda points.

CRS §5.5.2: several annotators rank the K responses of a prompt (ties allowed); their rankings are merged
into one per prompt with Tideman's ranked pairs (the thesis reuses the OpenAssistant implementation,
Köpf et al. 2023), and the merged rankings are aggregated over prompts with normalized Borda points
(1, 0.67, 0.33 for K = 3), then averaged over annotator groups (CRS Table 17).

A ranking is a mapping ``candidate -> rank`` with 1 = best and equal ranks = tie, e.g.
``{"r1": 2, "r2": 1, "r3": 3}``. Only the order of the rank numbers matters: ``{"a": 1, "b": 1, "c": 2}``
and ``{"a": 1, "b": 1, "c": 3}`` mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations, permutations

Ranking = Mapping[str, int]


# ---------------------------------------------------------------------------------------------------------
# Tideman ranked pairs
# ---------------------------------------------------------------------------------------------------------


def pairwise_preferences(rankings: Sequence[Ranking]) -> dict[tuple[str, str], int]:
    """Head-to-head tally: how many voters rank a strictly above b.

    Ties count for neither side. A voter who did not rank both a and b is not counted for that pair.

    Args:
        rankings: One ranking per voter (annotator), ``candidate -> rank`` with 1 = best.

    Returns:
        ``prefs[(a, b)]`` for every ordered pair of distinct candidates named by any voter (0 when no
        voter prefers a over b).

    Raises:
        ValueError: If a rank is not an integer >= 1.

    Reference:
        Tideman 1987 (ranked pairs), step 1: the pairwise majority tally.
    """
    for ranking in rankings:
        _check_ranking(ranking)
    candidates = _candidates(rankings)
    prefs = {(a, b): 0 for a, b in permutations(candidates, 2)}
    for ranking in rankings:
        for a, b in permutations(ranking, 2):
            if ranking[a] < ranking[b]:  # lower rank number = preferred
                prefs[(a, b)] += 1
    return prefs


def tideman_ranked_pairs(rankings: Sequence[Ranking]) -> dict[str, int]:
    """Merge several voters' rankings into one with Tideman's ranked pairs.

    1. Tally ``P(a, b)``, the voters ranking a above b (:func:`pairwise_preferences`; only voters who
       ranked both count).
    2. Majorities: a beats b when ``P(a, b) > P(b, a)``. Exact pairwise ties give no majority (no edge).
    3. Sort majorities by strength: more votes for the winner first, then fewer votes against.
    4. Lock the majorities one strength at a time, strongest first. Of the majorities of equal strength,
       those that would close a cycle with the edges already locked are dropped; of the rest, those that lie
       on a cycle among themselves (with the locked edges) are dropped too, and the others are locked.
       Equal-strength majorities are thus decided together, never by the order of the candidates' names:
       a cycle of equally strong majorities (A>B, B>C, C>A, each 2-1) locks none of its edges, and its
       candidates stay level unless weaker majorities order them.
    5. Rank = 1 + length of the longest locked path reaching the candidate from a source (a candidate no
       locked edge points to). Sources get rank 1; a locked edge always lowers its loser by at least one
       rank; candidates with no path between them (e.g. exact pairwise ties) can share a rank.

    With complete, tie-free ballots and an odd number of voters every pair has a majority, the locked
    edges order all candidates, and the ranks are 1..K. Such ballots also give ``P(a, b) + P(b, a)`` =
    number of voters for every pair, so the winning-votes order of step 3 equals the margin order of
    Tideman's paper and of the OpenAssistant code; they can differ only with ties or missing candidates.

    Args:
        rankings: One ranking per voter, ``candidate -> rank`` (1 = best, equal ranks = tie). Voters may
            rank different subsets of the candidates.

    Returns:
        ``candidate -> rank`` over every candidate named by any voter; ranks are dense (1, 2, ...).

    Raises:
        ValueError: If ``rankings`` is empty or a rank is not an integer >= 1.

    Reference:
        Tideman 1987, "Independence of clones as a criterion for voting rules"; CRS §5.5.2 and Table 9;
        Köpf et al. 2023 (OpenAssistant), ``backend/oasst_backend/utils/ranking.py``. Step 4's handling of
        equal strengths is ours: Tideman breaks such ties with a tie-breaking ballot, the usual code by
        the candidates' order; here no name or order of candidates can change the result.
    """
    if not rankings:
        raise ValueError("tideman_ranked_pairs needs at least one ranking")
    prefs = pairwise_preferences(rankings)
    candidates = _candidates(rankings)

    # step 2. majorities: (winner, loser, votes_for, votes_against) where P(winner, loser) > P(loser, winner)
    majorities = [
        (a, b, prefs[(a, b)], prefs[(b, a)])
        if prefs[(a, b)] > prefs[(b, a)]
        else (b, a, prefs[(b, a)], prefs[(a, b)])
        for a, b in combinations(candidates, 2)
        if prefs[(a, b)] != prefs[(b, a)]
    ]
    # step 3. strength = (votes_for, votes_against): more votes for first, then fewer against
    by_strength: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for winner, loser, votes_for, votes_against in majorities:
        by_strength.setdefault((-votes_for, votes_against), []).append((winner, loser))

    # step 4. lock one strength at a time; equal-strength edges are decided together, not in name order
    beats: dict[str, set[str]] = {c: set() for c in candidates}
    for strength in sorted(by_strength):
        # an edge closing a cycle with the stronger edges already locked is dropped
        tier = [
            (winner, loser) for winner, loser in by_strength[strength] if not _reaches(beats, loser, winner)
        ]
        trial = {c: set(losers) for c, losers in beats.items()}
        for winner, loser in tier:
            trial[winner].add(loser)
        # an edge on a cycle within this tier (plus the locked edges) is dropped with the whole cycle;
        # what remains is acyclic: any cycle left would run through a kept edge, which was on no cycle
        for winner, loser in tier:
            if not _reaches(trial, loser, winner):
                beats[winner].add(loser)

    # step 5. rank = 1 + longest path from a source
    return _longest_path_ranks(beats)


def _reaches(edges: Mapping[str, set[str]], start: str, goal: str) -> bool:
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for nxt in edges[node] - seen:
            seen.add(nxt)
            stack.append(nxt)
    return False


def _longest_path_ranks(edges: Mapping[str, set[str]]) -> dict[str, int]:
    # Kahn's topological order; depth(loser) = max over locked winners of depth(winner) + 1
    indegree = {c: 0 for c in edges}
    for losers in edges.values():
        for loser in losers:
            indegree[loser] += 1
    depth = dict.fromkeys(edges, 0)
    ready = sorted(c for c, d in indegree.items() if d == 0)
    while ready:
        node = ready.pop()
        for loser in edges[node]:
            depth[loser] = max(depth[loser], depth[node] + 1)
            indegree[loser] -= 1
            if indegree[loser] == 0:
                ready.append(loser)
    return {c: depth[c] + 1 for c in sorted(edges)}


# ---------------------------------------------------------------------------------------------------------
# Normalized Borda points
# ---------------------------------------------------------------------------------------------------------


def borda_points(ranking: Ranking) -> dict[str, float]:
    """Normalized Borda points of one ranking of K candidates.

    Position i (1 = best) earns ``(K - i + 1) / K``: 1, 2/3, 1/3 for K = 3 (the thesis' "1, 0.67, 0.33").
    Tied candidates occupy consecutive positions and share the mean of their points, which (points being
    linear in the position) is the points of their mean position: with ``{"a": 1, "b": 1, "c": 2}`` a and
    b get (1 + 2/3) / 2 = 5/6 and c gets 1/3. The points of a ranking always sum to (K + 1) / 2.

    Args:
        ranking: ``candidate -> rank`` (1 = best, equal ranks = tie); only the order of ranks matters.

    Returns:
        ``candidate -> points`` in (0, 1].

    Raises:
        ValueError: If the ranking has fewer than 2 candidates or a rank is not an integer >= 1.

    Reference:
        CRS §5.5.2 (normalized Borda count, Emerson 2013).
    """
    _check_ranking(ranking)
    k = len(ranking)
    if k < 2:
        raise ValueError(f"a ranking needs K >= 2 candidates, got {k}")
    points = {}
    for candidate, rank in ranking.items():
        better = sum(r < rank for r in ranking.values())
        tied = sum(r == rank for r in ranking.values())  # includes the candidate itself
        mean_position = better + (tied + 1) / 2  # mean of positions better+1 .. better+tied
        points[candidate] = (k - mean_position + 1) / k  # points = (K - position + 1) / K
    return points


def borda_aggregate(rankings: Sequence[Ranking]) -> dict[str, float]:
    """Mean normalized Borda points per candidate (model) over prompts.

    Args:
        rankings: One (merged) ranking per prompt, ``model -> rank``.

    Returns:
        ``model -> mean points``, averaged over the prompts whose ranking includes the model.

    Raises:
        ValueError: If ``rankings`` is empty or any ranking is invalid (see :func:`borda_points`).

    Reference:
        CRS §5.5.2 ("points of each model are calculated and averaged over all prompts").
    """
    if not rankings:
        raise ValueError("borda_aggregate needs at least one ranking")
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for ranking in rankings:
        for model, pts in borda_points(ranking).items():
            totals[model] = totals.get(model, 0.0) + pts
            counts[model] = counts.get(model, 0) + 1
    return {m: totals[m] / counts[m] for m in sorted(totals)}  # mean over prompts


def borda_by_group(
    groups: Mapping[Hashable, Sequence[Ranking]], *, ddof: int = 0
) -> dict[str, tuple[float, float]]:
    """Mean and spread over annotator groups of each model's mean Borda points.

    Each group's rankings (one merged ranking per prompt) are aggregated with :func:`borda_aggregate`;
    the result per model is the mean of those group means and their standard deviation across groups.
    The default is the population standard deviation (``ddof=0``): it reproduces the deviations CRS §6.4
    reports for Table 17 (0.06, 0.058, 0.029 from the printed group points; the sample standard
    deviation, ``ddof=1``, would give 0.078, 0.071, 0.036).

    Args:
        groups: ``group -> list of rankings`` (one ranking per prompt).
        ddof: Delta degrees of freedom of the standard deviation (0 = population, 1 = sample).

    Returns:
        ``model -> (mean, std)`` over the groups whose rankings include the model.

    Raises:
        ValueError: If ``groups`` is empty, a group is empty, or a model appears in no more than
            ``ddof`` groups.

    Reference:
        CRS §5.5.2 and §6.4, Table 17 (three annotator groups).
    """
    if not groups:
        raise ValueError("borda_by_group needs at least one group")
    per_model: dict[str, list[float]] = {}
    for rankings in groups.values():
        for model, mean_points in borda_aggregate(rankings).items():
            per_model.setdefault(model, []).append(mean_points)
    result = {}
    for model in sorted(per_model):
        values = per_model[model]
        if len(values) <= ddof:
            raise ValueError(f"model {model!r} appears in {len(values)} group(s); need more than ddof={ddof}")
        mean = sum(values) / len(values)
        # var = sum_g (v_g - mean)^2 / (G - ddof)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - ddof)
        result[model] = (mean, math.sqrt(var))
    return result


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def _check_ranking(ranking: Ranking) -> None:
    for candidate, rank in ranking.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank of {candidate!r} must be an integer >= 1, got {rank!r}")


def _candidates(rankings: Sequence[Ranking]) -> list[str]:
    return sorted({c for ranking in rankings for c in ranking})
