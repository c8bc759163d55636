"""Readers for JSONL, CSV, TSV, Parquet and ``datasets.load_dataset``, with a bad-row policy.

Every reader returns ``(rows, report)``: ``rows`` is a list of dicts and ``report`` a :class:`ReadReport` that
counts the data rows seen (``rows_in``) and returned (``rows_out``) and lists every skipped row with its
position, field and reason, so that ``rows_in == rows_out + len(skipped)`` always holds and nothing is
dropped silently. Positions are 1-based: the physical line where a row starts for JSONL/CSV/TSV, the row
index ("row N") for Parquet and ``datasets``.

A bad row is one of: invalid JSON, a JSON value that is not an object, JSON that Python's ``json`` would let
through or choke on (a key given twice in any object, ``NaN``/``Infinity`` or a number too big for a float, an
integer over 4300 digits, nesting deeper than 100 levels, a lone surrogate such as ``"\\ud800"``), a wrong
number of columns, a line that is not UTF-8, a line longer than ``max_line_bytes``, a CSV quoting error, a
required field (a key of ``fields``) that is missing, null or blank, a value its converter rejects
(``ValueError``/``TypeError``), or a row the ``check`` hook rejects (a cross-field rule, e.g. "the wrong label differs from the gold label";
raise :class:`RowError` to name the field).
Under ``on_bad_row="error"`` the first one raises :class:`DataError` (``"file:line: field 'x': reason"``);
under ``"skip"`` it is counted, logged (one warning each for the first 20, then a summary) and skipped.

Problems with the file as a whole (unreadable, no such column as a required field, duplicate header names,
a ``.json`` file holding one JSON array) raise :class:`DataError` under either policy: skipping every row
would hide them.

Blank lines (empty, or only whitespace in JSONL) are neither data rows in nor out: they are not counted.

Hub datasets: wherever a config names a data file, a string starting with ``hf:`` names a Hugging Face dataset
instead (:func:`parse_hub_source`), read through ``datasets.load_dataset`` by :func:`read_records`:

- ``hf:<dataset id>:<split>`` or ``hf:<dataset id>:<config>:<split>``, e.g. ``hf:nyu-mll/glue:sst2:validation``
  (the split may carry a slice: ``hf:fancyzhx/ag_news:train[:5000]``);
- ``hf://datasets/<dataset id>/<file>``: one JSON/JSONL/CSV/TSV/Parquet file of a dataset repository, for
  repositories that ``load_dataset`` cannot build by id (e.g. ``hf://datasets/tatsu-lab/alpaca_eval/
  alpaca_eval.json``, a repository with a loading script).

Reference: SPEC §1 "Loaders for JSONL, CSV/TSV, Parquet and ``datasets.load_dataset``".
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from rewardmix.rundir import atomic_write_text

__all__ = [
    "BadRowPolicy",
    "DataError",
    "ExpectedSkip",
    "Format",
    "ReadReport",
    "RowError",
    "SkippedRow",
    "allow_empty",
    "as_float",
    "as_int",
    "as_str",
    "chain",
    "decode_json_row",
    "HubSource",
    "detect_format",
    "in_range",
    "is_hub_source",
    "load_hf_dataset",
    "load_hub_source",
    "one_of",
    "parse_hub_source",
    "read_converted",
    "read_records",
    "save_report",
]

logger = logging.getLogger(__name__)

BadRowPolicy = Literal["error", "skip"]
Format = Literal["auto", "jsonl", "csv", "tsv", "parquet"]
Converter = Callable[[Any], Any]

DEFAULT_MAX_LINE_BYTES = 1 << 20
"""Longest accepted physical line (bytes, without its line break): 1 MiB."""

MAX_LOGGED_SKIPS = 20
"""Bad rows logged one by one under ``on_bad_row="skip"``; the rest only in the summary and the report."""

_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """Bad input data; the message starts with ``"file:line: field 'x': ..."`` (or ``"file:row N: ..."``)."""


class RowError(ValueError):
    """Raised by a ``check`` hook of :func:`read_records` to reject a row, naming the field at fault."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field


def read_converted(
    path: str | Path,
    fmt: str,
    *,
    detect: Callable[[dict[str, Any]], str],
    convert: Callable[[dict[str, Any], str], Any],
    detect_errors: tuple[type[Exception], ...],
    on_bad_row: BadRowPolicy = "error",
) -> tuple[list[dict[str, Any]], ReadReport, str]:
    """Read rows that must convert to one row format: a row that does not is a bad row at its line.

    The format is ``fmt``, or with ``fmt == "auto"`` the one ``detect`` tells from the first row. Each row is
    converted as it is read (``convert(row, format)``; a missing key is the field at fault), so under
    ``on_bad_row: skip`` an unconvertible row is a counted skip instead of a failure later.

    Returns:
        ``(rows, report, format)``.
    """
    kinds: list[str] = [] if fmt == "auto" else [fmt]

    def check(row: dict[str, Any]) -> None:
        if not kinds:
            try:
                kinds.append(detect(row))
            except detect_errors as e:
                raise RowError(None, str(e).removeprefix(f"{path}: ")) from None
        try:
            convert(row, kinds[0])
        except KeyError as e:
            raise RowError(str(e.args[0]), f"missing (not a {kinds[0]} row)") from None

    rows, report = read_records(path, on_bad_row=on_bad_row, check=check)
    return rows, report, (kinds[0] if kinds else fmt)


@dataclass
class SkippedRow:
    """One bad row skipped under ``on_bad_row="skip"``."""

    line: int
    """1-based physical line where the row starts (JSONL/CSV/TSV) or 1-based row index (Parquet, datasets)."""
    field: str | None
    """The field at fault, or None when the row as a whole is (invalid JSON, wrong column count, ...)."""
    reason: str


@dataclass
class ReadReport:
    """What a reader saw: ``rows_in == rows_out + len(skipped)``."""

    source: str
    rows_in: int
    """Data rows seen: neither a header nor blank lines count."""
    rows_out: int
    """Rows returned."""
    skipped: list[SkippedRow] = field(default_factory=list)
    unit: Literal["line", "row"] = "line"
    """What ``SkippedRow.line`` counts: physical lines of a text file, or rows."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``n_skipped`` added for a quick look)."""
        return {
            "source": self.source,
            "unit": self.unit,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "n_skipped": len(self.skipped),
            "skipped": [asdict(s) for s in self.skipped],
        }


# ---------------------------------------------------------------------------------------------------------
# Converters for ``fields``: each takes a raw value and returns the converted one or raises ValueError/TypeError.
# A blank (None, or whitespace-only string) required value is a bad row before any converter runs, unless the
# converter is wrapped in ``allow_empty``.


def as_str(value: Any) -> str:
    """A non-empty string, stripped of surrounding whitespace; numbers and other types are rejected."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError("empty string")
    return text


def as_float(value: Any) -> float:
    """A finite float from a number or a numeric string (NaN and infinities are rejected; so are booleans)."""
    if isinstance(value, bool):
        raise TypeError("expected a number, got bool")
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        out = float(value.strip())
    else:
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(out):
        raise ValueError(f"not a finite number: {out}")
    return out


def as_int(value: Any) -> int:
    """An int from an int, an integral finite float (``3.0``, as Parquet/JSON may store it) or a string like ``"3"``."""
    if isinstance(value, bool):
        raise TypeError("expected an integer, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"not an integer: {value}")
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def one_of(values: Iterable[Any]) -> Converter:
    """A converter accepting only ``values`` (strings compared stripped); returns the value as given.

    Use it on raw text (``one_of(["0", "1"])`` for a TSV label) or after a conversion
    (``chain(as_int, one_of([0, 1]))``).
    """
    allowed = list(values)
    allowed_set = set(allowed)

    def check(value: Any) -> Any:
        key = value.strip() if isinstance(value, str) else value
        if isinstance(key, bool) and not any(isinstance(a, bool) for a in allowed):
            raise ValueError(f"not one of {allowed!r}")  # True == 1 in Python; a bool is no label 1
        if key not in allowed_set:
            raise ValueError(f"not one of {allowed!r}")
        return key

    return check


class _InRange:
    """See :func:`in_range`."""

    def __init__(self, lo: float, hi: float) -> None:
        if lo > hi:
            raise ValueError(f"in_range: lo={lo} > hi={hi}")
        self.lo, self.hi = lo, hi

    def __call__(self, arg: Any) -> Any:
        # Data values (str, numbers, None, lists, dicts) are never callable, so this cannot be ambiguous.
        if callable(arg):
            return chain(arg, self)
        if not self.lo <= arg <= self.hi:
            raise ValueError(f"{arg} not in [{self.lo}, {self.hi}]")
        return arg


def in_range(lo: float, hi: float) -> _InRange:
    """A bounds check ``lo <= x <= hi`` (inclusive).

    ``in_range(0, 5)(as_float)`` wraps a converter: convert, then check. ``in_range(0, 5)`` alone is a step
    for :func:`chain` that checks an already converted number: ``chain(as_float, in_range(0, 5))``.
    """
    return _InRange(lo, hi)


def chain(*steps: Converter) -> Converter:
    """Apply converters left to right: ``chain(as_int, one_of([0, 1]))``."""
    if not steps:
        raise ValueError("chain needs at least one converter")

    def run(value: Any) -> Any:
        for step in steps:
            value = step(value)
        return value

    run.accepts_empty = getattr(steps[0], "accepts_empty", False)  # type: ignore[attr-defined]
    return run


def allow_empty(converter: Converter) -> Converter:
    """Let ``converter`` see blank values (None, ``""``) of a required field instead of rejecting them."""

    def run(value: Any) -> Any:
        return converter(value)

    run.accepts_empty = True  # type: ignore[attr-defined]
    return run


# ---------------------------------------------------------------------------------------------------------
# The bad-row policy.


class ExpectedSkip(ValueError):
    """A converter's verdict on a row the source is known to hold and the task cannot use (MR's 37 sentences whose
    mean rating is exactly 0: neither negative nor positive). A bad row like any other (an error under
    ``on_bad_row="error"``, counted in the read report under ``"skip"``), but not a surprise: the skips are
    summarized in one INFO line with their count instead of a warning per row."""


class _BadRows:
    """Applies the policy: raise at the first bad row, or record and log it."""

    def __init__(self, source: str, policy: BadRowPolicy, unit: Literal["line", "row"]) -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {policy!r}")
        self.source, self.policy, self.unit = source, policy, unit
        self.skipped: list[SkippedRow] = []
        self.expected: list[SkippedRow] = []

    def where(self, line: int) -> str:
        return f"{self.source}:{line}" if self.unit == "line" else f"{self.source}:row {line}"

    def message(self, line: int, field_name: str | None, reason: str) -> str:
        at_field = f" field '{field_name}':" if field_name is not None else ""
        return f"{self.where(line)}:{at_field} {reason}"

    def add(self, line: int, field_name: str | None, reason: str, *, expected: bool = False) -> None:
        msg = self.message(line, field_name, reason)
        if self.policy == "error":
            raise DataError(msg)
        row = SkippedRow(line=line, field=field_name, reason=reason)
        self.skipped.append(row)
        if expected:
            self.expected.append(row)
        elif len(self.skipped) - len(self.expected) <= MAX_LOGGED_SKIPS:
            logger.warning("skipping bad row: %s", msg)

    def report(self, rows_in: int, rows_out: int) -> ReadReport:
        report = ReadReport(self.source, rows_in, rows_out, self.skipped, self.unit)
        if self.expected:
            first = self.expected[0]
            logger.info(
                "%s: skipped %d expected rows of %d (e.g. %s); all are in the read report",
                self.source, len(self.expected), rows_in, self.message(first.line, first.field, first.reason),
            )  # fmt: skip
        unexpected = len(self.skipped) - len(self.expected)
        if unexpected:
            unlogged = max(0, unexpected - MAX_LOGGED_SKIPS)
            logger.warning(
                "%s: skipped %d bad rows of %d (%d not logged one by one; all are in the read report)",
                self.source,
                unexpected,
                rows_in,
                unlogged,
            )
        logger.debug("%s: %d rows in, %d out", self.source, rows_in, rows_out)
        return report


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


RowCheck = Callable[[dict[str, Any]], None]
_FIELD_PREFIX = re.compile(r"field '([^']+)': (.*)", re.DOTALL)


def _convert_fields(
    row: dict[str, Any],
    fields: Mapping[str, Converter] | None,
    line: int,
    bad: _BadRows,
    check: RowCheck | None = None,
) -> dict[str, Any] | None:
    """Convert the required fields in place, then run ``check``; None (after reporting) if the row is bad."""
    for name, converter in (fields or {}).items():
        if name not in row:
            bad.add(line, name, "missing")
            return None
        raw = row[name]
        blank = raw is None or (isinstance(raw, str) and not raw.strip())
        if blank and not getattr(converter, "accepts_empty", False):
            bad.add(line, name, "empty value" if raw is not None else "null value")
            return None
        try:
            row[name] = converter(raw)
        except ExpectedSkip as exc:
            bad.add(line, name, f"value {_short(raw)}: {exc}", expected=True)
            return None
        except (ValueError, TypeError) as exc:
            bad.add(line, name, f"invalid value {_short(raw)}: {exc}")
            return None
    if check is not None:
        try:
            check(row)
        except RowError as exc:
            bad.add(line, exc.field, str(exc))
            return None
        except (ValueError, TypeError) as exc:
            # Messages of the data modules say "field 'x': reason" when they know the field.
            match = _FIELD_PREFIX.search(str(exc))
            field_name, reason = (match.group(1), match.group(2)) if match else (None, str(exc))
            bad.add(line, field_name, reason)
            return None
    return row


# ---------------------------------------------------------------------------------------------------------
# Physical lines: read in binary and decode line by line, so that one bad line costs one row, not the file.


@dataclass
class _Line:
    number: int
    text: str | None
    """Decoded text with its line break, or None when ``problem`` is set."""
    problem: str | None = None


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _iter_lines(f: IO[bytes], max_line_bytes: int) -> Iterator[_Line]:
    """Yield every physical line; an over-long or non-UTF-8 line comes with a ``problem`` instead of text."""
    number = 0
    while True:
        # Reading at most max_line_bytes + 1 bytes keeps a huge line from being loaded whole.
        raw = f.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while raw and not raw.endswith(b"\n"):  # drop the rest of the line
                raw = f.readline(1 << 16)
                size += len(raw)
            yield _Line(number, None, f"line longer than max_line_bytes={max_line_bytes} ({size} bytes)")
            continue
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            yield _Line(number, raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield _Line(number, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")


def _strip_newline(text: str) -> str:
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


# ---------------------------------------------------------------------------------------------------------
# Formats.


def detect_format(path: str | Path) -> Literal["jsonl", "csv", "tsv", "parquet"]:
    """The format of ``path`` from its suffix (``.jsonl``/``.ndjson``/``.json`` lines, ``.csv``, ``.tsv``,
    ``.parquet``/``.pq``; ``.gz`` allowed after the text formats)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and _SUFFIX_FORMATS.get(suffixes[-1]) == "parquet":
            raise DataError(f"{path}: gzip-compressed Parquet is not supported (Parquet compresses itself)")
    fmt = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        known = ", ".join(sorted(_SUFFIX_FORMATS))
        raise DataError(
            f"{path}: cannot tell the format from the suffix (known: {known}, each optionally .gz); pass format="
        )
    return fmt  # type: ignore[return-value]


def _read_jsonl(
    f: IO[bytes],
    fields: Mapping[str, Converter] | None,
    bad: _BadRows,
    max_line_bytes: int,
    check: RowCheck | None = None,
) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    rows_in = 0
    for line in _iter_lines(f, max_line_bytes):
        if line.problem is None and not line.text.strip():  # type: ignore[union-attr]
            continue
        rows_in += 1
        if line.problem is not None:
            bad.add(line.number, None, line.problem)
            continue
        try:
            obj = decode_json_row(line.text)  # type: ignore[arg-type]
        except json.JSONDecodeError as exc:
            bad.add(line.number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RowError as exc:
            bad.add(line.number, exc.field, str(exc))
            continue
        if not isinstance(obj, dict):
            bad.add(line.number, None, f"expected a JSON object, got {type(obj).__name__}")
            continue
        row = _convert_fields(obj, fields, line.number, bad, check)
        if row is not None:
            rows.append(row)
    return rows, rows_in


MAX_JSON_DEPTH = 100
"""Deepest nesting of objects and arrays accepted in a JSON row (the row object itself is level 1)."""

MAX_JSON_INT_DIGITS = 4300
"""Longest integer accepted in a JSON row, in digits (Python's default ``int`` parsing limit)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


class _BadValue:
    """Stands in for a JSON value the row cannot keep (NaN, an infinity, a huge integer) until the row is walked."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RowError(None, f"duplicate key {_short(key)}")
            seen.add(key)
    return obj


def decode_json_row(text: str) -> Any:
    """``json.loads``, strict about what Python's json lets through or chokes on (issue 17).

    Raises:
        json.JSONDecodeError: invalid JSON.
        RowError: a duplicate key in any object; ``NaN``/``Infinity`` or a number too big for a float; an
            integer over :data:`MAX_JSON_INT_DIGITS` digits; nesting deeper than :data:`MAX_JSON_DEPTH`; a lone
            surrogate (``"\\ud800"``, not valid Unicode) in a string or key. The field is the top-level key
            holding the bad value, where there is one.
    """
    flagged: list[_BadValue] = []

    def bad_value(reason: str) -> _BadValue:
        flagged.append(_BadValue(reason))
        return flagged[-1]

    def parse_int(digits: str) -> Any:
        count = len(digits) - digits.startswith("-")
        if count > MAX_JSON_INT_DIGITS:
            return bad_value(f"an integer of {count} digits (at most {MAX_JSON_INT_DIGITS})")
        try:
            return int(digits)
        except ValueError:  # a lower sys.set_int_max_str_digits()
            return bad_value(f"an integer of {count} digits (over Python's int parsing limit)")

    def parse_float(number: str) -> Any:
        value = float(number)
        if not math.isfinite(value):
            shown = number if len(number) <= 40 else number[:37] + "..."
            return bad_value(f"not a finite number: {shown} (too big for a float)")
        return value

    def parse_constant(name: str) -> Any:
        return bad_value(f"not a finite number: {name} (not valid JSON)")

    too_deep = f"nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=parse_constant,
        )
    except RecursionError:
        raise RowError(None, too_deep) from None
    if flagged or "\\u" in text or text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        _check_json_values(obj, too_deep)
    return obj


def _check_json_values(obj: Any, too_deep: str) -> None:
    """Walk a decoded row (without recursion) for a flagged value, a lone surrogate or too deep nesting."""
    stack: list[tuple[Any, int, str | None]] = [(obj, 0, None)]  # (value, depth of its container, top key)
    while stack:
        value, depth, top = stack.pop()
        if isinstance(value, dict | list):
            if depth + 1 > MAX_JSON_DEPTH:
                raise RowError(None, too_deep)
            if isinstance(value, dict):
                for key in value:
                    surrogate = _SURROGATE.search(key)
                    if surrogate:
                        raise RowError(
                            None, f"lone surrogate {ascii(surrogate.group())} in a key (not valid Unicode)"
                        )
                items = [(v, depth + 1, key if depth == 0 else top) for key, v in value.items()]
            else:
                items = [(v, depth + 1, top) for v in value]
            stack.extend(reversed(items))  # document order
        elif isinstance(value, _BadValue):
            raise RowError(top, value.reason)
        elif isinstance(value, str):
            surrogate = _SURROGATE.search(value)
            if surrogate:
                raise RowError(
                    top, f"lone surrogate {ascii(surrogate.group())} in a string (not valid Unicode)"
                )


def _iter_records(
    f: IO[bytes], fmt: Literal["csv", "tsv"], max_line_bytes: int
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """Yield ``(start_line, values, problem)`` per record; blank lines are left out.

    TSV: one record per physical line, split on tabs with quotes taken literally (what ``csv.QUOTE_NONE``
    does; GLUE files have unbalanced quotes inside fields). CSV: the ``csv`` module, whose quoted fields may
    span lines; a record is reported at the line where it starts.
    """
    lines = _iter_lines(f, max_line_bytes)
    if fmt == "tsv":
        for line in lines:
            if line.problem is not None:
                yield line.number, None, line.problem
                continue
            text = _strip_newline(line.text)  # type: ignore[arg-type]
            if text:
                yield line.number, text.split("\t"), None
        return

    problems: dict[int, str] = {}

    def texts() -> Iterator[str]:
        for line in lines:
            if line.problem is not None:
                problems[line.number] = line.problem
                # A placeholder keeps the csv state machine and its line count in step with the file.
                yield "\n"
            else:
                yield line.text  # type: ignore[misc]

    reader = csv.reader(texts(), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            values: list[str] | None = next(reader)
            error = None
        except StopIteration:
            return
        except csv.Error as exc:
            values, error = None, f"CSV: {exc}"
        spanned = [problems.pop(n) for n in range(start, reader.line_num + 1) if n in problems]
        if spanned:
            yield start, None, spanned[0]
        elif error is not None:
            yield start, None, error
        elif values:
            yield start, values, None


def _read_delimited(
    f: IO[bytes],
    fmt: Literal["csv", "tsv"],
    *,
    columns: Sequence[str] | None,
    has_header: bool,
    fields: Mapping[str, Converter] | None,
    bad: _BadRows,
    max_line_bytes: int,
    check: RowCheck | None = None,
) -> tuple[list[dict[str, Any]], int]:
    records = _iter_records(f, fmt, max_line_bytes)
    if has_header:
        first = next(records, None)
        if first is None:
            return [], 0
        line_no, values, problem = first
        if values is None:
            raise DataError(f"{bad.where(line_no)}: cannot read the header: {problem}")
        names = [v.strip() for v in values]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"{bad.where(line_no)}: duplicate column names in the header: {dupes}")
    else:
        names = list(columns)  # type: ignore[arg-type]
    missing = [name for name in (fields or {}) if name not in names]
    if missing:
        raise DataError(f"{bad.source}: field '{missing[0]}': not among the columns {names}")

    rows: list[dict[str, Any]] = []
    rows_in = 0
    for line_no, values, problem in records:
        rows_in += 1
        if values is None:
            bad.add(line_no, None, problem)  # type: ignore[arg-type]
            continue
        if len(values) != len(names):
            bad.add(line_no, None, f"expected {len(names)} columns, got {len(values)}")
            continue
        row = _convert_fields(dict(zip(names, values, strict=True)), fields, line_no, bad, check)
        if row is not None:
            rows.append(row)
    return rows, rows_in


def _read_parquet(
    path: Path, fields: Mapping[str, Converter] | None, bad: _BadRows, check: RowCheck | None = None
) -> tuple[list[dict[str, Any]], int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except pa.ArrowException as exc:  # not Parquet, truncated, ...; a missing file stays FileNotFoundError
        raise DataError(f"{path}: cannot read Parquet: {exc}") from None
    names = pfile.schema_arrow.names
    missing = [name for name in (fields or {}) if name not in names]
    if missing:
        raise DataError(f"{bad.source}: field '{missing[0]}': not among the columns {names}")
    rows: list[dict[str, Any]] = []
    rows_in = 0
    for batch in pfile.iter_batches(batch_size=4096):
        for raw in batch.to_pylist():
            rows_in += 1
            row = _convert_fields(raw, fields, rows_in, bad, check)
            if row is not None:
                rows.append(row)
    return rows, rows_in


def read_records(
    path: str | Path,
    *,
    format: Format = "auto",
    columns: Sequence[str] | None = None,
    has_header: bool = True,
    fields: Mapping[str, Converter] | None = None,
    on_bad_row: BadRowPolicy = "error",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    check: RowCheck | None = None,
) -> tuple[list[dict[str, Any]], ReadReport]:
    """Read a JSONL, CSV, TSV or Parquet file (or a hub dataset) into dicts, applying the bad-row policy.

    Args:
        path: the file; ``.gz`` is decompressed for the text formats. A string starting with ``hf:`` is a hub
            dataset (see :func:`parse_hub_source`), read with :func:`load_hub_source`; rows are then counted
            ("row N") rather than lines, and ``format``, ``columns``, ``has_header`` do not apply.
        format: ``"auto"`` tells it from the suffix (see :func:`detect_format`).
        columns: the column names of a header-less CSV/TSV; needs ``has_header=False``.
        has_header: whether the first non-blank CSV/TSV line names the columns. ``False`` needs ``columns``.
        fields: required field name -> converter (e.g. ``as_str``, ``in_range(0, 5)(as_float)``). A missing,
            blank or rejected value is a bad row naming that field. Output rows keep all columns, with the
            converted values in place of the raw ones. Without ``fields`` values stay raw (strings for CSV/TSV).
        on_bad_row: ``"error"`` raises :class:`DataError` at the first bad row; ``"skip"`` counts, logs and skips.
        max_line_bytes: longest physical line accepted (bytes, without the line break); longer is a bad row.
        check: called on each row after ``fields`` converted it; raising ``ValueError``/``TypeError`` (best a
            :class:`RowError` naming the field) makes it a bad row under the policy.

    Returns:
        ``(rows, report)`` with ``report.rows_in == report.rows_out + len(report.skipped)``.

    Raises:
        DataError: a bad row under ``"error"``, or a problem with the whole file under either policy.
        ValueError: inconsistent arguments (unknown format, ``columns`` with a header, ...).
    """
    if is_hub_source(path):
        if format != "auto" or columns is not None or not has_header:
            raise ValueError(
                f"{path}: format=, columns= and has_header= apply to local files, not hub datasets"
            )
        return load_hub_source(str(path), fields=fields, on_bad_row=on_bad_row, check=check)
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in ("jsonl", "csv", "tsv", "parquet"):
        raise ValueError(f"unknown format {format!r}")
    if fmt in ("csv", "tsv"):
        if columns is not None and has_header:
            raise ValueError(
                "columns= names the columns of a header-less file: pass has_header=False too "
                "(for a file with a header, leave columns out)"
            )
        if columns is None and not has_header:
            raise ValueError("has_header=False needs columns= to name the columns")
        if columns is not None and len(set(columns)) != len(columns):
            raise ValueError(f"duplicate names in columns={list(columns)}")
    elif columns is not None or not has_header:
        raise ValueError(f"columns= and has_header= apply to CSV/TSV only, not {fmt}")
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")

    bad = _BadRows(str(path), on_bad_row, "row" if fmt == "parquet" else "line")
    if fmt == "parquet":
        rows, rows_in = _read_parquet(path, fields, bad, check)
        return rows, bad.report(rows_in, len(rows))
    try:
        with _open_binary(path) as f:
            if fmt == "jsonl" and path.suffix.lower() == ".json":
                _refuse_json_array(f, path)
            if fmt == "jsonl":
                rows, rows_in = _read_jsonl(f, fields, bad, max_line_bytes, check)
            else:
                rows, rows_in = _read_delimited(
                    f,
                    fmt,  # type: ignore[arg-type]
                    columns=columns,
                    has_header=has_header,
                    fields=fields,
                    bad=bad,
                    max_line_bytes=max_line_bytes,
                    check=check,
                )
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot decompress: {exc}") from None
    return rows, bad.report(rows_in, len(rows))


def _refuse_json_array(f: IO[bytes], path: Path) -> None:
    """A ``.json`` file holding one JSON array would turn into one bad row per line: say what it is instead."""
    head = f.read(4096)
    f.seek(0)
    if head.lstrip(_BOM + b" \t\r\n").startswith(b"["):
        raise DataError(
            f"{path}:1: this .json file holds a JSON array, not JSON lines; "
            "convert it to JSONL or use load_hf_dataset('json', data_files=...)"
        )


# ---------------------------------------------------------------------------------------------------------
# datasets.load_dataset


def load_hf_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    split: str = "train",
    config_name: str | None = None,
    fields: Mapping[str, Converter] | None = None,
    on_bad_row: BadRowPolicy = "error",
    check: RowCheck | None = None,
    source: str | None = None,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], ReadReport]:
    """Load one split through ``datasets.load_dataset`` and apply ``fields`` and the bad-row policy per row.

    ``name_or_path`` is a hub id, a local dataset folder, a packaged builder name (``"json"``, ``"csv"``,
    ``"parquet"`` with ``data_files=`` in ``kwargs``) or a single local file, whose builder is chosen from its
    suffix. Rows are numbered from 1 ("row N"). A file the builder itself cannot parse fails inside
    ``datasets`` with its own error; use :func:`read_records` for line-by-line reports on local files.

    Args:
        name_or_path: what to load.
        split: the split to return (one split; a ``DatasetDict`` is refused).
        config_name: the dataset configuration (``name=`` of ``load_dataset``).
        fields: required field name -> converter, as in :func:`read_records`.
        on_bad_row: ``"error"`` or ``"skip"``, as in :func:`read_records`.
        check: a per-row check, as in :func:`read_records`.
        source: the name of the data in bad-row messages and the report (default: built from the arguments).
        **kwargs: passed to ``datasets.load_dataset`` (``data_files``, ``cache_dir``, ``revision``, ...).

    Returns:
        ``(rows, report)`` with ``report.unit == "row"``.
    """
    import datasets  # lazy: importing datasets costs about a second

    target = os.fspath(name_or_path)
    source = source or target + (f":{config_name}" if config_name else "") + f"[{split}]"
    local = Path(target)
    if local.is_file() and "data_files" not in kwargs:
        fmt = detect_format(local)
        builder = {"jsonl": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet"}[fmt]
        if fmt == "tsv":
            kwargs.setdefault("sep", "\t")
            kwargs.setdefault("quoting", csv.QUOTE_NONE)  # as read_records: GLUE TSVs have literal quotes
        target, kwargs["data_files"] = builder, {split: str(local)}
    try:
        ds = datasets.load_dataset(target, config_name, split=split, **kwargs)
    except Exception as e:  # not found, offline and not cached, no network, a file the builder cannot parse
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = f"{type(e).__name__}: {lines[0] if lines else ''}"[:400]
        flags = [
            n for n in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(n, "") in ("1", "true")
        ]
        offline = f"; offline ({'='.join(flags[:1])}=1) only cached datasets load" if flags else ""
        raise DataError(f"{source}: cannot load this dataset ({reason}){offline}") from None
    if isinstance(ds, datasets.DatasetDict | datasets.IterableDatasetDict):
        raise ValueError(f"{source}: got several splits {list(ds)}; pass split= to pick one")

    bad = _BadRows(source, on_bad_row, "row")
    rows: list[dict[str, Any]] = []
    rows_in = 0
    for raw in ds:
        rows_in += 1
        row = _convert_fields(dict(raw), fields, rows_in, bad, check)
        if row is not None:
            rows.append(row)
    return rows, bad.report(rows_in, len(rows))


HUB_PREFIX = "hf:"
HUB_FILE_PREFIX = "hf://datasets/"
_HUB_SPEC = re.compile(r"(?P<head>[^\[\]]+?)(?P<slice>\[[^\]]*\])?")
_HUB_BUILDERS = {"jsonl": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet"}


class HubSource(NamedTuple):
    """A hub dataset named in a config string (see :func:`parse_hub_source`)."""

    dataset: str
    """The dataset id (``nyu-mll/glue``), or the packaged builder (``json``, ``csv``, ``parquet``) of one file."""
    config_name: str | None
    """The dataset configuration (``sst2``), or None."""
    split: str
    """The split, possibly with a slice (``train[:5000]``)."""
    data_file: str | None = None
    """The ``hf://datasets/...`` URL of a single file, or None."""


def is_hub_source(path: object) -> bool:
    """Whether ``path`` is a string naming a hub dataset (``hf:...``) rather than a local file."""
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_source(text: str) -> HubSource:
    """Parse ``hf:<id>:<split>``, ``hf:<id>:<config>:<split>`` or ``hf://datasets/<id>/<file>``.

    Dataset ids may hold ``/`` but no ``:``; the split may end with a slice such as ``[:5000]`` or ``[10%:]``.
    A single file's builder comes from its suffix (``.json``/``.jsonl`` -> json, ``.csv``/``.tsv`` -> csv,
    ``.parquet`` -> parquet) and its split is ``train``.

    Raises:
        ValueError: ``text`` is not one of these forms (the message shows them).
    """
    forms = "hf:<dataset id>:<split>, hf:<dataset id>:<config>:<split> or hf://datasets/<dataset id>/<file>"
    if not is_hub_source(text):
        raise ValueError(f"{text!r} is not a hub dataset ({forms})")
    if text.startswith(HUB_FILE_PREFIX):
        rest = text[len(HUB_FILE_PREFIX) :]
        if rest.count("/") < 2 or rest.endswith("/"):
            raise ValueError(f"{text!r}: a hub file needs hf://datasets/<owner>/<name>/<file>")
        try:
            fmt = detect_format(rest)
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
        return HubSource(_HUB_BUILDERS[fmt], None, "train", text)
    match = _HUB_SPEC.fullmatch(text[len(HUB_PREFIX) :])
    parts = match.group("head").split(":") if match else []
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts) or "//" in parts[0]:
        raise ValueError(f"{text!r}: expected {forms}")
    split = parts[-1] + (match.group("slice") or "")
    return HubSource(parts[0], parts[1] if len(parts) == 3 else None, split)


def load_hub_source(
    text: str,
    *,
    fields: Mapping[str, Converter] | None = None,
    on_bad_row: BadRowPolicy = "error",
    check: RowCheck | None = None,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], ReadReport]:
    """Read the hub dataset named by ``text`` (see :func:`parse_hub_source`) with :func:`load_hf_dataset`.

    Bad rows are reported as ``<text>:row N``. ``kwargs`` go to ``datasets.load_dataset`` (``cache_dir``,
    ``revision``, ...). Downloads go to the ``datasets`` cache (``HF_DATASETS_CACHE``); ``HF_DATASETS_OFFLINE=1``
    reads only what is cached.
    """
    hub = parse_hub_source(text)
    if hub.data_file is not None:
        kwargs["data_files"] = {hub.split: hub.data_file}
        if hub.data_file.endswith((".tsv", ".tsv.gz")):
            kwargs.setdefault("sep", "\t")
            kwargs.setdefault("quoting", csv.QUOTE_NONE)  # as read_records: GLUE TSVs have literal quotes
    return load_hf_dataset(
        hub.dataset,
        split=hub.split,
        config_name=hub.config_name,
        fields=fields,
        on_bad_row=on_bad_row,
        check=check,
        source=text,
        **kwargs,
    )


def save_report(report: ReadReport | Sequence[ReadReport], path: str | Path) -> None:
    """Write read report(s) as JSON, atomically.

    One report is written as its :meth:`ReadReport.to_dict`; a list as ``{"reports": [...], "total": {...}}``
    with ``total`` summing ``rows_in``, ``rows_out`` and ``n_skipped``.
    """
    if isinstance(report, ReadReport):
        payload: dict[str, Any] = report.to_dict()
    else:
        reports = [r.to_dict() for r in report]
        total = {key: sum(r[key] for r in reports) for key in ("rows_in", "rows_out", "n_skipped")}
        payload = {"reports": reports, "total": total}
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
