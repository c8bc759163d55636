"""``rewardmix toy-ppo``: PPO on a toy policy with a composite reward, in seconds on a CPU.

The whole PPO machinery of ``rewardmix.algos`` on a policy small enough to need no model: a table of
next-token logits per position (a "language model" with no context) over a toy vocabulary whose token 0 is
EOS. Two rule scorers give the reward, as in RLLR:

- ``target`` (label-like, r1): how many times the target token occurs in the response;
- ``distinct`` (quality-like, r2): the fraction of distinct tokens among the response's tokens.

They are combined by the RLLR threshold mix ``min(r1, λ) + r2`` (RLLR Eq. 4), so once the label-like reward
passes λ the policy is pushed to improve the second one. Switch ``reward.combinator=sum`` to see the first
reward dominate instead, or ``reward.combinator=constrained`` to hold r1 at the same target with a Lagrange
multiplier learned by dual ascent instead of a hand-set cap (Moskovitz et al. 2023). Every number printed comes
from the run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from tqdm.auto import tqdm

from rewardmix.algos.combine import get_combinator, multiplier_step
from rewardmix.algos.gae import compute_gae, whiten
from rewardmix.algos.kl import AdaptiveKLController, FixedKLController, kl_shaped_rewards
from rewardmix.algos.masked import masked_mean
from rewardmix.algos.ppo import entropy_from_logits, explained_variance, policy_loss, value_loss
from rewardmix.config import RangeError, check_ranges
from rewardmix.rundir import MetricsLogger, atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)

EOS = 0


@dataclass
class RewardConfig:
    target_token: int = 3
    """Token id rewarded by the ``target`` scorer (not 0, which is EOS)."""
    combinator: Literal["sum", "weighted", "threshold", "min", "constrained"] = "threshold"
    """How the two components [target, distinct] become one score (see ``rewardmix.algos.combine``)."""
    threshold: float = 3.0
    """λ of the threshold mix: the ``target`` reward counts up to this value (RLLR Eq. 4); with ``constrained``
    the target its Lagrange multiplier holds the ``target`` reward's batch mean at."""
    multiplier_lr: float = 0.1
    """``constrained``: K_I, the multiplier's dual-ascent step size (it starts at 0: the plain sum)."""
    multiplier_kp: float = 1.0
    """``constrained``: K_P, the gain of the proportional term that damps the multiplier's oscillation (0: plain
    dual ascent)."""
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    """Component weights for ``combinator: weighted``, in the order [target, distinct]."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_0=("multiplier_lr", "multiplier_kp"))


@dataclass
class PPOConfig:
    steps: int = 80
    """PPO iterations (one rollout batch each)."""
    batch_size: int = 64
    """Responses sampled per iteration."""
    ppo_epochs: int = 4
    """Optimization passes over each rollout batch."""
    minibatch_size: int = 16
    """Responses per gradient step."""
    learning_rate: float = 0.05
    """Adam learning rate for the logit table and the value table (a table learns fast)."""
    clip_range: float = 0.2
    """PPO ratio clip ε (Schulman et al. 2017)."""
    clip_range_value: float = 0.2
    """Value clip around the rollout-time values."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    gamma: float = 1.0
    """Discount (1: the score at the end counts fully for every token)."""
    lam: float = 0.95
    """GAE λ."""
    kl_coef: float = 0.05
    """Initial β of the per-token KL penalty (RLLR Eq. 5)."""
    kl_target: float | None = 1.0
    """Adaptive KL target (Ziegler et al. 2019); null keeps β fixed."""
    kl_horizon: int = 10000
    """Adaptive KL horizon, in samples."""
    whiten_advantages: bool = True
    """Normalize advantages to mean 0, std 1 over valid tokens of the batch."""

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least_1=("steps", "batch_size", "ppo_epochs", "minibatch_size", "kl_horizon"),
            positive=("learning_rate", "clip_range", "clip_range_value", "kl_target"),
            at_least_0=("vf_coef", "kl_coef"),
            fraction=("gamma", "lam"),
        )


@dataclass
class Config:
    output_dir: str = "runs/toy-ppo"
    """Run directory: config.yaml, run_info.json, metrics.jsonl, summary.json."""
    seed: int = 0
    """Seed of the reference policy and of sampling."""
    vocab_size: int = 8
    """Toy vocabulary; token 0 is EOS."""
    response_length: int = 8
    """Maximum response length in tokens."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("response_length",))
        if self.vocab_size < 2:
            raise RangeError("vocab_size", f"must be >= 2 (token 0 is EOS), got {self.vocab_size!r}")
        if not 1 <= self.reward.target_token < self.vocab_size:
            raise ValueError(f"reward.target_token must be in [1, {self.vocab_size - 1}] (0 is EOS)")
        if self.ppo.batch_size % self.ppo.minibatch_size:
            raise ValueError("ppo.batch_size must be a multiple of ppo.minibatch_size")


class DemoResult(NamedTuple):
    output_dir: Path
    before: dict[str, float]
    after: dict[str, float]


class Rollout(NamedTuple):
    tokens: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) True up to and including the first EOS
    logprobs: torch.Tensor  # (B, T)
    ref_logprobs: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T)
    components: torch.Tensor  # (B, C) raw component scores
    scores: torch.Tensor  # (B,) combined score


COMPONENTS = ("target", "distinct")


def score_components(tokens: torch.Tensor, response_mask: torch.Tensor, *, target_token: int) -> torch.Tensor:
    """The two rule scorers, stacked as (B, 2): [target count, distinct-token fraction]."""
    content = response_mask & (tokens != EOS)
    target = (content & (tokens == target_token)).sum(-1).double()
    onehot = torch.nn.functional.one_hot(tokens).bool() & content[..., None]
    distinct = onehot.any(dim=1).sum(-1).double() / content.sum(-1).clamp(min=1)
    return torch.stack([target, distinct], dim=-1)


def first_eos_mask(tokens: torch.Tensor) -> torch.Tensor:
    """True for tokens up to and including the first EOS (everything after it is padding)."""
    is_eos = (tokens == EOS).long()
    eos_before = is_eos.cumsum(-1) - is_eos
    return eos_before == 0


def run(cfg: Config) -> DemoResult:
    # step 0. set up: run directory, reference policy, trainable copy, value table
    out = prepare_run_dir(cfg.output_dir, cfg, stage="toy-ppo")
    metrics = MetricsLogger(out / "metrics.jsonl")
    gen = torch.Generator().manual_seed(cfg.seed)
    ref_logits = torch.randn(cfg.response_length, cfg.vocab_size, generator=gen, dtype=torch.float64)
    policy = torch.nn.Parameter(ref_logits.clone())
    value_table = torch.nn.Parameter(torch.zeros(cfg.response_length, dtype=torch.float64))
    optimizer = torch.optim.Adam([policy, value_table], lr=cfg.ppo.learning_rate)
    kl_ctl = (
        FixedKLController(cfg.ppo.kl_coef)
        if cfg.ppo.kl_target is None
        else AdaptiveKLController(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
    )
    combine = get_combinator(cfg.reward.combinator)
    params = {"threshold": {"threshold": cfg.reward.threshold}, "weighted": {"weights": cfg.reward.weights}}
    combine_params = params.get(cfg.reward.combinator, {})
    integral = multiplier = 0.0  # constrained: the Lagrange multiplier of "mean target reward <= threshold"
    log.info("toy-ppo: toy PPO, %d steps, combinator=%s -> %s", cfg.ppo.steps, cfg.reward.combinator, out)

    def rollout(batch_size: int) -> Rollout:
        if cfg.reward.combinator == "constrained":
            combine_params["multipliers"] = [multiplier, 0.0]
        with torch.no_grad():
            logits = policy.expand(batch_size, -1, -1)
            tokens = torch.distributions.Categorical(logits=logits).sample()
            mask = first_eos_mask(tokens)
            components = score_components(tokens, mask, target_token=cfg.reward.target_token)
            return Rollout(
                tokens=tokens,
                response_mask=mask,
                logprobs=token_logprobs(policy, tokens),
                ref_logprobs=token_logprobs(ref_logits, tokens),
                values=value_table.expand(batch_size, -1).clone(),
                components=components,
                scores=combine(components, **combine_params),
            )

    torch.manual_seed(cfg.seed)
    before = summarize(rollout(1024))
    start = time.perf_counter()
    for step in tqdm(range(cfg.ppo.steps), desc="toy ppo", unit="step"):
        # step 1. generate the trajectory and score it with the composite reward
        ro = rollout(cfg.ppo.batch_size)
        # step 2. per-token rewards: score at the last valid token minus β·KL (RLLR Eq. 5)
        rewards, kl = kl_shaped_rewards(
            ro.scores, ro.logprobs, ro.ref_logprobs, ro.response_mask, kl_coef=kl_ctl.value
        )
        # step 3. advantages and returns (GAE)
        advantages, returns = compute_gae(
            rewards, ro.values, ro.response_mask, gamma=cfg.ppo.gamma, lam=cfg.ppo.lam
        )
        if cfg.ppo.whiten_advantages:
            advantages = whiten(advantages, ro.response_mask)
        # step 4. optimise: several epochs of clipped policy and value losses over minibatches
        stats = ppo_epochs(cfg.ppo, policy, value_table, optimizer, ro, advantages, returns)
        # step 5. adapt β (and the constrained combinator's multiplier) and log
        seq_kl = (kl * ro.response_mask).sum(-1).mean().item()
        kl_ctl.update(seq_kl, cfg.ppo.batch_size)
        used = multiplier
        if cfg.reward.combinator == "constrained":
            integral, multiplier = multiplier_step(
                integral,
                ro.components[:, 0].mean().item(),
                cfg.reward.threshold,
                lr=cfg.reward.multiplier_lr,
                kp=cfg.reward.multiplier_kp,
            )
        row = {
            "objective/score": ro.scores.mean().item(),
            "objective/kl": seq_kl,
            "objective/kl_coef": kl_ctl.value,
            **{f"reward/{name}/raw": ro.components[:, i].mean().item() for i, name in enumerate(COMPONENTS)},
            "response/length": ro.response_mask.sum(-1).double().mean().item(),
            **stats,
            "perf/samples_per_sec": (step + 1) * cfg.ppo.batch_size / (time.perf_counter() - start),
        }
        if cfg.reward.combinator == "constrained":
            row["reward/target/multiplier"] = used
            row["reward/target/constraint_gap"] = ro.components[:, 0].mean().item() - cfg.reward.threshold
        metrics.log(step, row)
    after = summarize(rollout(1024))
    summary = {"before": before, "after": after, "combinator": cfg.reward.combinator}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    for key in before:
        log.info("%-28s before %8.4f   after %8.4f", key, before[key], after[key])
    log.info("metrics: %s  summary: %s", out / "metrics.jsonl", out / "summary.json")
    return DemoResult(out, before, after)


def token_logprobs(logit_table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token_t | position t) for each sampled token, (B, T)."""
    logp = torch.log_softmax(logit_table, dim=-1).expand(tokens.shape[0], -1, -1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


def ppo_epochs(
    cfg: PPOConfig,
    policy: torch.nn.Parameter,
    value_table: torch.nn.Parameter,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(cfg.batch_size).split(cfg.minibatch_size):
            mask = ro.response_mask[idx]
            logprobs = token_logprobs(policy, ro.tokens[idx])
            values = value_table.expand(len(idx), -1)
            pg_loss, clipfrac, approx_kl = policy_loss(
                logprobs, ro.logprobs[idx], advantages[idx], mask, clip_range=cfg.clip_range
            )
            vf_loss, vf_clipfrac = value_loss(
                values, ro.values[idx], returns[idx], mask, clip_range_value=cfg.clip_range_value
            )
            optimizer.zero_grad()
            (pg_loss + cfg.vf_coef * vf_loss).backward()
            optimizer.step()
            entropy = masked_mean(entropy_from_logits(policy.expand(len(idx), -1, -1)), mask)
            for key, v in {
                "loss/policy": pg_loss,
                "loss/value": vf_loss,
                "policy/clipfrac": clipfrac,
                "policy/approx_kl": approx_kl,
                "policy/entropy": entropy,
                "value/clipfrac": vf_clipfrac,
            }.items():
                totals.setdefault(key, []).append(float(v.detach()))
    stats = {k: sum(v) / len(v) for k, v in totals.items()}
    stats["value/explained_variance"] = float(explained_variance(ro.values, returns, ro.response_mask))
    return stats


def summarize(ro: Rollout) -> dict[str, float]:
    return {
        "objective/score": ro.scores.mean().item(),
        **{f"reward/{name}/raw": ro.components[:, i].mean().item() for i, name in enumerate(COMPONENTS)},
        "response/length": ro.response_mask.sum(-1).double().mean().item(),
    }
