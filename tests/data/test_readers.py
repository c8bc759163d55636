"""Tests for rewardmix.data.readers: formats, bad-row policy, converters, datasets loading, real files."""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmix.data.readers import (
    DataError,
    ReadReport,
    SkippedRow,
    allow_empty,
    as_float,
    as_int,
    as_str,
    chain,
    detect_format,
    in_range,
    load_hf_dataset,
    one_of,
    read_records,
    save_report,
)

SETTINGS = settings(max_examples=50, deadline=None)
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def assert_counts(report: ReadReport) -> None:
    assert report.rows_in == report.rows_out + len(report.skipped)


# ---------------------------------------------------------------------------------------------------------
# Round trips


ROWS = [
    {"text": 'he said "hi", then left', "label": "1"},
    {"text": "tab-free; comma, and 'quotes'", "label": "0"},
    {"text": "ünïcødé ✓", "label": "1"},
]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rows = [{"q": "a", "n": 1, "x": [1, 2]}, {"q": "b", "n": 2.5, "x": None}]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    out, report = read_records(path)
    assert out == rows
    assert (report.rows_in, report.rows_out, report.skipped, report.unit) == (2, 2, [], "line")


def test_csv_round_trip_with_quoted_newline(tmp_path: Path) -> None:
    rows = [*ROWS, {"text": "two\nlines, quoted", "label": "0"}]
    path = tmp_path / "d.csv"
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    out, report = read_records(path)
    assert out == rows
    assert (report.rows_in, report.rows_out) == (4, 4)


def test_tsv_round_trip_with_header_and_literal_quotes(tmp_path: Path) -> None:
    # An unbalanced quote inside a field must stay literal (GLUE files have them).
    rows = [*ROWS, {"text": 'an "unbalanced quote', "label": "1"}, {"text": '"starts" quoted', "label": "0"}]
    text = "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows)
    out, report = read_records(write(tmp_path / "d.tsv", text))
    assert out == rows
    assert report.rows_in == 5


def test_tsv_header_less_with_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "1\tgood film\n0\tbad film\n")
    out, report = read_records(path, has_header=False, columns=["label", "text"])
    assert out == [{"label": "1", "text": "good film"}, {"label": "0", "text": "bad film"}]
    assert report.rows_in == 2


def test_parquet_round_trip(tmp_path: Path) -> None:
    rows = [{"text": "a", "score": 1.5, "label": 1}, {"text": "b", "score": None, "label": 0}]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out, report = read_records(path)
    assert out == rows
    assert (report.rows_in, report.rows_out, report.unit) == (2, 2, "row")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".csv.gz", ".tsv.gz"])
def test_gzip_round_trip(tmp_path: Path, suffix: str) -> None:
    body = {
        ".jsonl.gz": '{"text": "a", "label": "1"}\n{"text": "b", "label": "0"}\n',
        ".csv.gz": "text,label\na,1\nb,0\n",
        ".tsv.gz": "text\tlabel\na\t1\nb\t0\n",
    }[suffix]
    path = write(tmp_path / f"d{suffix}", gzip.compress(body.encode()))
    out, _ = read_records(path)
    assert out == [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}]


def test_crlf_and_bom_are_not_part_of_values(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", b"\xef\xbb\xbftext\tlabel\r\na\t1\r\nb\t0\r\n")
    out, _ = read_records(path)
    assert out == [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}]


def test_explicit_format_overrides_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_records(path)
    out, _ = read_records(path, format="tsv")
    assert out == [{"a": "1", "b": "2"}]


def test_detect_format() -> None:
    assert detect_format("x/train.jsonl") == "jsonl"
    assert detect_format("x/train.JSON") == "jsonl"
    assert detect_format("x/dev.tsv.gz") == "tsv"
    assert detect_format("d.pq") == "parquet"
    with pytest.raises(ValueError, match="gzip-compressed Parquet"):
        detect_format("d.parquet.gz")


def test_blank_lines_count_neither_in_nor_out(tmp_path: Path) -> None:
    # Lines: 1 object, 2 blank, 3 spaces only, 4 object, 5 blank -> 2 rows in, 2 out.
    path = write(tmp_path / "d.jsonl", '{"a": 1}\n\n   \n{"a": 2}\n\n')
    out, report = read_records(path)
    assert out == [{"a": 1}, {"a": 2}]
    assert (report.rows_in, report.rows_out) == (2, 2)


def test_fields_convert_and_keep_other_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "id\ttext\tscore\n7\t  padded  \t4.25\n")
    out, _ = read_records(path, fields={"text": as_str, "score": in_range(0, 5)(as_float)})
    assert out == [{"id": "7", "text": "padded", "score": 4.25}]


# ---------------------------------------------------------------------------------------------------------
# Bad rows: each kind under both policies. Every file has a good row on line 1, the bad row on line 3 (after a
# blank line 2, so the number is a physical line, not a row index) and a good row on line 4.

GOOD_JSON = '{"text": "ok", "label": 1}\n'
BAD_CASES = {
    # name: (suffix, bad line bytes, read kwargs, field at fault, reason fragment)
    "invalid json": (".jsonl", b'{"text": "x", "label":\n', {}, None, "invalid JSON"),
    "non-object json": (".jsonl", b'["text", 1]\n', {}, None, "expected a JSON object, got list"),
    "missing field": (".jsonl", b'{"label": 1}\n', {"fields": {"text": as_str}}, "text", "missing"),
    "null field": (
        ".jsonl",
        b'{"text": null, "label": 1}\n',
        {"fields": {"text": as_str}},
        "text",
        "null value",
    ),
    "empty string": (
        ".jsonl",
        b'{"text": "  ", "label": 1}\n',
        {"fields": {"text": str}},
        "text",
        "empty value",
    ),
    "converter error": (
        ".jsonl",
        b'{"text": "x", "label": "one"}\n',
        {"fields": {"label": as_int}},
        "label",
        "invalid value 'one'",
    ),
    "json NaN": (
        ".jsonl",
        b'{"text": "x", "label": NaN}\n',
        {"fields": {"label": as_float}},
        "label",
        "not a finite number",
    ),
    "one_of": (
        ".jsonl",
        b'{"text": "x", "label": 7}\n',
        {"fields": {"label": one_of([0, 1])}},
        "label",
        "not one of [0, 1]",
    ),
    "bad utf-8": (".jsonl", b'{"text": "caf\xe9", "label": 1}\n', {}, None, "not valid UTF-8"),
    "huge line": (
        ".jsonl",
        b'{"text": "' + b"x" * 100 + b'", "label": 1}\n',
        {"max_line_bytes": 64},
        None,
        "longer than max_line_bytes=64",
    ),
    "tsv column count": (
        ".tsv",
        b"ok\t1\textra\n",
        {"has_header": False, "columns": ["text", "label"]},
        None,
        "expected 2 columns, got 3",
    ),
    "tsv inf": (
        ".tsv",
        b"x\tinf\n",
        {"has_header": False, "columns": ["text", "label"], "fields": {"label": as_float}},
        "label",
        "not a finite number",
    ),
    "tsv bad utf-8": (
        ".tsv",
        b"caf\xe9\t1\n",
        {"has_header": False, "columns": ["text", "label"]},
        None,
        "not valid UTF-8",
    ),
    "csv column count": (
        ".csv",
        b"only-one-column\n",
        {"has_header": False, "columns": ["text", "label"]},
        None,
        "expected 2 columns, got 1",
    ),
    "csv quoting": (".csv", b'"x"y,1\n', {"has_header": False, "columns": ["text", "label"]}, None, "CSV:"),
    "csv bad utf-8": (
        ".csv",
        b"caf\xe9,1\n",
        {"has_header": False, "columns": ["text", "label"]},
        None,
        "not valid UTF-8",
    ),
    "csv huge line": (
        ".csv",
        b"x" * 100 + b",1\n",
        {"has_header": False, "columns": ["text", "label"], "max_line_bytes": 64},
        None,
        "longer than",
    ),
    "csv nan": (
        ".csv",
        b"x,nan\n",
        {"has_header": False, "columns": ["text", "label"], "fields": {"label": as_float}},
        "label",
        "not a finite number",
    ),
    # Issue 17: JSON that Python's json accepts or chokes on, each a bad row at its line.
    "json duplicate key": (
        ".jsonl",
        b'{"text": "x", "label": 1, "label": 0}\n',
        {},
        None,
        "duplicate key 'label'",
    ),
    "json duplicate nested key": (
        ".jsonl",
        b'{"text": "x", "meta": {"chosen": "a", "rejected": "b", "chosen": "b"}}\n',
        {},
        None,
        "duplicate key 'chosen'",
    ),
    "json huge integer": (
        ".jsonl",
        b'{"text": "x", "label": ' + b"9" * 5000 + b"}\n",
        {},
        "label",
        "integer of 5000 digits",
    ),
    "json deep nesting": (
        ".jsonl",
        b'{"text": "x", "label": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
        {},
        None,
        "nested deeper than",
    ),
    "json moderately deep nesting": (
        ".jsonl",
        b'{"text": "x", "label": ' + b"[" * 200 + b"]" * 200 + b"}\n",
        {},
        None,
        "nested deeper than",
    ),
    "json lone surrogate": (
        ".jsonl",
        b'{"text": "bad \\ud800 half", "label": 1}\n',
        {},
        "text",
        "lone surrogate '\\ud800'",
    ),
    "json lone surrogate in a key": (
        ".jsonl",
        b'{"text": "x", "\\udc00": 1}\n',
        {},
        None,
        "lone surrogate '\\udc00' in a key",
    ),
    "json NaN unconverted": (".jsonl", b'{"text": "x", "label": NaN}\n', {}, "label", "not a finite number"),
    "json Infinity nested": (
        ".jsonl",
        b'{"text": "x", "scores": [1, -Infinity]}\n',
        {},
        "scores",
        "not a finite number: -Infinity",
    ),
    "json float overflow": (
        ".jsonl",
        b'{"text": "x", "label": 1e999}\n',
        {},
        "label",
        "not a finite number: 1e999",
    ),
    "csv range": (
        ".csv",
        b"x,5.5\n",
        {"has_header": False, "columns": ["text", "label"], "fields": {"label": in_range(0, 5)(as_float)}},
        "label",
        "5.5 not in [0, 5]",
    ),
}


def bad_case_file(tmp_path: Path, name: str) -> tuple[Path, dict, str | None, str]:
    suffix, bad_line, kwargs, field, reason = BAD_CASES[name]
    good = GOOD_JSON.encode() if suffix == ".jsonl" else (b"ok\t1\n" if suffix == ".tsv" else b"ok,1\n")
    path = write(tmp_path / f"case{suffix}", good + b"\n" + bad_line + good)
    return path, kwargs, field, reason


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_row_error_policy_names_file_line_field(tmp_path: Path, name: str) -> None:
    path, kwargs, field, reason = bad_case_file(tmp_path, name)
    at_field = f" field '{field}':" if field else ""
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:3:{at_field} ")) as info:
        read_records(path, on_bad_row="error", **kwargs)
    assert reason in str(info.value)


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_row_skip_policy_counts_and_reports(tmp_path: Path, name: str) -> None:
    path, kwargs, field, reason = bad_case_file(tmp_path, name)
    out, report = read_records(path, on_bad_row="skip", **kwargs)
    assert len(out) == 2  # lines 1 and 4
    assert (report.rows_in, report.rows_out) == (3, 2)
    assert [(s.line, s.field) for s in report.skipped] == [(3, field)]
    assert reason in report.skipped[0].reason
    assert_counts(report)


def test_json_valid_unicode_and_numbers_still_read(tmp_path: Path) -> None:
    """Emoji, surrogate pairs written as escapes, big-but-fine integers and moderate nesting are kept."""
    lines = [
        '{"text": "smile \U0001f600 ok", "n": 1}',
        '{"text": "pair \\ud83d\\ude00 escaped", "n": -2.5e10}',
        '{"text": "big", "n": ' + "9" * 4000 + "}",
        '{"text": "nested", "n": ' + "[" * 50 + "]" * 50 + ', "m": {"a": {"b": 1}}}',
    ]
    path = write(tmp_path / "ok.jsonl", "\n".join(lines) + "\n")
    rows, report = read_records(path)
    assert [r["text"] for r in rows] == ["smile \U0001f600 ok", "pair \U0001f600 escaped", "big", "nested"]
    assert rows[2]["n"] == int("9" * 4000)
    assert (report.rows_in, report.rows_out, report.skipped) == (4, 4, [])
    json.dumps(rows[1], ensure_ascii=False).encode("utf-8")  # valid Unicode all the way


def test_json_duplicate_keys_in_rows_are_counted_skips(tmp_path: Path) -> None:
    """A label given twice is a bad row, never a silently flipped label (issue 17)."""
    path = write(
        tmp_path / "d.jsonl",
        '{"chosen": "a", "rejected": "b"}\n{"chosen": "a", "rejected": "b", "chosen": "b"}\n'
        '{"chosen": "c", "rejected": "d", "meta": {"k": 1, "k": 2}}\n',
    )
    rows, report = read_records(path, on_bad_row="skip")
    assert rows == [{"chosen": "a", "rejected": "b"}]
    assert [(s.line, s.reason) for s in report.skipped] == [
        (2, "duplicate key 'chosen'"),
        (3, "duplicate key 'k'"),
    ]
    assert_counts(report)


def test_bad_line_does_not_lose_the_rest_of_the_file(tmp_path: Path) -> None:
    # A bad byte and an over-long line in the middle; every other line is still read.
    lines = [
        b'{"i": 1}\n',
        b'{"i": "\xff\xfe"}\n',
        b'{"i": 3, "pad": "' + b"y" * 200 + b'"}\n',
        b'{"i": 4}\n',
    ]
    path = write(tmp_path / "d.jsonl", b"".join(lines))
    out, report = read_records(path, on_bad_row="skip", max_line_bytes=100)
    assert out == [{"i": 1}, {"i": 4}]
    assert [s.line for s in report.skipped] == [2, 3]


def test_max_line_bytes_boundary(tmp_path: Path) -> None:
    # '{"t": "xxxx"}' is 13 bytes: accepted at max_line_bytes=13 (the newline is not counted), refused at 12.
    path = write(tmp_path / "d.jsonl", '{"t": "xxxx"}\n{"t": "xxxx"}')
    out, _ = read_records(path, max_line_bytes=13)
    assert len(out) == 2
    _, report = read_records(path, max_line_bytes=12, on_bad_row="skip")
    assert [s.line for s in report.skipped] == [1, 2]


def test_csv_bad_row_after_multiline_record_reports_its_starting_line(tmp_path: Path) -> None:
    # Line 1 header, lines 2-4 one record with a quoted field spanning 3 lines, line 5 a record with 3 columns.
    path = write(tmp_path / "d.csv", 'text,label\n"a\nb\nc",1\nx,1,2\n"d",0\n')
    out, report = read_records(path, on_bad_row="skip")
    assert out == [{"text": "a\nb\nc", "label": "1"}, {"text": "d", "label": "0"}]
    assert report.skipped == [SkippedRow(line=5, field=None, reason="expected 2 columns, got 3")]


def test_csv_unterminated_quote_is_one_bad_row_at_its_start(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\nok,1\n"open,1\nmore,0\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:3: CSV: unexpected end of data")):
        read_records(path)


def test_parquet_bad_row_says_row(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"score": 1.0}, {"score": float("nan")}, {"score": 2.0}]), path)
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:row 2: field 'score': ")):
        read_records(path, fields={"score": as_float})
    out, report = read_records(path, fields={"score": as_float}, on_bad_row="skip")
    assert out == [{"score": 1.0}, {"score": 2.0}]
    assert [(s.line, s.field) for s in report.skipped] == [(2, "score")]


def test_skip_logs_twenty_warnings_then_a_summary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "d.jsonl", "not json\n" * 25 + '{"a": 1}\n')
    with caplog.at_level(logging.WARNING, logger="rewardmix.data.readers"):
        out, report = read_records(path, on_bad_row="skip")
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("skipping bad row:") for m in messages) == 20
    assert f"{path}:20: invalid JSON" in messages[19]
    assert "skipped 25 bad rows of 26 (5 not logged" in messages[-1]
    assert len(report.skipped) == 25 and out == [{"a": 1}]


def test_file_level_problems_raise_under_skip_too(tmp_path: Path) -> None:
    dup = write(tmp_path / "dup.tsv", "a\ta\n1\t2\n")
    with pytest.raises(DataError, match=re.escape(f"{dup}:1: duplicate column names in the header: ['a']")):
        read_records(dup, on_bad_row="skip")
    tsv = write(tmp_path / "d.tsv", "text\tlabel\nx\t1\n")
    with pytest.raises(DataError, match="field 'score': not among the columns"):
        read_records(tsv, fields={"score": as_float}, on_bad_row="skip")
    array = write(tmp_path / "d.json", '[{"a": 1}]\n')
    with pytest.raises(DataError, match="JSON array, not JSON lines"):
        read_records(array, on_bad_row="skip")
    not_parquet = write(tmp_path / "d.parquet", b"definitely not parquet")
    with pytest.raises(DataError, match="cannot read Parquet"):
        read_records(not_parquet, on_bad_row="skip")


def test_argument_errors(tmp_path: Path) -> None:
    tsv = write(tmp_path / "d.tsv", "a\tb\n")
    with pytest.raises(ValueError, match="pass has_header=False"):
        read_records(tsv, columns=["a", "b"])
    with pytest.raises(ValueError, match="needs columns="):
        read_records(tsv, has_header=False)
    with pytest.raises(ValueError, match="on_bad_row"):
        read_records(tsv, on_bad_row="ignore")  # type: ignore[arg-type]
    jsonl = write(tmp_path / "d.jsonl", "{}\n")
    with pytest.raises(ValueError, match="CSV/TSV only"):
        read_records(jsonl, columns=["a"], has_header=False)


def test_empty_file_reads_zero_rows(tmp_path: Path) -> None:
    out, report = read_records(write(tmp_path / "d.csv", ""))
    assert out == [] and (report.rows_in, report.rows_out) == (0, 0)


# ---------------------------------------------------------------------------------------------------------
# Converters


def test_converters() -> None:
    assert as_str("  hi ") == "hi"
    with pytest.raises(ValueError):
        as_str("   ")
    with pytest.raises(TypeError):
        as_str(3)
    assert as_float(" 2.5 ") == 2.5 and as_float(3) == 3.0
    for bad in ("nan", "inf", float("-inf"), True, [1.0]):
        with pytest.raises((ValueError, TypeError)):
            as_float(bad)
    assert as_int("4") == 4 and as_int(4.0) == 4
    for bad in ("4.5", 4.5, float("nan"), False):
        with pytest.raises((ValueError, TypeError)):
            as_int(bad)
    assert one_of(["0", "1"])(" 1 ") == "1"
    with pytest.raises(ValueError, match="not one of"):
        one_of([0, 1])(True)  # True == 1 in Python, but a bool is not the label 1
    assert chain(as_int, one_of([0, 1]))("1") == 1
    assert chain(as_float, in_range(0, 5))("5") == 5.0  # bounds are inclusive
    with pytest.raises(ValueError, match=r"-0.5 not in \[0, 5\]"):
        in_range(0, 5)(as_float)("-0.5")


def test_allow_empty_lets_the_converter_see_blank_values(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "", "note": null}\n')
    out, _ = read_records(path, fields={"text": allow_empty(str), "note": allow_empty(lambda v: v or "-")})
    assert out == [{"text": "", "note": "-"}]


# ---------------------------------------------------------------------------------------------------------
# Property: random mixes of good and bad JSONL lines.

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)
_good = st.builds(lambda t, y: ("good", {"text": t, "label": y}), _text, st.integers(0, 1))
_bad = st.sampled_from(
    [
        ("bad", b"{not json"),
        ("bad", b"[1, 2]"),
        ("bad", b'{"label": 1}'),  # missing text
        ("bad", b'{"text": "", "label": 0}'),  # empty text
        ("bad", b'{"text": "x", "label": 2}'),  # label out of the set
        ("bad", b'{"text": "\xc3\x28", "label": 0}'),  # invalid UTF-8
        ("blank", b""),
        ("blank", b"  \t"),
    ]
)


@SETTINGS
@given(st.lists(st.one_of(_good, _bad), max_size=30))
def test_property_good_rows_kept_in_order_bad_lines_reported(tmp_path_factory, items) -> None:
    lines = [json.dumps(v, ensure_ascii=False).encode() if kind == "good" else v for kind, v in items]
    path = write(tmp_path_factory.mktemp("p") / "d.jsonl", b"".join(line + b"\n" for line in lines))
    fields = {"text": as_str, "label": one_of([0, 1])}
    out, report = read_records(path, fields=fields, on_bad_row="skip")

    expected = [{"text": v["text"].strip(), "label": v["label"]} for kind, v in items if kind == "good"]
    bad_lines = [i + 1 for i, (kind, _) in enumerate(items) if kind == "bad"]
    assert out == expected
    assert [s.line for s in report.skipped] == bad_lines
    assert report.rows_in == len(expected) + len(bad_lines)  # blank lines are neither in nor out
    assert_counts(report)
    if bad_lines:
        with pytest.raises(DataError, match=f"^{re.escape(str(path))}:{bad_lines[0]}: "):
            read_records(path, fields=fields)


# ---------------------------------------------------------------------------------------------------------
# save_report


def test_save_report_single_and_list(tmp_path: Path) -> None:
    a = ReadReport("a.jsonl", 3, 2, [SkippedRow(2, "text", "empty value")])
    b = ReadReport("b.parquet", 5, 5, [], unit="row")
    save_report(a, tmp_path / "one.json")
    assert json.loads((tmp_path / "one.json").read_text()) == {
        "source": "a.jsonl",
        "unit": "line",
        "rows_in": 3,
        "rows_out": 2,
        "n_skipped": 1,
        "skipped": [{"line": 2, "field": "text", "reason": "empty value"}],
    }
    save_report([a, b], tmp_path / "sub" / "all.json")
    saved = json.loads((tmp_path / "sub" / "all.json").read_text())
    assert saved["total"] == {"rows_in": 8, "rows_out": 7, "n_skipped": 1}  # 3+5, 2+5, 1+0
    assert [r["source"] for r in saved["reports"]] == ["a.jsonl", "b.parquet"]


# ---------------------------------------------------------------------------------------------------------
# datasets.load_dataset, offline


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    # datasets reads the variables at import time; the test may run after another import.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


def test_load_hf_dataset_json_with_bad_rows(tmp_path: Path, hf_offline: None) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"text": "a", "label": 1}\n{"text": "", "label": 0}\n{"text": "c", "label": 0}\n',
    )
    kwargs = {"data_files": str(path), "cache_dir": str(tmp_path / "cache")}
    fields = {"text": as_str, "label": one_of([0, 1])}
    with pytest.raises(DataError, match=r"^json\[train\]:row 2: field 'text': empty value"):
        load_hf_dataset("json", fields=fields, **kwargs)
    out, report = load_hf_dataset("json", fields=fields, on_bad_row="skip", **kwargs)
    assert out == [{"text": "a", "label": 1}, {"text": "c", "label": 0}]
    assert (report.rows_in, report.rows_out, report.unit) == (3, 2, "row")
    assert report.skipped == [SkippedRow(2, "text", "empty value")]


def test_load_hf_dataset_single_local_csv_file(tmp_path: Path, hf_offline: None) -> None:
    path = write(tmp_path / "d.csv", "text,score\na,1.5\nb,4\n")
    out, report = load_hf_dataset(path, fields={"score": as_float}, cache_dir=str(tmp_path / "cache"))
    assert out == [{"text": "a", "score": 1.5}, {"text": "b", "score": 4.0}]
    assert report.source == f"{path}[train]"


# ---------------------------------------------------------------------------------------------------------
# Real files in ../shared/data


def shared(rel: str) -> Path:
    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data ships with the project workspace, not with a clone)")
    return path


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)  # what `wc -l` counts for files ending in a newline


@pytest.mark.parametrize("rel", ["sst2/train.tsv", "mrpc/train.tsv"])
def test_glue_tsv_one_row_per_line(rel: str) -> None:
    path = shared(rel)
    has_header = rel.startswith("sst2")
    kwargs = {} if has_header else {"has_header": False, "columns": ["label", "id1", "id2", "s1", "s2"]}
    rows, report = read_records(path, **kwargs)
    assert report.rows_in == report.rows_out == count_lines(path) - int(has_header)
    assert not report.skipped


def test_real_sst2_dev() -> None:
    rows, report = read_records(
        shared("sst2/dev.tsv"), fields={"sentence": as_str, "label": chain(as_int, one_of([0, 1]))}
    )
    assert report.rows_out == 6735 and not report.skipped
    assert {r["label"] for r in rows} == {0, 1}


def test_real_agnews_dev() -> None:
    rows, report = read_records(
        shared("agnews/dev.tsv"),
        has_header=False,
        columns=["text", "label"],
        fields={"text": as_str, "label": one_of(["World", "Sports", "Business", "Sci/Tech"])},
    )
    # The data README says 10,000 rows; the file has 10,001 lines, each a labelled row (none is a header).
    assert report.rows_out == 10_001 and not report.skipped
    assert {r["label"] for r in rows} == {"World", "Sports", "Business", "Sci/Tech"}


def test_real_mrpc_dev() -> None:
    rows, report = read_records(
        shared("mrpc/dev.tsv"),
        has_header=False,
        columns=["label", "id1", "id2", "sentence1", "sentence2"],
        fields={"label": chain(as_int, one_of([0, 1])), "sentence1": as_str, "sentence2": as_str},
    )
    assert report.rows_out == 1500 and not report.skipped
    assert sum(r["label"] for r in rows) == 1000  # `cut -f1 | sort | uniq -c`: 1000 ones, 500 zeros


STSB_COLUMNS = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]


def test_real_stsb_dev() -> None:
    # The data README says "GLUE TSV with header", but the file has no header line: its first line is data
    # (index 4, score 4.250). It has GLUE's 10 columns.
    path = shared("stsb/dev.tsv")
    first = path.read_text(encoding="utf-8").split("\n", 1)[0].split("\t")
    assert first[0] == "4" and len(first) == 10
    rows, report = read_records(
        path,
        has_header=False,
        columns=STSB_COLUMNS,
        fields={"sentence1": as_str, "sentence2": as_str, "score": in_range(0, 5)(as_float)},
    )
    assert report.rows_out == 1500 and not report.skipped
    assert min(r["score"] for r in rows) == 0.0 and max(r["score"] for r in rows) == 5.0


def test_real_gsm8k_train() -> None:
    rows, report = read_records(shared("gsm8k/train.jsonl"), fields={"question": as_str, "answer": as_str})
    assert report.rows_out == 7473 and not report.skipped
    finals = [r["answer"].rsplit("\n#### ", 1)[-1] for r in rows]  # the final line is "#### N"
    assert all(math.isfinite(float(f.replace(",", ""))) for f in finals)  # "1,600" style thousands
    assert finals[0] == "72"  # Natalia: 48 + 48/2 = 72


def test_load_hf_dataset_local_tsv_keeps_quotes_literal(tmp_path: Path, hf_offline: None) -> None:
    # A field that starts with a quote: CSV quoting rules would read '"hi" she said' as 'hi she said'.
    path = write(tmp_path / "d.tsv", 'sentence\tlabel\n"hi" she said\t1\nan "unbalanced quote\t0\n')
    out, report = load_hf_dataset(path, cache_dir=str(tmp_path / "cache"))
    assert out == [
        {"sentence": '"hi" she said', "label": 1},
        {"sentence": 'an "unbalanced quote', "label": 0},
    ]
    assert report.rows_in == 2
