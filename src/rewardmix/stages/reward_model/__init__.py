"""Reward models (``rewardmix reward-model``): a backbone with a scalar head, trained on preferences or ratings.

The backbone is an SFT model folder, a hub id, ``offline:smollm2``, ``offline:minilm`` or ``tiny`` /
``tiny-encoder``; the head is :class:`~rewardmix.models.heads.ScalarHeadModel`'s. How a (prompt, answer)
becomes tokens, and the ``rewardmix_rm.json`` record saved with the model, are the reward model's contract in
:mod:`rewardmix.scoring.rm_inputs`; the data formats and the imbalance tools are in
:mod:`rewardmix.data.rm_items`; the config in :mod:`~rewardmix.stages.reward_model.config`; :func:`run` and
what it calls in :mod:`~rewardmix.stages.reward_model.loop`.

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

from rewardmix.data.rm_items import AugmentConfig, BalanceConfig, DataConfig
from rewardmix.scoring.rm_inputs import InputEncoder  # re-exported for tests/stages/test_data_prep_stages.py
from rewardmix.stages.reward_model.config import (
    Config,
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

__all__ = [
    "AugmentConfig",
    "BalanceConfig",
    "Config",
    "DataConfig",
    "InputEncoder",
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
