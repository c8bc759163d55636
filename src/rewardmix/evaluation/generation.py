"""Greedy answers of the models under evaluation, generated in batches and kept on disk.

A *generator* is anything callable as ``generator(conversations, max_new_tokens) -> texts``: one decoded
reply per conversation (new tokens only, special tokens skipped, cut at the first end token). The default,
:class:`BatchedGenerator`, renders each conversation with the model's chat template
(:func:`rewardmix.data.chat.render_chat`, ``add_generation_prompt=True``; ChatML when the tokenizer has none),
left-pads a batch and decodes greedily. Tests pass their own generator with known answers.

:class:`GenerationStore` appends every reply to a JSONL file (one per model), each row keyed by a hash of what
determined it (the model's path, the conversation, ``max_new_tokens``). A rerun reuses every row whose key still
matches and generates only the rest; a row whose key no longer matches (another model path, another budget) is
dropped and generated again; a torn last line left by a kill is cut off. The file is the audit trail of the
evaluation: what each model was asked and what it answered.

Reference: SPEC §0 (every stage resumes after a kill) and §8 (evaluation).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from tqdm.auto import tqdm

from rewardmix.rundir import atomic_write_text, read_jsonl_repair

__all__ = [
    "BatchedGenerator",
    "GenerationRequest",
    "GenerationStore",
    "Generator",
    "generate_all",
    "generation_key",
    "load_generator",
]

logger = logging.getLogger(__name__)

Conversation = Sequence[Mapping[str, str]]


class Generator(Protocol):
    """``generator(conversations, max_new_tokens) -> texts``, one greedy reply per conversation."""

    def __call__(self, conversations: Sequence[Conversation], max_new_tokens: int) -> list[str]: ...


class GenerationRequest(NamedTuple):
    """One reply to generate: a unique id, the conversation, and fields copied into the stored row."""

    id: str
    messages: list[dict[str, str]]
    extra: dict[str, Any]
    """Copied into the stored row (e.g. ``task``, ``index``, ``prompt_id``) for auditing."""


# ---------------------------------------------------------------------------------------------------------
# Batched greedy generation with a transformers causal LM
# ---------------------------------------------------------------------------------------------------------


class BatchedGenerator:
    """Greedy generation in left-padded batches (the same tokens as one conversation at a time).

    A thin layer over :meth:`rewardmix.models.chat_model.ChatModel.generate_ids`: conversations are encoded
    once, sorted by length so a batch pads little, and answered ``batch_size`` at a time.

    Args:
        model: A causal LM with ``generate`` (a ``transformers`` model or a ``PeftModel`` over one).
        tokenizer: Its tokenizer.
        batch_size: Conversations per ``generate`` call.
        device: Where to run; default: the model's device.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, batch_size: int = 8, device: str | torch.device | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from rewardmix.models.chat_model import ChatModel  # transformers loads only when a model does

        self.chat = ChatModel(model, tokenizer, device=device)
        self.batch_size = batch_size

    def encode(self, conversation: Conversation) -> list[int]:
        """Prompt token ids: the chat rendering, ending where the assistant's reply begins."""
        return self.chat.encode(conversation)

    def __call__(self, conversations: Sequence[Conversation], max_new_tokens: int) -> list[str]:
        """Greedy replies, in the order of ``conversations``."""
        prompts = [self.encode(c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts: list[str] = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            replies = self.chat.generate_ids([prompts[i] for i in idx], max_new_tokens=max_new_tokens)
            for i, reply in zip(idx, replies, strict=True):
                texts[i] = reply.texts[0]
        return texts


def load_generator(
    path: str,
    *,
    base: str | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> BatchedGenerator:
    """A :class:`BatchedGenerator` for a model given as in a config.

    Args:
        path: ``tiny`` (the random test model, seed 0), ``tiny:<seed>``, an ``offline:`` name, a hub id, a model
            folder (e.g. ``<sft run>/model``), or a LoRA adapter folder (``adapter_config.json``; e.g. the
            ``model`` folder of an SFT run without ``merge_lora``).
        base: The base model of a LoRA adapter folder; ``None`` -> ``base_model_name_or_path`` recorded in
            its ``adapter_config.json``.
        batch_size: Conversations per ``generate`` call.
        device: Where to run.
        dtype: Weight dtype.
        trust_remote_code: Allow code shipped with the checkpoint.
    """
    from rewardmix.models import loading, lora, tiny

    adapter_config = Path(path) / "adapter_config.json"
    if path == "tiny" or path.startswith("tiny:"):
        tokenizer = tiny.build_tiny_tokenizer()
        model = tiny.build_tiny_causal_lm(tokenizer, seed=int(path.partition(":")[2] or 0))
    elif adapter_config.is_file():
        base_name = base or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base_name:
            raise ValueError(f"{adapter_config}: no base_model_name_or_path; give the model entry a 'base'")
        has_tokenizer = (Path(path) / "tokenizer_config.json").is_file()
        if base_name == "tiny" or base_name.startswith("tiny:"):
            tokenizer = tiny.build_tiny_tokenizer()
            model = tiny.build_tiny_causal_lm(tokenizer, seed=int(base_name.partition(":")[2] or 0))
            if has_tokenizer:
                tokenizer = loading.load_tokenizer(path)
        else:
            tokenizer = loading.load_tokenizer(
                path if has_tokenizer else base_name, trust_remote_code=trust_remote_code
            )
            model = loading.load_causal_lm(base_name, dtype=dtype, trust_remote_code=trust_remote_code)
        # The adapter becomes role "policy" next to an identity placeholder role (lora's public API needs
        # a model that has roles before loading one); only "policy" is active.
        model = lora.add_adapters(model, ["placeholder"], lora.LoraSettings(r=1, alpha=1))
        lora.load_adapter(model, "policy", path)
        lora.set_active_role(model, "policy")
        logger.info("loaded LoRA adapter %s on base %s", path, base_name)
    else:
        tokenizer = loading.load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = loading.load_causal_lm(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return BatchedGenerator(model, tokenizer, batch_size=batch_size, device=device)


# ---------------------------------------------------------------------------------------------------------
# The store: one JSONL file per model, resumable
# ---------------------------------------------------------------------------------------------------------


def generation_key(model_path: str, messages: Sequence[Mapping[str, str]], max_new_tokens: int) -> str:
    """A short hash of everything that determines a greedy reply (model, conversation, budget)."""
    payload = json.dumps(
        {"model": model_path, "messages": [dict(m) for m in messages], "max_new_tokens": max_new_tokens},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


class GenerationStore:
    """Replies of one model, appended to a JSONL file as they are generated.

    Rows: ``{"id", "key", "messages", "text", ...extra}``. Opening the store reads the file, cuts off a torn
    last line and keeps the rows by id; a row whose key no longer matches is replaced on the next
    :meth:`add` of that id (the file is rewritten without the stale rows first).

    Args:
        path: The JSONL file (created when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        def check(lineno: int, row: Any) -> None:
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or "key" not in row:
                raise ValueError(f"{self.path}:{lineno}: a generation row needs 'id' and 'key'")
            self.rows[row["id"]] = row  # a later row for the same id replaces an earlier one

        torn = read_jsonl_repair(self.path, check)
        if torn:
            logger.warning(
                "%s: cutting off a torn last line (%d bytes); it is generated again", self.path, torn
            )

    def get(self, item_id: str, key: str) -> dict[str, Any] | None:
        """The stored row of ``item_id`` when its key matches, else ``None``."""
        row = self.rows.get(item_id)
        return row if row is not None and row["key"] == key else None

    def drop_stale(self, keys: Mapping[str, str]) -> int:
        """Remove rows of the given ids whose stored key differs from ``keys[id]``; rewrite the file. Returns the count."""
        stale = [i for i, k in keys.items() if i in self.rows and self.rows[i]["key"] != k]
        if stale:
            for item_id in stale:
                del self.rows[item_id]
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows.values())
            atomic_write_text(self.path, text)
            logger.info(
                "%s: %d stored replies were for other settings; generating them again", self.path, len(stale)
            )
        return len(stale)

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (flushed and fsynced: a kill loses at most the batch being written)."""
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows[row["id"]] = row
            f.flush()
            os.fsync(f.fileno())


def generate_all(
    store: GenerationStore,
    requests: Sequence[GenerationRequest],
    get_generator: Callable[[], Generator],
    *,
    model_path: str,
    max_new_tokens: int,
    chunk_size: int = 64,
    desc: str = "generate",
) -> dict[str, str]:
    """Replies to every request, generating only those the store does not hold yet.

    Args:
        store: The model's store.
        requests: What to answer; ids unique.
        get_generator: Called once, and only when something is missing (so a complete rerun loads no model).
        model_path: Part of each row's key (see :func:`generation_key`).
        max_new_tokens: Generation budget per reply.
        chunk_size: Replies generated (and appended to the file) per step.
        desc: Progress-bar label.

    Returns:
        ``{id: text}`` for every request.
    """
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("generation request ids must be unique")
    keys = {r.id: generation_key(model_path, r.messages, max_new_tokens) for r in requests}
    store.drop_stale(keys)
    todo = [r for r in requests if store.get(r.id, keys[r.id]) is None]
    if todo:
        logger.info(
            "%s: %d of %d replies to generate (%d reused)",
            desc,
            len(todo),
            len(requests),
            len(requests) - len(todo),
        )
        generator = get_generator()
        for start in tqdm(range(0, len(todo), chunk_size), desc=desc, unit="chunk"):
            chunk = todo[start : start + chunk_size]
            texts = generator([r.messages for r in chunk], max_new_tokens)
            if len(texts) != len(chunk):
                raise ValueError(
                    f"{desc}: the generator returned {len(texts)} replies for {len(chunk)} prompts"
                )
            store.add(
                {"id": r.id, "key": keys[r.id], **r.extra, "messages": r.messages, "text": text}
                for r, text in zip(chunk, texts, strict=True)
            )
    else:
        logger.info("%s: all %d replies reused from %s", desc, len(requests), store.path)
    return {r.id: store.rows[r.id]["text"] for r in requests}
