"""Generate ``docs/reference.md``: every CLI command and every config field, from the code itself.

Each stage's ``Config`` dataclass documents its fields with a docstring under each field (the cleanrl
``Args`` style); this module reads those docstrings with ``ast`` and writes one table per config section.
A test checks that the committed file equals the generated one, so the reference cannot go stale.

    python -m rewardmix.docgen > docs/reference.md
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any

from rewardmix.cli import build_parser
from rewardmix.stages import STAGES


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One config field as the reference and ``rewardmix <stage> --help`` show it."""

    key: str
    """Dotted key; the items of a list of sections are ``key[].sub``."""
    kind: str
    """``value``, ``section``, ``optional section`` or ``list of sections``."""
    type: str
    """The annotation as text (``float | None``); empty for a section."""
    default: str | None
    """``repr`` of the default, ``(section)`` for a nested section; None: required."""
    doc: str
    """The field's docstring, whitespace collapsed."""
    summary: str
    """The docstring's first line."""


def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the string literal written right under it in the class body.

    Fields inherited from a dataclass base take the base's docstring unless ``cls`` redeclares them.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is cls or dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _optional_dataclass(tp: Any) -> type | None:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if (
        typing.get_origin(tp) in (typing.Union, types.UnionType)
        and len(args) == 1
        and dataclasses.is_dataclass(args[0])
    ):
        return args[0]
    return None


def _list_item_dataclass(tp: Any) -> type | None:
    if typing.get_origin(tp) in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _type_text(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "").replace("NoneType", "None")


def _default(field: dataclasses.Field) -> str | None:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        return "(section)" if dataclasses.is_dataclass(value) else repr(value)
    return None


def config_sections(cls: type, prefix: str = "") -> list[tuple[str, list[FieldDoc]]]:
    """(section key, its fields) for ``cls`` (key ``""``), then depth first for each nested section."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows: list[FieldDoc] = []
    nested: list[tuple[str, type]] = []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        doc = docs.get(f.name, "")
        summary = doc.splitlines()[0] if doc else ""
        doc = " ".join(doc.split())
        optional, item = _optional_dataclass(tp), _list_item_dataclass(tp)
        if dataclasses.is_dataclass(tp):
            nested.append((key, tp))
            rows.append(FieldDoc(key, "section", "", "(section)", doc, summary))
        elif optional is not None:
            nested.append((key, optional))
            rows.append(FieldDoc(key, "optional section", _type_text(tp), "None", doc, summary))
        elif item is not None:
            nested.append((f"{key}[]", item))
            rows.append(FieldDoc(key, "list of sections", _type_text(tp), _default(f), doc, summary))
        else:
            rows.append(FieldDoc(key, "value", _type_text(tp), _default(f), doc, summary))
    out: list[tuple[str, list[FieldDoc]]] = [(prefix.rstrip("."), rows)]
    for key, tp in nested:
        out += config_sections(tp, prefix=f"{key}.")
    return out


def config_tables(cls: type, prefix: str = "") -> list[str]:
    """Markdown tables for ``cls`` and, after it, for each nested section."""
    out = []
    for i, (section, fields) in enumerate(config_sections(cls, prefix)):
        rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for d in fields:
            meaning = d.doc.replace("|", "\\|")
            default = "**required**" if d.default is None else f"`{d.default}`"
            if d.kind == "section":
                rows.append(
                    f"| `{d.key}` | section | | {meaning + ' See' if meaning else 'see'} `{d.key}.*` below |"
                )
            elif d.kind == "optional section":
                rows.append(f"| `{d.key}` | optional section | `None` | {meaning} See `{d.key}.*` below |")
            elif d.kind == "list of sections":
                rows.append(
                    f"| `{d.key}` | list of sections | {default} | {meaning} Items: see `{d.key}[].*` below |"
                )
            else:
                rows.append(f"| `{d.key}` | `{d.type}` | {default} | {meaning} |")
        table = "\n".join(rows)
        if i > 0:
            table = f"**`{section}.*`**\n\n" + table
        out.append(table)
    return out


def _help_text() -> str:
    # A fixed width, so the file does not depend on the terminal that generated it.
    parser = build_parser()
    parser.formatter_class = functools.partial(argparse.RawDescriptionHelpFormatter, width=100)
    return parser.format_help().rstrip()


def reference() -> str:
    parts = [
        "# rewardmix reference",
        "",
        "Generated by `python -m rewardmix.docgen > docs/reference.md` from the code; do not edit by hand.",
        "",
        "## Command line",
        "",
        "```",
        _help_text(),
        "```",
        "",
        "Every stage is `rewardmix <stage> [CONFIG.yaml | builtin:<name>] [key.sub=value ...]`; list items are",
        "`key[i].sub=value` (`reward.components[0].weight=0.3`). A YAML file may start with `stage: <name>`;",
        "values are checked strictly (unknown keys and wrong types are errors naming file, line and key).",
        "`rewardmix show-config CONFIG.yaml` prints the resolved config, `rewardmix show-config --stage <stage>`",
        "a stage's defaults, `rewardmix show-config --list` the shipped `builtin:` configs, and",
        "`rewardmix <stage> --help` the fields below in short.",
        "",
        "## Config fields by stage",
    ]
    for stage in STAGES:
        module = stage.load()
        parts += ["", f"### `{stage.name}`", "", stage.help, "", "\n\n".join(config_tables(module.Config))]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
