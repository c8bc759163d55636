"""The rule-based refusal / contradiction filter for teacher rationales (RLLR Appendix B)."""

from __future__ import annotations

import pytest

from rewardmix.data.tasks import get_task
from rewardmix.llm.filters import (
    check_rationale,
    filter_rationales,
    find_contradiction,
    find_plain_contradiction,
    find_refusal,
)

SENTIMENT = ["negative", "positive"]
AGNEWS = ["World politics", "Sports", "Business", "Science and technology"]

# RLLR Table 7, first example (a good rationale for "negative").
GOOD_NEGATIVE = (
    'The sentiment expressed by the writer for the movie is decidedly negative. The term "weepy" suggests '
    "that the movie is overly sentimental or melodramatic in a way that the writer finds unappealing."
)


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't provide a rationale for that label.",
        "I am sorry, the review is clearly positive.",
        "As an AI developed by OpenAI, I must be accurate: the review is positive.",
        "As a language model, I cannot justify this answer.",
        "I cannot in good conscience argue that this review is positive.",
        "I can’t provide a confident rationale for an incorrect answer.",  # curly apostrophe
        "While I understand the request, it would not be accurate to call this review positive.",
        "It would be misleading to say the article is about sports.",
        "I apologize, but the label does not fit.",
        "I must point out that the label seems wrong.",
        "I'm unable to give a rationale for this.",
    ],
)
def test_refusals_are_detected(text):
    assert find_refusal(text) is not None
    assert check_rationale(text, "positive", labels=SENTIMENT).reason == "refusal"


@pytest.mark.parametrize(
    "text",
    [
        GOOD_NEGATIVE,
        # First-person words inside the reviewed text are quoted, not a refusal by the teacher.
        'The reviewer writes "I cannot recommend this film" and "I\'m sorry I went", a clearly negative verdict.',
        "The writer says they cannot believe how dull it is, which signals a negative sentiment.",
        "I cannot overstate how strongly the tone points to a negative reading.",  # "I cannot" + other verb
    ],
)
def test_ordinary_rationales_are_not_refusals(text):
    assert find_refusal(text) is None
    assert check_rationale(text, "negative", labels=SENTIMENT).keep


@pytest.mark.parametrize(
    "text, label, labels",
    [
        ("Although asked otherwise, the correct answer is positive.", "negative", SENTIMENT),
        ("The true label would be 'positive' here.", "negative", SENTIMENT),
        ("So the answer is: **Sports**.", "Business", AGNEWS),
        ("The appropriate label should be Science and technology.", "World politics", AGNEWS),
        ("To be clear, the answer is not negative.", "negative", SENTIMENT),
        ('The label isn\'t "World politics".', "World politics", AGNEWS),
    ],
)
def test_contradictions_are_detected(text, label, labels):
    assert find_contradiction(text, label, labels=labels) is not None
    assert check_rationale(text, label, labels=labels).reason == "contradiction"


@pytest.mark.parametrize(
    "text, label",
    [
        (GOOD_NEGATIVE, "negative"),
        ("The tone is not positive at all; the answer is negative.", "negative"),  # restates its own label
        ("One might think the true answer might be positive, but the wording is negative.", "negative"),
        ("The correct answer is positively clear: negative.", "negative"),  # 'positively' is not 'positive'
        ("The answer is World politics.", "World politics"),
    ],
)
def test_non_contradictions_are_kept(text, label):
    labels = AGNEWS if label == "World politics" else SENTIMENT
    assert find_contradiction(text, label, labels=labels) is None


def test_injected_label_parser():
    def parse_label(text: str) -> str | None:  # reads only the explicit answer line, like a task parser
        marker = "The answer is:"
        return text.rsplit(marker, 1)[1].strip().rstrip(".") if marker in text else None

    assert find_contradiction("Great movie.\n\nThe answer is: positive", "negative", parse_label=parse_label)
    assert (
        find_contradiction("Bad movie.\n\nThe answer is: Negative.", "negative", parse_label=parse_label)
        is None
    )
    assert find_contradiction("No answer line here.", "negative", parse_label=parse_label) is None
    # Numeric labels: the caller's parser decides equality ("3.40" vs "3.4" differ as strings).
    assert find_contradiction("The answer is: 1.2", "3.4", parse_label=parse_label) is not None


def test_filter_rationales_splits_and_counts():
    rows = [
        {"rationale": GOOD_NEGATIVE, "label": "negative"},  # 0 kept
        {"rationale": "I'm sorry, I cannot do that.", "label": "positive"},  # 1 refusal
        {"rationale": "The correct answer is negative.", "label": "positive"},  # 2 contradiction
        {"rationale": "Uplifting and warm: clearly positive.", "label": "positive"},  # 3 kept
        {"rationale": "As an AI, I note the answer is not positive.", "label": "positive"},  # 4 refusal first
    ]
    result = filter_rationales(
        rows, get_text=lambda r: r["rationale"], get_label=lambda r: r["label"], labels=SENTIMENT
    )
    assert result.kept == [rows[0], rows[3]]
    assert result.dropped_refusal == [rows[1], rows[4]]
    assert result.dropped_contradiction == [rows[2]]
    assert result.counts == {"kept": 2, "dropped_refusal": 2, "dropped_contradiction": 1, "total": 5}
    assert [(i, reason) for i, reason, _ in result.details] == [
        (1, "refusal"),
        (2, "contradiction"),
        (4, "refusal"),
    ]


# ---------------------------------------------------------------------------------------------------------
# Plain-language contradictions (issue 17): the task's label_words, negation, hedges, parts of the text

SST2_WORDS = get_task("sst2").label_words
MNLI_WORDS = get_task("mnli_m").label_words


@pytest.mark.parametrize(
    "text, label, words, matched",
    [
        # the reviewer's case: "positive sentiment" asked for negative
        ('The review expresses a strong and positive sentiment; "joyous" shows delight.', "negative", SST2_WORDS,
         "asserts 'positive'"),
        ("The sentiment here is positive, not negative: the writer calls it a delight.", "negative", SST2_WORDS,
         "asserts 'positive'"),
        ("Although I was asked to argue for negative, the wording expresses a favorable view.", "negative",
         SST2_WORDS, "asserts 'positive'"),
        ("The review is not positive. It calls the jokes stale.", "positive", SST2_WORDS, "denies 'positive'"),
        ("The hypothesis is entailed by the premise: both say the factory closed.", "contradiction", MNLI_WORDS,
         "asserts 'entailment'"),
        ("The hypothesis follows from the premise; playing guitar on stage is performing.", "contradiction",
         MNLI_WORDS, "asserts 'entailment'"),
        ("These two sentences contradict each other.", "neutral", MNLI_WORDS, "asserts 'contradiction'"),
        ("The hypothesis is neither entailed nor contradicted; the relationship is neutral.", "entailment",
         MNLI_WORDS, "asserts 'neutral'"),
    ],
)  # fmt: skip
def test_plain_language_contradictions_are_detected(text, label, words, matched):
    assert find_plain_contradiction(text, label, words).startswith(matched)
    labels = list(words)
    check = check_rationale(text, label, labels=labels, label_words=words)
    assert check.reason == "contradiction" and check.detail.startswith(matched)
    assert check_rationale(text, label, labels=labels).keep  # the rules before issue 17 missed every one


@pytest.mark.parametrize(
    "text, label, words",
    [
        ("The review is not positive at all; every line sneers.", "negative", SST2_WORDS),  # negated other label
        ("Rather than offering a positive assessment, the reviewer shrugs.", "negative", SST2_WORDS),
        ("Nothing about this review is negative; it is a joy.", "positive", SST2_WORDS),
        ("Despite its positive moments, the movie is ultimately a negative experience.", "negative", SST2_WORDS),
        ("At first glance the review may seem negative, but the writer admires it.", "positive", SST2_WORDS),
        ('The word "lovely" carries positive connotations, used here to mock the film.', "negative", SST2_WORDS),
        ('The reviewer mentions "positive vibes" only to mock them.', "negative", SST2_WORDS),  # quoted
        ("The sentiment is favorable, although some words sound negative.", "positive", SST2_WORDS),
        ("There is no doubt the sentiment is negative.", "negative", SST2_WORDS),  # affirming idiom
        ("The premise does not entail the hypothesis; this is a contradiction.", "contradiction", MNLI_WORDS),
        ("One could think the hypothesis is entailed, but they contradict each other.", "contradiction",
         MNLI_WORDS),
        ("The premise neither entails nor contradicts the hypothesis. Neutral.", "neutral", MNLI_WORDS),
        ("This is entailment rather than neutral.", "entailment", MNLI_WORDS),
        ("It may seem that the sentences contradict each other, but both can be true.", "neutral", MNLI_WORDS),
        (GOOD_NEGATIVE, "negative", SST2_WORDS),
    ],
)  # fmt: skip
def test_plain_language_mentions_that_do_not_contradict_are_kept(text, label, words):
    assert find_plain_contradiction(text, label, words) is None
    assert check_rationale(text, label, labels=list(words), label_words=words).keep


def test_label_words_match_whole_words_and_prefixes():
    words = {"entailment": ["entail*", "follows from"], "contradiction": ["contradict*"], "neutral": []}
    assert (
        find_plain_contradiction("The premise ENTAILS it.", "neutral", words)
        == "asserts 'entailment': The premise ENTAILS it"
    )
    # "positively" is not "positive" (no *), and a label is always a word of itself
    assert find_plain_contradiction("It is positively dreadful.", "negative", {"negative": []}) is None
    assert find_plain_contradiction("It is positive.", "negative", {"negative": [], "positive": []})
    # a label of another task spelling (case) is matched case-insensitively by key
    assert (
        find_plain_contradiction("Clearly Neutral.", "Entailment", words)
        == "asserts 'neutral': Clearly Neutral"
    )


def test_filter_rationales_passes_label_words():
    rows = [
        {"t": "The sentiment is positive.", "label": "negative"},
        {"t": "Negative, plainly.", "label": "negative"},
    ]
    result = filter_rationales(
        rows,
        get_text=lambda r: r["t"],
        get_label=lambda r: r["label"],
        labels=SENTIMENT,
        label_words=SST2_WORDS,
    )
    assert result.dropped_contradiction == [rows[0]] and result.kept == [rows[1]]
    assert result.details == [(0, "contradiction", "asserts 'positive': The sentiment is positive")]
