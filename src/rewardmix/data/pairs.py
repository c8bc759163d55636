"""Preference pairs: the records, their JSONL files, and every way the pipeline builds them.

A pair is ``(prompt, chosen, rejected)``: the reward model is trained to score ``chosen`` above
``rejected`` (Bradley-Terry, RLLR Eq. 2-3). Pairs come from four sources, recorded in ``kind``:

- ``label_sensitive``: a rationale for the gold label + the gold label beats a rationale for a wrong label +
  the wrong label (RLLR §3.2, Appendix D). The wrong label comes from :func:`wrong_label`.
- ``rationale_sensitive``: a judge ranked K sampled SFT answers (RLLR Appendix C, ties allowed); every two
  answers with different ranks make a pair (:func:`rationale_sensitive_pairs`).
- ``ranking``: human K-way rankings such as OASST's (CRS §2.5.2, Eq. 2.12), same construction
  (:func:`pairs_from_ranking`).
- ``rating``: independently rated responses; the higher rating wins when the gap reaches a margin
  (:func:`pairs_from_ratings`).

:func:`pair_type_stats` measures how many sampled pairs differ in their label (RLLR Fig. 2: more than 75%
of SFT sample pairs are rationale-sensitive, i.e. carry the same label).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

from rewardmix.data.readers import BadRowPolicy, ReadReport, RowError, read_records
from rewardmix.data.tasks import ANSWER_PREFIX, Scale, format_answer
from rewardmix.rundir import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "PAIR_KINDS",
    "PairKind",
    "PairsResult",
    "PreferencePair",
    "answer_only_pairs",
    "label_sensitive_pairs",
    "label_swap_pairs",
    "pair_type_stats",
    "pairs_from_ranking",
    "pairs_from_ratings",
    "rationale_sensitive_pairs",
    "read_pairs",
    "pair_from_row",
    "read_pairs_report",
    "wrong_label",
    "write_pairs",
]

PairKind = Literal["label_sensitive", "rationale_sensitive", "ranking", "rating"]
PAIR_KINDS: tuple[str, ...] = get_args(PairKind)


# ---------------------------------------------------------------------------------------------------------
# Records and their JSONL files
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PreferencePair:
    """One comparison: ``chosen`` is preferred to ``rejected`` as an answer to ``prompt``.

    Attributes:
        prompt: The question or conversation the two answers respond to.
        chosen: The preferred answer.
        rejected: The less preferred answer.
        kind: Where the preference comes from (see the module docstring).
        task: Task name (e.g. ``"sst2"``) when the pair belongs to one, else None.
        meta: Provenance, e.g. ``chosen_label``/``rejected_label`` (label-sensitive), ``chosen_rank``/
            ``rejected_rank`` (rankings), ``chosen_rating``/``rejected_rating``/``margin`` (ratings).
    """

    prompt: str
    chosen: str
    rejected: str
    kind: PairKind
    task: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(
                    f"field '{name}': expected a string, got {type(getattr(self, name)).__name__}"
                )
        if self.kind not in PAIR_KINDS:
            raise ValueError(f"field 'kind': {self.kind!r} is not one of {list(PAIR_KINDS)}")
        if self.task is not None and not isinstance(self.task, str):
            raise ValueError(f"field 'task': expected a string or null, got {type(self.task).__name__}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"field 'meta': expected an object, got {type(self.meta).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The JSONL form: ``{"prompt", "chosen", "rejected", "kind", "task", "meta"}``."""
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "kind": self.kind,
            "task": self.task,
            "meta": dict(self.meta),
        }


_REQUIRED_FIELDS = ("prompt", "chosen", "rejected", "kind")
_OPTIONAL_FIELDS = ("task", "meta")


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair]) -> int:
    """Write pairs as JSONL, one object a line, atomically (a kill leaves the old file or the new one).

    Args:
        path: Destination file; parent folders are created.
        pairs: The pairs to write.

    Returns:
        The number of pairs written.
    """
    lines = [json.dumps(pair.to_dict(), ensure_ascii=False) for pair in pairs]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    logger.info("wrote %d pairs to %s", len(lines), path)
    return len(lines)


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Read a JSONL pair file written by :func:`write_pairs` (or by hand, same schema; ``.gz`` works too).

    ``prompt``, ``chosen``, ``rejected`` (non-blank strings, kept verbatim) and ``kind`` are required;
    ``task`` (string or null) and ``meta`` (object or null) are optional. Unknown keys are errors so that a
    typo (``"choosen"``) is not silently lost. Blank lines are allowed.

    Args:
        path: The JSONL file.

    Returns:
        The pairs in file order.

    Raises:
        DataError: On invalid JSON, a missing or invalid field or an unknown key (``"file:line: field 'x': ..."``).
    """
    return read_pairs_report(path, on_bad_row="error")[0]


def read_pairs_report(
    path: str | Path, *, on_bad_row: BadRowPolicy = "error"
) -> tuple[list[PreferencePair], ReadReport]:
    """:func:`read_pairs` with a bad-row policy: a bad line is an error or a counted skip in the report.

    Returns:
        ``(pairs, report)`` with ``report.rows_out == len(pairs)``.
    """
    rows, report = read_records(
        path, format="jsonl", fields=_PAIR_FIELDS, on_bad_row=on_bad_row, check=pair_from_row
    )
    return [pair_from_row(row) for row in rows], report


def pair_from_row(row: dict[str, Any]) -> PreferencePair:
    """A :class:`PreferencePair` from a row whose required fields are checked; unknown keys are rejected.

    Raises:
        ValueError: The bad field named (``RowError``, or ``"field 'x': ..."`` from the pair's validation).
    """
    unknown = sorted(set(row) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        known = list(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RowError(unknown[0], f"unknown field{hint} (known: {known})")
    missing = [name for name in _REQUIRED_FIELDS if name not in row]
    if missing:
        raise RowError(
            missing[0],
            f"missing (a pair row needs {', '.join(_REQUIRED_FIELDS)}; kind is one of {', '.join(PAIR_KINDS)})",
        )
    meta = row.get("meta")
    # PreferencePair's own validation names the field ("field 'meta': ..."); the reader puts it at its line.
    return PreferencePair(
        prompt=row["prompt"],
        chosen=row["chosen"],
        rejected=row["rejected"],
        kind=row["kind"],
        task=row.get("task"),
        meta={} if meta is None else meta,
    )


def _verbatim_str(value: Any) -> str:
    # unlike readers.as_str, no stripping: the texts must stay byte-identical to what the models see
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _pair_kind(value: Any) -> str:
    if value not in PAIR_KINDS:
        raise ValueError(f"expected one of {list(PAIR_KINDS)}")
    return value


_PAIR_FIELDS = {
    "prompt": _verbatim_str,
    "chosen": _verbatim_str,
    "rejected": _verbatim_str,
    "kind": _pair_kind,
}


# ---------------------------------------------------------------------------------------------------------
# Wrong labels (RLLR Appendix D)
# ---------------------------------------------------------------------------------------------------------

# RLLR Appendix D on its 0-5 scales: wrong = gold + 3 + U[-1, 1], minus 5 when above the maximum. In units of
# the scale's period P = 5 that is a rotation by 0.6 P +- 0.2 P, which is how other scales are handled.
_SHIFT = 0.6
_JITTER = 0.2
# Below five values an integer scale can rotate back onto gold (1..4, P = 4: gold 1 + 2.4 + 0.7 = 4.1 > 4 ->
# 0.1 -> 0 -> clamped to 1); such scales are treated as categorical.
_MIN_INT_SCALE_VALUES = 5


def wrong_label(
    gold: Any,
    *,
    labels: Sequence[Any] | None = None,
    scale: Scale | None = None,
    rng: random.Random,
    decimals: int | None = 1,
) -> Any:
    """Pick the incorrect label of a label-sensitive pair.

    Categorical tasks (``labels`` given): a uniformly random label other than ``gold``.

    Scale tasks (``scale`` given, the task's :class:`rewardmix.data.tasks.Scale`): with the period
    ``P = max - min`` (real scales) or ``max - min + 1`` (integer scales, their number of values), both 5 for
    STS-B (0-5) and AppReviews (1-5):

    1. ``w = gold + 0.6 P + u`` with ``u ~ U[-0.2 P, 0.2 P]`` (paper: ``gold + 3 + U[-1, 1]``);
    2. if ``w > max``: ``w -= P`` (paper: subtract 5);
    3. integer scales round half up (paper: "rounded" for AppReviews), real scales round to ``decimals``;
    4. clamp into ``[min, max]``.

    What that guarantees (``s = 0.6 P + u`` in ``[0.4 P, 0.8 P]``):

    - Real scales, before rounding: without the wrap ``w - gold = s`` and ``w <= max``; with it
      ``w - gold = s - P`` in ``[-0.6 P, -0.2 P]`` and ``w > max - P = min``. So ``w`` is inside the scale
      (the clamp never acts), ``0.2 P <= |w - gold| <= 0.8 P`` and ``(w - gold) mod P`` is in
      ``[0.4 P, 0.8 P]``: on STS-B ``1 <= |w - gold| <= 4``, the circular distance is at least 1 (not 2),
      and equals 1 only for ``u = 1`` with a wrap. Rounding to ``decimals`` moves ``w`` by at most
      ``0.5 * 10**-decimals`` (0.05 by default, so ``|w - gold| >= 0.95`` on STS-B); the default of one
      decimal follows the paper's worked example (2.8 + 3 + 0.3 = 6.1 -> 1.1) and keeps float noise
      (1.0999999999999996) out of the answer text.
    - Integer scales with ``P >= 5``: without the wrap ``w - gold >= 0.4 P >= 2``; with it
      ``w - gold <= -0.2 P <= -1``, so the result never equals gold. The wrapped value can fall below
      ``min - 0.5`` and round to ``min - 1``; the clamp then gives ``min`` (AppReviews: gold 2 with ``u`` in
      ``(0, 0.5)``, gold 3 with ``u`` in ``(-1, -0.5)``, probability 1/4 each), which is not gold, because a
      gold of ``min`` never wraps (it would need ``s > P - 1 >= 0.8 P``). AppReviews outcomes:
      1 -> {3, 4, 5}; 2 -> {4, 5, 1}; 3 -> {5, 1, 2}; 4 -> {1, 2, 3}; 5 -> {2, 3, 4}.
    - Integer scales with fewer than 5 values are treated as categorical (uniform other value), since the
      rotation could land back on gold there.

    Args:
        gold: The correct label (a member of ``labels``, or a number on ``scale``; numeric strings such as
            ``"3"`` are accepted for scales).
        labels: The task's label set, for categorical tasks.
        scale: The task's numeric scale. Give exactly one of ``labels``/``scale``.
        rng: Source of randomness (seed it for reproducible pairs).
        decimals: Rounding of wrong labels on real scales (None: none); ignored on integer scales.

    Returns:
        A label of ``labels`` (categorical), an ``int`` (integer scale) or a ``float`` (real scale).

    Raises:
        ValueError: If both or neither of ``labels``/``scale`` are given, ``gold`` is not a valid label, or the
            label set has no other label.

    Reference:
        RLLR Appendix D (construction of label-sensitive pairs).
    """
    if (labels is None) == (scale is None):
        raise ValueError("give exactly one of labels= (categorical task) or scale= (numeric scale)")
    if labels is not None:
        return _wrong_categorical(gold, labels, rng)
    assert scale is not None
    value = _as_number(gold)
    if not scale.min <= value <= scale.max:
        raise ValueError(f"gold label {gold!r} is outside the scale [{scale.min:g}, {scale.max:g}]")
    if scale.kind == "int":
        if not value.is_integer():
            raise ValueError(f"gold label {gold!r} is not a whole number (integer scale)")
        values = range(int(scale.min), int(scale.max) + 1)
        if len(values) < _MIN_INT_SCALE_VALUES:
            return _wrong_categorical(int(value), list(values), rng)
        return int(_rotate(value, scale.min, scale.max, len(values), rng, integer=True))
    return _rotate(value, scale.min, scale.max, scale.max - scale.min, rng, integer=False, decimals=decimals)


def _rotate(
    gold: float,
    low: float,
    high: float,
    period: float,
    rng: random.Random,
    *,
    integer: bool,
    decimals: int | None = None,
) -> float:
    wrong = gold + _SHIFT * period + rng.uniform(-_JITTER * period, _JITTER * period)
    if wrong > high:
        wrong -= period
    if integer:
        wrong = math.floor(wrong + 0.5)  # half up, not Python's half-to-even: 4.5 -> 5 as a reader expects
    elif decimals is not None:
        wrong = round(wrong, decimals)
    return float(min(max(wrong, low), high))


def _wrong_categorical(gold: Any, labels: Sequence[Any], rng: random.Random) -> Any:
    unique = list(dict.fromkeys(labels))  # dedupe, keep the order
    others = [label for label in unique if label != gold]
    if len(others) == len(unique):
        raise ValueError(f"gold label {gold!r} is not in the label set {list(labels)}")
    if not others:
        raise ValueError(f"label set {list(labels)} has no label other than {gold!r}")
    return rng.choice(others)


def _as_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"gold label {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"gold label {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"gold label {value!r} is not finite")
    return number


# ---------------------------------------------------------------------------------------------------------
# Pair construction
# ---------------------------------------------------------------------------------------------------------


class PairsResult(NamedTuple):
    """Pairs built from one prompt's answers, with what was left out and why.

    Attributes:
        pairs: The pairs, in order of the answer indices (i < j).
        skipped_ties: Unordered answer pairs with equal rank (rankings) or a rating gap below the margin.
        skipped_identical: Answer pairs that would be preferred but have the same text (no signal).
    """

    pairs: list[PreferencePair]
    skipped_ties: int
    skipped_identical: int


_EXAMPLE_FIELDS = ("question", "gold_label", "gold_rationale", "wrong_label", "wrong_rationale")


def label_sensitive_pairs(examples: Iterable[Mapping[str, Any]]) -> list[PreferencePair]:
    """Label-sensitive pairs: the gold-label answer beats the wrong-label answer.

    ``chosen = format_answer(gold_rationale, gold_label)`` and ``rejected = format_answer(wrong_rationale,
    wrong_label)``, with the task registry's answer format ``{rationale}\\n\\nThe answer is: {label}`` (the
    SFT targets use the same function, so the reward model sees exactly the strings the policy writes).

    Args:
        examples: Mappings with ``question`` (the prompt built from the task template), ``gold_label``,
            ``gold_rationale``, ``wrong_label``, ``wrong_rationale`` and optionally ``task``.

    Returns:
        One pair per example, ``kind="label_sensitive"``, ``meta = {"chosen_label", "rejected_label"}``.

    Raises:
        ValueError: If an example lacks a field, has an empty question or rationale, or its wrong label
            equals its gold label; the message names the example index and the field.

    Reference:
        RLLR §3.2 ("a ≻ â | q for label-sensitive pairs without extra annotation"), Appendix D, Table 1.
    """
    pairs = []
    for index, example in enumerate(examples):
        for name in _EXAMPLE_FIELDS:
            if name not in example:
                raise ValueError(f"example {index}: field '{name}': missing")
        for name in ("question", "gold_rationale", "wrong_rationale"):
            if not isinstance(example[name], str) or not example[name].strip():
                raise ValueError(f"example {index}: field '{name}': expected a non-empty string")
        gold, wrong = example["gold_label"], example["wrong_label"]
        if str(gold) == str(wrong):
            raise ValueError(f"example {index}: field 'wrong_label': equals the gold label {gold!r}")
        pairs.append(
            PreferencePair(
                prompt=example["question"],
                chosen=format_answer(example["gold_rationale"], gold),
                rejected=format_answer(example["wrong_rationale"], wrong),
                kind="label_sensitive",
                task=example.get("task"),
                meta={"chosen_label": gold, "rejected_label": wrong},
            )
        )
    return pairs


def label_swap_pairs(pairs: Iterable[PreferencePair]) -> list[PreferencePair]:
    """For each label-sensitive pair, the same gold rationale under both labels: gold ≻ wrong.

    A teacher that writes the wrong label's rationale often argues the gold label anyway (a small model
    cannot argue against the text), so in the original pair rationale wording and label change together.
    Here only the label changes, so a reward model can only fit the pair by reading the label against the
    question. Pairs whose ``meta`` lacks ``chosen_label``/``rejected_label`` (not built by
    :func:`label_sensitive_pairs`) are skipped.

    Returns:
        One pair per input pair, ``kind="label_sensitive"``, ``meta`` with ``augment: "label_swap"``.
    """
    swapped = []
    for pair in pairs:
        gold, wrong = pair.meta.get("chosen_label"), pair.meta.get("rejected_label")
        head, marker, _ = pair.chosen.rpartition(ANSWER_PREFIX)
        if gold is None or wrong is None or not marker:
            continue
        swapped.append(
            PreferencePair(
                prompt=pair.prompt,
                chosen=pair.chosen,
                rejected=format_answer(head.rstrip("\n"), wrong),
                kind="label_sensitive",
                task=pair.task,
                meta={"chosen_label": gold, "rejected_label": wrong, "augment": "label_swap"},
            )
        )
    return swapped


def answer_only_pairs(
    rows: Iterable[Mapping[str, Any]], *, labels: Sequence[Any], rng: random.Random, task: str | None = None
) -> list[PreferencePair]:
    """Label-sensitive pairs with no rationale from labeled rows: ``The answer is: gold`` ≻ ``… wrong``.

    They need no teacher call, so every labeled sentence a task has can teach the reward model what the
    label should be; the rationale pairs teach it the answer format with a rationale in front.

    Args:
        rows: Mappings with ``question`` (the task prompt) and ``label`` (the gold label).
        labels: The task's label set (the wrong label is a uniformly random other one).
        rng: Source of the wrong labels.
        task: Recorded in each pair.
    """
    pairs = []
    for row in rows:
        wrong = wrong_label(row["label"], labels=labels, rng=rng)
        pairs.append(
            PreferencePair(
                prompt=row["question"],
                chosen=format_answer("", row["label"]),
                rejected=format_answer("", wrong),
                kind="label_sensitive",
                task=task,
                meta={"chosen_label": row["label"], "rejected_label": wrong, "augment": "answer_only"},
            )
        )
    return pairs


def rationale_sensitive_pairs(
    prompt: str,
    answers: Sequence[str],
    ranks: Mapping[int, int] | Sequence[int],
    *,
    task: str | None = None,
) -> PairsResult:
    """Pairs from a judge's K-way ranking of sampled answers, ties allowed.

    Every unordered pair of answers with different ranks gives one pair, the better-ranked answer chosen:
    with K answers and no ties that is C(K, 2) pairs. Tied answers give no pair (counted).

    Args:
        prompt: The question the answers respond to.
        answers: The K answers, in the order they were shown to the judge ("[Answer 1]" first).
        ranks: Rank per answer, 1 = best, equal ranks = tie. Either a mapping keyed by the judge's 1-based
            answer numbers (``"2>1=5>3=4"`` parses to ``{2: 1, 1: 2, 5: 2, 3: 3, 4: 3}``) or a sequence
            aligned with ``answers``. Only the order of the numbers matters.
        task: Task name stored on the pairs.

    Returns:
        :class:`PairsResult` with ``kind="rationale_sensitive"`` pairs; ``meta`` holds the answers' indices
        (0-based) and ranks.

    Raises:
        ValueError: If the ranks do not cover exactly the K answers or are not integers.

    Reference:
        RLLR §3.2 and Appendix C (5 samples per question ranked by GPT-4, e.g. ``2>1=5>3=4``).
    """
    return _pairs_from_ranks(prompt, answers, ranks, kind="rationale_sensitive", task=task)


def pairs_from_ranking(
    prompt: str,
    responses: Sequence[str],
    ranks: Mapping[int, int] | Sequence[int],
    *,
    task: str | None = None,
) -> PairsResult:
    """Pairs from a human K-way ranking (e.g. OASST replies ranked by annotators), ties skipped.

    Same construction and arguments as :func:`rationale_sensitive_pairs`; the pairs have ``kind="ranking"``.
    For OASST pass the replies' ``rank`` values (0 = best) as a sequence aligned with ``responses``.

    Reference:
        CRS §2.5.2, Eq. 2.12 (all C(K, 2) comparisons of a prompt's K ranked responses).
    """
    return _pairs_from_ranks(prompt, responses, ranks, kind="ranking", task=task)


def _pairs_from_ranks(
    prompt: str,
    answers: Sequence[str],
    ranks: Mapping[int, int] | Sequence[int],
    *,
    kind: PairKind,
    task: str | None,
) -> PairsResult:
    aligned = _aligned_ranks(ranks, len(answers))
    pairs, ties, identical = [], 0, 0
    for i, j in combinations(range(len(answers)), 2):
        if aligned[i] == aligned[j]:
            ties += 1
            continue
        best, worst = (i, j) if aligned[i] < aligned[j] else (j, i)  # lower rank number = preferred
        if answers[best] == answers[worst]:
            identical += 1
            continue
        meta = {
            "chosen_index": best,
            "rejected_index": worst,
            "chosen_rank": aligned[best],
            "rejected_rank": aligned[worst],
        }
        pairs.append(PreferencePair(prompt, answers[best], answers[worst], kind, task, meta))
    if ties or identical:
        logger.debug("%s pairs: skipped %d ties and %d identical answers", kind, ties, identical)
    return PairsResult(pairs, ties, identical)


def _aligned_ranks(ranks: Mapping[int, int] | Sequence[int], k: int) -> list[int]:
    if isinstance(ranks, Mapping):
        expected = set(range(1, k + 1))
        if set(ranks) != expected:
            missing, extra = sorted(expected - set(ranks)), sorted(set(ranks) - expected)
            raise ValueError(
                f"ranks must name answers 1..{k} exactly once (1-based); missing {missing}, unexpected {extra}"
            )
        aligned = [ranks[n] for n in range(1, k + 1)]
    else:
        if len(ranks) != k:
            raise ValueError(f"got {len(ranks)} ranks for {k} answers")
        aligned = list(ranks)
    for position, rank in enumerate(aligned):
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ValueError(f"rank of answer {position} must be an integer, got {rank!r}")
    return aligned


# Rating gaps are differences of floats (0.3 - 0.1 = 0.19999999999999998): a gap this close to the margin
# counts as reaching it.
_MARGIN_TOLERANCE = 1e-9


def pairs_from_ratings(
    prompt: str,
    responses: Sequence[str],
    ratings: Sequence[float],
    *,
    margin: float,
    task: str | None = None,
) -> PairsResult:
    """Pairs from independently rated responses: the higher rating wins if the gap is at least ``margin``.

    Args:
        prompt: The prompt the responses answer.
        responses: The responses.
        ratings: One finite rating per response, higher = better.
        margin: Smallest rating gap that makes a preference (> 0); smaller gaps count as ties.
        task: Task name stored on the pairs.

    Returns:
        :class:`PairsResult` with ``kind="rating"`` pairs; ``meta`` holds ``chosen_rating``,
        ``rejected_rating`` and ``margin`` (the observed gap).

    Raises:
        ValueError: If lengths differ, a rating is not a finite number, or ``margin <= 0``.

    Reference:
        SPEC §3 ("from ratings: higher rating ≻ lower, with a margin threshold"); CRS §5.1.2 (OASST rates
        each reply independently).
    """
    if len(ratings) != len(responses):
        raise ValueError(f"got {len(ratings)} ratings for {len(responses)} responses")
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    values = [_as_rating(r, i) for i, r in enumerate(ratings)]
    pairs, close, identical = [], 0, 0
    for i, j in combinations(range(len(responses)), 2):
        gap = abs(values[i] - values[j])
        if gap < margin - _MARGIN_TOLERANCE:
            close += 1
            continue
        best, worst = (i, j) if values[i] > values[j] else (j, i)
        if responses[best] == responses[worst]:
            identical += 1
            continue
        meta = {"chosen_rating": values[best], "rejected_rating": values[worst], "margin": gap}
        pairs.append(PreferencePair(prompt, responses[best], responses[worst], "rating", task, meta))
    return PairsResult(pairs, close, identical)


def _as_rating(value: Any, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"rating of response {index} must be a finite number, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------------------
# Pair statistics (RLLR Fig. 2)
# ---------------------------------------------------------------------------------------------------------


def pair_type_stats(
    pairs: Iterable[PreferencePair], parse_label: Callable[[str], str | None]
) -> dict[str, float]:
    """Share of pairs whose two answers carry different labels, the same label, or an unparseable one.

    Args:
        pairs: Pairs of sampled answers (typically two SFT samples for one question).
        parse_label: Extracts the label from an answer; None when it cannot (e.g. the task's label parser).

    Returns:
        ``{"pairs/total", "pairs/label_sensitive", "pairs/rationale_sensitive", "pairs/unparseable"}``
        counts and the matching ``.../share`` keys (count / total; the three shares sum to 1; NaN for no
        pairs). A pair is unparseable when either answer's label is.

    Reference:
        RLLR Fig. 2 and §3.2 (more than 75% of the pairs sampled from the SFT model are rationale-sensitive).
    """
    counts = {"label_sensitive": 0, "rationale_sensitive": 0, "unparseable": 0}
    for pair in pairs:
        chosen, rejected = parse_label(pair.chosen), parse_label(pair.rejected)
        if chosen is None or rejected is None:
            counts["unparseable"] += 1
        elif chosen == rejected:
            counts["rationale_sensitive"] += 1
        else:
            counts["label_sensitive"] += 1
    total = sum(counts.values())
    stats: dict[str, float] = {"pairs/total": total}
    for name, count in counts.items():
        stats[f"pairs/{name}"] = count
        stats[f"pairs/{name}/share"] = count / total if total else math.nan
    return stats
