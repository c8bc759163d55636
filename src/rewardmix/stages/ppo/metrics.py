"""Step 5 of a PPO iteration: what gets logged. Every key is explained in ``docs/metrics.md``.

The ``perf/*`` keys time the iteration's phases (:class:`PhaseTimes`): benchmarks read them from
``metrics.jsonl`` or the ``on_step`` rows instead of wrapping the stage's functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from rewardmix.algos.advantages import group_pair_accuracy
from rewardmix.algos.masked import masked_mean
from rewardmix.algos.ppo import explained_variance
from rewardmix.algos.stats import clustered_standard_error
from rewardmix.data.prompts import DataConfig, PromptExample
from rewardmix.scoring import CompositeReward, ScoringBatch
from rewardmix.stages.ppo.config import needs_value

if TYPE_CHECKING:
    from rewardmix.stages.ppo.config import PPOConfig
    from rewardmix.stages.ppo.loop import PPOStats
    from rewardmix.stages.ppo.rollout import Trajectory


class PhaseTimes:
    """Wall-clock seconds of one iteration (from construction) and of its named phases.

    ``with timer("generate"): ...`` adds the block's seconds to the phase; :meth:`metrics` gives
    ``perf/step_time``, one ``perf/<phase>_time`` per phase and ``perf/tokens_per_sec``.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def metrics(self, *, tokens: float) -> dict[str, float]:
        """The ``perf/*`` keys; ``tokens``: real tokens of the rollout batch (prompts without padding, responses)."""
        elapsed = time.perf_counter() - self.started
        row = {"perf/step_time": elapsed}
        row |= {f"perf/{phase}_time": seconds for phase, seconds in self.seconds.items()}
        row["perf/tokens_per_sec"] = tokens / max(elapsed, 1e-9)
        return row


def step_metrics(
    t: Trajectory,
    stats: PPOStats,
    reward: CompositeReward,
    *,
    kl: torch.Tensor,
    returns: torch.Tensor,
    kl_coef: float,
    lr: float,
    ppo: PPOConfig,
    label_monitor: Any = None,
) -> dict[str, float]:
    """The metrics row of one iteration, ``perf/*`` aside.

    Args:
        t: The rollout.
        stats: The update's means.
        reward: The composite reward (its running statistics).
        kl: (B, R) per-token KL estimates.
        returns: (B, R) value targets.
        kl_coef: The KL coefficient the rewards were shaped with.
        lr: The learning rate of the iteration's first optimizer step.
        ppo: The ``ppo`` section (the estimator: value keys only with ``gae``; K answers per prompt).
        label_monitor: :func:`make_label_monitor`'s scorer, or None (no gold labels).
    """
    mask = t.response_mask
    kl_per_response = kl.sum(dim=1)  # sum_t KL_t: the KL of each response
    row: dict[str, float] = {
        "objective/kl": float(kl_per_response.mean()),
        "objective/kl_coef": float(kl_coef),
        "objective/score": float(t.scores.mean()),
        "objective/rlhf_reward": float((t.scores - kl_coef * kl_per_response).mean()),  # E[r - beta * KL]
        **reward.metrics(),
        "policy/entropy": float(t.entropy),
        "policy/clipfrac": stats.clipfrac,
        "policy/approx_kl": stats.approx_kl,
        "loss/policy": stats.loss_policy,
        "response/length_mean": float(mask.sum(dim=1).float().mean()),
        "response/eos_rate": float(t.has_eos.float().mean()),
        "grad_norm": stats.grad_norm,
        "lr": lr,
    }
    if needs_value(ppo):  # critic-free estimators train no value role
        row |= {
            "loss/value": stats.loss_value,
            "value/clipfrac": stats.value_clipfrac,
            "value/explained_variance": float(explained_variance(t.values, returns, mask)),
            "value/mean": float(masked_mean(t.values, mask)),
        }
    row["objective/score_clipfrac"] = t.score_clipfrac
    # SE over prompts: the K answers to one prompt are correlated
    row["objective/score_se"] = clustered_standard_error(t.scores, ppo.samples_per_prompt)
    if label_monitor is not None:  # gold labels known: how right the policy is, how the reward sees it
        row |= label_metrics(label_monitor, t.prompts, t.texts, t.composite, t.scores, ppo.samples_per_prompt)
    return row


def make_label_monitor(data: DataConfig, prompts: Sequence[PromptExample]) -> Any:
    """A ``label_correct`` rule (1 right, 0 wrong, -1 unparseable) when every prompt has a categorical gold label.

    It scores nothing the policy optimizes: it tells how often the policy is right, and whether each reward
    component ranks the right answers to a prompt above the wrong ones (:func:`label_metrics`). None when the
    pool has no gold labels (chat prompts) or a scale task.

    Args:
        data: The ``data`` section (``task``: the task of rows that name none).
        prompts: The prompt pool.
    """
    from rewardmix.data.tasks import get_task
    from rewardmix.scoring.rules import LabelCorrectConfig, LabelCorrectScorer

    tasks = {p.meta.get("task", data.task) for p in prompts}
    if not prompts or None in tasks or any("label" not in p.meta for p in prompts):
        return None
    try:
        if any(get_task(str(t)).scale is not None for t in tasks):
            return None
    except KeyError:
        return None
    return LabelCorrectScorer(LabelCorrectConfig(task=data.task, correct=1.0, wrong=0.0, unparseable=-1.0))


def label_metrics(
    monitor: Any, prompts: Sequence[PromptExample], texts: Sequence[str], composite: Any, scores: torch.Tensor,
    group_size: int,
) -> dict[str, float]:  # fmt: skip
    """``policy/label_accuracy`` and ``policy/label_unparseable`` of the batch; with K >= 2 answers per prompt,
    each component's (and the final score's) pair accuracy on the policy's own samples:
    ``reward/<name>/label_pair_accuracy`` and ``objective/label_pair_accuracy`` (right ranked above wrong)."""
    verdict = monitor.score(
        ScoringBatch(prompts=[[m.to_dict() for m in p.messages] for p in prompts], responses=list(texts),
                     meta=[p.meta for p in prompts])
    )  # fmt: skip
    correct = verdict > 0
    row = {
        "policy/label_accuracy": float(correct.float().mean()),
        "policy/label_unparseable": float((verdict < 0).float().mean()),
    }
    if group_size >= 2:
        for name, raw in composite.raw.items():
            row[f"reward/{name}/label_pair_accuracy"] = group_pair_accuracy(raw, correct, group_size)[0]
        row["objective/label_pair_accuracy"] = group_pair_accuracy(scores, correct, group_size)[0]
    return row


def sample_rows(t: Trajectory, kl: torch.Tensor, tokenizer: Any, *, num_samples: int) -> list[dict[str, Any]]:
    """The first ``num_samples`` (``logging.num_samples``) responses of the batch with every component's score."""
    component_rows = t.composite.rows()
    kl_per_response = kl.sum(dim=1).tolist()
    lengths = t.response_mask.sum(dim=1).tolist()
    rows = []
    for i in range(min(num_samples, len(t.prompts))):
        rows.append(
            {
                "prompt": tokenizer.decode(t.prompts[i].input_ids, skip_special_tokens=False),
                "completion": t.texts[i],
                "score": float(t.scores[i]),
                **component_rows[i],
                "kl": kl_per_response[i],
                "length": int(lengths[i]),
                "eos": bool(t.has_eos[i]),
                "meta": t.prompts[i].meta,
            }
        )
    return rows
