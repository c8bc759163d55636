"""YAML -> nested typed dataclasses, strictly.

A config file is plain YAML whose keys mirror a stage's ``Config`` dataclass. Loading is strict: an unknown
key, a missing required key or a value of the wrong type is a :class:`ConfigError` naming the file, the line
and the dotted key. ``key.sub=value`` overrides from the command line are applied to the YAML before the
check, so a typo in an override is caught the same way (the source is then ``override 'key.sub=value'``).
List items are addressed by index, ``reward.components[0].weight=0.3``: a list the file does not set is taken
from the defaults first, so the override changes one item and keeps the others (:func:`set_key`, which the
``sweep`` stage uses too).

A config path may be ``builtin:<name>``: a config or recipe shipped inside the package
(``rewardmix/configs/``, ``rewardmix/recipes/``; :func:`builtin_configs` lists them), so ``rewardmix ppo
builtin:ppo`` works from any directory of any install.

Output folders: a field named ``output_dir`` or ``dir`` (any section) is expanded as a shell would: a leading ``~`` or
``~user`` becomes that home folder and ``$VAR`` / ``${VAR}`` that environment variable (:func:`expand_path`); an
unknown user or an unset variable is a :class:`ConfigError`, never a folder named ``~`` or ``$VAR``.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses, in any combination.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "BUILTIN",
    "RangeError",
    "check_ranges",
    "apply_overrides",
    "builtin_configs",
    "config_defaults",
    "config_path",
    "expand_path",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_key",
    "parse_override",
    "set_key",
    "to_dict",
    "to_yaml",
]


class ConfigError(ValueError):
    """A config value that cannot be accepted; the message names file, line and key."""


class RangeError(ValueError):
    """A size, step or rate out of its range; raised by :func:`check_ranges` in a config's ``__post_init__``.

    :func:`from_dict` turns it into a :class:`ConfigError` naming the dotted key and the file line (or the
    override) that set it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field!r} {message}")
        self.field, self.message = field, message


_RANGES: dict[str, tuple[str, Any]] = {
    "at_least_1": ("must be >= 1", lambda v: v >= 1),
    "at_least_0": ("must be >= 0", lambda v: v >= 0),
    "positive": ("must be > 0", lambda v: v > 0),
    "fraction": ("must be in [0, 1]", lambda v: 0 <= v <= 1),
    "below_1": ("must be in [0, 1)", lambda v: 0 <= v < 1),
}


def check_ranges(
    obj: Any,
    *,
    at_least_1: tuple[str, ...] = (),
    at_least_0: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    fraction: tuple[str, ...] = (),
    below_1: tuple[str, ...] = (),
) -> None:
    """Check the named fields of config dataclass ``obj``: the one place per dataclass that says which sizes,
    steps and rates are allowed (call it first in ``__post_init__``). A field set to None (null: "off" or
    "all") is not checked.

    Args:
        obj: The dataclass instance.
        at_least_1: Counts and sizes that must be >= 1 (batch sizes, steps, epochs, token budgets).
        at_least_0: Counts where 0 means "none" or "off".
        positive: Rates and scales that must be > 0 (learning rates, timeouts).
        fraction: Shares and probabilities in [0, 1].
        below_1: Values in [0, 1) (dropout).

    Raises:
        RangeError: The first field out of its range (the message: ``'field' must be >= 1, got 0``).
    """
    groups = {"at_least_1": at_least_1, "at_least_0": at_least_0, "positive": positive}
    groups.update(fraction=fraction, below_1=below_1)
    for group, names in groups.items():
        rule, ok = _RANGES[group]
        for name in names:
            value = getattr(obj, name)
            if value is not None and not ok(value):
                raise RangeError(name, f"{rule}, got {value!r}")


class _Map(dict):
    """A dict that remembers where each key came from: its 1-based line in the file, or an override."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[str, int] = {}
        self.override_sources: dict[str, str] = {}


class _List(list):
    """A list that remembers which of its items an override set (index -> the override), for error messages."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.override_sources: dict[int, str] = {}


SEED_LIMIT = 2**32
"""Every config field named ``seed`` must be in ``[0, SEED_LIMIT)``: the range every generator the stages seed
accepts (NumPy's is the narrowest; torch refuses a seed over 64 bits with an internal error)."""

MAX_YAML_VALUES = 100_000
"""The most values (scalars, lists and mappings, keys included) a YAML document may hold once its aliases and
merges are expanded. A shipped recipe holds a few hundred; ten aliases nested ten deep in 1 KB hold 10^10."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no arbitrary objects) that refuses a document whose aliases expand past
    :data:`MAX_YAML_VALUES` (an alias "bomb"), before constructing anything."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node, getattr(self, "name", "<yaml>"))
        return super().construct_document(node)


def _check_expansion(root: yaml.Node, name: str) -> None:
    """Raise :class:`ConfigError` when the composed node graph ``root`` expands to over MAX_YAML_VALUES values.

    An alias is the same node object reached again, so the expanded size of each distinct node is counted once
    (memoized): the check costs the size of the text, not of the expansion.
    """

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return []

    refs: dict[int, int] = {}
    seen, stack = {id(root)}, [root]
    while stack:
        for child in children(stack.pop()):
            refs[id(child)] = refs.get(id(child), 0) + 1
            if id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    # size: values once expanded; depth: how many aliases deep the largest expansion goes
    done: dict[int, tuple[int, int]] = {}
    busy: set[int] = set()  # a recursive alias: the constructor reports it

    def measure(node: yaml.Node) -> tuple[int, int]:
        if id(node) in done:
            return done[id(node)]
        if id(node) in busy:
            return 1, 0
        busy.add(id(node))
        size, depth = 1, 0
        for child in children(node):
            child_size, child_depth = measure(child)
            size += child_size
            depth = max(depth, child_depth + (refs.get(id(child), 0) > 1))
        busy.discard(id(node))
        if size > MAX_YAML_VALUES:
            where = name if name.startswith("override ") else f"{name}:{node.start_mark.line + 1}"
            raise ConfigError(
                f"{where}: YAML aliases expand to more than {MAX_YAML_VALUES:,} values here "
                f"({size:,}, aliases nested {depth} deep); refusing to load it (write the values out, or "
                f"nest fewer aliases)"
            )
        done[id(node)] = size, depth
        return size, depth

    measure(root)


class _LineLoader(_BoundedLoader):
    """:class:`_BoundedLoader` that records key line numbers."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> _Map:
    # YAML 1.1 merge (``<<: *anchor`` or ``<<: [*a, *b]``): the keys written in this mapping override the
    # merged ones, the first merged mapping wins among merged ones, two written keys of one name are an error.
    # Merged mappings are taken as constructed (their own merges already applied), not from PyYAML's in-place
    # flattening, which lets a merge of a mapping that itself merges bring back the keys it overrode.
    merged, written = _Map(), _Map()
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                mapping = loader.construct_object(source, deep=True)
                if not isinstance(mapping, _Map):
                    mark = key_node.start_mark
                    raise ConfigError(f"{mark.name}:{mark.line + 1}: `<<` merges mappings only")
                for key, value in mapping.items():
                    if key not in merged:
                        merged[key] = value
                        merged.lines[str(key)] = mapping.lines.get(str(key), source.start_mark.line + 1)
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool):
            raise ConfigError(
                f"{key_node.start_mark.name}:{key_node.start_mark.line + 1}: a key must be a plain name"
            )
        if key in written:
            raise ConfigError(
                f"{key_node.start_mark.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
            )
        written[key] = loader.construct_object(value_node, deep=True)
        written.lines[str(key)] = key_node.start_mark.line + 1
    out = _Map()
    for part in (merged, written):
        for key, value in part.items():
            # a copy: an alias or a merge would otherwise share one object between steps that stages mutate
            out[key] = copy.deepcopy(value)
            out.lines[str(key)] = part.lines[str(key)]
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


BUILTIN = "builtin:"
"""Prefix of a config shipped in the package: ``builtin:ppo`` is ``rewardmix/configs/ppo.yaml``."""
BUILTIN_FOLDERS = ("configs", "recipes")
"""Package folders holding the ``builtin:`` configs: stage configs, then recipes (``rewardmix run``)."""


def builtin_configs() -> dict[str, Path]:
    """Every ``builtin:<name>`` config shipped in the package, by name (the file's stem), sorted."""
    root = Path(str(importlib.resources.files("rewardmix")))
    found = {p.stem: p for folder in BUILTIN_FOLDERS for p in (root / folder).glob("*.yaml")}
    return dict(sorted(found.items()))


def config_path(path: str | Path) -> Path:
    """The file a config path names: ``builtin:<name>`` from the package, any other path as it is.

    Raises:
        ConfigError: An unknown builtin name (the message lists the known ones).
    """
    text = str(path)
    if not text.startswith(BUILTIN):
        return Path(path)
    known = builtin_configs()
    name = text[len(BUILTIN) :]
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"; did you mean {BUILTIN}{close[0]}?" if close else ""
        names = ", ".join(known)
        raise ConfigError(
            f"{text}: unknown builtin config{hint} (known: {names}; `rewardmix show-config --list`)"
        )
    return known[name]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with safe loading; errors name the file and line. ``builtin:<name>`` is allowed."""
    path = config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.load(text, Loader=_make_loader(str(path)))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {e.problem}") from None
    if data is None:
        data = _Map()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _make_loader(name: str, cls: type[_BoundedLoader] | None = None):
    loader_cls = cls or _LineLoader

    def factory(stream):
        loader = loader_cls(stream)
        loader.name = name
        return loader

    return factory


def _make_override_loader(name: str):
    return _make_loader(name, _BoundedLoader)


_SEGMENT = re.compile(r"^(?P<name>[^.\[\]]+)(?P<indices>(\[\d+\])*)$")


def parse_key(key: str, *, label: str | None = None) -> list[str | int]:
    """``reward.components[0].weight`` -> ``["reward", "components", 0, "weight"]``.

    Args:
        key: A dotted key; list items by index (``name[i]``, ``name[i][j]``).
        label: How errors name the key (default ``key '<key>'``).

    Raises:
        ConfigError: An empty or malformed part.
    """
    label = label or f"key {key!r}"
    parts: list[str | int] = []
    for segment in key.strip().split("."):
        if not segment:
            raise ConfigError(f"{label}: empty key component")
        match = _SEGMENT.match(segment)
        if match is None:
            raise ConfigError(f"{label}: cannot read part {segment!r} (use name or name[index])")
        parts.append(match.group("name"))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group("indices")))
    return parts


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """Split ``a.b[0].c=value`` into (["a", "b", 0, "c"], value); the value is read as YAML (``3`` -> int)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = parse_key(key, label=f"override {text!r}")
    try:
        value = yaml.load(raw, Loader=_make_override_loader(f"override {text!r}")) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def set_key(
    data: dict[str, Any],
    key: str | list[str | int],
    value: Any,
    *,
    label: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Set ``key`` (see :func:`parse_key`) in the nested mapping ``data``, in place.

    A missing section is created; a missing list is copied from ``defaults`` (the config's defaults as plain
    data, :func:`to_dict`) so that ``components[0].weight`` can change one item of a default list.

    Raises:
        ConfigError: An index out of range, a list that neither ``data`` nor ``defaults`` has, or a part
            that is not a section; the message starts with ``label`` (default ``key '<key>'``).
    """
    parts = parse_key(key, label=label) if isinstance(key, str) else key
    label = label or f"key {_key_text(parts)!r}"
    node: Any = data
    default: Any = defaults
    for i, part in enumerate(parts):
        here, last = _key_text(parts[: i + 1]), i == len(parts) - 1
        if isinstance(part, int):
            parent = _key_text(parts[:i])
            if not isinstance(node, list):
                raise ConfigError(f"{label}: {parent} is not a list")
            if part >= len(node):
                n = len(node)
                raise ConfigError(f"{label}: {parent} has {n} item{'s' * (n != 1)}, no item [{part}]")
        elif not isinstance(node, dict):
            kind = "a list (address its items as name[i])" if isinstance(node, list) else "not a section"
            raise ConfigError(f"{label}: {_key_text(parts[:i]) or 'the config'} is {kind}")
        default = _child(default, part)
        if last:
            node[part] = value
            if isinstance(node, _Map | _List):
                # Errors about this key now name the override, not the file's line.
                node.override_sources[part] = label
            return
        child = node[part] if isinstance(part, int) else node.get(part)
        if child is None:
            if isinstance(parts[i + 1], int):
                if not isinstance(default, list):
                    raise ConfigError(f"{label}: {here} is not a list (neither the config nor its defaults)")
                child = _as_map(copy.deepcopy(default))
            elif isinstance(default, list):
                raise ConfigError(f"{label}: {here} is a list (address its items as name[i])")
            else:
                child = _Map()
            node[part] = child
        elif not isinstance(child, dict | list):
            raise ConfigError(f"{label}: {here} is not a section")
        elif isinstance(child, list) and not isinstance(child, _List):
            child = node[part] = _List(child)  # so that errors about the item name the override
        node = child


def apply_overrides(
    data: dict[str, Any], overrides: list[str], *, defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Set each ``key.sub=value`` in the nested mapping ``data`` (in place, and returned).

    ``defaults`` (plain data) supplies a list that ``data`` lacks when an override addresses one of its items.
    """
    for text in overrides:
        parts, value = parse_override(text)
        set_key(data, parts, value, label=f"override {text!r}", defaults=defaults)
    return data


def config_defaults(cls: type) -> dict[str, Any]:
    """The defaults of dataclass ``cls`` as plain data (:func:`to_dict`); required fields are left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.init and f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default)
        elif f.init and f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default_factory())
    return out


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _as_map(value: Any) -> Any:
    """Plain data with each mapping a :class:`_Map`, so overrides inside it are named in errors."""
    if isinstance(value, dict):
        return _Map({k: _as_map(v) for k, v in value.items()})
    if isinstance(value, list):
        return _List(_as_map(v) for v in value)
    return value


def _key_text(parts: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


EXPANDED_FIELDS = ("output_dir", "dir")
"""Fields whose string value :func:`from_dict` expands with :func:`expand_path` (in any section)."""

_ENV_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_path(value: str, *, key: str = "output_dir") -> str:
    """``value`` with ``$VAR`` / ``${VAR}`` and a leading ``~`` / ``~user`` expanded, as a shell would.

    Args:
        value: A path as the user wrote it.
        key: The config key, for messages.

    Raises:
        ConfigError: ``key '<key>': environment variable $X is not set`` or ``... no home folder for ~user``.
    """

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise ConfigError(f"key {key!r}: environment variable ${name} is not set (in {value!r})")
        return os.environ[name]

    expanded = os.path.expanduser(_ENV_VAR.sub(variable, value))
    if expanded.startswith("~"):
        user = expanded.split("/", 1)[0]
        raise ConfigError(f"key {key!r}: no home folder for {user} (in {value!r})")
    return expanded


def load_config(
    cls: type[T], path: str | Path | None, overrides: list[str] | None = None, *, stage: str | None = None
) -> T:
    """Load ``path`` (``None``: all defaults) into dataclass ``cls``, applying ``overrides`` first.

    A top-level ``stage:`` key names the stage the file is for; it must equal ``stage`` when both are given.
    """
    path = config_path(path) if path is not None else None
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = load_yaml(path) if path is not None else _Map()
    file_stage = data.pop("stage", None)
    if stage is not None and file_stage is not None and file_stage != stage:
        raise ConfigError(f"{source}: this config is for stage {file_stage!r}, not {stage!r}")
    # The defaults supply a list the file does not set when an override changes one of its items.
    apply_overrides(data, list(overrides or []), defaults=config_defaults(cls))
    return from_dict(cls, data, source=source)


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; every problem raises :class:`ConfigError`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    where = _where(data, None, source, prefix)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {prefix or 'the config'}, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {_dotted(prefix, close[0])!r}?" if close else ""
            raise ConfigError(
                f"{_where(data, key, source, prefix)}: unknown key {_dotted(prefix, key)!r}{hint} "
                f"(known keys here: {known})"
            )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {_dotted(prefix, name)!r}")
            continue
        try:
            kwargs[name] = _convert(
                hints[name],
                data[name],
                source=source,
                key=_dotted(prefix, name),
                where=_where(data, name, source, prefix),
            )
        except ConfigError as e:
            if name in EXPANDED_FIELDS and data[name] is None:  # `output_dir: ~` or `output_dir=~`
                raise ConfigError(
                    f"{e} (YAML reads a lone ~ as null: write ~/ for the home folder)"
                ) from None
            raise
        if name in EXPANDED_FIELDS and isinstance(kwargs[name], str):
            try:
                kwargs[name] = expand_path(kwargs[name], key=_dotted(prefix, name))
            except ConfigError as e:
                raise ConfigError(f"{_where(data, name, source, prefix)}: {e}") from None
        if name == "seed" and isinstance(kwargs[name], int) and not 0 <= kwargs[name] < SEED_LIMIT:
            raise ConfigError(
                f"{_where(data, name, source, prefix)}: {_dotted(prefix, name)!r} must be in [0, 2**32 - 1], "
                f"got {_show(kwargs[name])}"
            )
    try:
        return cls(**kwargs)
    except RangeError as e:
        # the key's own line (or the override that set it), as for a value of the wrong type
        raise ConfigError(
            f"{_where(data, e.field, source, prefix)}: {_dotted(prefix, e.field)!r} {e.message}"
        ) from None
    except (ValueError, TypeError) as e:
        # __post_init__ validation (cross-field checks) reports against the section, or against the line of the
        # key its message starts with (``reward.components: ...`` -> the line of ``reward:``) when it is here.
        node: Any = data
        for part in str(e).split(":", 1)[0].strip("`' ").split("."):
            if not isinstance(node, dict) or part not in node:
                break
            found = _where(node, part, source, prefix)
            where = found if found != source else where
            node = node[part]
        raise ConfigError(f"{where}: {prefix or 'config'}: {e}") from None


def _convert(tp: Any, value: Any, *, source: str, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key!r} must be {expected}, got {_show(value)}")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for arg in non_none:
            try:
                return _convert(arg, value, source=source, key=key, where=where)
            except ConfigError as e:
                errors.append(e)
        if len(non_none) == 1:
            raise errors[0]
        raise fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        raise fail("one of " + ", ".join(repr(a) for a in args))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"a mapping ({tp.__name__})")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise fail(f"a list ({_type_name(tp)})")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise fail(f"a list of {len(args)} items")
            items = [
                _convert(a, v, source=source, key=f"{key}[{i}]", where=_item_where(value, i, where))
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            ]
            return tuple(items)
        item_tp = args[0] if args else Any
        items = [
            _convert(item_tp, v, source=source, key=f"{key}[{i}]", where=_item_where(value, i, where))
            for i, v in enumerate(value)
        ]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(key_tp, k, source=source, key=f"{key} key", where=where): _convert(
                val_tp, v, source=source, key=_dotted(key, str(k)), where=_where(value, k, source, key)
            )
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail("an integer")
    if tp is float:
        # The one place a config float is made: NaN and infinity in any spelling (YAML's .nan/.inf, float()'s
        # "+nan"/"Infinity", an overflowing "1e999" or a 400-digit integer) are refused. No field accepts them;
        # one that ever needs infinity should say so with its own type, not by loosening this check.
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise fail("a number")
        try:
            # YAML 1.1 reads "1e-5" (no dot) as a string; accept what float() accepts.
            out = float(value)
        except ValueError:
            raise fail("a number") from None
        except OverflowError:  # an integer too large for a float
            raise fail("a finite number") from None
        if not math.isfinite(out):
            raise fail("a finite number")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail("a string")
    if isinstance(tp, type) and issubclass(tp, Path):
        if isinstance(value, str):
            return Path(value)
        raise fail("a path string")
    raise TypeError(f"unsupported config field type {tp!r} for {key!r}")


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list (tuples and Paths become lists and strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_yaml(obj: Any) -> str:
    """The resolved config as YAML, keys in declaration order."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def _dotted(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _where(data: Any, key: Any, source: str, prefix: str) -> str:
    overrides = getattr(data, "override_sources", {}) or {}
    if key is not None and key in overrides:
        return overrides[key]
    lines = getattr(data, "lines", None) or {}
    line = lines.get(str(key)) if key is not None else None
    if line is not None and line > 0:
        return f"{source}:{line}"
    return source


def _item_where(items: Any, index: int, where: str) -> str:
    """Where list item ``index`` came from: the override that set it, else where the list is (``where``)."""
    return (getattr(items, "override_sources", None) or {}).get(index, where)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
