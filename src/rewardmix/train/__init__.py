"""The training core shared by rewardmix's own loops (SFT, reward models, PPO): run scaffold, config, checkpoints.

- :mod:`rewardmix.train.run`: the scaffold of a run as plain functions a stage calls from its own loop
  (``start_run``, ``resume``, ``restore_weights``, ``restore_optimizer``, ``make_adamw``, ``optimizer_step``,
  ``every``, ``save_step``, ``finish``).
- :mod:`rewardmix.train.config`: the config sections the training stages share and extend (``ModelConfig``,
  ``LoraConfig``, ``OptimConfig``, ``LoggingConfig``).
- :mod:`rewardmix.train.checkpoint`: atomic, checksummed checkpoints; resume from the latest valid one.
- :mod:`rewardmix.train.schedule`: linear warm-up + cosine decay as a ``LambdaLR``.
- :mod:`rewardmix.train.loop`: data order, exact gradient accumulation, clipping with a NaN guard, metric
  and sample-table logging.
- :mod:`rewardmix.train.distributed`: the accelerator, the backend check (what each stage runs under), the
  collectives.
- :mod:`rewardmix.train.sharded`: what changes under FSDP (lockstep passes, sharded checkpoints, gathering).

Like :mod:`rewardmix.algos`, this package never imports ``transformers`` or ``peft``; models come in as
``torch.nn.Module`` objects built by :mod:`rewardmix.models`.
"""

from __future__ import annotations

from rewardmix.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    load_latest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from rewardmix.train.schedule import CosineWithWarmup, cosine_with_warmup

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CosineWithWarmup",
    "capture_rng",
    "cosine_with_warmup",
    "load_latest_checkpoint",
    "restore_rng",
    "save_checkpoint",
]
