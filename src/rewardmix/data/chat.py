"""Chat data: messages, the chat template, SFT token masks, truncation, instruction sets and OASST trees.

The flow for supervised fine-tuning (CRS §5.1-5.2):

1. A dataset row becomes a list of :class:`Message` (``from_alpaca``, ``from_dolly``, ``from_gsm8k``, or
   ``top_ranked_thread`` / ``threads_from_trees`` for OASST conversation trees).
2. ``render_chat`` turns messages into text with the tokenizer's own chat template, or ChatML when it has
   none (CRS Figure 15).
3. ``tokenize_chat`` tokenizes the rendering turn by turn and marks the tokens the loss is taken on
   (assistant turns), checking that the turn-by-turn pieces are exactly the full tokenization.
4. Sequences longer than ``max_length`` are truncated by the CRS §5.3 rule (``truncated_lengths``): the
   prompt keeps its end and at least ``min_prompt_tokens`` tokens; the response is cut from its end.

This module never imports ``transformers``; a tokenizer is anything with ``encode`` (and, for its own
template, ``chat_template`` and ``apply_chat_template``), i.e. any Hugging Face tokenizer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, get_args

from rewardmix.data.readers import DataError

logger = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)
TrainOn = Literal["last", "all_assistant"]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
""":func:`chatml` as a Jinja chat template: set on a tokenizer that has none, ``apply_chat_template`` renders what
rewardmix renders without one (an exported reward model's tokenizer carries it)."""

# OASST calls the human side "prompter" (Köpf et al. 2023); chat templates call it "user".
OASST_ROLES: dict[str, Role] = {"prompter": "user", "assistant": "assistant"}


class ChatDataError(DataError):
    """A row or tree that cannot become a conversation; the message names where and which field.

    A :class:`~rewardmix.data.readers.DataError` (so a ``ValueError``): callers catch bad data in one place.
    """


class TemplateNotPrefixStableError(ValueError):
    """The chat template (or the tokenizer) does not render/tokenize a conversation turn by turn.

    ``tokenize_chat`` finds each turn's tokens as the difference between the tokenization of consecutive
    rendered prefixes; that is only sound when every prefix's text and tokens are prefixes of the next.
    """


class ChatTokenizer(Protocol):
    """What this module uses from a Hugging Face tokenizer (optional attributes are read with getattr)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


# ---------------------------------------------------------------------------------------------------------
# Messages and rendering
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One chat turn.

    Attributes:
        role: ``"system"``, ``"user"`` or ``"assistant"``.
        content: The turn's text, without any template markers.
    """

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be a str, got {type(self.content).__name__}")

    def to_dict(self) -> dict[str, str]:
        """The ``{"role": ..., "content": ...}`` form that ``apply_chat_template`` expects."""
        return {"role": self.role, "content": self.content}


def as_messages(messages: Sequence[Message | Mapping[str, Any]]) -> list[Message]:
    """Accept :class:`Message` objects or ``{"role", "content"}`` mappings; return Messages."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, Mapping) and "role" in m and "content" in m:
            out.append(Message(role=m["role"], content=m["content"]))
        else:
            raise TypeError(
                f"message {i}: expected a Message or a mapping with 'role' and 'content', got {m!r}"
            )
    return out


def chatml(messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """Render messages in ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn.

    Every turn, the last included, ends with ``<|im_end|>\\n``, so the rendering of ``messages[:i]`` is a
    text prefix of the rendering of ``messages[:i+1]`` (what ``tokenize_chat`` relies on). With
    ``add_generation_prompt`` the assistant header ``<|im_start|>assistant\\n`` is appended, ready for the
    model to write the reply.

    Args:
        messages: The conversation.
        add_generation_prompt: Append the assistant header.

    Returns:
        The rendered text.

    Reference:
        CRS §5.1.1, Figure 15 (``<|im_start|>user\\n{user prompt}<|im_end|>\\n<|im_start|>assistant\\n{Assistant
        answer}<|im_end|>``; "for a multi-turn conversation thread, the block is repeated"). The newline after
        the final ``<|im_end|>`` follows the usual ChatML convention and keeps prefixes stable.
    """
    text = "".join(f"{IM_START}{m.role}\n{m.content}{IM_END}\n" for m in messages)
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    return text


def render_chat(
    messages: Sequence[Message | Mapping[str, Any]],
    tokenizer: Any | None = None,
    *,
    add_generation_prompt: bool = False,
) -> str:
    """Render a conversation with the tokenizer's own chat template, else with ChatML.

    The tokenizer's template is used when ``tokenizer.chat_template`` is set (a non-empty string or dict), via
    ``tokenizer.apply_chat_template(..., tokenize=False)``; otherwise (no tokenizer, or none set) the text is
    :func:`chatml`. An empty conversation without generation prompt renders as ``""`` without calling the
    template (some templates fail on an empty list).

    Args:
        messages: The conversation.
        tokenizer: A Hugging Face tokenizer or ``None``.
        add_generation_prompt: Append the assistant header so that a model continues with the reply.

    Returns:
        The rendered text.

    Reference:
        SPEC §1 "chat template ``<|im_start|>role ... <|im_end|>`` or the model's own"; CRS Figure 15.
    """
    msgs = as_messages(messages)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return chatml(msgs, add_generation_prompt=add_generation_prompt)
    if not msgs and not add_generation_prompt:
        return ""
    text = tokenizer.apply_chat_template(
        [m.to_dict() for m in msgs], tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text


# ---------------------------------------------------------------------------------------------------------
# Truncation (CRS §5.3)
# ---------------------------------------------------------------------------------------------------------


def truncated_lengths(
    prompt_len: int, response_len: int, *, max_length: int, min_prompt_tokens: int = 256
) -> tuple[int, int]:
    """How many prompt and response tokens to keep so that together they fit in ``max_length``.

    Rule, in order:

    1. If ``prompt_len + response_len <= max_length`` nothing is cut.
    2. The prompt gets the room the response leaves, ``max_length - response_len``, but never less than its
       floor ``min(prompt_len, min_prompt_tokens, max_length)`` (a prompt shorter than ``min_prompt_tokens``
       is kept whole; a floor larger than ``max_length`` is clipped to it). The prompt is cut from its start,
       i.e. its last tokens are kept (see :func:`truncate_pair`).
    3. The response fills what is left, ``max_length - kept_prompt``, cut from its end.

    So when truncation happens the result has exactly ``max_length`` tokens; when the response alone is
    longer than ``max_length - floor``, the prompt is at its floor and the response is shortened.

    Args:
        prompt_len: Prompt tokens (>= 0).
        response_len: Response tokens (>= 0).
        max_length: Token budget for prompt + response (>= 1).
        min_prompt_tokens: Prompt tokens kept at least (>= 0), the thesis uses 256.

    Returns:
        ``(kept_prompt, kept_response)``.

    Reference:
        CRS §5.3: "the input prompt text can have a minimum size of 256 tokens and maximum size of
        max_token - response_token_size, if the input size exceeds the maximum value then it's truncated from
        the beginning of the text and remaining space is occupied by the response text."
    """
    for name, value, low in (
        ("prompt_len", prompt_len, 0),
        ("response_len", response_len, 0),
        ("max_length", max_length, 1),
        ("min_prompt_tokens", min_prompt_tokens, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if prompt_len + response_len <= max_length:
        return prompt_len, response_len
    floor = min(prompt_len, min_prompt_tokens, max_length)
    # max_length - response_len < prompt_len here, so kept_prompt <= prompt_len.
    kept_prompt = max(floor, max_length - response_len)
    kept_response = max_length - kept_prompt
    return kept_prompt, kept_response


def truncate_pair(
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    *,
    max_length: int,
    min_prompt_tokens: int = 256,
) -> tuple[list[int], list[int]]:
    """Truncate a (prompt, response) token pair to ``max_length`` by :func:`truncated_lengths`.

    The kept prompt is a suffix of ``prompt_ids`` (cut from the start), the kept response a prefix of
    ``response_ids`` (cut from the end). Used by reward-model and SFT inputs alike.

    Reference:
        CRS §5.3 (see :func:`truncated_lengths`).
    """
    kept_prompt, kept_response = truncated_lengths(
        len(prompt_ids), len(response_ids), max_length=max_length, min_prompt_tokens=min_prompt_tokens
    )
    return list(prompt_ids[len(prompt_ids) - kept_prompt :]), list(response_ids[:kept_response])


def truncate_prompt_ids(ids: Sequence[int], max_prompt_tokens: int) -> list[int]:
    """Keep the last ``max_prompt_tokens`` tokens of a prompt (for PPO rollouts; cut from the start).

    The end of a prompt (the latest turn and the assistant header) is what the policy must answer, so the
    start is what goes.

    Reference:
        CRS §5.3 ("truncated from the beginning of the text").
    """
    if not isinstance(max_prompt_tokens, int) or isinstance(max_prompt_tokens, bool) or max_prompt_tokens < 0:
        raise ValueError(f"max_prompt_tokens must be an int >= 0, got {max_prompt_tokens!r}")
    # Explicit start index: ids[-0:] would keep everything.
    return list(ids[max(0, len(ids) - max_prompt_tokens) :])


# ---------------------------------------------------------------------------------------------------------
# Tokenization with a loss mask
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TokenizedChat:
    """A tokenized conversation for causal-LM training.

    Attributes:
        input_ids: Token ids, length <= ``max_length`` when one was given.
        loss_mask: Same length; True on the tokens the loss is taken on (assistant content and its end
            marker, see :func:`tokenize_chat`).
        prompt_length: Tokens before the last assistant turn's content (its header included); the rest is
            the response.
        prompt_tokens_dropped: Prompt tokens cut from the start by truncation.
        response_tokens_dropped: Response tokens cut from the end by truncation.
    """

    input_ids: list[int]
    loss_mask: list[bool]
    prompt_length: int
    prompt_tokens_dropped: int = 0
    response_tokens_dropped: int = 0

    @property
    def truncated(self) -> bool:
        """Whether truncation removed any token."""
        return self.prompt_tokens_dropped > 0 or self.response_tokens_dropped > 0


def _encode(tokenizer: ChatTokenizer, text: str) -> list[int]:
    # The template writes every marker (BOS included, if it has one), so the tokenizer must add none.
    return list(tokenizer.encode(text, add_special_tokens=False))


def _end_marker_ids(tokenizer: Any) -> set[int]:
    """Single-token end-of-turn markers: EOS and ``<|im_end|>`` when it is one known token."""
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    im_end = _encode(tokenizer, IM_END)
    if len(im_end) == 1 and im_end[0] != getattr(tokenizer, "unk_token_id", None):
        ids.add(im_end[0])
    return ids


def _turn_boundaries(messages: list[Message], tokenizer: Any) -> list[tuple[str, bool]]:
    """Rendered prefixes at each turn boundary; True marks a boundary that closes an assistant body.

    For an assistant turn i there are two boundaries: after its header (``messages[:i]`` with the generation
    prompt) and after its end (``messages[:i+1]``); the text between them is the assistant's own.
    """
    boundaries: list[tuple[str, bool]] = []
    for i, message in enumerate(messages):
        if message.role == "assistant":
            boundaries.append((render_chat(messages[:i], tokenizer, add_generation_prompt=True), False))
        boundaries.append((render_chat(messages[: i + 1], tokenizer), message.role == "assistant"))
    return boundaries


def _assistant_spans(messages: list[Message], tokenizer: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize the conversation prefix by prefix; return its ids and the (start, end) of assistant bodies.

    Raises:
        TemplateNotPrefixStableError: A rendered prefix is not a text prefix of the next, or its tokens are
            not a prefix of the next one's tokens (so the pieces would not concatenate to the full ids).
    """
    prev_text, prev_ids = "", []
    spans: list[tuple[int, int]] = []
    for k, (text, closes_assistant) in enumerate(_turn_boundaries(messages, tokenizer)):
        if not text.startswith(prev_text):
            raise TemplateNotPrefixStableError(
                f"chat template is not prefix-stable at boundary {k}: the rendering of a shorter conversation "
                f"is not a prefix of the longer one ({prev_text[-60:]!r} vs {text[: len(prev_text)][-60:]!r}); "
                "per-turn loss masks need a template that only appends text turn by turn"
            )
        ids = _encode(tokenizer, text)
        if ids[: len(prev_ids)] != prev_ids:
            raise TemplateNotPrefixStableError(
                f"tokenization is not prefix-stable at boundary {k}: tokens of the text up to "
                f"{prev_text[-40:]!r} change when {text[len(prev_text) :][:40]!r} follows (a token merges across "
                "the turn boundary; message content starting with whitespace often causes this)"
            )
        if closes_assistant:
            spans.append((len(prev_ids), len(ids)))
        prev_text, prev_ids = text, ids
    return prev_ids, spans


def tokenize_chat(
    messages: Sequence[Message | Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_length: int | None = None,
    min_prompt_tokens: int = 256,
    train_on: TrainOn = "last",
) -> TokenizedChat:
    """Tokenize a conversation ending with an assistant turn, with the SFT loss mask.

    The conversation is rendered by :func:`render_chat` and tokenized prefix by prefix: each assistant
    body is the token difference between ``messages[:i]`` rendered with the generation prompt (ends with the
    assistant header) and ``messages[:i+1]``. Every prefix's tokens must be a prefix of the next's, so the
    pieces concatenate to exactly the full tokenization; otherwise :class:`TemplateNotPrefixStableError`.

    The loss mask is True on an assistant body up to and including its last end marker token (EOS, or
    ``<|im_end|>`` when the vocabulary has it as one token), so the model learns to stop; template glue after
    the marker (ChatML's ``\\n``) is never generated and stays False. Without any such marker in the body the
    whole body is trained on. The header ``<|im_start|>assistant\\n`` and all user/system turns are False.

    Truncation, when ``len(input_ids) > max_length``: prompt = tokens before the last assistant body,
    response = the rest; :func:`truncated_lengths` decides the kept counts (prompt cut from the start keeping at
    least ``min(prompt_len, min_prompt_tokens)`` tokens, response cut from the end). Earlier assistant turns
    in the prompt keep their mask bits (``train_on="all_assistant"``) wherever they survive.

    Args:
        messages: The conversation; its last message must be from the assistant.
        tokenizer: A Hugging Face tokenizer (its chat template is used when set, else ChatML).
        max_length: Token budget, or ``None`` for no truncation.
        min_prompt_tokens: Prompt floor under truncation (CRS §5.3 uses 256).
        train_on: ``"last"``: only the final assistant turn is trained on; ``"all_assistant"``: every
            assistant turn (multi-turn SFT).

    Returns:
        The :class:`TokenizedChat`.

    Raises:
        ValueError: Empty conversation, last turn not from the assistant, or unknown ``train_on``.
        TemplateNotPrefixStableError: See above.

    Reference:
        CRS §5.2 (assistant tokens are learned "starting from ``<|im_start|>`` assistant till ``<|im_end|>``";
        the loss is on the assistant's text and its end marker, the header is given), CRS §5.3 (truncation).
    """
    msgs = as_messages(messages)
    if not msgs or msgs[-1].role != "assistant":
        raise ValueError("tokenize_chat needs a conversation that ends with an assistant message")
    if train_on not in get_args(TrainOn):
        raise ValueError(f"train_on must be one of {get_args(TrainOn)}, got {train_on!r}")

    # step 1. tokenize prefix by prefix, locating every assistant body
    ids, spans = _assistant_spans(msgs, tokenizer)

    # step 2. mark the trained bodies, up to and including their end marker
    end_ids = _end_marker_ids(tokenizer)
    loss_mask = [False] * len(ids)
    for start, end in spans[-1:] if train_on == "last" else spans:
        stop = next((j + 1 for j in range(end - 1, start - 1, -1) if ids[j] in end_ids), end)
        loss_mask[start:stop] = [True] * (stop - start)

    # step 3. truncate (CRS §5.3): prompt from its start, response from its end
    prompt_length = spans[-1][0]
    if max_length is None or len(ids) <= max_length:
        return TokenizedChat(input_ids=ids, loss_mask=loss_mask, prompt_length=prompt_length)
    response_length = len(ids) - prompt_length
    kept_prompt, kept_response = truncated_lengths(
        prompt_length, response_length, max_length=max_length, min_prompt_tokens=min_prompt_tokens
    )
    first, last = prompt_length - kept_prompt, prompt_length + kept_response
    return TokenizedChat(
        input_ids=ids[first:last],
        loss_mask=loss_mask[first:last],
        prompt_length=kept_prompt,
        prompt_tokens_dropped=prompt_length - kept_prompt,
        response_tokens_dropped=response_length - kept_response,
    )


def tokenize_prompt(
    messages: Sequence[Message | Mapping[str, Any]], tokenizer: Any, *, max_prompt_tokens: int | None = None
) -> list[int]:
    """Tokenize a PPO/generation prompt: the conversation plus the assistant header, cut from the start.

    Reference:
        CRS §5.1.3 (RL prompts are threads ending with the prompter's message), CRS §5.3 (cut from the start).
    """
    ids = _encode(tokenizer, render_chat(messages, tokenizer, add_generation_prompt=True))
    return ids if max_prompt_tokens is None else truncate_prompt_ids(ids, max_prompt_tokens)


# ---------------------------------------------------------------------------------------------------------
# Instruction datasets -> messages (CRS §5.1.1)
# ---------------------------------------------------------------------------------------------------------


def _text_field(row: Any, name: str, *, dataset: str, where: str | None, required: bool = True) -> str | None:
    """A string field, stripped; ``None`` for an absent/null/empty optional one. Errors name the field."""
    prefix = f"{where}: " if where else ""
    if not isinstance(row, Mapping):
        raise ChatDataError(f"{prefix}{dataset} row must be a mapping, got {type(row).__name__}")
    value = row.get(name)
    if value is None:
        if required:
            raise ChatDataError(f"{prefix}field {name!r}: missing from {dataset} row (keys: {sorted(row)})")
        return None
    if not isinstance(value, str):
        raise ChatDataError(f"{prefix}field {name!r}: expected a string, got {type(value).__name__}")
    # Surrounding whitespace is template territory: leaving it would change the separators the template
    # writes and can merge tokens across the turn boundary.
    value = value.strip()
    if not value and required:
        raise ChatDataError(f"{prefix}field {name!r}: empty in {dataset} row")
    return value or None


def _user_text(instruction: str, extra: str | None) -> str:
    return instruction if extra is None else f"{instruction}\n\n{extra}"


def from_alpaca(row: Mapping[str, Any], *, where: str | None = None) -> list[Message]:
    """Alpaca row (``instruction``, optional ``input``, ``output``) -> [user, assistant].

    The user turn is the instruction, followed by a blank line and the input when the input is non-empty.

    Args:
        row: The dataset row.
        where: Location for error messages, e.g. ``"alpaca.jsonl:12"``.

    Raises:
        ChatDataError: ``instruction`` or ``output`` missing, empty or not a string.

    Reference:
        CRS §5.1.1 (Alpaca, Taori et al. 2023: "optional input and instruction-response pair").
    """
    instruction = _text_field(row, "instruction", dataset="alpaca", where=where)
    extra = _text_field(row, "input", dataset="alpaca", where=where, required=False)
    output = _text_field(row, "output", dataset="alpaca", where=where)
    return [Message("user", _user_text(instruction, extra)), Message("assistant", output)]


def from_dolly(
    row: Mapping[str, Any], *, include_context: bool = False, where: str | None = None
) -> list[Message]:
    """Dolly row (``instruction``, ``context``, ``response``, ``category``) -> [user, assistant].

    By default the context is left out, as the thesis did; ``include_context=True`` appends it to the
    instruction after a blank line (useful for closed QA, extraction and summarization rows). ``category`` is
    not part of the conversation (keep it from the row for per-category breakdowns).

    Raises:
        ChatDataError: ``instruction`` or ``response`` missing, empty or not a string; ``context`` not a
            string when ``include_context``.

    Reference:
        CRS §5.1.1 (Dolly, Conover et al. 2023): "we do not consider context information and treat all the
        categories equally."
    """
    instruction = _text_field(row, "instruction", dataset="dolly", where=where)
    context = (
        _text_field(row, "context", dataset="dolly", where=where, required=False) if include_context else None
    )
    response = _text_field(row, "response", dataset="dolly", where=where)
    return [Message("user", _user_text(instruction, context)), Message("assistant", response)]


def from_gsm8k(row: Mapping[str, Any], *, where: str | None = None) -> list[Message]:
    """GSM8K row (``question``, ``answer``) -> [user, assistant]; the full worked answer is kept.

    The answer keeps its calculator annotations and its final ``#### N`` line, so a model trained on it
    learns the format that answer checkers parse.

    Raises:
        ChatDataError: ``question`` or ``answer`` missing, empty or not a string.

    Reference:
        CRS §5.1.1 (GSM8K, Cobbe et al. 2021).
    """
    question = _text_field(row, "question", dataset="gsm8k", where=where)
    answer = _text_field(row, "answer", dataset="gsm8k", where=where)
    return [Message("user", question), Message("assistant", answer)]


# ---------------------------------------------------------------------------------------------------------
# OASST conversation trees (CRS §5.1.1, Köpf et al. 2023)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class OasstThread:
    """The top-ranked thread of one OASST tree.

    Attributes:
        tree_id: ``message_tree_id`` (keep threads of one tree in one split).
        lang: The thread's language, the prompt's ``lang``.
        messages: user/assistant turns from the root prompt to a leaf.
    """

    tree_id: str
    lang: str | None
    messages: list[Message]


@dataclass
class ThreadReport:
    """Counts from :func:`threads_from_trees`; nothing is dropped without being counted here.

    Attributes:
        trees_in: Trees read.
        threads_out: Threads returned.
        filtered_by_lang: Trees left out by the language filter, per prompt language.
    """

    trees_in: int = 0
    threads_out: int = 0
    filtered_by_lang: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for run reports."""
        return asdict(self)


def _node_where(node: Any, where: str | None) -> str:
    mid = node.get("message_id", "?") if isinstance(node, Mapping) else "?"
    return f"{where}: message {mid}" if where else f"message {mid}"


def _rank_key(node: Mapping[str, Any], where: str | None) -> tuple[bool, int]:
    """Sort key: lower rank first, null rank after every ranked reply."""
    rank = node.get("rank")
    if rank is None:
        return (True, 0)
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise ChatDataError(
            f"{_node_where(node, where)}: field 'rank': expected an int or null, got {rank!r}"
        )
    return (False, rank)


def _node_message(node: Any, where: str | None) -> Message:
    loc = _node_where(node, where)
    if not isinstance(node, Mapping):
        raise ChatDataError(f"{loc}: expected a message node (mapping), got {type(node).__name__}")
    role = node.get("role")
    if role not in OASST_ROLES:
        raise ChatDataError(f"{loc}: field 'role': expected one of {sorted(OASST_ROLES)}, got {role!r}")
    text = _text_field(node, "text", dataset="oasst", where=loc)
    return Message(OASST_ROLES[role], text)


def top_ranked_thread(tree: Mapping[str, Any], *, where: str | None = None) -> list[Message]:
    """Follow the best-ranked reply at every level from the root prompt down to a leaf.

    At each node the next message is the reply with the lowest ``rank`` (0 is best); replies with a null
    rank come after all ranked ones, and ties (equal ranks, or all null as for prompter replies) go to the
    earliest reply in the list. Roles map ``prompter`` -> ``user``. The thread ends at a leaf, which may be a
    prompter message (such threads suit RL prompts, CRS §5.1.3; ``tokenize_chat`` needs an assistant ending).

    Args:
        tree: One line of an oasst ``*.trees.jsonl`` file (``message_tree_id``, ``prompt``) or one tree from
            :func:`build_trees`.
        where: Location for error messages, e.g. ``"oasst.trees.jsonl:7"``.

    Returns:
        The thread's messages.

    Raises:
        ChatDataError: No ``prompt`` node, or a node without a valid ``role``/``text``/``rank``.

    Reference:
        CRS §5.1.1: "The responses are sorted by their rank and threads with only the top one rank are chosen
        to ensure SFT is done on best demonstrations."
    """
    node = tree.get("prompt") if isinstance(tree, Mapping) else None
    if node is None:
        tid = tree.get("message_tree_id", "?") if isinstance(tree, Mapping) else "?"
        raise ChatDataError(f"{where + ': ' if where else ''}tree {tid}: field 'prompt': missing")
    thread: list[Message] = []
    while True:
        thread.append(_node_message(node, where))
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise ChatDataError(f"{_node_where(node, where)}: field 'replies': expected a list")
        if not replies:
            return thread
        for reply in replies:
            if not isinstance(reply, Mapping):
                raise ChatDataError(f"{_node_where(node, where)}: field 'replies': a reply is not a mapping")
        # min() returns the first of equal keys, which gives the "ties by order" rule.
        node = min(replies, key=lambda reply: _rank_key(reply, where))


_FLAT_REQUIRED = ("message_id", "parent_id", "message_tree_id", "role", "text")


def build_trees(flat_rows: Sequence[Mapping[str, Any]], *, source: str | None = None) -> list[dict[str, Any]]:
    """Assemble OASST trees from the flat messages format.

    Each row is one message with ``message_id``, ``parent_id`` (null for the root prompt),
    ``message_tree_id``, ``role``, ``text`` and optionally ``lang``, ``rank`` and any other fields (kept on the
    node). Replies keep the row order. Trees come out in the order their first message appears, in the
    ``*.trees.jsonl`` shape: ``{"message_tree_id": ..., "prompt": node}``, each node with a ``replies`` list.

    Args:
        flat_rows: Message rows in any order (a parent may come after its replies).
        source: File name for error messages; rows are cited as ``source:row N`` (1-based).

    Returns:
        The trees.

    Raises:
        ChatDataError: A required field missing, a duplicate ``message_id``, a ``parent_id`` that is not
            among the rows, a reply in a different tree than its parent, or a tree with two roots. Nothing is
            dropped silently: a partial export (orphans) is an error to fix upstream.

    Reference:
        Köpf et al. 2023 (OpenAssistant Conversations) export formats, used by CRS §5.1.
    """
    rows = list(flat_rows)  # read twice below
    nodes: dict[str, dict[str, Any]] = {}
    locs: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        loc = f"{source}:row {n}" if source else f"row {n}"
        if not isinstance(row, Mapping):
            raise ChatDataError(f"{loc}: expected a mapping, got {type(row).__name__}")
        for name in _FLAT_REQUIRED:
            if name not in row:
                raise ChatDataError(f"{loc}: field {name!r}: missing (keys: {sorted(row)})")
        mid = row["message_id"]
        if mid in nodes:
            raise ChatDataError(f"{loc}: field 'message_id': duplicate {mid!r} (first at {locs[mid]})")
        node = {k: v for k, v in row.items() if k != "parent_id"}
        node.setdefault("lang", None)
        node.setdefault("rank", None)
        node["replies"] = []
        nodes[mid], locs[mid] = node, loc

    roots: dict[Any, dict[str, Any]] = {}
    for row in rows:
        mid, pid, tid = row["message_id"], row["parent_id"], row["message_tree_id"]
        loc = locs[mid]
        if pid is None:
            if tid in roots:
                raise ChatDataError(
                    f"{loc}: field 'parent_id': tree {tid!r} has a second root (first: {roots[tid]['message_id']!r})"
                )
            roots[tid] = nodes[mid]
            continue
        parent = nodes.get(pid)
        if parent is None:
            raise ChatDataError(
                f"{loc}: field 'parent_id': {pid!r} is not among the rows (orphan message {mid!r})"
            )
        if parent["message_tree_id"] != tid:
            raise ChatDataError(
                f"{loc}: field 'message_tree_id': {tid!r} differs from its parent's {parent['message_tree_id']!r}"
            )
        parent["replies"].append(nodes[mid])

    order = list(dict.fromkeys(row["message_tree_id"] for row in rows))
    # Every non-root has a parent in its own tree, so a tree without a root would need a cycle.
    missing = [tid for tid in order if tid not in roots]
    if missing:
        raise ChatDataError(
            f"{source or 'rows'}: trees without a root prompt (a parent cycle): {missing[:5]}"
        )
    return [{"message_tree_id": tid, "prompt": roots[tid]} for tid in order]


def threads_from_trees(
    trees: Sequence[Mapping[str, Any]], *, lang: Sequence[str] | str | None = ("en",)
) -> tuple[list[OasstThread], ThreadReport]:
    """Top-ranked thread of every tree whose language passes the filter.

    A thread's language is its root prompt's ``lang`` (replies are written in the prompt's language by the
    OASST guidelines, CRS §5.1.2), so a tree is kept or left out as a whole.

    Args:
        trees: Trees in the ``*.trees.jsonl`` shape (see :func:`build_trees`).
        lang: Languages to keep (e.g. ``("en", "es", "fr", "de")`` as for the thesis's reward data); a single
            code is accepted; ``None`` keeps every language.

    Returns:
        ``(threads, report)``; the report counts the trees left out per language.

    Raises:
        ChatDataError: A malformed tree, or a prompt without ``lang`` while filtering by language.

    Reference:
        CRS §5.1.1 (top-ranked threads, "SFT only uses instances with the top 20 languages") and §5.1.2
        (reward data in English, Spanish, French and German).
    """
    keep = (lang,) if isinstance(lang, str) else (None if lang is None else tuple(lang))
    report = ThreadReport()
    filtered: Counter[str] = Counter()
    threads: list[OasstThread] = []
    for n, tree in enumerate(trees, start=1):
        report.trees_in += 1
        prompt = tree.get("prompt") if isinstance(tree, Mapping) else None
        tid = tree.get("message_tree_id") if isinstance(tree, Mapping) else None
        tree_lang = prompt.get("lang") if isinstance(prompt, Mapping) else None
        if keep is not None:
            if not isinstance(tree_lang, str):
                raise ChatDataError(f"tree {n} ({tid}): field 'lang': prompt has no language, cannot filter")
            if tree_lang not in keep:
                filtered[tree_lang] += 1
                continue
        messages = top_ranked_thread(tree, where=f"tree {n} ({tid})")
        threads.append(OasstThread(tree_id=str(tid), lang=tree_lang, messages=messages))
    report.threads_out = len(threads)
    report.filtered_by_lang = dict(sorted(filtered.items()))
    logger.info(
        "OASST: %d trees in, %d threads out, left out by language: %s",
        report.trees_in,
        report.threads_out,
        report.filtered_by_lang or "none",
    )
    return threads, report
