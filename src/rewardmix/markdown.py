"""Escape text for the Markdown files the stages write (``report.md``, ``tables.md``, ``human_eval.md``, ...).

Those files carry text from outside the project: model responses, prompts, model, run and annotator names.
A Markdown renderer passes raw HTML through, so a response holding ``<script>`` or ``<img onerror=...>``
would become live HTML in the rendered report, and a ``|`` or a line break in a table cell would split the
row. Every Markdown writer builds its lines from these helpers:

- :func:`md_text` for running text and headings: ``&``, ``<`` and ``>`` become entities (a renderer shows
  them as the characters), line breaks become spaces;
- :func:`md_cell` for a table cell: :func:`md_text` plus ``\\`` and ``|`` escaped with a backslash;
- :func:`md_code` for an inline code span (names, config keys): a backtick fence longer than any run of
  backticks in the text; HTML is inert inside a code span, so nothing else is escaped (a ``|`` is
  backslash-escaped in a cell, as GitHub tables require even inside code).

Markdown our own code writes (emphasis, links to ``figures/``, code spans) is left alone: only the text put
into it passes through a helper.
"""

from __future__ import annotations

import re

__all__ = ["md_cell", "md_code", "md_text"]

_HTML = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"}
_BACKTICKS = re.compile(r"`+")


def _one_line(text: str) -> str:
    # splitlines knows every line break (\r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029), not only \n
    return " ".join(str(text).splitlines())


def md_text(text: object) -> str:
    """``text`` for a Markdown paragraph or heading: HTML special characters as entities, on one line.

    Example: ``md_text("<b>x</b> & y")`` -> ``"&lt;b&gt;x&lt;/b&gt; &amp; y"`` (shown as the original).
    """
    return _one_line(str(text)).translate(_HTML)


def md_cell(text: object) -> str:
    """``text`` for one cell of a Markdown table: :func:`md_text`, then ``\\`` and ``|`` backslash-escaped.

    Example: ``md_cell("a|b\\nc")`` -> ``"a\\|b c"``.
    """
    return md_text(text).replace("\\", "\\\\").replace("|", "\\|")


def md_code(text: object, *, cell: bool = False) -> str:
    """``text`` as an inline code span, fenced with one backtick more than its longest run of backticks.

    Args:
        text: The text (a name, a key, a value).
        cell: The span goes into a table cell: ``|`` is backslash-escaped (GitHub reads ``\\|`` as ``|``
            even inside code).
    """
    body = _one_line(str(text))
    longest = max((len(m) for m in _BACKTICKS.findall(body)), default=0)
    fence = "`" * (longest + 1)
    if body.startswith("`") or body.endswith("`") or not body.strip():
        body = f" {body} "  # CommonMark strips one space each side, so a backtick at an edge stays code
    if cell:
        body = body.replace("|", "\\|")
    return f"{fence}{body}{fence}"
