"""Tier-1 tests of rewardmix.algos.ranking: Tideman ranked pairs and normalized Borda points (CRS §5.5.2)."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rewardmix.algos.ranking import (
    borda_aggregate,
    borda_by_group,
    borda_points,
    pairwise_preferences,
    tideman_ranked_pairs,
)

FAST = settings(max_examples=50, deadline=None)


def _ballots(order: str, copies: int) -> list[dict[str, int]]:
    # "ABC" -> {"A": 1, "B": 2, "C": 3}, repeated
    return [{c: i + 1 for i, c in enumerate(order)} for _ in range(copies)]


def _dense(ranking: dict[str, int]) -> dict[str, int]:
    levels = sorted(set(ranking.values()))
    return {c: levels.index(r) + 1 for c, r in ranking.items()}


@st.composite
def rankings_over(draw, candidates: list[str]) -> dict[str, int]:
    # a ranking with possible ties; rank numbers need not be dense
    return {c: draw(st.integers(1, len(candidates) + 1)) for c in candidates}


candidate_sets = st.integers(2, 5).map(lambda k: [f"m{i}" for i in range(k)])


# ---------------------------------------------------------------------------------------------------------
# Tideman ranked pairs
# ---------------------------------------------------------------------------------------------------------

CRS_TABLE_9 = [
    {"r1": 2, "r2": 1, "r3": 3},  # annotator 1
    {"r1": 2, "r2": 3, "r3": 1},  # annotator 2
    {"r1": 2, "r2": 3, "r3": 1},  # annotator 3
]


def test_pairwise_preferences_crs_table_9():
    # r1 over r2: annotators 2, 3; r2 over r1: annotator 1. r3 beats r1 and r2 for annotators 2, 3.
    assert pairwise_preferences(CRS_TABLE_9) == {
        ("r1", "r2"): 2,
        ("r2", "r1"): 1,
        ("r1", "r3"): 1,
        ("r3", "r1"): 2,
        ("r2", "r3"): 1,
        ("r3", "r2"): 2,
    }


def test_pairwise_preferences_ties_count_for_neither():
    # a and b tied first: neither is preferred; both beat c
    prefs = pairwise_preferences([{"a": 1, "b": 1, "c": 2}, {"a": 1, "b": 2, "c": 2}])
    assert prefs == {
        ("a", "b"): 1,
        ("b", "a"): 0,
        ("a", "c"): 2,
        ("c", "a"): 0,
        ("b", "c"): 1,
        ("c", "b"): 0,
    }


def test_tideman_crs_table_9():
    # majorities r1>r2, r3>r1, r3>r2, all 2-1; no cycle, all locked: r3 -> r1 -> r2
    assert tideman_ranked_pairs(CRS_TABLE_9) == {"r3": 1, "r1": 2, "r2": 3}


def test_tideman_condorcet_cycle_drops_weakest_majority():
    # 4 x A>B>C, 3 x B>C>A, 2 x C>A>B
    # A vs B: 4 + 2 = 6 to 3;  B vs C: 4 + 3 = 7 to 2;  C vs A: 3 + 2 = 5 to 4  -> cycle A>B>C>A
    # lock B>C (7), lock A>B (6), skip C>A (5: A already reaches C) -> A, B, C
    ballots = _ballots("ABC", 4) + _ballots("BCA", 3) + _ballots("CAB", 2)
    prefs = pairwise_preferences(ballots)
    assert (prefs[("A", "B")], prefs[("B", "C")], prefs[("C", "A")]) == (6, 7, 5)
    assert tideman_ranked_pairs(ballots) == {"A": 1, "B": 2, "C": 3}


def test_tideman_cycle_of_equal_strength_locks_none_of_its_edges():
    # A>C>B, C>B>A, B>A>C: A>C, C>B, B>A, each 2-1 (equal strength). Locking them in name order would pick
    # a winner by its name; decided together, all three close the cycle and none is locked: a three-way tie
    ballots = _ballots("ACB", 1) + _ballots("CBA", 1) + _ballots("BAC", 1)
    assert tideman_ranked_pairs(ballots) == {"A": 1, "B": 1, "C": 1}
    # and the textbook A>B>C, B>C>A, C>A>B
    ballots = _ballots("ABC", 1) + _ballots("BCA", 1) + _ballots("CAB", 1)
    assert tideman_ranked_pairs(ballots) == {"A": 1, "B": 1, "C": 1}


def test_tideman_equal_strength_cycle_keeps_its_edges_off_the_cycle():
    # cycle A>B, B>C, C>A (1-0 each) plus D>A, D>B, D>C (1-0 each, same strength, on no cycle):
    # the cycle's edges are dropped, D's are locked -> D first, A, B, C level second
    ballots = [{"A": 1, "B": 2}, {"B": 1, "C": 2}, {"C": 1, "A": 2}]
    ballots += [{"D": 1, "A": 2}, {"D": 1, "B": 2}, {"D": 1, "C": 2}]
    assert tideman_ranked_pairs(ballots) == {"D": 1, "A": 2, "B": 2, "C": 2}
    # a weaker majority may still order the cycle's candidates: add A>B twice more (A>B 3-0 now strongest)
    ballots += [{"A": 1, "B": 2}] * 2
    # lock A>B (3-0); then B>C, C>A, D>* (1-0): C>A closes A>B>C>A with B>C -> B>C and C>A both on the
    # tier's cycle, dropped; D>A, D>B, D>C locked -> D 1, A 2, B 3, C 2
    assert tideman_ranked_pairs(ballots) == {"D": 1, "A": 2, "B": 3, "C": 2}


@FAST
@given(data=st.data(), candidates=candidate_sets, n_voters=st.integers(1, 7))
def test_tideman_does_not_depend_on_candidate_names(data, candidates, n_voters):
    # renaming the candidates (any permutation of the names) renames the result and changes nothing else
    ballots = [data.draw(rankings_over(candidates)) for _ in range(n_voters)]
    renamed = dict(zip(candidates, data.draw(st.permutations(candidates)), strict=True))
    merged = tideman_ranked_pairs(ballots)
    merged_renamed = tideman_ranked_pairs([{renamed[c]: r for c, r in b.items()} for b in ballots])
    assert merged_renamed == {renamed[c]: r for c, r in merged.items()}


def test_tideman_strength_orders_by_winning_votes_then_votes_against():
    # cycle A>B 3-1, B>C 3-0, C>A 3-0 (partial ballots). Equal winning votes -> fewer votes against first:
    # lock (B,C), lock (C,A), skip (A,B) -> B, C, A. (Names alone would lock A>B first and give A, B, C.)
    ballots = [{"A": 1, "B": 2}] * 3 + [{"B": 1, "A": 2}] + [{"B": 1, "C": 2}] * 3 + [{"C": 1, "A": 2}] * 3
    prefs = pairwise_preferences(ballots)
    assert (prefs[("A", "B")], prefs[("B", "A")], prefs[("B", "C")], prefs[("C", "A")]) == (3, 1, 3, 3)
    assert tideman_ranked_pairs(ballots) == {"B": 1, "C": 2, "A": 3}
    # winning votes before margin: A>B 4-3 (margin 1) is locked before B>C 2-0 and C>A 2-0 (margin 2)
    # (sorting by margin would give B, C, A). Then B>C and C>A, equally strong, close A>B>C>A together:
    # neither is locked (not B>C by name order): only A>B is, and C, on no locked edge, is a source
    # -> A 1, C 1, B 2
    ballots = (
        [{"A": 1, "B": 2}] * 4 + [{"B": 1, "A": 2}] * 3 + [{"B": 1, "C": 2}] * 2 + [{"C": 1, "A": 2}] * 2
    )
    assert tideman_ranked_pairs(ballots) == {"A": 1, "B": 2, "C": 1}


def test_tideman_exact_pairwise_tie_shares_rank():
    # a>b>c and b>a>c: a-b tied 1-1 (no edge); a>c and b>c 2-0 -> a, b share rank 1, c rank 2
    assert tideman_ranked_pairs([{"a": 1, "b": 2, "c": 3}, {"b": 1, "a": 2, "c": 3}]) == {
        "a": 1,
        "b": 1,
        "c": 2,
    }


def test_tideman_missing_candidates_compare_only_co_ranked():
    ballots = [{"a": 1, "b": 2}, {"b": 1, "c": 2}, {"a": 1, "c": 2}]
    prefs = pairwise_preferences(ballots)
    assert prefs == {
        ("a", "b"): 1,
        ("b", "a"): 0,
        ("a", "c"): 1,
        ("c", "a"): 0,
        ("b", "c"): 1,
        ("c", "b"): 0,
    }
    assert tideman_ranked_pairs(ballots) == {"a": 1, "b": 2, "c": 3}


def test_tideman_rank_is_longest_path_depth():
    # locked: a>b, a>c, a>d, b>c (all 1-0, by name); d vs b and d vs c: nobody ranked both -> no edge
    # depth: a 0, b 1, d 1, c 2 (a -> b -> c), so d shares rank 2 with b
    ballots = [{"a": 1, "b": 2}, {"b": 1, "c": 2}, {"a": 1, "d": 2}, {"a": 1, "c": 2}]
    assert tideman_ranked_pairs(ballots) == {"a": 1, "b": 2, "c": 3, "d": 2}


@pytest.mark.parametrize(("long_source", "short_source"), [("z", "a"), ("a", "z")])
def test_tideman_rank_takes_the_longest_path(long_source, short_source):
    # locked: long_source > x > c and short_source > c (all 1-0). c is reached by paths of length 2 and 1;
    # its rank follows the longer one (3), whichever source is visited first.
    ballots = [{long_source: 1, "x": 2}, {"x": 1, "c": 2}, {short_source: 1, "c": 2}]
    assert tideman_ranked_pairs(ballots) == {long_source: 1, short_source: 1, "x": 2, "c": 3}


@FAST
@given(data=st.data(), candidates=candidate_sets, copies=st.integers(1, 5))
def test_tideman_unanimous_voters_give_their_ranking(data, candidates, copies):
    ranking = data.draw(rankings_over(candidates))
    assert tideman_ranked_pairs([dict(ranking) for _ in range(copies)]) == _dense(ranking)


@FAST
@given(data=st.data(), candidates=candidate_sets, n_voters=st.integers(1, 7))
def test_tideman_ranks_condorcet_winner_alone_first(data, candidates, n_voters):
    ballots = [data.draw(rankings_over(candidates)) for _ in range(n_voters)]

    def beats(a: str, b: str) -> bool:
        return sum(v[a] < v[b] for v in ballots) > sum(v[b] < v[a] for v in ballots)

    winners = [w for w in candidates if all(beats(w, c) for c in candidates if c != w)]
    assume(winners)
    merged = tideman_ranked_pairs(ballots)
    assert merged[winners[0]] == 1
    assert all(rank > 1 for c, rank in merged.items() if c != winners[0])


@FAST
@given(data=st.data(), candidates=candidate_sets, n_voters=st.integers(1, 7))
def test_tideman_result_is_a_valid_dense_ranking(data, candidates, n_voters):
    # voters rank random subsets (possibly one candidate, contributing nothing)
    ballots = []
    for _ in range(n_voters):
        subset = data.draw(st.lists(st.sampled_from(candidates), min_size=1, unique=True))
        ballots.append(data.draw(rankings_over(subset)))
    merged = tideman_ranked_pairs(ballots)
    named = {c for b in ballots for c in b}
    assert set(merged) == named
    assert set(merged.values()) == set(range(1, max(merged.values()) + 1))
    # a strictly strongest majority is always locked, so its winner is ranked above its loser
    prefs = pairwise_preferences(ballots)
    majorities = sorted((-p, prefs[(b, a)], a, b) for (a, b), p in prefs.items() if p > prefs[(b, a)])
    if len(majorities) == 1 or (len(majorities) > 1 and majorities[0][:2] != majorities[1][:2]):
        _, _, a, b = majorities[0]
        assert merged[a] < merged[b]


def test_tideman_invalid_inputs_raise():
    with pytest.raises(ValueError, match="at least one"):
        tideman_ranked_pairs([])
    with pytest.raises(ValueError, match="integer >= 1"):
        tideman_ranked_pairs([{"a": 0, "b": 1}])
    with pytest.raises(ValueError, match="integer >= 1"):
        pairwise_preferences([{"a": 1.5, "b": 1}])


# ---------------------------------------------------------------------------------------------------------
# Borda points
# ---------------------------------------------------------------------------------------------------------


def test_borda_points_k3_thesis_values():
    # CRS §5.5.2: 1, 0.67, 0.33 = (K - rank + 1) / K with K = 3
    points = borda_points({"a": 2, "b": 1, "c": 3})
    assert points == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 1 / 3}, abs=1e-15)
    # K = 4: 1, 3/4, 1/2, 1/4
    assert borda_points({"w": 1, "x": 2, "y": 3, "z": 4}) == pytest.approx(
        {"w": 1.0, "x": 0.75, "y": 0.5, "z": 0.25}, abs=1e-15
    )


def test_borda_points_ties_share_mean_points():
    # a, b tied first occupy positions 1, 2: (1 + 2/3) / 2 = 5/6 each; c is third: 1/3
    expected = {"a": 5 / 6, "b": 5 / 6, "c": 1 / 3}
    assert borda_points({"a": 1, "b": 1, "c": 2}) == pytest.approx(expected, abs=1e-15)
    assert borda_points({"a": 1, "b": 1, "c": 3}) == pytest.approx(expected, abs=1e-15)  # same order
    # b, c tied second occupy positions 2, 3: (2/3 + 1/3) / 2 = 1/2
    assert borda_points({"a": 1, "b": 2, "c": 2}) == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.5}, abs=1e-15)
    # all tied: (1 + 2/3 + 1/3) / 3 = 2/3
    assert borda_points({"a": 1, "b": 1, "c": 1}) == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 2 / 3})


@FAST
@given(data=st.data(), candidates=candidate_sets, shift=st.integers(0, 5), scale=st.integers(1, 4))
def test_borda_points_sum_and_depend_only_on_order(data, candidates, shift, scale):
    ranking = data.draw(rankings_over(candidates))
    points = borda_points(ranking)
    k = len(candidates)
    assert sum(points.values()) == pytest.approx((k + 1) / 2, abs=1e-12)  # 1/K * sum_{i=1..K} i
    assert all(0 < p <= 1 for p in points.values())
    # a strictly increasing renumbering of the ranks changes nothing
    renumbered = {c: scale * r + shift for c, r in ranking.items()}
    assert borda_points(renumbered) == pytest.approx(points, abs=1e-15)
    # better rank -> more points
    for a in candidates:
        for b in candidates:
            if ranking[a] < ranking[b]:
                assert points[a] > points[b]


def test_borda_aggregate_two_prompts():
    # x: (1 + 1/3) / 2 = 2/3;  y: (2/3 + 1) / 2 = 5/6;  z: (1/3 + 2/3) / 2 = 1/2
    rankings = [{"x": 1, "y": 2, "z": 3}, {"x": 3, "y": 1, "z": 2}]
    assert borda_aggregate(rankings) == pytest.approx({"x": 2 / 3, "y": 5 / 6, "z": 1 / 2}, abs=1e-15)


def test_borda_aggregate_averages_over_prompts_that_include_the_model():
    # x in both prompts: (1 + 1/2) / 2 = 3/4; y only in prompt 1 (1/2); z only in prompt 2 (1)
    assert borda_aggregate([{"x": 1, "y": 2}, {"z": 1, "x": 2}]) == pytest.approx(
        {"x": 3 / 4, "y": 1 / 2, "z": 1.0}, abs=1e-15
    )


# (pref, abs, crs) rank triples with counts, 20 prompts per group, chosen so each model's mean points round
# to the printed CRS Table 17 cell. Point sums in thirds (3 per first place, 2 per second, 1 per third):
# group 1: pref 38, abs 44, crs 38 -> 0.633, 0.733, 0.633   (printed 0.63, 0.73, 0.63)
# group 2: pref 29, abs 52, crs 39 -> 0.483, 0.867, 0.650   (printed 0.48, 0.87, 0.65)
# group 3: pref 31, abs 47, crs 42 -> 0.517, 0.783, 0.700   (printed 0.52, 0.78, 0.7)
TABLE_17_GROUPS = {
    "group 1": {(2, 1, 3): 10, (2, 3, 1): 8, (3, 1, 2): 2},
    "group 2": {(2, 1, 3): 5, (2, 3, 1): 4, (3, 1, 2): 11},
    "group 3": {(2, 1, 3): 5, (2, 3, 1): 6, (3, 1, 2): 8, (3, 2, 1): 1},
}
TABLE_17_THIRDS = {"preference_rlhf": (38, 29, 31), "abs_rlhf": (44, 52, 47), "crs_rlhf": (38, 39, 42)}


def _group_rankings(counts: dict[tuple[int, int, int], int]) -> list[dict[str, int]]:
    models = ("preference_rlhf", "abs_rlhf", "crs_rlhf")
    return [dict(zip(models, ranks, strict=True)) for ranks, n in counts.items() for _ in range(n)]


def test_borda_by_group_reproduces_crs_table_17():
    groups = {g: _group_rankings(counts) for g, counts in TABLE_17_GROUPS.items()}
    printed = {
        "preference_rlhf": (0.63, 0.48, 0.52),
        "abs_rlhf": (0.73, 0.87, 0.78),
        "crs_rlhf": (0.63, 0.65, 0.7),
    }
    for g, rankings in zip(TABLE_17_GROUPS, groups.values(), strict=True):
        per_group = borda_aggregate(rankings)
        for model, cells in printed.items():
            assert round(per_group[model], 2) == cells[list(TABLE_17_GROUPS).index(g)]
    result = borda_by_group(groups)
    # CRS §6.4: "aggregated winning points ... 0.54, 0.79, and 0.66"
    assert {m: round(mean, 2) for m, (mean, _) in result.items()} == {
        "preference_rlhf": 0.54,
        "abs_rlhf": 0.79,
        "crs_rlhf": 0.66,
    }
    # std across groups, population (divide by G = 3), in units of 1/60 (sum of thirds / 20 prompts)
    for model, thirds in TABLE_17_THIRDS.items():
        m = sum(thirds) / 3
        population = math.sqrt(sum((t - m) ** 2 for t in thirds) / 3) / 60
        sample = math.sqrt(sum((t - m) ** 2 for t in thirds) / 2) / 60
        assert result[model][0] == pytest.approx(m / 60, abs=1e-12)
        assert result[model][1] == pytest.approx(population, abs=1e-12)
        assert borda_by_group(groups, ddof=1)[model][1] == pytest.approx(sample, abs=1e-12)
    # e.g. preference_rlhf: group means 38/60, 29/60, 31/60 -> std 0.0643 (thesis 0.06; sample std 0.079)
    assert round(result["preference_rlhf"][1], 3) == 0.064


def test_borda_by_group_single_group_has_zero_std():
    result = borda_by_group({"g": [{"x": 1, "y": 2, "z": 3}, {"x": 3, "y": 1, "z": 2}]})
    expected = {"x": 2 / 3, "y": 5 / 6, "z": 1 / 2}  # as in test_borda_aggregate_two_prompts
    assert set(result) == set(expected)
    for model, (mean, std) in result.items():
        assert mean == pytest.approx(expected[model], abs=1e-15) and std == 0.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: borda_points({"a": 1}), "K >= 2"),
        (lambda: borda_points({"a": 1, "b": -1}), "integer >= 1"),
        (lambda: borda_aggregate([]), "at least one"),
        (lambda: borda_by_group({}), "at least one"),
        (lambda: borda_by_group({"g": [{"a": 1, "b": 2}]}, ddof=1), "ddof"),
    ],
)
def test_borda_invalid_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
