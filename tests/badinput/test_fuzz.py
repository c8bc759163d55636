"""Property-based fuzzing of what reads user input: the readers, the label parser, config loading (issue 9).

- ``read_records`` on random bytes, random JSON lines and CSV with random quoting: the only exception is
  ``DataError``; under ``on_bad_row="skip"`` every non-blank line is a row in, and rows out + skipped = rows in.
- ``parse_label`` on random text never raises and returns a label of the task (or a number on its scale) or
  nothing; a label written as "The answer is: X" after any rationale is always found.
- ``load_config`` of a random YAML mapping (built from the real config keys of every stage, with random values
  and stray keys) is a valid config or a ``ConfigError``, never another exception; so is random YAML text.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import types
import typing
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rewardmix.config import ConfigError, load_config, load_yaml
from rewardmix.data.readers import DataError, as_str, read_records
from rewardmix.data.tasks import get_task, parse_label, task_names
from rewardmix.stages import STAGES

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MAX_LINE = 64  # small, so random data also exercises the over-long-line path


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def expected_jsonl_rows(data: bytes, max_line: int) -> int:
    """Rows a JSONL reader must count: every physical line except the blank ones (a reference model)."""
    rows = 0
    for number, raw in enumerate(data.split(b"\n")[: data.count(b"\n") + (not data.endswith(b"\n"))], 1):
        if len(raw) > max_line:
            rows += 1  # over-long: a bad row, whatever it holds
            continue
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = (raw + b"\n").decode("utf-8")
        except UnicodeDecodeError:
            rows += 1  # not UTF-8: a bad row
            continue
        rows += bool(text.strip())
    return rows


# ---------------------------------------------------------------------------------------------------------
# Readers

# Bytes that make JSON-ish lines: structure characters, quotes, escapes, UTF-8 and non-UTF-8 bytes, newlines.
_jsonish_bytes = st.lists(
    st.one_of(
        st.sampled_from([b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\", b"\n", b"\r\n", b" ", b"\t"]),
        st.sampled_from([b'"text"', b'"a"', b"1", b"-0.5", b"null", b"true", b"NaN", b"\xef\xbb\xbf"]),
        st.sampled_from([b"\xc3\xa9", b"\xe9", b"\xff\xfe", b"\x00", b"\xe2\x80\xa8", b"\x1c"]),
        st.binary(max_size=8),
    ),
    max_size=60,
).map(b"".join)


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), _jsonish_bytes), policy=st.sampled_from(["error", "skip"]))
def test_random_bytes_as_jsonl(tmp_path, data, policy):
    path = write(tmp_path, "fuzz.jsonl", data)
    fields = {"text": as_str}
    try:
        rows, report = read_records(path, fields=fields, on_bad_row=policy, max_line_bytes=MAX_LINE)
    except DataError:
        assert policy == "error"  # under skip, nothing in a JSONL file is an error of the whole file
        return
    assert report.rows_in == report.rows_out + len(report.skipped) == expected_jsonl_rows(data, MAX_LINE)
    assert len(rows) == report.rows_out
    assert all(isinstance(r["text"], str) and r["text"] == r["text"].strip() and r["text"] for r in rows)
    if policy == "error":
        assert not report.skipped


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_records = st.one_of(
    st.fixed_dictionaries(
        {"text": st.one_of(st.text(max_size=20), _json_values)}, optional={"x": _json_values}
    ),
    _json_values,
)


@FUZZ
@given(values=st.lists(_records, max_size=20), blank_every=st.integers(0, 4))
def test_random_json_lines_are_kept_or_counted(tmp_path, values, blank_every):
    lines = [json.dumps(v) for v in values]  # NaN/inf become the NaN/Infinity literals Python accepts
    if blank_every:
        lines = [
            ln for i, line in enumerate(lines) for ln in ([line, "  "] if i % blank_every == 0 else [line])
        ]
    path = write(tmp_path, "fuzz.jsonl", "".join(ln + "\n" for ln in lines).encode())
    rows, report = read_records(path, fields={"text": as_str}, on_bad_row="skip")
    good = [v for v in values if isinstance(v, dict) and isinstance(v.get("text"), str) and v["text"].strip()]
    assert report.rows_in == len(values) == report.rows_out + len(report.skipped)
    assert [r["text"] for r in rows] == [v["text"].strip() for v in good]  # kept in file order, converted
    assert report.rows_out == len(good)


_cell = st.text(alphabet=st.sampled_from(list("ab ,\"\n\r\t'\\;é")), max_size=8)
_quoting = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])


@FUZZ
@given(
    table=st.lists(st.lists(_cell, min_size=3, max_size=3), max_size=12),
    quoting=_quoting,
    damage=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(['"', "\n", ",", "\r", '""'])), max_size=3
    ),
)
def test_csv_with_random_quoting(tmp_path, table, quoting, damage):
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=quoting)  # "\r\n" lines: the writer quotes cells holding \r or \n
    writer.writerow(["a", "b", "c"])
    writer.writerows(table)
    text = buffer.getvalue()
    header_end = text.index("\n") + 1
    for position, piece in damage:  # corrupt the body: stray quotes, separators and line breaks
        at = header_end + position % (len(text) - header_end + 1)
        text = text[:at] + piece + text[at:]
    path = write(tmp_path, "fuzz.csv", text.encode())
    rows, report = read_records(path, on_bad_row="skip")  # a damaged body never fails the whole file
    assert report.rows_in == report.rows_out + len(report.skipped) == len(rows) + len(report.skipped)
    assert all(set(r) == {"a", "b", "c"} for r in rows)
    if not damage:
        # undamaged, every written row reads back exactly (multi-line quoted cells included)
        assert not report.skipped
        assert [[r["a"], r["b"], r["c"]] for r in rows] == table


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), _jsonish_bytes), fmt=st.sampled_from(["csv", "tsv"]))
def test_random_bytes_as_csv_or_tsv(tmp_path, data, fmt):
    path = write(tmp_path, f"fuzz.{fmt}", b"a,b\n" if fmt == "csv" else b"a\tb\n")
    path.write_bytes(path.read_bytes() + data)
    # The header is fixed and valid, so nothing after it may fail the whole file under skip.
    rows, report = read_records(path, on_bad_row="skip", max_line_bytes=MAX_LINE)
    assert report.rows_in == report.rows_out + len(report.skipped) == len(rows) + len(report.skipped)


# ---------------------------------------------------------------------------------------------------------
# The label parser

TASKS = [get_task(name) for name in task_names()]


def _is_known(spec, parsed) -> bool:
    if not parsed.ok:
        return parsed.label is None and bool(parsed.reason)
    if spec.scale is not None:
        value = parsed.label
        return isinstance(value, int | float) and spec.scale.min <= value <= spec.scale.max
    return parsed.label in spec.labels


@settings(max_examples=150, deadline=None)
@given(spec=st.sampled_from(TASKS), text=st.text(max_size=200))
def test_parse_label_on_random_text(spec, text):
    assert _is_known(spec, parse_label(spec, text))


@settings(max_examples=100, deadline=None)
@given(
    spec=st.sampled_from(TASKS),
    text=st.text(alphabet=st.sampled_from(list("The answer is:*_`\"' \n.,-0123456789")), max_size=80),
    label_words=st.booleans(),
)
def test_parse_label_on_marker_soup(spec, text, label_words):
    """Text made of the marker's own pieces (and the labels) still never raises or invents a label."""
    if label_words and spec.labels:
        text = " ".join([text, *spec.labels, text])
    assert _is_known(spec, parse_label(spec, text))


@settings(max_examples=150, deadline=None)
@given(
    spec=st.sampled_from(TASKS),
    rationale=st.text(max_size=120),
    style=st.sampled_from(["{}", "{} .", "**{}**", '"{}"', "{}!", "`{}`", " {} \n", "{}, as argued."]),
    case=st.sampled_from([str, str.upper, str.lower, str.title]),
    data=st.data(),
)
def test_embedded_label_is_always_found(spec, rationale, style, case, data):
    if spec.scale is not None:
        if spec.scale.kind == "int":
            gold = data.draw(st.integers(int(spec.scale.min), int(spec.scale.max)))
        else:
            gold = round(data.draw(st.floats(spec.scale.min, spec.scale.max)), 3)
        written = str(gold)
    else:
        gold = data.draw(st.sampled_from(spec.labels))
        written = case(gold)
    answer = f"{rationale}\n\nThe answer is: {style.format(written)}"
    parsed = parse_label(spec, answer)
    assert parsed.ok, (answer, parsed.reason)
    assert parsed.label == gold


# ---------------------------------------------------------------------------------------------------------
# Config loading

CONFIGS = {stage.name: stage.load().Config for stage in STAGES}
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "error", "skip", "openai", "local", "1e-5", "nan", "tiny", "[1, 2]", "{a: 1}"]),
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def _field_types(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def typed_values(tp, depth: int = 0) -> st.SearchStrategy:
    """Values of the field's own type (edge values included), so that fuzzing reaches the deeper checks."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-3, 10**4)
    if tp is float:
        return st.floats(-10.0, 1e4) | st.sampled_from([0.0, 1.0, -1.0, math.nan, math.inf])
    if tp is str or (isinstance(tp, type) and issubclass(tp, Path)):
        return st.text(max_size=12) | st.sampled_from(["", "tiny", "builtin:toy", "runs/x"])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([st.none() if a is type(None) else typed_values(a, depth) for a in args])
    if origin in (list, tuple) and depth < 2:
        item = args[0] if args else typing.Any
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return st.tuples(*(typed_values(a, depth + 1) for a in args)).map(list)
        return st.lists(typed_values(item, depth + 1), max_size=3)
    if origin is dict and depth < 2:
        return st.dictionaries(st.text(max_size=6), typed_values(args[1], depth + 1), max_size=3)
    if dataclasses.is_dataclass(tp) and depth < 3:
        return config_mappings(tp, depth + 1)
    return _values


@st.composite
def config_mappings(draw, cls, depth=0):
    """A mapping over the real keys of ``cls`` (random subset): mostly values of the right type (edge values
    included), sometimes any value, sometimes a stray key."""
    out = {}
    for name, tp in _field_types(cls).items():
        if not draw(st.booleans()):
            continue
        out[name] = draw(typed_values(tp, depth) if draw(st.integers(0, 5)) else _values)
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.text(min_size=1, max_size=8))] = draw(_values)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), stage=st.sampled_from(sorted(CONFIGS)))
def test_random_config_mapping_is_valid_or_a_config_error(tmp_path, data, stage):
    cls = CONFIGS[stage]
    mapping = data.draw(config_mappings(cls))
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump({"stage": stage, **mapping}, allow_unicode=True), encoding="utf-8")
    try:
        cfg = load_config(cls, path, stage=stage)
    except ConfigError as e:
        assert str(e)  # a message, naming the file (or an override) where the problem is
        assert str(path) in str(e) or "override" in str(e)
        return
    assert isinstance(cfg, cls)
    # what was accepted is finite: .nan/.inf never slip into a float field, however deep
    assert all(math.isfinite(x) for x in _floats(cfg)), cfg


def _floats(value):
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _floats(getattr(value, f.name))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _floats(v)
    elif isinstance(value, float):
        yield value


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(
        st.sampled_from(
            [*"stage: sft\n- {}[]'\"&*!|>%@`#,?\t\\é", "seed", "optim", "learning_rate", ": ", "  "]
        ),
        max_size=40,
    ).map("".join)
)
def test_random_yaml_text_is_a_mapping_or_a_config_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        data = load_yaml(path)
    except ConfigError as e:
        assert str(path) in str(e)
        return
    assert isinstance(data, dict)
    assume(data.get("stage") in CONFIGS)
    try:
        load_config(CONFIGS[data["stage"]], path, stage=data["stage"])
    except ConfigError:
        pass


def _float_fields(cls, prefix=()):
    """Dotted paths of every float field (``float`` or ``float | None``) reachable through nested sections."""
    for name, tp in _field_types(cls).items():
        args = typing.get_args(tp)
        if tp is float or (float in args and type(None) in args and len(args) == 2):
            yield (*prefix, name)
        elif dataclasses.is_dataclass(tp):
            yield from _float_fields(tp, (*prefix, name))


FLOAT_FIELDS = [(stage, path) for stage, cls in sorted(CONFIGS.items()) for path in _float_fields(cls)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    where=st.sampled_from(FLOAT_FIELDS),
    value=st.sampled_from([".nan", ".inf", "-.inf", ".NaN", "nan", "-inf"]),
)
def test_non_finite_float_is_refused_in_every_float_field(tmp_path, where, value):
    stage, path = where
    text = f"stage: {stage}\n" + "".join(f"{'  ' * i}{key}:\n" for i, key in enumerate(path[:-1]))
    text += f"{'  ' * (len(path) - 1)}{path[-1]}: {value}\n"
    config = tmp_path / "fuzz.yaml"
    config.write_text(text, encoding="utf-8")
    try:
        load_config(CONFIGS[stage], config, stage=stage)
    except ConfigError as e:
        assert ".".join(path) in str(e) or "finite" in str(e), str(e)
    else:
        raise AssertionError(f"{stage}: {'.'.join(path)}: {value} was accepted")
