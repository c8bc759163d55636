"""Filter teacher rationales: drop refusals and rationales that contradict the label they were asked for.

RLLR Appendix B: "Sometimes GPT-4 refuses to give a rationale conditioned the provided label, and we train a
simple classifier to filter out these responses." We ship a rule-based filter instead (no training data for
such a classifier comes with the paper). It is deliberately conservative: it drops a rationale only on an
explicit signal, because every wrongly dropped rationale removes a label-sensitive pair.

Refusal: one of :data:`REFUSAL_PATTERNS` outside quotation marks (reviews often quote first-person text
such as "I can't recommend it", which is not a refusal). The patterns are first-person refusal or apology
constructions ("I'm sorry", "As an AI", "I cannot provide/justify/...", "I can't provide", "it would not
be accurate", ...); a bare "I cannot" followed by another verb is not enough.

Contradiction: the rationale explicitly asserts a different label, detected by either
(1) an injected ``parse_label(text) -> label | None`` (e.g. the task's answer parser, which reads
    "The answer is: X") returning a label other than the requested one, or
(2) with the task's ``labels`` given, a statement whose subject is the answer itself, "the (correct|true|
    actual|right|real) answer/label (is|would be|should be) X" with X another label, or "the answer/label
    is not <requested label>".
(3) with the task's ``label_words`` given (task specs declare them: ``positive``/``favorable``, ``entail*``/
    ``follows from``), a *plain-language* contradiction: the rationale asserts another label in its own words
    ("expresses a strong and positive sentiment" asked for negative, "the hypothesis is entailed" asked for
    contradiction) and never asserts its own. See :func:`find_plain_contradiction` for what counts as asserting.
Sentences that merely mention another label ("not positive at all", "the true answer might be ...",
"although some words sound positive") are kept. Labels are compared case-insensitively after stripping
quotes and surrounding punctuation; numeric labels (STS-B, AppReviews) should be checked with ``parse_label``,
which can compare numbers properly. Precision and recall of rule (3) on a hand-labelled sample:
``bench/rationale_filter.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from rewardmix.redact import get_redacting_logger

__all__ = [
    "REFUSAL_PATTERNS",
    "FilterResult",
    "RationaleCheck",
    "check_rationale",
    "filter_rationales",
    "find_contradiction",
    "find_plain_contradiction",
    "find_refusal",
]

logger = get_redacting_logger(__name__)

T = TypeVar("T")

_REFUSAL_VERBS = (
    r"(?:provide|give|offer|justify|support|comply|assist|help|fulfil+|create|generate|write|argue|agree|"
    r"in good conscience|do that|do so|endorse|defend|rationali[sz]e|produce|confidently)"
)
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bI(?:'m| am) (?:really |very |so )?sorry\b",
    r"\bI apologi[sz]e\b",
    r"\bas an AI\b",
    r"\bas a(?:n AI)? language model\b",
    r"\bI(?: cannot| can ?not| can't| won't| will not| am unable to|'m unable to| am not able to|'m not able to) "
    + _REFUSAL_VERBS,
    r"\bit (?:would not|wouldn't|would n't) be (?:accurate|appropriate|honest|correct|truthful|responsible)\b",
    r"\bit would be (?:inaccurate|misleading|incorrect|dishonest|inappropriate)\b",
    r"\bI must (?:respectfully )?(?:decline|point out|clarify|note) that\b",
)
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE)
# Text inside straight or curly double quotes is somebody else's words, not the teacher's.
_QUOTED = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'"})

_SUBJECT = r"the (?:(?:correct|true|actual|right|real|appropriate|proper) )?(?:answer|label)"
_LABEL_CHARS = "\"'“”‘’*`"


@dataclass(frozen=True)
class RationaleCheck:
    """The verdict on one rationale: ``reason`` is ``"ok"``, ``"refusal"`` or ``"contradiction"``;
    ``detail`` quotes the matched phrase."""

    reason: Literal["ok", "refusal", "contradiction"]
    detail: str = ""

    @property
    def keep(self) -> bool:
        return self.reason == "ok"


@dataclass
class FilterResult(Generic[T]):
    """Rationales split by the filter; nothing is dropped without being listed here.

    Attributes:
        kept: Items that passed.
        dropped_refusal: Items whose rationale is a refusal.
        dropped_contradiction: Items whose rationale asserts another label.
        details: ``(index in the input, reason, matched phrase)`` for every dropped item.
    """

    kept: list[T] = field(default_factory=list)
    dropped_refusal: list[T] = field(default_factory=list)
    dropped_contradiction: list[T] = field(default_factory=list)
    details: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """``{"kept", "dropped_refusal", "dropped_contradiction", "total"}``, for reports."""
        n_ref, n_con = len(self.dropped_refusal), len(self.dropped_contradiction)
        return {
            "kept": len(self.kept),
            "dropped_refusal": n_ref,
            "dropped_contradiction": n_con,
            "total": len(self.kept) + n_ref + n_con,
        }


def _norm_label(label: str) -> str:
    return label.strip().strip(_LABEL_CHARS).strip(" .,:;!").casefold()


def find_refusal(text: str) -> str | None:
    """The first refusal phrase outside double quotes in ``text``, or ``None``."""
    unquoted = _QUOTED.sub(" ", text.translate(_APOSTROPHES))
    m = _REFUSAL.search(unquoted)
    return m.group(0) if m else None


# Plain-language contradictions (rule 3). A label word counts as *asserted* unless it is negated, hedged or
# about a part of the text; each cue list is a closed class of English words, not tuned per task.
_NEGATION = re.compile(
    r"\b(?:not|no|never|neither|nor|nothing|none|without|cannot|hardly|lacks?|lacking|rather than|instead of|"
    r"far from|anything but|free of|devoid of|fails? to)\b|n't\b",
    re.IGNORECASE,
)
_NEGATION_WINDOW = (
    6  # words before a label word in which a negation cue negates it ("does not express a positive")
)
# Negation words inside idioms that affirm ("no doubt the sentiment is positive", "nothing but positive").
_AFFIRMING_IDIOMS = re.compile(
    r"\b(?:no doubt|without (?:a )?doubt|not only|not just|nothing but|no question)\b", re.IGNORECASE
)
# Concession, possibility, appearance, expectation, and the request itself: the label is mentioned, not asserted.
_HEDGE = re.compile(
    r"\b(?:although|though|while|whilst|despite|in spite of|even if|even though|even with|whereas|if|might|may|"
    r"could|would|seem\w*|appear\w*|at first|initially|on the surface|superficial\w*|tempting|possibl[ey]|perhaps|"
    r"expect\w*|promis\w*|hop(?:e|es|ed|ing)|ask\w*|request\w*|argue|supposed to|task|instruct\w*)\b",
    re.IGNORECASE,
)
# A label word that describes a part of the text ("positive words", "negative connotations"), not the verdict.
_PART_NOUN = re.compile(
    r"\s+(?:words?|terms?|phrases?|language|connotations?|adjectives?|aspects?|elements?|notes?|moments?|sides?|"
    r"details?|remarks?|comments?|touch(?:es)?|points?)\b",
    re.IGNORECASE,
)
# Clauses: sentence ends, semicolons, colons, commas, dashes, and before "but/yet/however/whereas".
_CLAUSE_END = re.compile(
    r"[.!?;:]+(?=\s|$)|,|\s[-\u2013\u2014]+\s|\s(?=(?:but|yet|however|whereas)\b)|\n", re.IGNORECASE
)


def _word_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """``["entail*", "follows from"]`` -> one case-insensitive pattern of whole words (``*``: any ending)."""
    alternatives = []
    for word in sorted(set(words), key=len, reverse=True):
        parts = [re.escape(w.rstrip("*")) + (r"\w*" if w.endswith("*") else "") for w in word.split()]
        alternatives.append(r"\s+".join(parts))
    return re.compile(rf"\b(?:{'|'.join(alternatives)})\b", re.IGNORECASE)


Stance = Literal["asserted", "denied", "mentioned"]


def _stance(clause: str, start: int, end: int) -> Stance:
    """How the clause treats the label word at ``clause[start:end]``: ``asserted``; ``denied`` (a negation cue
    within 6 words before it); ``mentioned`` (its clause hedges, or the word qualifies a part of the text)."""
    if _HEDGE.search(clause[:start] + " " + clause[end:]) or _PART_NOUN.match(clause, end):
        return "mentioned"
    before = _AFFIRMING_IDIOMS.sub(" ", " ".join(clause[:start].split()[-_NEGATION_WINDOW:]))
    return "denied" if _NEGATION.search(before) else "asserted"


def find_plain_contradiction(text: str, label: str, label_words: Mapping[str, Iterable[str]]) -> str | None:
    """The clause by which ``text`` contradicts ``label`` in plain language, or ``None``.

    The text outside double quotes (the reviewed text's own words) is cut into clauses; in each, the words of
    every label (the label itself and its ``label_words``) are looked up. A word is *asserted* unless
    (a) a negation cue stands within 6 words before it in its clause ("not positive", "neither entailed"):
    then it is *denied*; or (b) its clause concedes, hedges or reports the request ("although ... positive",
    "may seem negative", "asked to argue for negative"), or it qualifies a part of the text ("positive
    words"): then it is only *mentioned*. A rationale that asserts its own label anywhere is kept (a mention of
    another label is then a concession). Otherwise it contradicts its label when it asserts another label
    ("the sentiment is positive, not negative" asked for negative) or denies its own ("the review is not
    positive" asked for positive). "Not positive" asked for negative, or "despite positive moments, the movie
    is negative", are kept.

    Args:
        text: The rationale.
        label: The label it was asked to support.
        label_words: Label -> words that assert it (task spec ``label_words``); labels are matched by key,
            case-insensitively.

    Returns:
        ``"asserts '<other label>': <clause>"`` or ``"denies '<label>': <clause>"``, or ``None``.
    """
    want = _norm_label(label)
    patterns = {_norm_label(k): _word_pattern([k, *v]) for k, v in label_words.items()}
    patterns.setdefault(want, _word_pattern([label]))
    unquoted = _QUOTED.sub(" ", text.translate(_APOSTROPHES).replace("*", ""))
    clauses = [c.strip() for c in _CLAUSE_END.split(unquoted) if c and c.strip()]
    asserts_other: str | None = None
    denies_own: str | None = None
    for clause in clauses:
        for name, pattern in patterns.items():
            stances = {_stance(clause, m.start(), m.end()) for m in pattern.finditer(clause)}
            if name == want and "asserted" in stances:
                return None  # the rationale asserts its own label; a mention of another is a concession
            if name == want and "denied" in stances:
                denies_own = denies_own or f"denies {want!r}: {clause}"
            if name != want and "asserted" in stances:
                asserts_other = asserts_other or f"asserts {name!r}: {clause}"
    return asserts_other or denies_own


def find_contradiction(
    text: str,
    label: str,
    *,
    labels: Iterable[str] | None = None,
    parse_label: Callable[[str], str | None] | None = None,
    label_words: Mapping[str, Iterable[str]] | None = None,
) -> str | None:
    """The phrase by which ``text`` asserts a label other than ``label``, or ``None`` (see module docstring).

    Args:
        text: The rationale.
        label: The label it was asked to support.
        labels: The task's label set, enabling the "the answer is X" rules.
        parse_label: The task's answer parser; a non-``None`` result different from ``label`` is a contradiction.
        label_words: The task's plain-language label words, enabling :func:`find_plain_contradiction`.
    """
    want = _norm_label(label)
    if parse_label is not None:
        parsed = parse_label(text)
        if parsed is not None and _norm_label(str(parsed)) != want:
            return f"parsed label {parsed!r}"
    if labels is None:
        return find_plain_contradiction(text, label, label_words) if label_words else None
    flat = text.translate(_APOSTROPHES).replace("*", "")
    others = sorted({_norm_label(x) for x in labels} - {want}, key=len, reverse=True)
    q = "[\"'“”]?"
    if others:
        alternatives = "|".join(re.escape(o) for o in others)
        is_other = re.compile(
            rf"\b{_SUBJECT} (?:is|would be|should be)\s*:?\s*{q}(?:{alternatives}){q}(?![\w-])", re.IGNORECASE
        )
        m = is_other.search(flat)
        if m:
            return m.group(0)
    is_not = re.compile(
        rf"\b{_SUBJECT} (?:is not|isn't|would not be|wouldn't be|should not be|shouldn't be|cannot be|can't be)"
        rf"\s*:?\s*{q}{re.escape(want)}{q}(?![\w-])",
        re.IGNORECASE,
    )
    m = is_not.search(flat)
    if m:
        return m.group(0)
    return find_plain_contradiction(text, label, label_words) if label_words else None


def check_rationale(
    text: str,
    label: str,
    *,
    labels: Iterable[str] | None = None,
    parse_label: Callable[[str], str | None] | None = None,
    label_words: Mapping[str, Iterable[str]] | None = None,
) -> RationaleCheck:
    """Classify one rationale as ``ok``, ``refusal`` or ``contradiction`` (refusal is checked first).

    Reference:
        RLLR Appendix B (filtering of refused rationales); rule-based stand-in for the paper's classifier.
    """
    phrase = find_refusal(text)
    if phrase is not None:
        return RationaleCheck("refusal", phrase)
    phrase = find_contradiction(text, label, labels=labels, parse_label=parse_label, label_words=label_words)
    if phrase is not None:
        return RationaleCheck("contradiction", phrase)
    return RationaleCheck("ok")


def filter_rationales(
    items: Sequence[T],
    *,
    get_text: Callable[[T], str],
    get_label: Callable[[T], str],
    labels: Iterable[str] | None = None,
    parse_label: Callable[[str], str | None] | None = None,
    label_words: Mapping[str, Iterable[str]] | None = None,
) -> FilterResult[T]:
    """Split ``items`` into kept, refused and contradicting rationales, with counts logged.

    Args:
        items: Records holding a rationale and the label it was requested for (dicts, dataclasses, tuples).
        get_text: Extracts the rationale, e.g. ``lambda r: r["rationale"]``.
        get_label: Extracts the requested label, e.g. ``lambda r: r["label"]``.
        labels: The task's label set (see :func:`find_contradiction`).
        parse_label: The task's answer parser (see :func:`find_contradiction`).
        label_words: The task's plain-language label words (see :func:`find_plain_contradiction`).

    Returns:
        A :class:`FilterResult`; ``counts`` sums to ``len(items)``.

    Reference:
        RLLR Appendix B.
    """
    label_list = list(labels) if labels is not None else None
    result: FilterResult[T] = FilterResult()
    for i, item in enumerate(items):
        check = check_rationale(
            get_text(item),
            get_label(item),
            labels=label_list,
            parse_label=parse_label,
            label_words=label_words,
        )
        if check.reason == "refusal":
            result.dropped_refusal.append(item)
        elif check.reason == "contradiction":
            result.dropped_contradiction.append(item)
        else:
            result.kept.append(item)
            continue
        result.details.append((i, check.reason, check.detail))
    counts = result.counts
    logger.info(
        "rationale filter: kept %d of %d (dropped %d refusals, %d contradictions)",
        counts["kept"],
        counts["total"],
        counts["dropped_refusal"],
        counts["dropped_contradiction"],
    )
    return result
