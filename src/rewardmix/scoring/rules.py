"""Rule scorers: label correctness, length penalty, answer format, target substring/token.

Each rule is a small class with a config dataclass and ``score(batch) -> (B,) float32`` (the
:class:`~rewardmix.scoring.base.Scorer` protocol). They need no model, so they are cheap, exact and
deterministic: the reward of choice for learning tests, and a complement to reward models in a composite
(e.g. RLLR's label correctness next to a rationale reward model; a length penalty against the response
growth CRS observed).

=================  =====================================================================================
``label_correct``  ``correct`` if the label parsed from the response equals the sample's gold label,
                   ``wrong`` if it differs, ``unparseable`` if no label can be read. Scale tasks
                   (STS-B): ``wrong + (correct - wrong) * (1 - |pred - gold| / (max - min))``.
``length_penalty`` ``0`` up to ``target`` units (tokens, characters or words), then
                   ``-slope * (length - target)``, at most ``max_penalty`` below zero.
``format``         ``match_score`` if the response matches a regular expression, else ``miss_score``.
``contains``       1/0 whether a substring (or token id) occurs in the response, or its count.
=================  =====================================================================================

Reference: RLLR §3.1 and Appendix A (answer format ``{rationale}\\n\\nThe answer is: {label}``, label
accuracy as the NLU metric); SPEC §6 ("rules such as length penalties or 'label correct' checks").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rewardmix.data.tasks import TaskSpec, get_task, parse_label
from rewardmix.scoring.base import ScoringBatch

__all__ = [
    "ContainsConfig",
    "ContainsScorer",
    "FormatConfig",
    "FormatScorer",
    "LabelCorrectConfig",
    "LabelCorrectScorer",
    "LengthPenaltyConfig",
    "LengthPenaltyScorer",
]


def _check_finite(**values: float | None) -> None:
    for key, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{key!r} must be a finite number, got {value}")


def _as_scores(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------
# label_correct
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LabelCorrectConfig:
    """Reward the response whose parsed label equals the gold label (RLLR's NLU answer format)."""

    task: str | None = None
    """Task of every sample (a name from ``rewardmix.data.tasks``, e.g. ``sst2``); ``null`` -> each sample's
    ``meta[task_key]`` (mixed-task prompt pools)."""
    task_key: str = "task"
    """Meta key holding the sample's task name (used when ``task`` is null)."""
    label_key: str = "label"
    """Meta key holding the gold label: a verbalized label (``positive``), a raw dataset value (``1``) or, for
    scale tasks, a number."""
    correct: float = 1.0
    """Score of a correct label (scale tasks: of an exact prediction)."""
    wrong: float = 0.0
    """Score of a wrong label (scale tasks: of a prediction a whole scale range away)."""
    unparseable: float = 0.0
    """Score when no label can be read from the response (no ``The answer is:``, unknown label, number off the
    scale). Set it below ``wrong`` to punish a broken format more than a wrong answer."""

    def __post_init__(self) -> None:
        _check_finite(correct=self.correct, wrong=self.wrong, unparseable=self.unparseable)
        if self.task is not None:
            try:
                get_task(self.task)
            except KeyError as e:
                raise ValueError(f"'task': {e.args[0]}") from None


class LabelCorrectScorer:
    """Label correctness of each response against the gold label in its meta.

    The response's label is read with :func:`rewardmix.data.tasks.parse_label` (the label after the last
    "The answer is:"). Categorical tasks score ``correct`` or ``wrong``. Scale tasks (STS-B, ratings) score
    the closeness ``1 - |pred - gold| / (max - min)`` mapped linearly onto [``wrong``, ``correct``], so an
    exact prediction gets ``correct``, one a whole range away gets ``wrong`` and a miss by 1 on STS-B's
    [0, 5] gets 0.8 with the defaults: a dense signal whose expectation rises with the Pearson metric's.
    An unparseable response scores ``unparseable`` on both kinds of task.

    Args:
        cfg: The rule's settings.
        name: Component name.

    Reference: RLLR §3.1 and Appendix A (answer format and label sets), §4.1 (accuracy; Pearson for STS-B).
    """

    def __init__(self, cfg: LabelCorrectConfig | None = None, *, name: str = "label_correct") -> None:
        self.cfg = cfg if cfg is not None else LabelCorrectConfig()
        self.name = name
        self._spec = get_task(self.cfg.task) if self.cfg.task is not None else None

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        """Score each response: (B,) float32.

        Raises:
            ValueError: If a sample has no gold label (or no task when ``task`` is null) in its meta, or its
                gold label is not a label of the task / not on its scale.
        """
        cfg = self.cfg
        out: list[float] = []
        for i, response in enumerate(batch.responses):
            meta = batch.meta_at(i)
            spec = self._spec if self._spec is not None else self._task_of(meta, i)
            gold = self._gold(spec, meta, i)
            parsed = parse_label(spec, response)
            if not parsed.ok:
                out.append(cfg.unparseable)
            elif spec.scale is not None:
                spread = spec.scale.max - spec.scale.min
                closeness = 1.0 - abs(float(parsed.label) - float(gold)) / spread  # type: ignore[arg-type]
                out.append(cfg.wrong + (cfg.correct - cfg.wrong) * closeness)
            else:
                out.append(cfg.correct if parsed.label == gold else cfg.wrong)
        return _as_scores(out)

    def check_meta(self, metas: Sequence[Mapping[str, Any]]) -> None:
        """Check every sample's task and gold label before any is scored (PPO does it on its prompt pool).

        Raises:
            ValueError: As :meth:`score` would for sample ``i`` (the message names it).
        """
        for i, meta in enumerate(metas):
            self._gold(self._spec if self._spec is not None else self._task_of(meta, i), meta, i)

    def _task_of(self, meta: Mapping[str, Any], i: int) -> TaskSpec:
        key = self.cfg.task_key
        if key not in meta:
            raise ValueError(
                f"scorer {self.name!r}: sample {i} has no meta[{key!r}] and the config names no task"
            )
        try:
            return get_task(meta[key])
        except KeyError as e:
            raise ValueError(f"scorer {self.name!r}: sample {i}: {e.args[0]}") from None

    def _gold(self, spec: TaskSpec, meta: Mapping[str, Any], i: int) -> str | int | float:
        key = self.cfg.label_key
        if key not in meta:
            raise ValueError(f"scorer {self.name!r}: sample {i} has no gold label meta[{key!r}]")
        gold = meta[key]
        if spec.scale is not None and isinstance(gold, int | float) and not isinstance(gold, bool):
            value = float(gold)
            if value in spec.scale:
                return value
        elif isinstance(gold, str | int) and not isinstance(gold, bool):
            # A bare label, in any case, or a raw dataset value ("1" -> "positive"), exactly as the parser
            # reads an answer without marker: gold and prediction then go through the same normalization.
            parsed = parse_label(spec, str(gold))
            if parsed.ok:
                return parsed.label  # type: ignore[return-value]
        allowed = (
            f"the scale [{spec.scale.min:g}, {spec.scale.max:g}]" if spec.scale else list(spec.labels or ())
        )
        raise ValueError(
            f"scorer {self.name!r}: sample {i}: gold label {gold!r} of task {spec.name!r} is not in {allowed}"
        )


# ---------------------------------------------------------------------------------------------------------
# length_penalty
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LengthPenaltyConfig:
    """Penalize responses longer than a target length, linearly in the excess."""

    target: int
    """Length allowed without penalty, in ``unit``s."""
    unit: Literal["tokens", "chars", "words"] = "tokens"
    """``tokens``: real tokens of the batch's ``response_ids`` (the policy's tokens; needs them);
    ``chars``: characters of the response text; ``words``: whitespace-separated words."""
    slope: float = 0.01
    """Penalty per unit beyond ``target``: score = ``-slope * max(0, length - target)``."""
    max_penalty: float | None = None
    """Cap on the penalty (the score never goes below ``-max_penalty``); ``null`` -> no cap."""

    def __post_init__(self) -> None:
        if self.target < 0:
            raise ValueError(f"'target' must be >= 0, got {self.target}")
        _check_finite(slope=self.slope, max_penalty=self.max_penalty)
        if self.slope < 0:
            raise ValueError(f"'slope' must be >= 0, got {self.slope}")
        if self.max_penalty is not None and self.max_penalty < 0:
            raise ValueError(f"'max_penalty' must be >= 0, got {self.max_penalty}")


class LengthPenaltyScorer:
    """``-slope * max(0, length - target)``, capped at ``-max_penalty``: 0 for responses within the target.

    A one-sided, piecewise-linear penalty: responses up to ``target`` are not touched (no incentive to be
    short), each unit beyond costs ``slope``. Added to a reward model's score it counters the length growth
    that RLHF policies show (CRS §5.4, Fig. 21 and 27: reward correlates with length).

    Args:
        cfg: The rule's settings.
        name: Component name.

    Reference: SPEC §6 (length penalty rule); CRS §5.4 and Fig. 27 (reward vs response length).
    """

    def __init__(self, cfg: LengthPenaltyConfig, *, name: str = "length_penalty") -> None:
        self.cfg = cfg
        self.name = name

    def lengths(self, batch: ScoringBatch) -> torch.Tensor:
        """(B,) float32 response lengths in ``cfg.unit``."""
        if self.cfg.unit == "tokens":
            if batch.response_ids is None:
                raise ValueError(
                    f"scorer {self.name!r} counts tokens: the batch needs response_ids (or use unit: chars)"
                )
            return batch.token_mask().sum(dim=1).to(torch.float32).cpu()
        if self.cfg.unit == "chars":
            return _as_scores([float(len(r)) for r in batch.responses])
        return _as_scores([float(len(r.split())) for r in batch.responses])

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        """Score each response: (B,) float32, <= 0."""
        excess = (self.lengths(batch) - self.cfg.target).clamp(min=0.0)  # max(0, L - target)
        penalty = self.cfg.slope * excess
        if self.cfg.max_penalty is not None:
            penalty = penalty.clamp(max=self.cfg.max_penalty)
        return -penalty


# ---------------------------------------------------------------------------------------------------------
# format
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FormatConfig:
    """Reward responses that match a regular expression (e.g. the RLLR answer format)."""

    pattern: str = r"The answer is:\s*\S"
    """Python regular expression. The default asks for RLLR's answer marker followed by something."""
    mode: Literal["search", "fullmatch"] = "search"
    """``search``: the pattern occurs anywhere; ``fullmatch``: it matches the whole response."""
    ignore_case: bool = False
    """Match case-insensitively (``re.IGNORECASE``)."""
    dotall: bool = False
    """Let ``.`` match newlines too (``re.DOTALL``), useful with ``fullmatch`` on multi-line answers."""
    match_score: float = 1.0
    """Score of a matching response."""
    miss_score: float = 0.0
    """Score of a response that does not match."""

    def __post_init__(self) -> None:
        _check_finite(match_score=self.match_score, miss_score=self.miss_score)
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"'pattern' {self.pattern!r} is not a valid regular expression: {e}") from None


class FormatScorer:
    """``match_score`` if the response matches ``pattern`` (search or full match), else ``miss_score``.

    Args:
        cfg: The rule's settings.
        name: Component name.

    Reference: RLLR Appendix A (answer format); TRL ``trl/rewards/format_rewards.py`` (think-format reward).
    """

    def __init__(self, cfg: FormatConfig | None = None, *, name: str = "format") -> None:
        self.cfg = cfg if cfg is not None else FormatConfig()
        self.name = name
        flags = (re.IGNORECASE if self.cfg.ignore_case else 0) | (re.DOTALL if self.cfg.dotall else 0)
        self._regex = re.compile(self.cfg.pattern, flags)

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        """Score each response: (B,) float32."""
        match = self._regex.search if self.cfg.mode == "search" else self._regex.fullmatch
        return _as_scores(
            [self.cfg.match_score if match(r) else self.cfg.miss_score for r in batch.responses]
        )


# ---------------------------------------------------------------------------------------------------------
# contains
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ContainsConfig:
    """Reward a target substring or token in the response (a rule with a known optimum, for learning tests)."""

    substring: str | None = None
    """Text to look for in the response; exactly one of ``substring`` and ``token_id``."""
    token_id: int | None = None
    """Token id to look for in the batch's ``response_ids`` (real tokens only)."""
    mode: Literal["present", "count"] = "present"
    """``present``: 1 if it occurs, else 0; ``count``: the number of (non-overlapping) occurrences."""
    ignore_case: bool = False
    """Compare the substring case-insensitively (substring only)."""
    max_count: int | None = None
    """Cap on the count in ``count`` mode (``null``: no cap)."""

    def __post_init__(self) -> None:
        if (self.substring is None) == (self.token_id is None):
            raise ValueError("give exactly one of 'substring' and 'token_id'")
        if self.substring is not None and not self.substring:
            raise ValueError("'substring' must not be empty")
        if self.max_count is not None and self.max_count < 1:
            raise ValueError(f"'max_count' must be >= 1, got {self.max_count}")


class ContainsScorer:
    """Presence (1/0) or count of a target substring or token id in each response.

    Args:
        cfg: The rule's settings.
        name: Component name.

    Reference: SPEC §6 and issue 5 (learning test: a rule reward with a known optimum).
    """

    def __init__(self, cfg: ContainsConfig, *, name: str = "contains") -> None:
        self.cfg = cfg
        self.name = name

    def counts(self, batch: ScoringBatch) -> torch.Tensor:
        """(B,) float32 occurrence counts (uncapped)."""
        cfg = self.cfg
        if cfg.token_id is not None:
            if batch.response_ids is None:
                raise ValueError(f"scorer {self.name!r} looks for a token id: the batch needs response_ids")
            hits = (batch.response_ids == cfg.token_id) & batch.token_mask()
            return hits.sum(dim=1).to(torch.float32).cpu()
        assert cfg.substring is not None
        target = cfg.substring.casefold() if cfg.ignore_case else cfg.substring
        texts = [r.casefold() if cfg.ignore_case else r for r in batch.responses]
        return _as_scores([float(t.count(target)) for t in texts])

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        """Score each response: (B,) float32."""
        counts = self.counts(batch)
        if self.cfg.mode == "present":
            return (counts > 0).to(torch.float32)
        if self.cfg.max_count is not None:
            counts = counts.clamp(max=float(self.cfg.max_count))
        return counts
