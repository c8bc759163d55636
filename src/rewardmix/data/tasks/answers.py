"""Answers to NLU tasks: the question and answer format, the label parser, and scoring by the task's metric.

Answer format (RLLR Appendix A): ``{rationale}\\n\\nThe answer is: {label}``; without a rationale ("SFT
without rationales") just ``The answer is: {label}``.

Label parsing (:func:`parse_label`) never raises on a string and reports why an answer is unparseable:

1. The answer is NFKC-normalized (full-width letters and colons become ASCII) and format characters
   (zero-width spaces, BOMs) are removed.
2. The marker is ``answer is`` in any case, not followed by a letter (``answer isn't`` is no marker). The
   text after the LAST marker that is followed by a colon is taken (markdown ``**``/quotes may sit between
   ``is`` and the colon); if no marker has a colon, the text after the last marker. A final colon marker thus
   wins over a rationale that quotes "The answer is: <other label>", and a trailing "... because the answer
   is obvious" does not hide "The answer is negative".
3. Leading whitespace, colons, markdown ``*``/``_``/backticks and quotes are dropped; whitespace runs become
   one space.
4. Categorical: the verbalized labels and the raw ``label_map`` values are searched case-insensitively; the
   match that starts first wins, and at the same position the longest (``not spam`` beats ``spam``,
   ``World politics`` beats the raw ``World``). A match must not touch a letter, digit or hyphen on either
   side, so ``positively`` and ``non-negative`` are not labels: negations are not interpreted, and an answer
   like "The answer is: non-negative" is unparseable rather than guessed.
5. Numeric: the first number (ASCII digits, optional sign including U+2212, decimals, exponent) that is not
   glued to a word (``v2`` is no number). Out of the scale, not finite, or not an integer on an integer scale
   -> unparseable. ``3.5/5`` reads as 3.5; ``4.0`` is accepted as 4 on an integer scale.
6. With no marker at all, an answer that is nothing but a label (or a number), up to quotes, markdown and
   final punctuation, is accepted; anything else is unparseable.

Scoring (:func:`score_predictions`): accuracy counts unparseable answers as wrong. Pearson (STS-B, rating
tasks) replaces an unparseable prediction by the scale midpoint (2.5 for STS-B): the sample stays the same
size for every model, and a model that fails to answer is pulled towards zero correlation instead of being
scored on the easy subset it did answer. Both report ``unparseable_rate``.

Reference: RLLR §4.1 and Appendix A (templates, labels, answer format).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from rewardmix.algos.stats import accuracy, pearson
from rewardmix.data.tasks.registry import get_task
from rewardmix.data.tasks.spec import ParsedLabel, TaskSpec
from rewardmix.data.tasks.text import (
    LEAD_RE,
    MARKER_RE,
    NUMBER_RE,
    SPACE_RE,
    TRAIL_CHARS,
    fold,
    is_boundary,
    normalize,
)

__all__ = [
    "ANSWER_PREFIX",
    "format_answer",
    "format_label",
    "format_question",
    "parse_label",
    "score_predictions",
]

logger = logging.getLogger(__name__)

ANSWER_PREFIX = "The answer is: "
"""What precedes the label in every answer (RLLR Appendix A)."""


# ---------------------------------------------------------------------------------------------------------
# Formatting.


def format_question(task: str | TaskSpec, fields: Mapping[str, str]) -> str:
    """Render the task's template with ``fields`` (extra keys are ignored, a missing one is an error).

    Reference: RLLR Appendix A (input templates).
    """
    spec = get_task(task)
    missing = [f for f in spec.input_fields if f not in fields]
    if missing:
        raise ValueError(f"task {spec.name!r}: missing input field(s) {missing}")
    return spec.template.format_map({f: fields[f] for f in spec.input_fields})


def format_label(label: str | int | float) -> str:
    """A label as written after "The answer is: " (floats in shortest round-trip form, ``1e-05`` included)."""
    if isinstance(label, bool):
        raise TypeError("a bool is not a label")
    if isinstance(label, float):
        if not math.isfinite(label):
            raise ValueError(f"label {label} is not finite")
        return repr(label)
    if isinstance(label, int | str):
        return str(label)
    raise TypeError(f"a label is a str, int or float, got {type(label).__name__}")


def format_answer(rationale: str, label: str | int | float) -> str:
    """``f"{rationale}\\n\\nThe answer is: {label}"``; a blank rationale gives ``"The answer is: {label}"``.

    The blank case is the target of "SFT without rationales".

    Reference: RLLR Appendix A (answer template for SFT w. rationale, RLHF and RLLR).
    """
    answer = ANSWER_PREFIX + format_label(label)
    return f"{rationale}\n\n{answer}" if rationale.strip() else answer


# ---------------------------------------------------------------------------------------------------------
# Parsing.


def _find_label(spec: TaskSpec, text: str) -> str | None:
    """The label whose surface starts first in ``text`` (already folded); the longest at equal starts."""
    best: tuple[int, str] | None = None
    for surface, label in spec._candidates:
        start = text.find(surface)
        while start != -1:
            if is_boundary(text, start - 1) and is_boundary(text, start + len(surface)):
                break
            start = text.find(surface, start + 1)
        # Candidates come longest first, so a strictly earlier start is needed to replace the best.
        if start != -1 and (best is None or start < best[0]):
            best = (start, label)
    return best[1] if best else None


def _read_number(spec: TaskSpec, token: str) -> ParsedLabel:
    scale = spec.scale
    assert scale is not None
    try:
        value = float(token.replace("−", "-"))
    except ValueError:
        return ParsedLabel(None, False, f"{token!r} is not a number")
    if not math.isfinite(value):
        return ParsedLabel(None, False, f"{token!r} is not a finite number")
    if not scale.min <= value <= scale.max:
        return ParsedLabel(None, False, f"{token} is outside the scale [{scale.min:g}, {scale.max:g}]")
    if scale.kind == "int":
        if not value.is_integer():
            return ParsedLabel(None, False, f"{token} is not a whole number (integer scale)")
        return ParsedLabel(int(value), True)
    return ParsedLabel(value, True)


def _parse_text(spec: TaskSpec, text: str, *, whole: bool) -> ParsedLabel:
    """Read a label from ``text``; ``whole``: the text must be nothing but the label (no-marker fallback)."""
    if spec.is_numeric:
        match = NUMBER_RE.search(text)
        if match is None or (whole and match.group(0) != text):
            return ParsedLabel(
                None, False, "no number after 'The answer is'" if not whole else "no 'The answer is' marker"
            )
        return _read_number(spec, match.group(0))
    folded = fold(text)
    if whole:
        labels = dict(spec._candidates)
        if folded in labels:
            return ParsedLabel(labels[folded], True)
        return ParsedLabel(None, False, "no 'The answer is' marker")
    label = _find_label(spec, folded)
    if label is None:
        shown = folded if len(folded) <= 40 else folded[:37] + "..."
        return ParsedLabel(None, False, f"no label of {list(spec.labels or ())} in {shown!r}")
    return ParsedLabel(label, True)


def parse_label(task: str | TaskSpec, answer: str) -> ParsedLabel:
    """Read the label from a generated answer; never raises on a string (see the module docstring for rules).

    Args:
        task: the task (name or spec).
        answer: the model's answer, e.g. ``"... \\n\\nThe answer is: Positive."``.

    Returns:
        ``ParsedLabel(label, ok, reason)``: the verbalized label or the number, or ``ok=False`` and why.

    Reference: RLLR Appendix A (answer format ``{rationale}\\n\\nThe answer is: {label}``).
    """
    spec = get_task(task)
    if not isinstance(answer, str):
        return ParsedLabel(None, False, f"answer is not a string ({type(answer).__name__})")
    text = normalize(answer)
    markers = list(MARKER_RE.finditer(text))
    if not markers:
        bare = LEAD_RE.sub("", text).rstrip(TRAIL_CHARS)
        if not bare:
            return ParsedLabel(None, False, "empty answer")
        return _parse_text(spec, bare, whole=True)
    with_colon = [m for m in markers if m.group("colon")]
    last = (with_colon or markers)[-1]
    rest = SPACE_RE.sub(" ", LEAD_RE.sub("", text[last.end() :])).strip()
    if not rest:
        return ParsedLabel(None, False, "nothing after 'The answer is'")
    return _parse_text(spec, rest, whole=False)


# ---------------------------------------------------------------------------------------------------------
# Scoring.


def score_predictions(
    task: str | TaskSpec, answers: Sequence[str], golds: Sequence[str | int | float]
) -> dict[str, float]:
    """Score generated answers against gold labels with the task's metric.

    Accuracy counts unparseable answers as wrong. Pearson replaces an unparseable prediction by the scale
    midpoint (see the module docstring); if the correlation is undefined (all predictions equal, e.g. all
    unparseable) it is NaN, with a warning.

    Args:
        task: the task (name or spec).
        answers: generated answers, shape (N,).
        golds: gold labels, shape (N,): verbalized labels (categorical) or numbers on the scale.

    Returns:
        ``{"accuracy" or "pearson": value, "unparseable_rate": k / N, "n": N}``.

    Raises:
        ValueError: lengths differ, N == 0, or a gold label is not a label of the task / not on its scale.

    Reference: RLLR §4.1 (accuracy per task; Pearson for STS-B).
    """
    spec = get_task(task)
    if len(answers) != len(golds):
        raise ValueError(f"answers and golds lengths differ: {len(answers)} vs {len(golds)}")
    if not answers:
        raise ValueError("no answers to score")
    _check_golds(spec, golds)
    parsed = [parse_label(spec, a) for a in answers]
    n_bad = sum(not p.ok for p in parsed)
    out: dict[str, float] = {"unparseable_rate": n_bad / len(parsed), "n": len(parsed)}
    if spec.metric == "accuracy":
        preds = [p.label if p.ok else None for p in parsed]  # None never equals a gold label: wrong
        out["accuracy"] = accuracy(preds, list(golds))
        return out
    assert spec.scale is not None
    midpoint = spec.scale.midpoint
    values = [float(p.label) if p.ok else midpoint for p in parsed]  # type: ignore[arg-type]
    try:
        out["pearson"] = pearson(values, [float(g) for g in golds])
    except ValueError as e:
        logger.warning("task %s: Pearson undefined (%s); reporting NaN", spec.name, e)
        out["pearson"] = float("nan")
    return out


def _check_golds(spec: TaskSpec, golds: Sequence[str | int | float]) -> None:
    for i, gold in enumerate(golds):
        if spec.scale is not None:
            if isinstance(gold, bool) or gold not in spec.scale:
                raise ValueError(f"gold[{i}] = {gold!r} is not on the scale of task {spec.name!r}")
        elif gold not in (spec.labels or ()):
            raise ValueError(
                f"gold[{i}] = {gold!r} is not a label of task {spec.name!r}: {list(spec.labels or ())}"
            )
