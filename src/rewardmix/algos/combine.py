"""Reward composition: combinators over score components and per-component transforms.

A composite reward has C named components (reward models, rule scorers), each giving one score per
sequence. The scoring layer stacks them, in a fixed order, into ``scores`` of shape (B, C); a combinator
turns that into one score per sequence, shape (B,). Before combining, each component may be transformed
(bounded <-> logit, normalized with running or reference statistics, clipped); transforms map (B,) -> (B,).

Every combinator has the signature ``fn(scores, **params) -> Tensor`` so a config can name it
(``"threshold"``) and pass its keyword hyperparameters (``threshold=3.0``). Users add their own with
``@register_combinator("name")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Combinator = Callable[..., torch.Tensor]

COMBINATORS: dict[str, Combinator] = {}


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------


def register_combinator(name: str) -> Callable[[Combinator], Combinator]:
    """Decorator adding a combinator to :data:`COMBINATORS` under ``name``.

    The decorated function must follow ``fn(scores: Tensor (B, C), **params) -> Tensor (B,)``; it is
    returned unchanged.

    Args:
        name: Registry key used in configs, e.g. ``"threshold"``.

    Returns:
        The decorator.

    Raises:
        ValueError: If ``name`` is empty or already registered.

    Reference:
        SPEC §6 ("user-defined ones from config"); TRL ``trl/rewards`` keeps reward functions outside the trainer.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"combinator name must be a non-empty string, got {name!r}")
    if name in COMBINATORS:
        raise ValueError(f"combinator {name!r} is already registered; known: {sorted(COMBINATORS)}")

    def decorator(fn: Combinator) -> Combinator:
        COMBINATORS[name] = fn
        return fn

    return decorator


def get_combinator(name: str) -> Combinator:
    """Look up a registered combinator by name.

    Args:
        name: Registry key, e.g. ``"sum"``, ``"weighted"``, ``"threshold"``, ``"min"``.

    Returns:
        The combinator function.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the known names.

    Reference:
        SPEC §6 (combinators named in config).
    """
    try:
        return COMBINATORS[name]
    except KeyError:
        raise ValueError(f"unknown combinator {name!r}; known: {sorted(COMBINATORS)}") from None


def _check_scores(scores: torch.Tensor, *, min_components: int = 1) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, C), got {tuple(scores.shape)}")
    if scores.shape[1] < min_components:
        raise ValueError(f"need at least {min_components} score components, got C={scores.shape[1]}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")


# ---------------------------------------------------------------------------------------------------------
# Combinators: (B, C) -> (B,)
# ---------------------------------------------------------------------------------------------------------


@register_combinator("sum")
def combine_sum(scores: torch.Tensor) -> torch.Tensor:
    """Sum of the components.

    Args:
        scores: (B, C) component scores.

    Returns:
        (B,) combined score.

    Reference:
        RLLR Eq. 4, first branch (r1 + r2 below the threshold).
    """
    _check_scores(scores)
    return scores.sum(dim=-1)  # r = sum_i s_i


@register_combinator("weighted")
def combine_weighted(
    scores: torch.Tensor,
    *,
    weights: Sequence[float] | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """Weighted average (or weighted sum) of the components.

    With two components ordered [preference, absolute] and ``weights=[w, 1 - w]`` this is the CRS
    combined reward ``w * pref + (1 - w) * abs``.

    Args:
        scores: (B, C) component scores.
        weights: C non-negative weights, in the component order of ``scores``.
        normalize: If True, divide the weights by their sum (a weighted average, so ``[1, 3]`` means
            ``[0.25, 0.75]``); if False, use them as given (a weighted sum).

    Returns:
        (B,) combined score.

    Raises:
        ValueError: If the number of weights is not C, a weight is negative or not finite, or the weights
            sum to zero while ``normalize`` is True.

    Reference:
        CRS §5.4 "Combined Reward" (crs_rlfh, weights 0.25 ... 0.75 on the preference reward).
    """
    _check_scores(scores)
    w = torch.as_tensor(weights, dtype=scores.dtype, device=scores.device)
    if w.ndim != 1 or w.shape[0] != scores.shape[1]:
        raise ValueError(
            f"need one weight per component: C={scores.shape[1]}, got weights of shape {tuple(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    if normalize:
        total = w.sum()
        if total <= 0:
            raise ValueError("weights sum to zero; cannot normalize")
        w = w / total  # w_i <- w_i / sum_j w_j
    return scores @ w  # r = sum_i w_i * s_i


@register_combinator("threshold")
def combine_threshold(scores: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """Threshold mix: the first component is capped at ``threshold``, the others are added.

    RLLR Eq. 4 defines, for r1 (label-sensitive) and r2 (rationale-sensitive) rewards,
    ``r1 + r2 if r1 < λ else λ + r2``, which is the identity ``min(r1, λ) + r2`` (both branches agree at
    r1 = λ, so the mix is continuous there). For C > 2 components the first is capped and all the
    others are summed: ``min(s_1, λ) + s_2 + ... + s_C`` (our generalization, not in the paper).

    A NaN in the first component stays NaN (``torch.clamp`` propagates it), whereas a literal
    ``where(r1 < λ, ...)`` would silently map it to ``λ + r2``.

    Args:
        scores: (B, C) component scores, C >= 2, the capped (label-sensitive) component first.
        threshold: λ, the cap on the first component (RLLR observes r1 converging near 5 and r2 within 1).

    Returns:
        (B,) combined score.

    Raises:
        ValueError: If C < 2 or ``threshold`` is not finite.

    Reference:
        RLLR Eq. 4.
    """
    _check_scores(scores, min_components=2)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    capped = scores[:, 0].clamp(max=threshold)  # min(r1, λ): r1 if r1 < λ else λ
    return capped + scores[:, 1:].sum(dim=-1)  # r_M = min(r1, λ) + r2 (+ r3 + ...)


@register_combinator("min")
def combine_min(scores: torch.Tensor) -> torch.Tensor:
    """Pessimistic combination: the smallest component ("all must be good").

    Only meaningful when the components share a scale (e.g. after normalization or calibration).

    Args:
        scores: (B, C) component scores.

    Returns:
        (B,) combined score.

    Reference:
        SPEC §6 (example of a user-style combinator); not from RLLR or CRS.
    """
    _check_scores(scores)
    return scores.min(dim=-1).values  # r = min_i s_i


@register_combinator("constrained")
def combine_constrained(scores: torch.Tensor, *, multipliers: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Lagrangian of "maximize the sum of the components, with each capped component's mean <= its target".

    For capped components i (multiplier mu_i >= 0) and the others (mu = 0), the policy's reward is the
    Lagrangian's integrand ``sum_c (1 - mu_c) * s_c``: a capped component counts fully while its multiplier is 0,
    less as the multiplier grows, and is pushed down once ``mu_i > 1``. The multipliers are not hand-set: they
    follow :func:`multiplier_step` during training, rising while the component's batch mean exceeds its
    target, so the component is held at the target (RLLR's threshold holds it with a hand-set cap).

    Args:
        scores: (B, C) component scores.
        multipliers: C values >= 0, one per component in the order of ``scores`` (0 for uncapped components).

    Returns:
        (B,) combined score.

    Raises:
        ValueError: If the number of multipliers is not C, or one is negative or not finite.

    Reference:
        Moskovitz et al. 2023 ("Confronting Reward Model Overoptimization with Constrained RLHF",
        arXiv 2310.04373) §4: L(pi, mu) = E[sum_c s_c] - sum_i mu_i (E[s_i] - theta_i), mu_i >= 0.
    """
    _check_scores(scores)
    mu = torch.as_tensor(multipliers, dtype=scores.dtype, device=scores.device)
    if mu.ndim != 1 or mu.shape[0] != scores.shape[1]:
        raise ValueError(
            f"need one multiplier per component: C={scores.shape[1]}, got multipliers of shape {tuple(mu.shape)}"
        )
    if not bool(torch.isfinite(mu).all()) or bool((mu < 0).any()):
        raise ValueError(f"multipliers must be finite and >= 0, got {mu.tolist()}")
    return scores @ (1.0 - mu)  # r = sum_c (1 - mu_c) s_c


def multiplier_step(
    integral: float, mean: float, target: float, *, lr: float, kp: float = 0.0
) -> tuple[float, float]:
    """One step of the Lagrange multiplier of the constraint ``E[s] <= target``: projected dual ascent, plus an
    optional proportional term that damps its oscillation.

    The dual function is minimized over mu >= 0 by gradient steps; its gradient in mu is ``-(E[s] - target)``,
    so the accumulated term rises while the constraint is violated and falls (to 0 at most) while it holds. With
    ``kp = 0`` this is plain projected dual ascent (Moskovitz et al. 2023) and the multiplier is the integral;
    ``kp > 0`` adds ``kp * gap``, the PI form of Stooke et al. 2020, which reacts to the current gap at once
    instead of only through the accumulated one (plain dual ascent overshoots and oscillates around the target).
    The gains must stay small against how fast the score responds to the multiplier: against a score that
    follows it at once with slope -1, ``lr = kp = 1`` cycles, while ``lr, kp <= 0.5`` converge.

    Args:
        integral: I, the accumulated (integral) term so far (>= 0).
        mean: E[s], the capped component's mean over the batch the policy was just scored on.
        target: theta, the component's target.
        lr: K_I > 0, the step size of the integral term (the dual learning rate).
        kp: K_P >= 0, the gain of the proportional term.

    Returns:
        ``(integral, multiplier)``: ``I' = max(0, I + lr * gap)`` and ``mu = max(0, I' + kp * gap)`` with
        ``gap = mean - target``; ``mu`` weighs the next batch.

    Raises:
        ValueError: On a non-finite input, a negative integral or gain, or ``lr <= 0``.

    Reference:
        Moskovitz et al. 2023 §4 (multipliers updated by gradient steps on the dual); Stooke, Achiam & Abbeel
        2020 ("Responsive Safety in RL by PID Lagrangian Methods", arXiv 2007.03964) Alg. 2, PI control:
        lambda = (K_P e + K_I sum e)_+.
    """
    for name, value in (("integral", integral), ("mean", mean), ("target", target), ("lr", lr), ("kp", kp)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if integral < 0 or kp < 0 or lr <= 0:
        raise ValueError(f"need integral >= 0, kp >= 0 and lr > 0, got integral={integral}, kp={kp}, lr={lr}")
    gap = mean - target
    integral = max(0.0, integral + lr * gap)  # I <- max(0, I + K_I (E[s] - theta))
    return integral, max(0.0, integral + kp * gap)  # mu = max(0, I + K_P (E[s] - theta))


# ---------------------------------------------------------------------------------------------------------
# Per-component transforms: (B,) -> (B,)
# ---------------------------------------------------------------------------------------------------------


def bounded_to_logit(p: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Map a bounded score in [0, 1] back to its logit, ``log(p / (1 - p))``.

    CRS found that using the logit of the absolute reward model as the reward (instead of its sigmoid
    output) gave a stronger signal and avoided shrinking responses. ``p`` is clamped to [eps, 1 - eps]
    so saturated scores (exactly 0 or 1) give large finite logits (about ±13.8 for eps=1e-6).

    Args:
        p: (B,) scores in [0, 1].
        eps: Clamp margin, 0 < eps < 0.5.

    Returns:
        (B,) logits.

    Raises:
        ValueError: If ``eps`` is out of range or a score lies outside [0, 1] (a component that already
            gives logits should not be transformed again).

    Reference:
        CRS §5.4 "Absolute Reward" (abs_rlfh_logits vs abs_rlfh_bound, Figure 21).
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("bounded scores must lie in [0, 1]")
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)  # logit(p) = log p - log(1 - p)


def logit_to_bounded(x: torch.Tensor) -> torch.Tensor:
    """Map a logit to a bounded score in (0, 1) with the sigmoid (inverse of :func:`bounded_to_logit`).

    Args:
        x: (B,) logits.

    Returns:
        (B,) scores in (0, 1).

    Reference:
        CRS §5.3-5.4 (sigmoid head of the absolute reward model).
    """
    return torch.sigmoid(x)  # p = 1 / (1 + exp(-x))


def clip_scores_symmetric(x: torch.Tensor, *, clip: float) -> torch.Tensor:
    """Clip scores to [-clip, clip], as TRL's ``score_clip`` does after score normalization.

    CRS Table 8 sets "Score clip 4" (so scores in [-4, 4]); its "Clip range & value 0.4" is PPO's
    policy/value ratio clip, not a score clip.

    Args:
        x: (B,) scores.
        clip: Positive bound.

    Returns:
        (B,) clipped scores.

    Raises:
        ValueError: If ``clip`` is not positive.

    Reference:
        CRS Table 8 ("Score clip 4"); TRL PPOTrainer ``score_clip``.
    """
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    return x.clamp(min=-clip, max=clip)  # s <- min(max(s, -c), c)


def calibrate(x: torch.Tensor, *, reference: torch.Tensor) -> torch.Tensor:
    """Standardize scores with the mean and population std of a fixed reference set.

    Args:
        x: (B,) scores to transform.
        reference: (N,) scores of reference samples (e.g. SFT responses to training prompts), N >= 2.

    Returns:
        (B,) ``(x - mean(reference)) / std(reference)``, in the dtype of ``x``.

    Raises:
        ValueError: If ``reference`` has fewer than 2 values, is not finite, or has zero spread.

    Reference:
        Ziegler et al. 2019 §2.2 (reward model normalized to mean 0, variance 1 on reference samples).
    """
    ref = reference.detach().to(torch.float64).flatten()
    if ref.numel() < 2:
        raise ValueError(f"reference needs at least 2 scores, got {ref.numel()}")
    if not bool(torch.isfinite(ref).all()):
        raise ValueError("reference scores must be finite")
    mean = ref.mean()
    std = ref.var(correction=0).sqrt()  # population std, as RunningMeanStd
    if std == 0:
        raise ValueError("reference scores have zero spread; cannot calibrate")
    return ((x.to(torch.float64) - mean) / std).to(x.dtype)  # z = (x - mu_ref) / sigma_ref


# ---------------------------------------------------------------------------------------------------------
# Running statistics
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RunningMeanStd:
    """Running mean and population variance of a stream of scores, mergeable across shards.

    Holds ``(count, mean, m2)`` with ``m2 = sum (x - mean)^2`` as Python floats (IEEE float64). Two
    statistics are combined with Chan et al.'s parallel update, so updating chunk by chunk, or computing
    per worker and merging, gives the statistics of the whole stream. Across workers: gather every
    worker's ``(count, mean, m2)`` (e.g. ``all_gather`` of a 3-vector) and fold them with :meth:`merge`;
    the triple cannot simply be summed.

    The variance is the population variance ``m2 / count`` (``torch.var(correction=0)``): it describes
    the scores seen, which is what normalization needs, and is defined for a single value.

    Reference:
        Chan, Golub & LeVeque 1979, "Updating formulae and a pairwise algorithm for computing sample
        variances" (parallel combination of (n, mean, M2)).
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def __post_init__(self) -> None:
        if self.count < 0 or self.m2 < 0:
            raise ValueError(f"need count >= 0 and m2 >= 0, got count={self.count}, m2={self.m2}")
        if not (math.isfinite(self.mean) and math.isfinite(self.m2)):
            raise ValueError(f"mean and m2 must be finite, got mean={self.mean}, m2={self.m2}")

    @classmethod
    def from_moments(cls, count: int, mean: float, m2: float) -> RunningMeanStd:
        """Build statistics from ``(count, mean, m2)``, e.g. gathered from another worker."""
        return cls(count=int(count), mean=float(mean), m2=float(m2))

    @classmethod
    def from_tensor(cls, x: torch.Tensor) -> RunningMeanStd:
        """Statistics of all values of ``x`` (any shape), computed in float64."""
        values = x.detach().to(torch.float64).flatten()
        if values.numel() == 0:
            return cls()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("scores must be finite to update running statistics")
        mean = values.mean()
        m2 = ((values - mean) ** 2).sum()  # M2 = sum (x - mean)^2
        return cls(count=values.numel(), mean=mean.item(), m2=m2.item())

    @property
    def var(self) -> float:
        """Population variance ``m2 / count``; NaN before any update."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation; NaN before any update."""
        return math.sqrt(self.var)

    def merge(self, other: RunningMeanStd) -> RunningMeanStd:
        """Statistics of the union of both streams (neither input is modified).

        Reference:
            Chan et al. 1979: delta = mean_b - mean_a; n = n_a + n_b;
            mean = mean_a + delta * n_b / n; M2 = M2_a + M2_b + delta^2 * n_a * n_b / n.
        """
        n = self.count + other.count
        if n == 0:
            return RunningMeanStd()
        delta = other.mean - self.mean  # delta = mean_b - mean_a
        mean = self.mean + delta * other.count / n  # mean = mean_a + delta * n_b / n
        m2 = (
            self.m2 + other.m2 + delta**2 * self.count * other.count / n
        )  # M2 = M2_a + M2_b + delta^2 n_a n_b / n
        return RunningMeanStd(count=n, mean=mean, m2=m2)

    def update(self, x: torch.Tensor) -> None:
        """Add all values of ``x`` (any shape) to the statistics, in place."""
        merged = self.merge(RunningMeanStd.from_tensor(x))
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2

    def normalize(self, x: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
        """Standardize ``x`` with the current statistics: ``(x - mean) / (std + eps)``.

        Args:
            x: (B,) scores.
            shift_mean: If True subtract the running mean; if False only divide by the std (keeps the
                sign of the scores, as TRL's ``use_score_scaling`` without ``use_score_norm``).
            eps: Added to the std to avoid division by zero.

        Returns:
            (B,) normalized scores, in the dtype of ``x``.

        Raises:
            ValueError: If no values have been seen yet.
        """
        if self.count == 0:
            raise ValueError("RunningMeanStd has seen no scores; call update() first")
        shifted = x.to(torch.float64) - self.mean if shift_mean else x.to(torch.float64)
        return (shifted / (self.std + eps)).to(x.dtype)  # z = (x - mu) / (sigma + eps)

    def state_dict(self) -> dict[str, float]:
        """The statistics as a plain dict, for checkpoints."""
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore statistics saved by :meth:`state_dict`."""
        if set(state) != {"count", "mean", "m2"}:
            raise ValueError(f"expected keys count, mean, m2; got {sorted(state)}")
        loaded = RunningMeanStd.from_moments(state["count"], state["mean"], state["m2"])
        self.count, self.mean, self.m2 = loaded.count, loaded.mean, loaded.m2
