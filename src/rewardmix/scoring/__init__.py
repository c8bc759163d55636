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

from rewardmix.scoring import base, composite, reward_model, rules
from rewardmix.scoring.base import *  # noqa: F403
from rewardmix.scoring.composite import *  # noqa: F403
from rewardmix.scoring.reward_model import *  # noqa: F403
from rewardmix.scoring.rules import *  # noqa: F403

# Each module's public names, listed once (in the module's own __all__).
__all__ = sorted({*base.__all__, *composite.__all__, *reward_model.__all__, *rules.__all__})
