"""PPO with a composite reward (``rewardmix ppo``): every role on one shared base.

Read :func:`~rewardmix.stages.ppo.loop.run` top to bottom: its numbered steps are the recipe, and each step of
the loop is one call (rollout, rewards and KL, advantages, update, log). What those comments leave out:

- **Where things are.** ``config.py``: every YAML section, documented field by field (no model library imported;
  ``model``, ``lora`` and ``logging`` extend the shared sections of :mod:`rewardmix.train.config`).
  ``roles.py``: loading the roles, switching between them, the tensors a checkpoint holds, saving.
  ``rollout.py``: the rollout, from prompts to a :class:`Trajectory`. ``loop.py``: :func:`run`, the
  advantages and :func:`ppo_update`. ``metrics.py``: the logged rows. The prompt pool is
  :mod:`rewardmix.data.prompts`; start, resume, checkpoints and the optimizer are :mod:`rewardmix.train.run`'s,
  as in every training stage; every formula is in :mod:`rewardmix.algos`.
- **One base.** Policy (LoRA role ``policy``), value model (a scalar head on the LoRA role ``value``), reference
  (the base with every adapter disabled) and reward models given with a ``role`` (further LoRA roles) share one
  copy of the weights. Dropout is off everywhere: PPO's ratio compares two forward passes of the same weights.
- **Data parallel.** Under ``accelerate launch`` with N processes each process generates, scores and evaluates
  its share of every rollout batch, then every process holds the whole batch, and each minibatch's gradients
  are summed across processes: N processes x ``batch_size`` b run as 1 process x N*b (``docs/distributed.md``).
  Under FSDP the base is sharded with every LoRA role on it (:func:`~rewardmix.stages.ppo.roles.shard_models`),
  with the same result.
- **Deterministic and resumable.** The prompts of a step and the seed of each response are pure functions of
  the run seed, the step and the place in the batch (:mod:`rewardmix.algos.sequences`), so a response depends
  neither on the batch, the process nor the generation batch size it is made with. A checkpoint keeps the
  trainable weights, optimizer, schedule, KL coefficient, reward-normalizer statistics and random state:
  rerunning the same command after a kill gives the result of an uninterrupted run.
- **Nothing silently.** A score that is NaN or infinite stops the run before any weight changes, naming the
  reward component, the samples and their text; the last checkpoint stays valid (fix the scorer, rerun).
- **Variants are configs, not code.** RLHF (one rationale-sensitive reward model), RLLR (one label-sensitive
  reward model), RLLR_MIXED (both, ``combinator: threshold``, RLLR Eq. 4), preference-only, absolute-only and
  the CRS weighted average (``combinator: weighted``; sweep the weight with ``rewardmix sweep``): see the
  headers of ``configs/ppo.yaml``, ``configs/ppo-rllr-mixed.yaml`` and ``configs/ppo-crs.yaml``. Critic-free
  estimators (``ppo.advantage: rloo | grpo``) compare each answer with the other answers to its prompt and run
  no value role. Every logged metric is explained in ``docs/metrics.md``.

Reference: RLLR §3.3, Eq. 4-5 and Table 3; CRS §5.4 and Table 8; Ziegler et al. 2019 §2.2 (KL-shaped reward,
adaptive KL); Schulman et al. 2017 (PPO) and 2016 (GAE); STYLE.md example 2 (torchtune's PPO recipe).
"""

from rewardmix.stages.ppo.config import (
    Config,
    DataConfig,
    GenerationConfig,
    KLConfig,
    PolicyModelConfig,
    PPOConfig,
    PPOLoggingConfig,
    PPOLoraConfig,
)
from rewardmix.stages.ppo.loop import PPOResult, PPOStats, ppo_update, run
from rewardmix.stages.ppo.roles import Models
from rewardmix.stages.ppo.rollout import Trajectory  # (not the function rollout: ppo.rollout is the module)

__all__ = [
    "Config",
    "DataConfig",
    "GenerationConfig",
    "KLConfig",
    "Models",
    "PPOConfig",
    "PPOLoggingConfig",
    "PPOLoraConfig",
    "PPOResult",
    "PPOStats",
    "PolicyModelConfig",
    "Trajectory",
    "ppo_update",
    "run",
]
