"""Keep API keys out of logs, exception messages, caches and saved files.

Keys are never stored on client objects: a client remembers only the *name* of the environment variable
(``api_key_env``) and reads its value when it builds a request. Every such name is registered here with
:func:`register_secret_env`, and :func:`redact` replaces the current value of every registered variable,
plus anything that looks like an ``Authorization: Bearer ...`` credential or an OpenAI-style ``sk-...`` key,
with ``***``.

:class:`RedactingFilter` applies :func:`redact` to log records. It is installed on the ``rewardmix`` logger
when this module is imported. Python applies a logger's filters only to records logged *on that logger*,
not to records propagated from child loggers, so the llm modules also attach it to their own loggers
(:func:`get_redacting_logger`), and an application that wants every record covered can add the filter
to its handlers with :func:`install_redaction` (``install_redaction(handler)``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
import types

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "RedactingFilter",
    "get_redacting_logger",
    "install_excepthooks",
    "install_redaction",
    "redact",
    "register_secret_env",
]

REDACTED = "***"

# Values shorter than this are not treated as secrets: local servers (vLLM, llama.cpp, Ollama) accept any
# placeholder such as "EMPTY" or "x", and replacing every "x" in a log line would destroy the log.
MIN_SECRET_LENGTH = 8

_BEARER = re.compile(r"(Bearer\s+)[^\s'\",;]+", re.IGNORECASE)
# OpenAI-style keys ("sk-...", "sk-proj-...") even when they come from a variable we were never told about.
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")

_lock = threading.Lock()
_secret_envs: set[str] = {"OPENAI_API_KEY"}


def register_secret_env(name: str) -> None:
    """Declare that environment variable ``name`` holds a secret; :func:`redact` will hide its value.

    Args:
        name: Variable name, e.g. ``"OPENAI_API_KEY"``.
    """
    with _lock:
        _secret_envs.add(name)


def _secret_values() -> list[str]:
    with _lock:
        names = sorted(_secret_envs)
    values: set[str] = set()
    for name in names:
        raw = os.environ.get(name, "")
        # The value as set, the key as it is sent (surrounding whitespace such as the "\r" of a CRLF key file
        # stripped), and both as a repr or an escaped header value shows them ("sk-abc\\r" in a traceback).
        for value in (raw, raw.strip()):
            if len(value.strip()) >= MIN_SECRET_LENGTH:
                values.add(value)
                values.add(value.encode("unicode_escape").decode("ascii"))
                values.add(repr(value)[1:-1])
    # Longest first so that a key containing another key is replaced whole.
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """Replace API keys and bearer credentials in ``text`` with ``***``.

    Replaces (1) the current value of every registered secret environment variable, as set, with surrounding
    whitespace stripped, and escaped as ``repr`` shows it (values shorter than :data:`MIN_SECRET_LENGTH` are
    left alone, see above), (2) the credential after ``Bearer``, and
    (3) OpenAI-style ``sk-`` keys.

    Args:
        text: Any text about to be logged, raised or saved.

    Returns:
        The text with every secret replaced.
    """
    if not text:
        return text
    for value in _secret_values():
        text = text.replace(value, REDACTED)
    text = _BEARER.sub(r"\g<1>" + REDACTED, text)
    return _SK_KEY.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message and any exception text of every record.

    The record's ``msg % args`` is formatted once, redacted and stored back with empty ``args``; a
    traceback is pre-formatted into ``exc_text`` (which handlers use verbatim) after redaction. The
    filter never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not make logging itself fail
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_redaction(target: logging.Logger | logging.Handler | str = "rewardmix") -> None:
    """Attach the shared :class:`RedactingFilter` to a logger or handler (idempotent).

    Args:
        target: A logger name, a ``logging.Logger`` or a ``logging.Handler``. Adding it to a handler covers
            records propagated from every child logger.
    """
    obj = logging.getLogger(target) if isinstance(target, str) else target
    if not any(isinstance(f, RedactingFilter) for f in obj.filters):
        obj.addFilter(_FILTER)


def get_redacting_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the redacting filter attached (see the module docstring)."""
    logger = logging.getLogger(name)
    install_redaction(logger)
    return logger


def redacting_excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    """A ``sys.excepthook`` that prints an uncaught exception's traceback redacted (installed by the CLI)."""
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def _redacting_thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(redact(f"Exception in thread {name}:\n{text}"))


def install_excepthooks() -> None:
    """Redact tracebacks of uncaught exceptions, in the main thread and in other threads.

    A hook someone else installed (a debugger, pytest) is left in place.
    """
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = redacting_excepthook
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _redacting_thread_hook


install_redaction("rewardmix")
