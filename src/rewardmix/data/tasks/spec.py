"""NLU task declarations: :class:`TaskSpec` (template, labels or scale, metric, data sources) and its parts.

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
    label_words:                      # plain-language forms of each label, for the rationale filter
      negative: [negative, negativity, unfavorable]   # "word*" = any ending; see llm/filters.py
    source:                           # how to read a local file into fields (optional)
      format: tsv
      fields: {text: sentence}        # input field -> column (default: same name)
      label: label                    # the column with the raw label
    hub:                              # public Hugging Face datasets of the task (optional), by
      "nyu-mll/glue:sst2":            # "<dataset id>" or "<dataset id>:<config>": their columns
        fields: {text: sentence}
        label: label
        # label_map: {"0": ...}       # raw labels of this source only (e.g. class ids)

Reference: RLLR §4.1 and Appendix A (templates, labels, answer format); SPEC §1 "NLU task registry".
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Literal

from rewardmix.data.tasks.text import MARKER_RE, fold

__all__ = [
    "Example",
    "LinePattern",
    "ParsedLabel",
    "Scale",
    "TaskSource",
    "TaskSpec",
    "TaskSpecError",
]

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_LABEL_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*\*?(?: [A-Za-z][A-Za-z'-]*\*?)*")


class TaskSpecError(ValueError):
    """An inconsistent task declaration; ``key`` is the dotted key at fault (for file:line messages)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


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
    label_words: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Label -> the words and phrases that assert it in plain language (``positive``, ``favorable``;
    ``entail*``, ``follows from``), case-insensitive, ``*`` at the end of a word = any ending. The rationale
    filter drops a rationale that asserts another label this way and never its own (:mod:`rewardmix.llm.filters`);
    a label not listed is matched only by the "the answer is X" rules. Empty: no plain-language rule."""
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
            if self.label_words:
                raise TaskSpecError(
                    "label_words applies to categorical labels, not to a scale", "label_words"
                )
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
        folded = [fold(label) for label in labels]
        for label, key in zip(labels, folded, strict=True):
            if not key.strip() or label != label.strip():
                raise TaskSpecError(f"label {label!r} is empty or has surrounding whitespace", "labels")
            if MARKER_RE.search(key):
                raise TaskSpecError(
                    f"label {label!r} contains 'answer is', which would break parsing", "labels"
                )
        if len(set(folded)) != len(folded):
            raise TaskSpecError(f"labels differ only in case: {labels}", "labels")
        self._check_label_words(labels)
        for raw, label in self.label_map.items():
            if label not in labels:
                raise TaskSpecError(
                    f"label_map maps {raw!r} to {label!r}, which is not one of {labels}", "label_map"
                )
            if fold(raw) in folded and fold(raw) != fold(label):
                raise TaskSpecError(
                    f"label_map maps the label {raw!r} to another label {label!r}", "label_map"
                )

    def _check_label_words(self, labels: list[str]) -> None:
        for label, words in self.label_words.items():
            if label not in labels:
                raise TaskSpecError(
                    f"label_words names {label!r}, which is not one of {labels}", "label_words"
                )
            for word in words:
                if not _LABEL_WORD_RE.fullmatch(word):
                    raise TaskSpecError(
                        f"label_words.{label}: {word!r} must be words (letters, ', -) separated by single "
                        "spaces, each optionally ending in *",
                        "label_words",
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


def _label_candidates(spec: TaskSpec) -> tuple[tuple[str, str], ...]:
    """(folded surface, verbalized label) for every label and raw label_map value, longest surface first."""
    if spec.labels is None:
        return ()
    pairs = {fold(label): label for label in spec.labels}
    for raw, label in spec.label_map.items():
        pairs.setdefault(fold(raw), label)
    return tuple(sorted(pairs.items(), key=lambda kv: -len(kv[0])))
