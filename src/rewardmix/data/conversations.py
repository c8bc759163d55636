"""SFT data: rows of a file -> conversations ending with the answer to learn -> tokenized examples.

Row formats (``ConversationFormat``): ``messages``, ``prompt``/``response``, Alpaca, Dolly, GSM8K, and NLU
examples with rationales (``question``, ``rationale``, ``label`` -> ``"{rationale}\\n\\nThe answer is:
{label}"``; ``with_rationale: false`` trains on ``"The answer is: {label}"``, the "SFT" baseline of RLLR Table 4
rather than "SFT w. rat."). :func:`read_conversations` reads a file (or ``builtin:toy``) under the bad-row
policy of :mod:`rewardmix.data.readers`; :func:`tokenize_examples` renders each conversation with the chat
template and the answer-only loss mask (CRS §5.2) and truncates it (CRS §5.3).

Reference: CRS §5.2-5.3; RLLR §4.1, Table 3 and Appendix A (answer format).
"""

from __future__ import annotations

import hashlib
import json
import logging
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from rewardmix.config import check_ranges
from rewardmix.data.chat import (
    ChatDataError,
    Message,
    TokenizedChat,
    TrainOn,
    as_messages,
    from_alpaca,
    from_dolly,
    from_gsm8k,
    tokenize_chat,
)
from rewardmix.data.readers import read_converted
from rewardmix.data.tasks import format_answer
from rewardmix.data.toy import BUILTIN_TOY, toy_rows

__all__ = [
    "ConversationFormat",
    "ExamplesConfig",
    "SftExample",
    "answer_tokens",
    "data_hash",
    "detect_format",
    "read_conversations",
    "row_to_messages",
    "tokenize_examples",
]

log = logging.getLogger(__name__)

ConversationFormat = Literal["auto", "messages", "prompt_response", "alpaca", "dolly", "gsm8k", "nlu"]


@dataclass
class ExamplesConfig:
    """How rows become training examples (the SFT stage's ``examples`` section)."""

    with_rationale: bool = True
    """NLU rows: train on "{rationale}\\n\\nThe answer is: {label}" (RLLR "SFT w. rat."); false: on "The
    answer is: {label}" alone (RLLR "SFT")."""
    train_on: TrainOn = "last"
    """Multi-turn rows: learn the last assistant turn only, or every assistant turn (``all_assistant``)."""
    max_length: int = 2048
    """Token budget per example; longer ones are truncated (prompt from its start, answer from its end)."""
    min_prompt_tokens: int = 256
    """Prompt tokens kept at least when truncating (CRS §5.3)."""
    dolly_context: bool = False
    """Dolly rows: append the ``context`` field to the instruction (the thesis left it out)."""
    system_prompt: str | None = None
    """A system message put before every conversation that has none; null: no system message."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A malformed row: stop with its file, line and field (``error``), or count it, log it and go on."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("max_length",), at_least_0=("min_prompt_tokens",))


class SftExample(NamedTuple):
    """One tokenized training example."""

    input_ids: list[int]
    loss_mask: list[bool]
    """True on the tokens the loss is taken on (the answer)."""
    prompt_length: int
    """Tokens of the prompt, the answer's assistant header included."""


# ---------------------------------------------------------------------------------------------------------
# Rows -> conversations


def read_conversations(
    source: str, fmt: ConversationFormat, examples: ExamplesConfig
) -> tuple[list[list[Message]], dict[str, Any]]:
    """Rows of ``source`` as conversations ending with the answer to learn, and what happened to the rows.

    Returns:
        ``(conversations, counts)``: ``counts["read"]`` is the reader's report (rows in/out, bad rows with their
        line and field, a row that does not fit the format included: an error under ``on_bad_row: error``,
        a counted skip under ``skip``), ``counts["format"]`` the row format used.
    """
    if source == BUILTIN_TOY:
        rows, read = toy_rows(), None
        kind = detect_format(rows[0], source) if fmt == "auto" else fmt
    else:
        rows, report, kind = read_converted(
            source,
            fmt,
            detect=lambda row: detect_format(row, source),
            convert=lambda row, k: row_to_messages(row, k, examples),
            detect_errors=(ChatDataError,),
            on_bad_row=examples.on_bad_row,
        )
        read = report.to_dict()
    convs = [row_to_messages(row, kind, examples) for row in rows]
    log.info("%s: %d conversations (%s format)", source, len(convs), kind)
    return convs, {"read": read, "format": kind}


def detect_format(row: Mapping[str, Any], where: str) -> ConversationFormat:
    """Tell a row's format from its keys (see ``PhaseConfig.format`` of the SFT stage)."""
    keys = set(row)
    rules: list[tuple[set[str], ConversationFormat]] = [
        ({"messages"}, "messages"),
        ({"prompt", "response"}, "prompt_response"),
        ({"instruction", "output"}, "alpaca"),
        ({"instruction", "response"}, "dolly"),
        ({"question", "label"}, "nlu"),
        ({"question", "answer"}, "gsm8k"),
    ]
    for needed, kind in rules:
        if needed <= keys:
            return kind
    raise ChatDataError(
        f"{where}: cannot tell the data format from the keys {sorted(keys)}; set the phase's format"
    )


def row_to_messages(
    row: Mapping[str, Any], kind: ConversationFormat, examples: ExamplesConfig
) -> list[Message]:
    """One row -> [system?] + user/assistant turns, ending with the answer to learn."""
    if kind == "messages":
        raw = row["messages"]
        try:
            messages = as_messages(json.loads(raw) if isinstance(raw, str) else raw)
        except (TypeError, ValueError) as e:
            raise ChatDataError(f"field 'messages': {e}") from None
        if not messages or messages[-1].role != "assistant":
            raise ChatDataError("field 'messages': the conversation must end with an assistant turn to learn")
    elif kind == "prompt_response":
        messages = [Message("user", _text(row, "prompt")), Message("assistant", _text(row, "response"))]
    elif kind == "alpaca":
        messages = from_alpaca(row)
    elif kind == "dolly":
        messages = from_dolly(row, include_context=examples.dolly_context)
    elif kind == "gsm8k":
        messages = from_gsm8k(row)
    elif kind == "nlu":
        # Reference: RLLR Appendix A, "{rationale}\n\nThe answer is: {label}"; no rationale = RLLR's "SFT".
        rationale = _text(row, "rationale") if examples.with_rationale else ""
        label = row["label"]
        label = label.strip() if isinstance(label, str) else label
        messages = [
            Message("user", _text(row, "question")),
            Message("assistant", format_answer(rationale, label)),
        ]
    else:
        raise ValueError(f"unknown data format {kind!r}")
    if examples.system_prompt is not None and messages and messages[0].role != "system":
        messages = [Message("system", examples.system_prompt), *messages]
    return messages


def _text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ChatDataError(f"field {name!r}: expected a non-empty string, got {value!r}")
    return value.strip()


# ---------------------------------------------------------------------------------------------------------
# Conversations -> tokenized examples


def tokenize_examples(
    conversations: Sequence[Sequence[Message]], tokenizer: Any, examples: ExamplesConfig
) -> tuple[list[SftExample], dict[str, int]]:
    """Tokenize with the answer-only loss mask (CRS §5.2) and truncate (CRS §5.3).

    Returns:
        ``(examples, counts)``; ``counts["truncated"]`` examples were cut to ``max_length``, and
        ``counts["dropped_no_answer_tokens"]`` were left out because truncation kept no answer token.
    """
    out: list[SftExample] = []
    counts = {"truncated": 0, "dropped_no_answer_tokens": 0}
    for messages in conversations:
        chat: TokenizedChat = tokenize_chat(
            messages,
            tokenizer,
            max_length=examples.max_length,
            min_prompt_tokens=examples.min_prompt_tokens,
            train_on=examples.train_on,
        )
        counts["truncated"] += chat.truncated
        example = SftExample(chat.input_ids, chat.loss_mask, chat.prompt_length)
        if answer_tokens(example) == 0:
            counts["dropped_no_answer_tokens"] += 1
            continue
        out.append(example)
    return out, counts


def answer_tokens(example: SftExample) -> int:
    """Tokens the loss is taken on (the first token is never predicted, so its mask bit never counts)."""
    return sum(example.loss_mask[1:])


def data_hash(examples: Sequence[SftExample]) -> str:
    """A short hash of tokenized examples: a resumed run must train on the very same data."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(array("q", example.input_ids).tobytes())
        digest.update(bytes(example.loss_mask))
        digest.update(b"|")
    return digest.hexdigest()[:16]
