"""Reward models (``rewardmix reward-model``): a backbone with a scalar head, trained on preferences or ratings.

The backbone is an SFT model folder, a hub id, ``offline:smollm2``, ``offline:minilm`` or ``tiny`` /
``tiny-encoder``; the head is :class:`~rewardmix.models.heads.ScalarHeadModel`'s. How a (prompt, answer)
becomes tokens, and the ``rewardmix_rm.json`` record saved with the model, are the reward model's contract in
:mod:`rewardmix.scoring.rm_inputs`; the data formats and the imbalance tools are in
:mod:`rewardmix.data.rm_items`. This file holds the stage's :class:`Config`, whose sections are in
:mod:`~rewardmix.stages.reward_model.config`; :func:`run`, and what it calls, is in
:mod:`~rewardmix.stages.reward_model.loop`.

Objectives (``objective.kind``):

- ``pairwise``: Bradley-Terry ``-log sigmoid(r_chosen - r_rejected - m)`` (RLLR Eq. 2-3), the margin ``m``
  a constant (``objective.margin``) or taken per pair from ``pair.meta[objective.margin_key]``.
- ``ranking``: per prompt, the mean BT loss over its C(K,2) ranked pairs, all in one micro-batch, then the
  mean over prompts (CRS Eq. 2.12).
- ``absolute``: ratings in [0, 1] (CRS §5.3.1) with ``mse_range_penalty`` (the score is the rating),
  ``sigmoid_mse`` or ``logistic`` (the rating is ``sigmoid(score)``).

Metrics (``metrics.jsonl``, one row per optimizer step):

- ``loss/train``: the step's loss (mean over its items). ``lr``: learning rate used by the step.
  ``grad_norm``: global gradient L2 norm before clipping. ``epoch``: fractional epoch.
  ``perf/items_per_sec``: items trained on per second of the step, over all processes.
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

from rewardmix.data.rm_items import AugmentConfig, BalanceConfig, DataConfig
from rewardmix.stages.reward_model.config import (
    ObjectiveConfig,
    RmLoggingConfig,
    RmLoraConfig,
    RmModelConfig,
    RmOptimConfig,
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
from rewardmix.train.config import HubConfig
from rewardmix.train.hub import check_push

__all__ = [
    "AugmentConfig",
    "BalanceConfig",
    "Config",
    "DataConfig",
    "ObjectiveConfig",
    "RewardModelResult",
    "RmLoggingConfig",
    "RmLoraConfig",
    "RmModelConfig",
    "RmOptimConfig",
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


@dataclass
class Config:
    output_dir: str = "runs/reward-model"
    """Run directory: config, metrics.jsonl, samples.jsonl, data_report.json, checkpoints/, model/ (rerun to
    resume)."""
    seed: int = 0
    """Seed of the data order, head and LoRA initialization, sampling of the imbalance tools."""
    cpu: bool = False
    """Train on the CPU even when a GPU is present."""
    export_hf: bool = False
    """Also write ``<output_dir>/hf``: the model as a Hugging Face ``AutoModelForSequenceClassification`` folder
    (``num_labels=1``; what ``rewardmix export-rm`` writes). Decoders with ``last`` pooling and the pairwise
    objective only, whose head bias stays exactly 0: the export is exact there; see ``export-rm`` for the rest."""
    model: RmModelConfig = field(default_factory=RmModelConfig)
    lora: RmLoraConfig = field(default_factory=RmLoraConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: RmOptimConfig = field(default_factory=RmOptimConfig)
    logging: RmLoggingConfig = field(default_factory=RmLoggingConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    """Push the final model (``merged``: ``<output_dir>/model``; ``adapter``: ``<output_dir>/adapter``, the LoRA
    adapter and the head) to the hub with a model card; off by default."""

    def __post_init__(self) -> None:
        if self.hub.repo_id is not None:
            check_push(self.hub.push, lora=self.lora.enabled, merged=True)  # LoRA is always merged here
        # sizes, steps and rates: each section's check_ranges
        for name in ("undersample_range", "oversample_range"):
            span = getattr(self.balance, name)
            if span is not None and not 0.0 <= span[0] <= span[1] <= 1.0:
                raise ValueError(f"balance.{name} must be [low, high] with 0 <= low <= high <= 1")
        if self.export_hf and (
            self.model.kind == "encoder"
            or self.model.name == "tiny-encoder"
            or self.model.pooling in ("mean", "first")
            or self.objective.kind != "pairwise"
        ):
            raise ValueError(
                "export_hf needs a decoder reward model with last-token pooling and the pairwise objective "
                "(Llama-style classifiers pool the last token and have no bias; absolute models train one and "
                "ranking models' drifts off 0 from rounding); export others with `rewardmix export-rm`, which "
                "says what it cannot keep (allow_score_shift=true accepts a constant shift)"
            )
        if self.balance.weight_strength < 0:
            raise ValueError("balance.weight_strength must be >= 0")
