"""YAML -> nested typed dataclasses, strictly.

A config file is plain YAML whose keys mirror a stage's ``Config`` dataclass. Loading is strict: an unknown
key, a missing required key or a value of the wrong type is a :class:`ConfigError` naming the file, the line
and the dotted key. ``key.sub=value`` overrides from the command line are applied to the YAML before the
check, so a typo in an override is caught the same way (the source is then ``override 'key.sub=value'``).

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses, in any combination.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "apply_overrides",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_override",
    "to_dict",
    "to_yaml",
]


class ConfigError(ValueError):
    """A config value that cannot be accepted; the message names file, line and key."""


class _Map(dict):
    """A dict that remembers where each key came from: its 1-based line in the file, or an override."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[str, int] = {}
        self.override_sources: dict[str, str] = {}


class _LineLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no arbitrary objects) that records key line numbers."""


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with safe loading; errors name the file and line."""
    path = Path(path)
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


def _make_loader(name: str):
    def factory(stream):
        loader = _LineLoader(stream)
        loader.name = name
        return loader

    return factory


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], value); the value is read as YAML (``3`` -> int)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` in the nested mapping ``data`` (in place, and returned)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = _Map()
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
        if isinstance(node, _Map):
            # Errors about this key now name the override, not the file's line.
            node.override_sources[parts[-1]] = text
    return data


def load_config(
    cls: type[T], path: str | Path | None, overrides: list[str] | None = None, *, stage: str | None = None
) -> T:
    """Load ``path`` (``None``: all defaults) into dataclass ``cls``, applying ``overrides`` first.

    A top-level ``stage:`` key names the stage the file is for; it must equal ``stage`` when both are given.
    """
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = load_yaml(path) if path is not None else _Map()
    file_stage = data.pop("stage", None)
    if stage is not None and file_stage is not None and file_stage != stage:
        raise ConfigError(f"{source}: this config is for stage {file_stage!r}, not {stage!r}")
    apply_overrides(data, list(overrides or []))
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
        kwargs[name] = _convert(
            hints[name],
            data[name],
            source=source,
            key=_dotted(prefix, name),
            where=_where(data, name, source, prefix),
        )
    try:
        return cls(**kwargs)
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
                _convert(a, v, source=source, key=f"{key}[{i}]", where=where)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            ]
            return tuple(items)
        item_tp = args[0] if args else Any
        items = [
            _convert(item_tp, v, source=source, key=f"{key}[{i}]", where=where) for i, v in enumerate(value)
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
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML .nan / .inf
                raise fail("a finite number")
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string; accept what float() accepts, except nan/inf words.
            try:
                out = float(value)
            except ValueError:
                raise fail("a number") from None
            if value.strip().lower() in {"nan", "inf", "-inf", "+inf", "infinity", "-infinity"}:
                raise fail("a finite number")
            return out
        raise fail("a number")
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
        return f"override {overrides[key]!r}"
    lines = getattr(data, "lines", None) or {}
    line = lines.get(str(key)) if key is not None else None
    if line is not None and line > 0:
        return f"{source}:{line}"
    return source


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
