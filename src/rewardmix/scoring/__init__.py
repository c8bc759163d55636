"""Scoring: the Scorer protocol, reward-model and rule scorers, and the composite reward.

- :mod:`rewardmix.scoring.base`: :class:`ScoringBatch` (prompts, responses, meta, optional token ids) and
  the :class:`Scorer` protocol (``name`` + ``score(batch) -> (B,) float32``).
- :mod:`rewardmix.scoring.rules`: ``label_correct``, ``length_penalty``, ``format``, ``contains``.
- :mod:`rewardmix.scoring.reward_model`: :class:`RewardModelScorer` (logit or bounded output, LoRA roles on a
  shared base), reading inputs exactly as the reward-model stage built them for training.
- :mod:`rewardmix.scoring.composite`: :class:`CompositeReward` built from a :class:`CompositeConfig`:
  per-component normalization and clipping, then a combinator from :mod:`rewardmix.algos.combine`.

Importing this package does not import ``transformers`` or ``peft`` (models load when a reward-model scorer
is built), so rule-only rewards stay light.
"""

from __future__ import annotations

from rewardmix.scoring.base import Prompt, Scorer, ScoringBatch, check_score_tensor
from rewardmix.scoring.composite import (
    SCORER_TYPES,
    BuildContext,
    ComponentConfig,
    CompositeConfig,
    CompositeReward,
    CompositeScores,
    NonFiniteScoreError,
    ScorerType,
    build_scorer,
    register_scorer_type,
)
from rewardmix.scoring.reward_model import (
    RewardModelParams,
    RewardModelScorer,
    rm_output,
)
from rewardmix.scoring.rules import (
    ContainsConfig,
    ContainsScorer,
    FormatConfig,
    FormatScorer,
    LabelCorrectConfig,
    LabelCorrectScorer,
    LengthPenaltyConfig,
    LengthPenaltyScorer,
)

__all__ = [
    "SCORER_TYPES",
    "BuildContext",
    "ComponentConfig",
    "CompositeConfig",
    "CompositeReward",
    "CompositeScores",
    "ContainsConfig",
    "ContainsScorer",
    "FormatConfig",
    "FormatScorer",
    "LabelCorrectConfig",
    "LabelCorrectScorer",
    "LengthPenaltyConfig",
    "LengthPenaltyScorer",
    "NonFiniteScoreError",
    "Prompt",
    "RewardModelParams",
    "RewardModelScorer",
    "Scorer",
    "ScorerType",
    "ScoringBatch",
    "build_scorer",
    "check_score_tensor",
    "register_scorer_type",
    "rm_output",
]
