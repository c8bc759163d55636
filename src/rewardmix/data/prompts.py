"""The prompt pool a policy answers (the PPO stage's data): rows in, rendered and truncated prompts out.

A pool is a JSONL/CSV/TSV/Parquet file whose rows hold a ``prompt`` text, a ``messages`` conversation or an
NLU ``question`` (+ ``label``, ``task``), a data file of a registered NLU task read by its declaration, or the
built-in toy prompts. Every other field of a row travels with the prompt as its ``meta`` (the gold label, the
task): rule scorers read it. Each prompt is rendered with the tokenizer's chat template and cut from its start
to ``max_prompt_tokens`` (CRS §5.3), so the assistant header always stays.

This module never imports ``transformers``: a tokenizer is anything :func:`rewardmix.data.chat.tokenize_prompt`
accepts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from rewardmix.config import check_ranges
from rewardmix.data.chat import ChatDataError, Message, as_messages, tokenize_prompt, truncate_prompt_ids
from rewardmix.data.readers import DataError, read_converted
from rewardmix.data.toy import BUILTIN_TOY, toy_rows
from rewardmix.rundir import atomic_write_text

log = logging.getLogger(__name__)

PromptFormat = Literal["auto", "prompt", "messages", "nlu", "task"]


@dataclass
class DataConfig:
    preflight_paths: ClassVar[dict[str, str]] = {"prompts": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    prompts: str = BUILTIN_TOY
    """Prompt pool: a JSONL/CSV/TSV/Parquet file, or ``builtin:toy`` (66 "What is two plus three?" prompts)."""
    format: PromptFormat = "auto"
    """Row format. ``prompt``: a text field (``prompt_key``); ``messages``: a conversation (a trailing assistant
    turn is dropped and kept as ``meta.reference``); ``nlu``: ``question`` (+ ``label``, ``task``) rows; ``task``:
    ``prompts`` is a data file of the NLU task ``task``, read by its declaration. ``auto`` tells the first three
    apart by the first row's keys. Every other field of a row is kept in the sample's ``meta``."""
    task: str | None = None
    """NLU task name (``sst2``, ...): needed by ``format: task``; with other formats, the ``meta.task`` of rows
    that have none (what ``label_correct`` reads)."""
    prompt_key: str = "prompt"
    """Field holding the prompt text for ``format: prompt``."""
    system_prompt: str | None = None
    """A system message put before every prompt that has none; null: no system message."""
    max_prompt_tokens: int = 1024
    """Prompt tokens kept, cut from the start (CRS §5.4: prompts up to 1024 tokens; CRS §5.3: from the start)."""
    epochs: int = 1
    """Passes over the prompt pool when ``ppo.steps`` is null (RLLR Table 3: 1 epoch)."""
    limit: int | None = None
    """Use only the first N prompts (null: all)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A malformed row: stop with its file, line and field (``error``), or count it, log it and go on."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("max_prompt_tokens", "epochs", "limit"))


class PromptExample(NamedTuple):
    """One prompt of the pool."""

    messages: list[Message]
    """The conversation the policy answers (ends with a user turn)."""
    input_ids: list[int]
    """Its rendering with the assistant header, cut from the start to ``data.max_prompt_tokens``."""
    meta: dict[str, Any]
    """The row's other fields (gold label, task, ...), passed to the scorers."""


def load_prompts(data: DataConfig, tokenizer: Any, *, out: Path | None = None) -> list[PromptExample]:
    """Read, convert and tokenize the prompt pool; counts go to ``<out>/data_report.json``.

    Args:
        data: The ``data`` config section.
        tokenizer: Renders and tokenizes each prompt (with its chat template).
        out: Run directory for the report; None writes none.

    Returns:
        The pool, in file order (``data.limit`` first rows).

    Raises:
        DataError: A malformed row under ``on_bad_row: error`` (file, row and field named), or an empty pool.
    """
    read_report: dict[str, Any] | None = None
    if data.prompts == BUILTIN_TOY:
        rows: list[dict[str, Any]] = [{"prompt": r["prompt"]} for r in toy_rows()]
        kind = "prompt"
    elif data.format == "task":
        from rewardmix.data.tasks import load_task_examples

        assert data.task is not None
        examples, report = load_task_examples(data.task, data.prompts, on_bad_row=data.on_bad_row)
        rows = [{"question": e.question, "task": e.task, "label": e.label} for e in examples]
        read_report, kind = report.to_dict(), "nlu"
    else:
        rows, report, kind = read_converted(
            data.prompts,
            data.format,
            detect=lambda row: detect_prompt_format(row, data),
            convert=lambda row, k: row_to_prompt(row, k, data),
            detect_errors=(DataError,),
            on_bad_row=data.on_bad_row,
        )
        read_report = report.to_dict()
    if data.limit is not None:
        rows = rows[: data.limit]
    prompts, truncated = [], 0
    skipped = read_report["n_skipped"] if read_report else 0
    for row in rows:
        messages, meta = row_to_prompt(row, kind, data)
        ids = tokenize_prompt(messages, tokenizer)
        truncated += len(ids) > data.max_prompt_tokens
        prompts.append(PromptExample(messages, truncate_prompt_ids(ids, data.max_prompt_tokens), meta))
    if not prompts:
        raise DataError(f"{data.prompts}: no usable prompt")
    report = {
        "read": read_report,
        "format": kind,
        "prompts": len(prompts),
        "skipped": skipped,
        "truncated": truncated,
    }
    log.info(
        "%s: %d prompts (%s format), %d truncated, %d skipped",
        data.prompts,
        len(prompts),
        kind,
        truncated,
        skipped,
    )
    if out is not None:
        atomic_write_text(out / "data_report.json", json.dumps(report, indent=2, default=str) + "\n")
    return prompts


def detect_prompt_format(row: Mapping[str, Any], data: DataConfig) -> PromptFormat:
    """Tell a row's format from its keys: ``messages``, then ``prompt_key``, then ``question`` (nlu)."""
    if "messages" in row:
        return "messages"
    if data.prompt_key in row:
        return "prompt"
    if "question" in row:
        return "nlu"
    raise DataError(
        f"{data.prompts}: cannot tell the prompt format from the keys {sorted(row)}; set data.format"
    )


def row_to_prompt(
    row: Mapping[str, Any], kind: PromptFormat, data: DataConfig
) -> tuple[list[Message], dict[str, Any]]:
    """One row -> (conversation ending with the user's turn, meta = the row's other fields)."""
    if kind == "messages":
        messages = _messages_field(row["messages"])
        meta = {k: v for k, v in row.items() if k != "messages"}
        if messages and messages[-1].role == "assistant":  # a reference answer, not part of the prompt
            meta["reference"] = messages[-1].content
            messages = messages[:-1]
        if not messages or messages[-1].role != "user":
            raise ChatDataError("field 'messages': the conversation must end with a user turn")
    elif kind in ("prompt", "nlu"):
        key = data.prompt_key if kind == "prompt" else "question"
        text = row.get(key)
        if not isinstance(text, str) or not text.strip():
            raise ChatDataError(f"field {key!r}: expected a non-empty string, got {text!r}")
        messages = [Message("user", text.strip())]
        meta = {k: v for k, v in row.items() if k != key}
    else:
        raise ValueError(f"unknown prompt format {kind!r}")
    if data.task is not None:
        meta.setdefault("task", data.task)
    if data.system_prompt is not None and messages[0].role != "system":
        messages = [Message("system", data.system_prompt), *messages]
    return messages, meta


def _messages_field(raw: Any) -> list[Message]:
    try:
        return as_messages(json.loads(raw) if isinstance(raw, str) else raw)
    except (TypeError, ValueError) as e:
        raise ChatDataError(f"field 'messages': {e}") from None


def prompt_hash(prompts: Sequence[PromptExample]) -> str:
    """A short hash of the tokenized prompts: a resumed run must see the very same pool."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(array("q", prompt.input_ids).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]
