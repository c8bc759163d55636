"""The lexical level of answers and labels: the "answer is" marker, numbers, word boundaries, label folding.

Shared by the declarations (:mod:`.spec` refuses labels that contain the marker or differ only in case) and
the label parser (:mod:`.answers`, whose rules are listed there).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "LEAD_RE",
    "MARKER_RE",
    "NUMBER_RE",
    "SPACE_RE",
    "TRAIL_CHARS",
    "fold",
    "is_boundary",
    "normalize",
]

# "answer is" not followed by a letter/apostrophe ("answer isn't" is no marker); the optional group notes a
# colon after markdown/quotes ("**The answer is:**", "answer is ':'").
MARKER_RE = re.compile(r"answer\s+is(?![\w'’])(?P<colon>[\s*_`\"'“”‘’]*:)?", re.IGNORECASE)
LEAD_RE = re.compile(r"^[\s:*_`\"'“”‘’]+")
TRAIL_CHARS = " \t\r\n*_`\"'“”‘’.,;:!?)]}"
SPACE_RE = re.compile(r"\s+")
NUMBER_RE = re.compile(r"(?<![\w.])[-+−]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def fold(text: str) -> str:
    """Case-insensitive, whitespace-insensitive comparison key."""
    return SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def normalize(text: str) -> str:
    """NFKC (full-width letters and colons become ASCII), without format characters."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")  # zero-width spaces, BOMs


def is_boundary(text: str, index: int) -> bool:
    """Whether ``text[index]`` may border a label: outside the text, or not a letter, digit or hyphen."""
    if index < 0 or index >= len(text):
        return True
    ch = text[index]
    return not (ch.isalnum() or ch == "-")
