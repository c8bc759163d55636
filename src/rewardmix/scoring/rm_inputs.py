"""The trained reward model's contract: its inputs, its scoring, and ``rewardmix_rm.json``.

A reward model's scores mean something only on inputs built exactly as in its training. Training
(``rewardmix reward-model``), PPO, ``evaluate`` and ``evaluate-rm`` therefore all build and score inputs here,
and a saved model carries ``rewardmix_rm.json``, the record of how its inputs were built and how its head
reads (:func:`write_rm_meta`, :func:`read_rm_meta`).

Inputs: how a (prompt, answer) becomes tokens (:class:`InputEncoder`).

- Causal backbones (``kind: causal_lm``, the paper default: the SFT model): the conversation
  ``[user: prompt, assistant: answer]`` rendered with the tokenizer's chat template (ChatML when it has none)
  by :func:`rewardmix.data.chat.tokenize_chat`; a prompt given as a list of messages is a multi-turn thread.
  The score is read at the last token (``pooling: last``). An answer whose first characters merge with the
  assistant header into one token (SmolLM2 with an answer starting with ``"\\n\\n"``) is encoded from the
  full rendering instead, split at the prompt's own tokens (counted as ``encoded_with_fallback``).
- Encoders (``kind: encoder``, e.g. MiniLM): the tokenizer's text pair ``prompt [SEP] answer``
  (``[CLS] prompt [SEP] answer [SEP]`` for BERT/MiniLM); a message-list prompt is joined as ``role: content``
  lines. Token-type (segment) ids are not passed (``ScalarHeadModel`` takes ids and mask only), so both
  segments use type 0; the [SEP] token still separates them. Pooling defaults to the mean over the tokens:
  all-MiniLM-L6-v2 was trained (sentence-transformers) to make the *mean* of its token vectors a sentence
  representation, so a head on it starts from a meaningful feature, while its [CLS] vector never was one.
- Both: when prompt + answer exceed ``max_length`` the prompt is cut from its start (keeping at least
  ``min_prompt_tokens``) and the answer from its end (CRS §5.3, :func:`rewardmix.data.chat.truncated_lengths`).
- Scores never depend on padding side or batch composition: :func:`score_sequences` batches by length and the
  head model right-aligns every row (tested with left and right padding).

How the head reads: every objective trains a logit except the absolute ``mse_range_penalty`` loss, whose
head emits the rating itself (:func:`head_output_of`); an absolute model trained with ``sigmoid_mse`` or
``logistic`` reads as a rating through ``sigmoid(score)`` (:func:`score_transform_of`).

Importing this module does not import ``transformers``.

Reference: CRS §5.3 (reward input, truncation), §8.2 (padding); RLLR §3.2 (reward models on the SFT backbone).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from rewardmix.data.chat import (
    Message,
    TemplateNotPrefixStableError,
    as_messages,
    render_chat,
    tokenize_chat,
    truncated_lengths,
)
from rewardmix.data.rm_items import prompt_text
from rewardmix.rundir import atomic_write_text
from rewardmix.scoring.base import Prompt
from rewardmix.train.loop import chunk, pad_sequences

BackboneKind = Literal["causal_lm", "encoder"]
HeadOutput = Literal["logit", "probability"]
ScoreTransform = Literal["identity", "sigmoid"]
ScoreOrder = Literal["shortest_first", "longest_first", "input"]

RM_META_NAME = "rewardmix_rm.json"
RM_FORMAT = "rewardmix.reward_model"
RM_FORMAT_VERSION = 1
DEFAULT_MAX_LENGTH = 1024
"""Token budget of one input when neither the caller nor ``rewardmix_rm.json`` gives one."""
DEFAULT_MIN_PROMPT_TOKENS = 256
"""Prompt tokens kept at least under truncation when neither the caller nor ``rewardmix_rm.json`` says."""

# Show a progress bar only when scoring takes many model calls (PPO scores every step: keep logs quiet).
_PROGRESS_MIN_CHUNKS = 8


# ---------------------------------------------------------------------------------------------------------
# Inputs


class InputEncoder:
    """Turns ``(prompt, answer)`` into the token ids the backbone is trained and scored on.

    See the module docstring ("Inputs"): chat-rendered for decoders, a text pair for encoders; both truncated
    by the CRS §5.3 rule (prompt cut from its start, at least ``min_prompt_tokens`` kept; answer from its end).

    Args:
        tokenizer: The backbone's tokenizer.
        kind: ``"causal_lm"`` or ``"encoder"``.
        max_length: Token budget of one input (special tokens included).
        min_prompt_tokens: Prompt floor under truncation.
    """

    def __init__(
        self, tokenizer: Any, kind: BackboneKind, *, max_length: int, min_prompt_tokens: int
    ) -> None:
        if kind not in ("causal_lm", "encoder"):
            raise ValueError(f"kind must be 'causal_lm' or 'encoder', got {kind!r}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.min_prompt_tokens = min_prompt_tokens
        self.unstable = 0
        """How many inputs needed the fallback for templates that are not prefix-stable."""

    def __call__(self, prompt: Prompt, answer: str) -> tuple[int, ...]:
        """Token ids of one input: a tuple of ints, ``1 <= len <= max_length``."""
        if self.kind == "causal_lm":
            messages = prompt_messages(prompt) + [Message("assistant", answer)]
            try:
                chat = tokenize_chat(
                    messages,
                    self.tokenizer,
                    max_length=self.max_length,
                    min_prompt_tokens=self.min_prompt_tokens,
                )
            except TemplateNotPrefixStableError:
                # A sampled answer starting with "\n\n" or spaces can merge with the assistant header's last
                # token (SmolLM2 does); score the conversation as rendered rather than stop.
                self.unstable += 1
                return self._causal_fallback(messages)
            return tuple(chat.input_ids)
        return self._text_pair(prompt_text(prompt), answer)

    def _causal_fallback(self, messages: list[Message]) -> tuple[int, ...]:
        """The rendered conversation's tokens; the prompt is their longest common prefix with the tokens of
        the prompt rendered with the assistant header; truncated by the same rule. On a prefix-stable input
        this equals what ``tokenize_chat`` returns."""
        ids = self.tokenizer.encode(render_chat(messages, self.tokenizer), add_special_tokens=False)
        head = self.tokenizer.encode(
            render_chat(messages[:-1], self.tokenizer, add_generation_prompt=True), add_special_tokens=False
        )
        split = 0
        while split < min(len(ids), len(head)) and ids[split] == head[split]:
            split += 1
        if len(ids) <= self.max_length:
            return tuple(ids)
        kept_prompt, kept_answer = truncated_lengths(
            split, len(ids) - split, max_length=self.max_length, min_prompt_tokens=self.min_prompt_tokens
        )
        return tuple(ids[split - kept_prompt : split + kept_answer])

    def _text_pair(self, prompt: str, answer: str) -> tuple[int, ...]:
        if not prompt:
            enc = self.tokenizer(answer, truncation=True, max_length=self.max_length)
            return tuple(enc["input_ids"])
        enc = self.tokenizer(prompt, answer)  # untruncated; its sequence ids locate prompt and answer tokens
        ids, segment = list(enc["input_ids"]), enc.sequence_ids(0)
        if len(ids) <= self.max_length:
            return tuple(ids)
        n_prompt, n_answer = segment.count(0), segment.count(1)
        n_special = len(ids) - n_prompt - n_answer
        if self.max_length <= n_special:
            raise ValueError(
                f"model.max_length {self.max_length} leaves no room beside {n_special} special tokens"
            )
        kept_prompt, kept_answer = truncated_lengths(
            n_prompt,
            n_answer,
            max_length=self.max_length - n_special,
            min_prompt_tokens=self.min_prompt_tokens,
        )
        # Drop the first prompt tokens and the last answer tokens; special tokens stay where they are.
        drop_prompt, drop_answer, seen_answer = n_prompt - kept_prompt, set(), 0
        for j in range(len(ids) - 1, -1, -1):
            if segment[j] == 1 and seen_answer < n_answer - kept_answer:
                drop_answer.add(j)
                seen_answer += 1
        kept, dropped_prompt = [], 0
        for j, token in enumerate(ids):
            if segment[j] == 0 and dropped_prompt < drop_prompt:
                dropped_prompt += 1
                continue
            if j not in drop_answer:
                kept.append(token)
        return tuple(kept)


def prompt_messages(prompt: Prompt) -> list[Message]:
    """A prompt as chat messages: a string is one user turn (an empty string none); a conversation as is."""
    if isinstance(prompt, str):
        return [Message("user", prompt)] if prompt else []
    return as_messages(prompt)


# ---------------------------------------------------------------------------------------------------------
# Batching and scoring


def collate(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    *,
    padding_side: Literal["right", "left"] = "right",
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Pad token sequences into ``input_ids`` and ``attention_mask``, both (B, T_max) long, on ``device``.

    The side does not change any score (the head model right-aligns each row before the backbone runs); it
    is a parameter so that tests can prove it.
    """
    input_ids = pad_sequences(sequences, pad_value=pad_id, side=padding_side)
    attention_mask = pad_sequences([[1] * len(s) for s in sequences], pad_value=0, side=padding_side)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    order: ScoreOrder = "shortest_first",
    padding_side: Literal["right", "left"] = "right",
    device: torch.device | str | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """Score token sequences in eval mode, in batches of ``batch_size``.

    Batches are cut from the sequences sorted by length (``shortest_first`` or ``longest_first``: similar
    lengths share a batch, which saves padding; the longest first shows an out-of-memory error early) or in
    their own order (``input``); the scores come back in the order of ``sequences`` either way. Every module's
    own training flag is restored afterwards, since a shared base may hold a policy in training mode.

    Args:
        model: A scalar-head model (``forward(input_ids, attention_mask) -> (B,)``).
        sequences: N token-id sequences, each non-empty.
        pad_id: Padding token id.
        batch_size: Sequences per forward pass.
        order: How batches are formed (see above).
        padding_side: Side to pad on (scores do not depend on it).
        device: Where the batches go (default: the model's device).
        progress: Description of a progress bar, shown when scoring takes many batches (None: no bar).

    Returns:
        (N,) float32 scores on ``device``, in the order of ``sequences``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device if device is not None else next(model.parameters()).device
    indices = list(range(len(sequences)))
    if order == "shortest_first":
        indices.sort(key=lambda i: len(sequences[i]))
    elif order == "longest_first":
        indices.sort(key=lambda i: -len(sequences[i]))  # stable: equal lengths keep their order
    scores = torch.empty(len(sequences), dtype=torch.float32, device=device)
    batches = chunk(indices, batch_size)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for ids in tqdm(
            batches,
            desc=progress,
            leave=False,
            disable=progress is None or len(batches) < _PROGRESS_MIN_CHUNKS,
        ):
            batch = collate([sequences[i] for i in ids], pad_id, padding_side=padding_side, device=device)
            scores[torch.tensor(ids, device=device)] = model(**batch).float()
    finally:
        for module, training in modes:
            module.training = training
    return scores


# ---------------------------------------------------------------------------------------------------------
# How the head reads, and rewardmix_rm.json


def head_output_of(objective: str | None, absolute_loss: str | None) -> HeadOutput:
    """What a head trained with this objective emits: ``probability`` (the [0, 1] rating) for the absolute
    ``mse_range_penalty`` loss, a ``logit`` for every other objective."""
    if objective == "absolute" and absolute_loss == "mse_range_penalty":
        return "probability"
    return "logit"


def score_transform_of(objective: str, absolute_loss: str | None) -> ScoreTransform:
    """How a score becomes a rating: ``sigmoid`` for the sigmoid/logistic absolute losses, else ``identity``."""
    if objective == "absolute" and absolute_loss in ("sigmoid_mse", "logistic"):
        return "sigmoid"
    return "identity"


def write_rm_meta(
    model_dir: Path,
    *,
    objective: str,
    absolute_loss: str,
    kind: BackboneKind,
    max_length: int,
    min_prompt_tokens: int,
    base_model: str,
) -> Path:
    """Write ``<model_dir>/rewardmix_rm.json``: how the model's inputs were built and how its score reads.

    Args:
        model_dir: The saved model folder (complete: the record is written last).
        objective: ``pairwise``, ``ranking`` or ``absolute``.
        absolute_loss: The absolute loss (recorded for absolute models only).
        kind: The backbone kind (``chat`` inputs for ``causal_lm``, ``text_pair`` for ``encoder``).
        max_length: Token budget of one input.
        min_prompt_tokens: Prompt floor under truncation.
        base_model: The backbone the model was trained from.

    Returns:
        The file's path.
    """
    meta = {
        "format": RM_FORMAT,
        "format_version": RM_FORMAT_VERSION,
        "objective": objective,
        "absolute_loss": absolute_loss if objective == "absolute" else None,
        "score_transform": score_transform_of(objective, absolute_loss),
        "kind": kind,
        "input": "chat" if kind == "causal_lm" else "text_pair",
        "max_length": max_length,
        "min_prompt_tokens": min_prompt_tokens,
        "base_model": base_model,
    }
    # Written after the folder is complete; a reader without it falls back to the head's own metadata.
    path = Path(model_dir) / RM_META_NAME
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    return path


def read_rm_meta(path: str | Path) -> dict[str, Any]:
    """``rewardmix_rm.json`` of a model folder as a dict (empty when the folder has none)."""
    meta_path = Path(path) / RM_META_NAME
    if not meta_path.is_file():
        return {}
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != RM_FORMAT:
        raise ValueError(f"{meta_path}: not a rewardmix reward-model file")
    return meta
