"""Tests of rewardmix.data.pairs: pair records and files, RLLR Appendix D wrong labels, pair construction."""

from __future__ import annotations

import json
import math
import random
import re
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmix.data.pairs import (
    PreferencePair,
    answer_only_pairs,
    label_sensitive_pairs,
    label_swap_pairs,
    pair_type_stats,
    pairs_from_ranking,
    pairs_from_ratings,
    rationale_sensitive_pairs,
    read_pairs,
    write_pairs,
    wrong_label,
)
from rewardmix.data.readers import DataError
from rewardmix.data.tasks import Scale, format_answer, get_task

STSB_SCALE = get_task("stsb").scale  # real, [0, 5]
APPREVIEWS_SCALE = get_task("appreviews").scale  # integer, 1..5

FAST = settings(max_examples=50, deadline=None)
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class FixedUniform:
    """An rng whose uniform() returns a chosen jitter u, to test Appendix D at exact values."""

    def __init__(self, u: float, period: float = 5.0) -> None:
        self.u, self.period = u, period

    def uniform(self, a: float, b: float) -> float:
        assert (a, b) == (-0.2 * self.period, 0.2 * self.period)  # U[-1, 1] on the paper's 0-5 scales
        return self.u


# ---------------------------------------------------------------------------------------------------------
# Records and files
# ---------------------------------------------------------------------------------------------------------


def _pair(**overrides) -> PreferencePair:
    values = {"prompt": "q", "chosen": "good", "rejected": "bad", "kind": "ranking"}
    return PreferencePair(**{**values, **overrides})


def test_pair_rejects_unknown_kind_and_non_strings():
    with pytest.raises(ValueError, match="field 'kind'"):
        _pair(kind="preference")
    with pytest.raises(ValueError, match="field 'chosen'"):
        _pair(chosen=3)
    with pytest.raises(ValueError, match="field 'meta'"):
        _pair(meta=[1])


def test_write_then_read_round_trips_exactly(tmp_path):
    pairs = [
        _pair(
            prompt="Wie geht's?",
            chosen="  gut \n",
            rejected="schlecht",
            task="oasst",
            meta={"chosen_rank": 0},
        ),
        _pair(kind="label_sensitive", meta={"chosen_label": 2.8, "rejected_label": 1.1}),
    ]
    path = tmp_path / "out" / "pairs.jsonl"
    assert write_pairs(path, pairs) == 2
    assert read_pairs(path) == pairs  # whitespace kept verbatim, unicode kept, meta values kept
    assert "Wie geht's?" in path.read_text(encoding="utf-8")  # ensure_ascii off: readable files
    assert [p.name for p in path.parent.iterdir()] == ["pairs.jsonl"]  # no temporary file left behind


def test_read_pairs_allows_blank_lines_and_missing_optional_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '\n{"prompt": "q", "chosen": "a", "rejected": "b", "kind": "rating"}\n\n', encoding="utf-8"
    )
    assert read_pairs(path) == [PreferencePair("q", "a", "b", "rating", None, {})]


_GOOD = {"prompt": "q", "chosen": "a", "rejected": "b", "kind": "rating"}


@pytest.mark.parametrize(
    ("second_line", "expected"),
    [
        ("{not json", r":2: invalid JSON"),
        (json.dumps({k: v for k, v in _GOOD.items() if k != "chosen"}), r":2: field 'chosen': missing"),
        (json.dumps({**_GOOD, "rejected": 5}), r":2: field 'rejected'"),
        (json.dumps({**_GOOD, "kind": "pairwise"}), r":2: field 'kind'"),
        (json.dumps({**_GOOD, "source": "x"}), r":2: field 'source': unknown field"),
        (json.dumps({**_GOOD, "meta": [1]}), r":2: field 'meta'"),
        (json.dumps({**_GOOD, "task": 7}), r":2: field 'task'"),
    ],
)
def test_read_pairs_names_file_line_and_field(tmp_path, second_line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_GOOD) + "\n" + second_line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(path)) + expected):
        read_pairs(path)


# ---------------------------------------------------------------------------------------------------------
# Wrong labels (RLLR Appendix D)
# ---------------------------------------------------------------------------------------------------------


def test_wrong_label_reproduces_the_paper_example():
    # Appendix D: 2.8 + 3 + 0.3 = 6.1 > 5, so 6.1 - 5 = 1.1
    assert wrong_label(2.8, scale=STSB_SCALE, rng=FixedUniform(0.3)) == 1.1


@pytest.mark.parametrize(
    ("gold", "u", "expected"),
    [
        (1, -1.0, 3),  # 1 + 3 - 1 = 3, no wrap
        (1, 1.0, 5),  # 1 + 3 + 1 = 5 = max, no wrap
        (5, 0.5, 4),  # 5 + 3.5 = 8.5 -> 3.5 -> half up 4
        (4, -0.5, 2),  # 4 + 2.5 = 6.5 -> 1.5 -> half up 2 (round-half-even would also give 2)
        (2, 0.2, 1),  # 2 + 3.2 = 5.2 -> 0.2 -> rounds to 0, below the scale -> clamped to 1
        (3, -0.6, 1),  # 3 + 2.4 = 5.4 -> 0.4 -> 0 -> clamped to 1
        (2, -0.5, 5),  # 2 + 2.5 = 4.5 -> half up 5 (round-half-even would give 4)
    ],
)
def test_wrong_label_on_the_appreviews_scale(gold, u, expected):
    assert wrong_label(gold, scale=APPREVIEWS_SCALE, rng=FixedUniform(u)) == expected


def test_wrong_label_accepts_numeric_strings_and_returns_int_on_integer_scales():
    result = wrong_label("3", scale=APPREVIEWS_SCALE, rng=FixedUniform(0.0))  # 3 + 3 = 6 -> 1
    assert result == 1 and isinstance(result, int)


def test_wrong_label_rejects_bad_arguments():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="exactly one"):
        wrong_label("a", rng=rng)
    with pytest.raises(ValueError, match="exactly one"):
        wrong_label("a", labels=["a", "b"], scale=STSB_SCALE, rng=rng)
    with pytest.raises(ValueError, match="not in the label set"):
        wrong_label("c", labels=["a", "b"], rng=rng)
    with pytest.raises(ValueError, match="no label other"):
        wrong_label("a", labels=["a", "a"], rng=rng)
    with pytest.raises(ValueError, match="outside the scale"):
        wrong_label(5.5, scale=STSB_SCALE, rng=rng)
    with pytest.raises(ValueError, match="not a number"):
        wrong_label("high", scale=STSB_SCALE, rng=rng)


def test_wrong_label_categorical_reaches_every_other_label_uniformly():
    rng = random.Random(1)
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    draws = [wrong_label("Sports", labels=labels, rng=rng) for _ in range(3000)]
    counts = {label: draws.count(label) for label in labels}
    assert counts["Sports"] == 0
    # 1000 expected per other label; binomial sd ~ 26, so +-150 fails only if the choice is not uniform
    assert all(abs(counts[label] - 1000) < 150 for label in ("World", "Business", "Sci/Tech"))


@FAST
@given(st.lists(st.text(min_size=1, max_size=3), min_size=2, max_size=6, unique=True), st.data())
def test_wrong_label_categorical_is_never_gold(labels, data):
    gold = data.draw(st.sampled_from(labels))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    wrong = wrong_label(gold, labels=labels, rng=rng)
    assert wrong != gold and wrong in labels


jitter = st.floats(-1.0, 1.0, allow_nan=False)


@FAST
@given(st.floats(0.0, 5.0, allow_nan=False), jitter)
def test_wrong_label_real_scale_distance_properties(gold, u):
    wrong = wrong_label(gold, scale=STSB_SCALE, rng=FixedUniform(u), decimals=None)
    assert 0.0 < wrong <= 5.0  # derivation in the docstring: [2, 5] without wrap, (0, 4] with it
    assert 1.0 - 1e-9 <= abs(wrong - gold) <= 4.0 + 1e-9
    shift = (wrong - gold) % 5.0  # the rule is a rotation by 3 + u in [2, 4] on a circle of circumference 5
    assert 2.0 - 1e-9 <= shift <= 4.0 + 1e-9


@FAST
@given(st.floats(0.0, 5.0, allow_nan=False), jitter)
def test_wrong_label_stsb_rounding_keeps_distance_and_range(gold, u):
    wrong = wrong_label(gold, scale=STSB_SCALE, rng=FixedUniform(u))
    assert 0.0 <= wrong <= 5.0
    assert abs(wrong - gold) >= 0.95 - 1e-9  # one-decimal rounding moves w by at most 0.05
    assert wrong == round(wrong, 1)


# every (gold, result) the integer rule can produce; derived in wrong_label's docstring
_APPREVIEWS_REACHABLE = {1: {3, 4, 5}, 2: {4, 5, 1}, 3: {5, 1, 2}, 4: {1, 2, 3}, 5: {2, 3, 4}}


@FAST
@given(st.integers(1, 5), jitter)
def test_wrong_label_integer_scale_is_in_range_and_never_gold(gold, u):
    wrong = wrong_label(gold, scale=APPREVIEWS_SCALE, rng=FixedUniform(u))
    assert wrong in _APPREVIEWS_REACHABLE[gold]


def test_wrong_label_on_real_stsb_scores():
    dev = SHARED_DATA / "stsb" / "dev.tsv"
    if not dev.is_file():
        pytest.skip(f"shared data not found at {dev} (only present next to the lead's checkout)")
    golds = [float(line.rstrip("\n").split("\t")[-1]) for line in dev.open(encoding="utf-8") if line.strip()]
    assert len(golds) == 1500  # README: 1,500 dev pairs
    rng = random.Random(0)
    wrongs = [wrong_label(g, scale=STSB_SCALE, rng=rng) for g in golds]
    assert all(0.0 <= w <= 5.0 and abs(w - g) >= 0.95 for g, w in zip(golds, wrongs, strict=True))


# ---------------------------------------------------------------------------------------------------------
# Label-sensitive pairs
# ---------------------------------------------------------------------------------------------------------


def _example(**overrides):
    values = {
        "question": "yet another weepy southern bore-athon . What sentiment does the writer express?",
        "gold_label": "negative",
        "gold_rationale": "The writer calls it a bore-athon.",
        "wrong_label": "positive",
        "wrong_rationale": "Weepy films move their audience.",
        "task": "mr",
    }
    return {**values, **overrides}


def test_label_sensitive_pairs_use_the_answer_format():
    [pair] = label_sensitive_pairs([_example()])
    assert pair.chosen == "The writer calls it a bore-athon.\n\nThe answer is: negative"
    assert pair.rejected == "Weepy films move their audience.\n\nThe answer is: positive"
    assert pair.prompt.startswith("yet another weepy")
    assert (pair.kind, pair.task) == ("label_sensitive", "mr")
    assert pair.meta == {"chosen_label": "negative", "rejected_label": "positive"}


def test_label_swap_keeps_the_gold_rationale_and_changes_only_the_label():
    [pair] = label_sensitive_pairs([_example()])
    [swapped] = label_swap_pairs([pair])
    assert swapped.chosen == pair.chosen
    assert swapped.rejected == "The writer calls it a bore-athon.\n\nThe answer is: positive"
    assert (swapped.prompt, swapped.kind, swapped.task) == (pair.prompt, "label_sensitive", "mr")
    assert swapped.meta == {"chosen_label": "negative", "rejected_label": "positive", "augment": "label_swap"}
    # a pair that does not say which labels it carries (e.g. read from a rankings file) gives none
    assert label_swap_pairs([PreferencePair("q", "a\n\nThe answer is: x", "b", kind="label_sensitive")]) == []


def test_answer_only_pairs_put_the_gold_label_first_and_never_repeat_it():
    rows = [{"question": f"q{i}", "label": label} for i, label in enumerate(["negative", "positive"] * 20)]
    labels = get_task("mr").labels
    pairs = answer_only_pairs(rows, labels=labels, rng=random.Random(0), task="mr")
    assert [p.prompt for p in pairs] == [r["question"] for r in rows]
    for pair, row in zip(pairs, rows, strict=True):
        assert pair.chosen == f"The answer is: {row['label']}"
        assert pair.rejected != pair.chosen and pair.rejected.startswith("The answer is: ")
        assert pair.meta["augment"] == "answer_only" and pair.task == "mr"
    three = answer_only_pairs(
        [{"question": "q", "label": "a"}] * 40, labels=["a", "b", "c"], rng=random.Random(1)
    )
    assert {p.meta["rejected_label"] for p in three} == {"b", "c"}  # any other label, at random


def test_label_sensitive_pairs_with_numeric_labels():
    [pair] = label_sensitive_pairs([_example(gold_label=2.8, wrong_label=1.1, task=None)])
    assert pair.chosen.endswith("The answer is: 2.8") and pair.rejected.endswith("The answer is: 1.1")
    assert pair.task is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"wrong_rationale": None}, "wrong_rationale"),
        ({"gold_rationale": "  "}, "gold_rationale"),
        ({"wrong_label": "negative"}, "wrong_label"),
    ],
)
def test_label_sensitive_pairs_name_the_bad_example_and_field(overrides, field):
    with pytest.raises(ValueError, match=f"example 1: field '{field}'"):
        label_sensitive_pairs([_example(), _example(**overrides)])


def test_label_sensitive_pairs_missing_field():
    example = _example()
    del example["gold_label"]
    with pytest.raises(ValueError, match="example 0: field 'gold_label': missing"):
        label_sensitive_pairs([example])


def test_label_sensitive_answers_are_the_sft_targets():
    # the reward model must see exactly the strings the SFT model was trained on (tasks.format_answer)
    [pair] = label_sensitive_pairs([_example()])
    assert pair.chosen == format_answer("The writer calls it a bore-athon.", "negative")


# ---------------------------------------------------------------------------------------------------------
# Pairs from rankings
# ---------------------------------------------------------------------------------------------------------

ANSWERS = ["a1", "a2", "a3", "a4", "a5"]
# "2>1=5>3=4" as parsed by the judge prompts module: answer number -> rank
RANKS = {2: 1, 1: 2, 5: 2, 3: 3, 4: 3}


def test_rationale_sensitive_pairs_from_a_ranking_with_ties():
    result = rationale_sensitive_pairs("q", ANSWERS, RANKS, task="sst2")
    # C(5, 2) = 10 pairs; 1=5 and 3=4 are ties, leaving 8: a2 beats all four, a1 and a5 beat a3 and a4
    expected = {("a2", "a1"), ("a2", "a3"), ("a2", "a4"), ("a2", "a5"), ("a1", "a3"), ("a1", "a4")}
    expected |= {("a5", "a3"), ("a5", "a4")}
    assert {(p.chosen, p.rejected) for p in result.pairs} == expected
    assert (len(result.pairs), result.skipped_ties, result.skipped_identical) == (8, 2, 0)
    assert all(p.kind == "rationale_sensitive" and p.task == "sst2" for p in result.pairs)
    first = result.pairs[0]  # (i, j) = (0, 1): a2 (rank 1) beats a1 (rank 2)
    assert first.meta == {"chosen_index": 1, "rejected_index": 0, "chosen_rank": 1, "rejected_rank": 2}


def test_ranks_as_a_sequence_equal_ranks_as_a_mapping():
    aligned = [RANKS[n] for n in range(1, 6)]  # [2, 1, 3, 3, 2]
    assert rationale_sensitive_pairs("q", ANSWERS, aligned) == rationale_sensitive_pairs("q", ANSWERS, RANKS)


def test_pairs_from_ranking_is_the_same_construction_with_kind_ranking():
    oasst_ranks = [1, 0, 2]  # OASST reply ranks, 0 = best
    result = pairs_from_ranking("q", ["r0", "r1", "r2"], oasst_ranks)
    assert [(p.chosen, p.rejected, p.kind) for p in result.pairs] == [
        ("r1", "r0", "ranking"),
        ("r0", "r2", "ranking"),
        ("r1", "r2", "ranking"),
    ]


def test_identical_answers_make_no_pair():
    result = rationale_sensitive_pairs("q", ["same", "same", "other"], [1, 2, 3])
    assert (len(result.pairs), result.skipped_identical) == (2, 1)


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ({1: 1, 2: 2, 3: 3, 4: 4}, r"missing \[5\]"),
        ({0: 1, 1: 1, 2: 2, 3: 3, 4: 4}, r"missing \[5\], unexpected \[0\]"),
        ([1, 2, 3], "got 3 ranks for 5 answers"),
        ([1, 2, 3, 4, 2.5], "must be an integer"),
    ],
)
def test_bad_rankings_are_errors(ranks, message):
    with pytest.raises(ValueError, match=message):
        rationale_sensitive_pairs("q", ANSWERS, ranks)


@FAST
@given(st.integers(2, 7).flatmap(lambda k: st.lists(st.integers(1, k), min_size=k, max_size=k)))
def test_ranking_pairs_cover_every_unordered_pair_with_different_ranks(ranks):
    answers = [f"answer {i}" for i in range(len(ranks))]
    result = pairs_from_ranking("q", answers, ranks)
    different = sum(1 for i, j in combinations(range(len(ranks)), 2) if ranks[i] != ranks[j])
    assert len(result.pairs) == different
    assert result.skipped_ties == math.comb(len(ranks), 2) - different
    for pair in result.pairs:
        assert pair.meta["chosen_rank"] < pair.meta["rejected_rank"]
        assert pair.chosen == answers[pair.meta["chosen_index"]] != pair.rejected
    assert len({(p.meta["chosen_index"], p.meta["rejected_index"]) for p in result.pairs}) == different


# ---------------------------------------------------------------------------------------------------------
# Pairs from ratings
# ---------------------------------------------------------------------------------------------------------


def test_pairs_from_ratings_hand_example():
    # gaps: r0-r1 = 0.3 - 0.1 = 0.19999999999999998 (counts as 0.2 >= margin), r0-r2 = 0.05, r2-r1 = 0.15
    result = pairs_from_ratings("q", ["r0", "r1", "r2"], [0.3, 0.1, 0.25], margin=0.2, task="oasst")
    [pair] = result.pairs
    assert (pair.chosen, pair.rejected, pair.kind, pair.task) == ("r0", "r1", "rating", "oasst")
    assert pair.meta["chosen_rating"] == 0.3 and pair.meta["rejected_rating"] == 0.1
    assert result.skipped_ties == 2


@pytest.mark.parametrize(
    ("ratings", "margin", "message"),
    [
        ([0.1, 0.2], 0, "margin"),
        ([0.1, math.nan], 0.1, "rating of response 1"),
        ([0.1], 0.1, "1 ratings for 2"),
    ],
)
def test_pairs_from_ratings_rejects_bad_input(ratings, margin, message):
    with pytest.raises(ValueError, match=message):
        pairs_from_ratings("q", ["a", "b"], ratings, margin=margin)


@FAST
@given(
    st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=6),
    st.floats(0.01, 0.5, allow_nan=False),
)
def test_rating_pairs_respect_the_margin(ratings, margin):
    responses = [f"r{i}" for i in range(len(ratings))]
    result = pairs_from_ratings("q", responses, ratings, margin=margin)
    far = sum(
        1 for i, j in combinations(range(len(ratings)), 2) if abs(ratings[i] - ratings[j]) >= margin - 1e-9
    )
    assert len(result.pairs) == far and result.skipped_ties == math.comb(len(ratings), 2) - far
    for pair in result.pairs:
        assert pair.meta["chosen_rating"] - pair.meta["rejected_rating"] >= margin - 1e-9


# ---------------------------------------------------------------------------------------------------------
# Pair statistics (RLLR Fig. 2)
# ---------------------------------------------------------------------------------------------------------


def _parse(answer: str) -> str | None:
    match = re.search(r"The answer is: (\w+)\s*$", answer)
    return match.group(1) if match else None


def test_pair_type_stats_counts_each_type():
    def answer(label: str) -> str:
        return format_answer("some rationale", label)

    pairs = [
        _pair(
            chosen=answer("positive"), rejected=answer("positive") + " "
        ),  # same label: rationale-sensitive
        _pair(chosen=answer("negative"), rejected=answer("negative") + "  "),  # rationale-sensitive
        _pair(chosen=answer("positive"), rejected=answer("negative")),  # label-sensitive
        _pair(chosen=answer("positive"), rejected="I cannot answer that."),  # unparseable
    ]
    stats = pair_type_stats(pairs, _parse)
    assert stats["pairs/total"] == 4
    assert (
        stats["pairs/rationale_sensitive"],
        stats["pairs/label_sensitive"],
        stats["pairs/unparseable"],
    ) == (2, 1, 1)
    # shares: 2/4, 1/4, 1/4
    assert stats["pairs/rationale_sensitive/share"] == 0.5
    assert stats["pairs/label_sensitive/share"] == 0.25
    assert stats["pairs/unparseable/share"] == 0.25


def test_pair_type_stats_of_no_pairs():
    stats = pair_type_stats([], _parse)
    assert stats["pairs/total"] == 0 and math.isnan(stats["pairs/label_sensitive/share"])


# ---------------------------------------------------------------------------------------------------------
# Wrong labels on other scales (the paper's rule in units of the period P)
# ---------------------------------------------------------------------------------------------------------


@FAST
@given(st.floats(-4.0, 4.0, allow_nan=False), st.floats(-1.6, 1.6, allow_nan=False))
def test_wrong_label_on_a_wider_real_scale(gold, u):
    # Hutto sentiment, [-4, 4]: P = 8, shift 0.6 P = 4.8, jitter 0.2 P = 1.6
    wrong = wrong_label(gold, scale=Scale(-4.0, 4.0), rng=FixedUniform(u, period=8.0), decimals=None)
    assert -4.0 < wrong <= 4.0
    assert 0.2 * 8 - 1e-9 <= abs(wrong - gold) <= 0.8 * 8 + 1e-9


@FAST
@given(st.integers(5, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))), st.floats(-1, 1))
def test_wrong_label_integer_scales_of_five_or_more_values_never_return_gold(n_and_gold, fraction):
    n, offset = n_and_gold
    low = -2  # not 0 or 1, so that an off-by-one in the period or the clamp shows
    scale = Scale(low, low + n - 1, kind="int")
    wrong = wrong_label(low + offset, scale=scale, rng=FixedUniform(0.2 * n * fraction, period=n))
    assert isinstance(wrong, int) and scale.min <= wrong <= scale.max and wrong != low + offset


def test_small_integer_scales_fall_back_to_categorical():
    rng = random.Random(3)
    scale = Scale(1, 4, kind="int")  # 1 + 2.4 + 0.7 = 4.1 -> 0.1 -> 0 -> clamped to 1 would return gold
    draws = {wrong_label(1, scale=scale, rng=rng) for _ in range(200)}
    assert draws == {2, 3, 4}
    with pytest.raises(ValueError, match="whole number"):
        wrong_label(2.5, scale=scale, rng=rng)
