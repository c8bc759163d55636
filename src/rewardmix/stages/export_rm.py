"""Export a reward model as a Hugging Face ``AutoModelForSequenceClassification`` folder (``rewardmix export-rm``).

``rewardmix export-rm model=runs/rm output_dir=runs/rm-hf`` writes a folder that plain transformers loads
(``AutoModelForSequenceClassification.from_pretrained``, ``num_labels=1``, the reward is ``logits[:, 0]``) and
that scores the inputs rewardmix builds as the reward model does. The other direction needs no command: any
such folder or hub id is a PPO component ``{type: reward_model, reward_model: {path: ...}}``.

Exact or refused (:mod:`rewardmix.models.hf_classifier`): decoder reward models with ``last`` pooling export
exactly when the head's bias is 0, where pairwise Bradley-Terry training leaves it (K-way ranking drifts off 0 by
rounding amplified by Adam); encoders
(``BertForSequenceClassification`` reads [CLS] through a pooler), ``mean``/``first`` pooling and inputs ending in
the pad token are refused; a non-zero bias (absolute rating models) is refused unless ``allow_score_shift``
accepts every score moving by ``-bias``. The export scores probe inputs both ways before writing anything.

Reference: TRL ``RewardTrainer`` (reward models as one-label sequence classifiers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from rewardmix.scoring.rm_export import ExportResult, export_reward_model

log = logging.getLogger(__name__)


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"model": "folder"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    model: str = "runs/reward-model"
    """The reward model: a reward-model run directory or its ``model`` folder (a LoRA reward model is saved
    there merged into its base)."""
    output_dir: str = "runs/reward-model/hf"
    """The Hugging Face folder to write (model, tokenizer, README, ``rewardmix_rm.json``); replaced atomically."""
    allow_score_shift: bool = False
    """Export a head with a non-zero bias into a bias-free classifier (Llama's): every score moves by ``-bias``
    (recorded in the README and config.json). Harmless for Bradley-Terry and ranking models; it changes the
    ratings of an absolute model."""


def run(cfg: Config) -> ExportResult:
    """Export ``cfg.model`` to ``cfg.output_dir``; returns what was written."""
    # step 1. convert, check on probe inputs, write (refused with the reason when not exact)
    result = export_reward_model(cfg.model, cfg.output_dir, allow_score_shift=cfg.allow_score_shift)
    # step 2. say what came out
    log.info(
        "%s written to %s (max probe error %.2g%s)",
        result.architecture,
        result.folder,
        result.max_probe_error,
        f", every score shifted by {result.score_shift:+.6g}" if result.score_shift else "",
    )
    return result
