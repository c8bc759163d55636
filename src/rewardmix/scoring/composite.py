"""The composite reward: named scorers, a per-component transform, and a combinator, built from YAML.

A reward is a list of components and a combinator (SPEC §6). For a batch of B samples, component c:

1. scores every sample with its scorer: ``raw[c]``, shape (B,) (a reward model already returns its logit
   or bounded score, as its ``output`` says; CRS §5.4);
2. is normalized: ``none``; ``running`` (the running mean/std of every raw score seen so far, updated with
   this batch first, then applied: ``(x - mean) / (std + 1e-8)``); ``reference`` (mean/std of the scores
   of fixed reference samples, given once to :meth:`CompositeReward.calibrate_reference`:
   ``(x - mean) / std``; Ziegler et al. 2019 §2.2); or ``group`` (z-scored within each prompt's group of K
   answers, ``(x - mean_g) / (std_g + 1e-6)``; GDPO: a component's scale and offset then cancel before the
   components are combined);
3. is clipped to ``[-clip, clip]`` when ``clip`` is set (CRS Table 8 "score clip 4"): ``normalized[c]``.

The normalized components are stacked in config order into (B, C) and the combinator of
:mod:`rewardmix.algos.combine` (``sum``, ``weighted``, ``threshold``, ``min``, or one registered with
``register_combinator``) turns them into one score per sample, (B,). Order matters: ``threshold`` caps the
FIRST component (RLLR Eq. 4: r1 = the label-sensitive reward), ``weighted`` takes each component's
``weight`` (CRS: ``w * pref + (1 - w) * abs``). ``constrained`` caps every component that has a ``target``
with a Lagrange multiplier that training moves by dual ascent (``sum_c (1 - mu_c) s_c``, then
``I <- max(0, I + multiplier_lr * gap)``, ``mu = max(0, I + multiplier_kp * gap)`` with ``gap = batch mean -
target``; Moskovitz et al. 2023): the cap RLLR sets by hand
with λ, found during training. A proportional term (``multiplier_kp``, the PI form of Stooke et al. 2020)
damps the oscillation plain dual ascent shows.

A config (every key checked; a component holds exactly the one section of its type)::

    components:
      - name: label_rm               # metric keys: reward/label_rm/raw, reward/label_rm/normalized
        type: reward_model
        reward_model: {path: runs/rm_label/model, head_output: logit}
        output: logit                # reward models only: logit | bounded (CRS §5.4)
        normalize: none              # none | running | reference
        clip: null                   # symmetric score clip, e.g. 4 (CRS Table 8)
      - name: rationale_rm
        type: reward_model
        reward_model: {path: runs/rm_rationale/model}
      - name: correct
        type: label_correct
        label_correct: {}            # every field has a default; the section must still be there
    combinator: threshold            # RLLR Eq. 4: min(r1, λ) + r2 + r3
    combinator_params: {threshold: 5.0}

Scorer types are a registry too: ``@register_scorer_type("my_rule", MyRuleConfig)`` on a builder
``fn(component, params, context) -> Scorer``; such a component gives its settings in a ``params:`` section,
checked strictly against ``MyRuleConfig``.

Reference: SPEC §6; RLLR Eq. 4; CRS §5.4 and Table 8; Ziegler et al. 2019 §2.2 (reward normalization on
reference samples); STYLE.md example 5 (aggregation outside the trainer).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from rewardmix.algos.advantages import group_advantages
from rewardmix.algos.combine import (
    COMBINATORS,
    RunningMeanStd,
    clip_scores_symmetric,
    get_combinator,
    multiplier_step,
)
from rewardmix.config import from_dict
from rewardmix.scoring.base import Scorer, ScoringBatch, check_score_tensor
from rewardmix.scoring.reward_model import RewardModelParams, RewardModelScorer, ScoreOutput
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
    "NonFiniteScoreError",
    "ScorerType",
    "build_scorer",
    "check_finite_scores",
    "register_scorer_type",
]

logger = logging.getLogger(__name__)

NormalizeMode = Literal["none", "running", "reference", "group"]
# combinator_params of ``constrained`` (read by the composite, not passed to the combinator) and their defaults
CONSTRAINED_PARAMS = {"multiplier_lr": 0.1, "multiplier_kp": 1.0, "initial_multiplier": 0.0}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# The sections of ComponentConfig, one per built-in type, plus ``params`` for registered ones.
_SECTIONS = ("reward_model", "label_correct", "length_penalty", "format", "contains", "params")


# ---------------------------------------------------------------------------------------------------------
# Scorer-type registry
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BuildContext:
    """What builders may need beside a component's own config (the PPO stage fills it in)."""

    device: str | torch.device = "cpu"
    """Where models run and where the composite's scores are returned."""
    shared_backbone: torch.nn.Module | None = None
    """The ``PeftModel`` carrying the run's LoRA roles; reward models with a ``role`` are loaded onto it."""
    tokenizer: Any = None
    """The shared base's tokenizer (for reward-model roles on ``shared_backbone``)."""


ScorerBuilder = Callable[["ComponentConfig", Any, BuildContext], Scorer]


@dataclass(frozen=True)
class ScorerType:
    """A registered scorer type: its config dataclass, its builder and the config section it reads."""

    config_cls: type
    build: ScorerBuilder
    section: str


SCORER_TYPES: dict[str, ScorerType] = {}


def register_scorer_type(name: str, config_cls: type) -> Callable[[ScorerBuilder], ScorerBuilder]:
    """Decorator registering a user scorer type; its components give their settings under ``params:``.

    Example::

        @dataclass
        class KeywordConfig:
            word: str
            \"\"\"Word to reward.\"\"\"

        @register_scorer_type("keyword", KeywordConfig)
        def build_keyword(component, params, context):
            return ContainsScorer(ContainsConfig(substring=params.word), name=component.name)

        # YAML: {name: kw, type: keyword, params: {word: hello}}

    Args:
        name: The ``type`` value in configs.
        config_cls: Dataclass the ``params`` section is loaded into (strictly, with ``from_dict``).

    Returns:
        The decorator; it registers ``fn(component, params, context) -> Scorer`` and returns it unchanged.

    Raises:
        ValueError: If ``name`` is invalid or already registered.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"scorer type name must be letters, digits, '_', '.', '-'; got {name!r}")
    if name in SCORER_TYPES:
        raise ValueError(f"scorer type {name!r} is already registered; known: {sorted(SCORER_TYPES)}")

    def decorator(build: ScorerBuilder) -> ScorerBuilder:
        SCORER_TYPES[name] = ScorerType(config_cls=config_cls, build=build, section="params")
        return build

    return decorator


def _builtin(name: str, config_cls: type) -> Callable[[ScorerBuilder], ScorerBuilder]:
    def decorator(build: ScorerBuilder) -> ScorerBuilder:
        SCORER_TYPES[name] = ScorerType(config_cls=config_cls, build=build, section=name)
        return build

    return decorator


# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ComponentConfig:
    """One named score component: its scorer (type + the section of that type) and its transform."""

    name: str
    """Component name: metric keys ``reward/<name>/raw`` and ``reward/<name>/normalized``; unique."""
    type: str
    """Scorer type: ``reward_model``, ``label_correct``, ``length_penalty``, ``format``, ``contains``, or a type
    registered with ``register_scorer_type``."""
    reward_model: RewardModelParams | None = None
    """Settings of a ``reward_model`` component (give only the section of the component's type)."""
    label_correct: LabelCorrectConfig | None = None
    """Settings of a ``label_correct`` component."""
    length_penalty: LengthPenaltyConfig | None = None
    """Settings of a ``length_penalty`` component."""
    format: FormatConfig | None = None
    """Settings of a ``format`` component."""
    contains: ContainsConfig | None = None
    """Settings of a ``contains`` component."""
    params: dict[str, Any] | None = None
    """Settings of a component of a registered (user) type, checked against that type's config dataclass."""
    output: ScoreOutput | None = None
    """Reward models only: ``logit`` (raw head value; CRS's final choice) or ``bounded`` (sigmoid into
    (0, 1)); ``null`` -> ``logit``."""
    normalize: NormalizeMode = "none"
    """``none``; ``running`` (running mean/std of all raw scores so far, updated with each batch, then
    applied: for scores whose scale drifts); ``reference`` (mean/std of the initial policy's samples, given once
    to ``calibrate_reference``: a fixed scale, so the combined reward keeps its meaning across steps);
    ``group`` (z-scored within each prompt's K answers, needs ``ppo.samples_per_prompt >= 2``: GDPO, for
    critic-free estimators whose components have very different scales or resolutions, e.g. a 0/1 rule beside
    a reward model's logit)."""
    clip: float | None = None
    """Clip the normalized score to ``[-clip, clip]`` (CRS Table 8: 4); ``null`` -> no clip."""
    weight: float = 1.0
    """Weight for combinators that take ``weights`` (``weighted``: divided by the sum of all weights)."""
    target: float | None = None
    """``combinator: constrained`` only: cap this component's batch mean (of the normalized score) at this
    value with a Lagrange multiplier learned during training; null: not capped."""
    monitor: bool = False
    """Score and log this component (``reward/<name>/raw``, with every sample) but leave it out of the reward:
    e.g. a gold reward model watched during training (Gao et al. 2022), or a proxy the run does not optimize.
    Combinators see the other components only."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"'name': use letters, digits, '_', '.', '-' (no '/'), got {self.name!r}")
        if self.type not in SCORER_TYPES:
            raise ValueError(f"'type': unknown scorer type {self.type!r}; known: {sorted(SCORER_TYPES)}")
        expected = SCORER_TYPES[self.type].section
        given = [s for s in _SECTIONS if getattr(self, s) is not None]
        if given != [expected]:
            if expected not in given:
                raise ValueError(
                    f"type {self.type!r} needs its {expected!r} section (e.g. '{expected}: {{}}' for defaults)"
                    + (f"; got {given}" if given else "")
                )
            extra = [s for s in given if s != expected]
            raise ValueError(
                f"section(s) {extra} do not belong to type {self.type!r}: a component holds exactly one "
                f"section, {expected!r}"
            )
        if self.output is not None and self.type != "reward_model":
            raise ValueError(f"'output' applies to reward_model components only, not to type {self.type!r}")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"'clip' must be a positive number or null, got {self.clip}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"'weight' must be finite and >= 0, got {self.weight}")
        if self.target is not None and not math.isfinite(self.target):
            raise ValueError(f"'target' must be a finite number or null, got {self.target}")
        if self.monitor and self.target is not None:
            raise ValueError(
                "'target': a monitor component is not part of the reward, so it cannot be capped"
            )
        self.settings()  # a registered type's params are checked now, at load time

    def settings(self) -> Any:
        """The scorer's settings: the section dataclass (``params`` loaded into the registered config class)."""
        scorer_type = SCORER_TYPES[self.type]
        section = getattr(self, scorer_type.section)
        if scorer_type.section == "params":
            return from_dict(scorer_type.config_cls, section, prefix="params")
        return section


@dataclass
class CompositeConfig:
    """A composite reward: components (in order) and the combinator over them."""

    components: list[ComponentConfig] = field(default_factory=list)
    """The score components, in the order the combinator sees them (``threshold`` caps the first; components
    with ``monitor: true`` are scored and logged only)."""
    combinator: str = "sum"
    """Combinator name from ``rewardmix.algos.combine``: ``sum``, ``weighted`` (weights from the components'
    ``weight``), ``threshold`` (RLLR Eq. 4), ``min``, ``constrained`` (components with a ``target`` capped by
    learned Lagrange multipliers), or a registered one."""
    combinator_params: dict[str, float | bool] = field(default_factory=dict)
    """Keyword hyperparameters of the combinator, e.g. ``{threshold: 5.0}``; ``weights`` come from the
    components. ``constrained`` takes ``multiplier_lr`` (K_I, the dual step size, default 0.1),
    ``multiplier_kp`` (K_P, the proportional gain, default 1.0; 0 is plain dual ascent) and
    ``initial_multiplier`` (default 0: the capped components start fully counted)."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"'components': duplicate component names {duplicates}")
        if self.combinator not in COMBINATORS:
            raise ValueError(f"'combinator': unknown {self.combinator!r}; known: {sorted(COMBINATORS)}")
        if "weights" in self.combinator_params:
            raise ValueError("'combinator_params': weights are set per component ('weight'), not here")
        if self.components and not self.combined():
            raise ValueError("'components': every component is a monitor; at least one must make the reward")
        targets = [c.name for c in self.components if c.target is not None]
        if self.combinator == "constrained":
            unknown = sorted(set(self.combinator_params) - set(CONSTRAINED_PARAMS))
            if unknown:
                raise ValueError(
                    f"'combinator_params': {unknown} unknown to combinator 'constrained'; it takes "
                    f"{sorted(CONSTRAINED_PARAMS)}"
                )
            lr, kp, initial = self.constrained_params()
            if not all(math.isfinite(x) for x in (lr, kp, initial)) or lr <= 0 or kp < 0 or initial < 0:
                raise ValueError(
                    "'combinator_params': constrained needs multiplier_lr > 0, multiplier_kp >= 0 and "
                    f"initial_multiplier >= 0, got {lr}, {kp} and {initial}"
                )
            if self.components and not targets:
                raise ValueError(
                    "'combinator': constrained caps the components that have a 'target'; give at least one "
                    "component a target"
                )
        elif targets:
            raise ValueError(
                f"components {targets}: 'target' is read by combinator 'constrained' only, not "
                f"{self.combinator!r}"
            )
        if self.components:
            # A trial call on zeros: missing or unknown hyperparameters fail at load time, not mid-run.
            try:
                get_combinator(self.combinator)(
                    torch.zeros(1, len(self.combined())), **self.combinator_kwargs()
                )
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"'combinator_params' {dict(self.combinator_params)} do not fit combinator "
                    f"{self.combinator!r} with {len(self.combined())} component(s): {e}"
                ) from None

    def combined(self) -> list[ComponentConfig]:
        """The components the combinator sees, in order: every one but the monitors."""
        return [c for c in self.components if not c.monitor]

    def constrained_params(self) -> tuple[float, float, float]:
        """``(multiplier_lr, multiplier_kp, initial_multiplier)`` of the ``constrained`` combinator, defaults
        filled in."""
        params = CONSTRAINED_PARAMS | dict(self.combinator_params)
        return tuple(float(params[k]) for k in ("multiplier_lr", "multiplier_kp", "initial_multiplier"))

    def combinator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the combinator: ``combinator_params`` plus ``weights`` if it takes them
        (``constrained``: the initial ``multipliers``, 0 for components without a target)."""
        if self.combinator == "constrained":
            initial = self.constrained_params()[2]
            return {"multipliers": [0.0 if c.target is None else initial for c in self.combined()]}
        kwargs: dict[str, Any] = dict(self.combinator_params)
        parameters = inspect.signature(get_combinator(self.combinator)).parameters
        if "weights" in parameters:
            kwargs["weights"] = [c.weight for c in self.combined()]
        return kwargs


# ---------------------------------------------------------------------------------------------------------
# Built-in scorer types
# ---------------------------------------------------------------------------------------------------------


@_builtin("reward_model", RewardModelParams)
def _build_reward_model(
    component: ComponentConfig, params: RewardModelParams, context: BuildContext
) -> RewardModelScorer:
    options = {
        "name": component.name,
        "output": component.output or "logit",
        "head_output": params.head_output,
        "batch_size": params.batch_size,
        "max_length": params.max_length,
        "min_prompt_tokens": params.min_prompt_tokens,
    }
    if params.role is None:
        return RewardModelScorer.from_pretrained(
            params.path,
            tokenizer_path=params.tokenizer,
            device=context.device,
            dtype=params.dtype,
            trust_remote_code=params.trust_remote_code,
            **options,
        )
    if context.shared_backbone is None:
        raise ValueError(
            f"component {component.name!r}: reward_model.role={params.role!r} needs a shared base: build the "
            "composite with context=BuildContext(shared_backbone=..., tokenizer=...) or pass its scorer"
        )
    tokenizer = context.tokenizer
    if params.tokenizer is not None:
        from rewardmix.models.loading import load_tokenizer

        tokenizer = load_tokenizer(params.tokenizer, trust_remote_code=params.trust_remote_code)
    if tokenizer is None:
        raise ValueError(
            f"component {component.name!r}: no tokenizer for the shared base (context.tokenizer)"
        )
    return RewardModelScorer.from_adapter(
        context.shared_backbone, tokenizer, params.path, role=params.role, **options
    )


@_builtin("label_correct", LabelCorrectConfig)
def _build_label_correct(component: ComponentConfig, params: LabelCorrectConfig, _: BuildContext) -> Scorer:
    return LabelCorrectScorer(params, name=component.name)


@_builtin("length_penalty", LengthPenaltyConfig)
def _build_length_penalty(component: ComponentConfig, params: LengthPenaltyConfig, _: BuildContext) -> Scorer:
    return LengthPenaltyScorer(params, name=component.name)


@_builtin("format", FormatConfig)
def _build_format(component: ComponentConfig, params: FormatConfig, _: BuildContext) -> Scorer:
    return FormatScorer(params, name=component.name)


@_builtin("contains", ContainsConfig)
def _build_contains(component: ComponentConfig, params: ContainsConfig, _: BuildContext) -> Scorer:
    return ContainsScorer(params, name=component.name)


def build_scorer(component: ComponentConfig, context: BuildContext | None = None) -> Scorer:
    """Build the scorer of one component with its type's registered builder."""
    scorer_type = SCORER_TYPES[component.type]
    return scorer_type.build(component, component.settings(), context or BuildContext())


# ---------------------------------------------------------------------------------------------------------
# The composite
# ---------------------------------------------------------------------------------------------------------


def _moments(x: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of x (NaN for an empty tensor)."""
    if x.numel() == 0:
        return math.nan, math.nan
    x = x.detach().to(torch.float64)
    return x.mean().item(), x.std(correction=0).item()


class NonFiniteScoreError(FloatingPointError, ValueError):
    """A reward component's score (raw, normalized or combined) is NaN or inf.

    The message names the component, the indices of the bad samples in the batch and, when the batch is at
    hand, the first one's prompt and response. It is also a ``ValueError``, what a bad scorer output always
    raised.

    Attributes:
        component: The component's name (``combinator <name>`` for the combined score).
        samples: Indices in the batch of the non-finite scores.
    """

    def __init__(
        self, message: str, *, component: str | None = None, samples: list[int] | None = None
    ) -> None:
        super().__init__(message)
        self.component = component
        self.samples = list(samples or [])


def check_finite_scores(
    component: str, scores: torch.Tensor, *, kind: str = "raw", batch: ScoringBatch | None = None
) -> None:
    """Raise :class:`NonFiniteScoreError` naming ``component`` and the samples when ``scores`` has NaN/inf.

    Args:
        component: The component's name, for the message.
        scores: (B,) scores.
        kind: ``raw``, ``normalized`` or ``combined``, for the message.
        batch: The scored batch, to quote the first bad sample's prompt and response.
    """
    bad = torch.nonzero(~torch.isfinite(scores.detach())).flatten().tolist()
    if not bad:
        return
    i = bad[0]
    sample = ""
    if batch is not None:
        sample = (
            f"; sample {i}: prompt {_prompt_text(batch.prompts[i])!r}, response {batch.responses[i][:200]!r}"
        )
    shown = f"{bad[:20]}{' ...' if len(bad) > 20 else ''}"
    raise NonFiniteScoreError(
        f"reward component {component!r} gave a non-finite {kind} score ({scores[i].item()}) for sample(s) "
        f"{shown} of a batch of {scores.shape[0]}{sample}",
        component=component,
        samples=bad,
    )


def _prompt_text(prompt: Any, limit: int = 200) -> str:
    """A prompt as text for a message: the string, or the last turn's content of a conversation."""
    if isinstance(prompt, str):
        return prompt[:limit]
    last = prompt[-1] if prompt else ""
    content = last.get("content", "") if isinstance(last, Mapping) else getattr(last, "content", last)
    return str(content)[:limit]


class CompositeScores(NamedTuple):
    """What a composite reward returns for B samples."""

    scores: torch.Tensor
    """(B,) combined score: the reward the policy optimizes."""
    raw: dict[str, torch.Tensor]
    """Component name -> (B,) raw score, as the scorer returned it."""
    normalized: dict[str, torch.Tensor]
    """Component name -> (B,) score after normalization and clipping: what the combinator saw."""
    stacked: torch.Tensor
    """(B, C) the normalized scores of the C non-monitor components in config order (the combinator's input)."""

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Batch means and stds: ``<prefix>/<name>/raw`` (+ ``_std``), ``.../normalized``, ``<prefix>/combined``."""
        out: dict[str, float] = {}
        for name in self.raw:
            for kind, values in (("raw", self.raw[name]), ("normalized", self.normalized[name])):
                mean, std = _moments(values)
                out[f"{prefix}/{name}/{kind}"] = mean
                out[f"{prefix}/{name}/{kind}_std"] = std
        mean, std = _moments(self.scores)
        out[f"{prefix}/combined"] = mean
        out[f"{prefix}/combined_std"] = std
        return out

    def rows(self, prefix: str = "reward") -> list[dict[str, float]]:
        """Per-sample values with the metric key names, to store beside each sample."""
        columns = {f"{prefix}/combined": self.scores}
        for name in self.raw:
            columns[f"{prefix}/{name}/raw"] = self.raw[name]
            columns[f"{prefix}/{name}/normalized"] = self.normalized[name]
        lists = {key: values.detach().cpu().tolist() for key, values in columns.items()}
        return [{key: lists[key][i] for key in lists} for i in range(self.scores.shape[0])]


class CompositeReward:
    """Score a batch with every component, transform each, and combine them (see the module docstring).

    Args:
        cfg: The composite's config (at least one component).
        scorers: Ready scorers by component name (e.g. reward models the PPO stage keeps on its shared base,
            or fakes in tests); the other components are built from the config with the scorer-type registry.
        context: What builders need beside the config (device, shared base, tokenizer); scores are returned
            on ``context.device``.
        group_size: K, answers per prompt in consecutive rows of every batch (``normalize: group`` needs
            K >= 2 and batches of whole groups).

    Raises:
        ValueError: No components, a scorer for an unknown component, a given reward-model scorer whose
            ``output`` disagrees with the config, or ``normalize: group`` with ``group_size < 2``.
    """

    def __init__(
        self,
        cfg: CompositeConfig,
        *,
        scorers: Mapping[str, Scorer] | None = None,
        context: BuildContext | None = None,
        group_size: int = 1,
    ) -> None:
        if not cfg.components:
            raise ValueError("a composite reward needs at least one component")
        grouped = [c.name for c in cfg.components if c.normalize == "group"]
        if grouped and group_size < 2:
            raise ValueError(
                f"components {grouped} normalize within groups of answers to one prompt: that needs K >= 2 "
                f"answers per prompt (ppo.samples_per_prompt), got {group_size}"
            )
        self.group_size = group_size
        given = dict(scorers or {})
        unknown = sorted(set(given) - {c.name for c in cfg.components})
        if unknown:
            raise ValueError(
                f"scorers given for unknown components {unknown}; components: {_component_names(cfg)}"
            )
        self.cfg = cfg
        self.context = context or BuildContext()
        self.device = torch.device(self.context.device)
        for component in cfg.components:  # check the given scorers before loading any model
            wanted = component.output or "logit"
            found = getattr(given.get(component.name), "output", None)
            if component.type == "reward_model" and found is not None and found != wanted:
                raise ValueError(
                    f"component {component.name!r}: the config asks for output {wanted!r}, its scorer gives {found!r}"
                )
        self.scorers: dict[str, Scorer] = {
            c.name: given[c.name] if c.name in given else build_scorer(c, self.context)
            for c in cfg.components
        }
        self._combine = get_combinator(cfg.combinator)
        self._combine_kwargs = cfg.combinator_kwargs()
        if "weights" not in self._combine_kwargs and any(c.weight != 1.0 for c in cfg.components):
            logger.warning("combinator %r ignores the components' weights", cfg.combinator)
        self._running = {c.name: RunningMeanStd() for c in cfg.components if c.normalize == "running"}
        self._reference: dict[str, RunningMeanStd | None] = {
            c.name: None for c in cfg.components if c.normalize == "reference"
        }
        # constrained combinator: component -> its Lagrange multiplier (the value the next batch is combined with)
        # and the integral term it is computed from
        self._multipliers: dict[str, float] = {}
        self._integrals: dict[str, float] = {}
        self._multiplier_lr = self._multiplier_kp = 0.0
        self._gaps: dict[str, float] = {}
        self._used: dict[str, float] = {}
        if cfg.combinator == "constrained":
            self._multiplier_lr, self._multiplier_kp, initial = cfg.constrained_params()
            self._multipliers = {c.name: initial for c in cfg.components if c.target is not None}
            self._integrals = dict(self._multipliers)
        self._last: CompositeScores | None = None
        self._clipfrac: dict[str, float] = {}
        logger.info(
            "composite reward: %s -> %s%s",
            ", ".join(f"{c.name} ({c.type}, normalize={c.normalize}, clip={c.clip})" for c in cfg.components),
            cfg.combinator,
            f" {dict(cfg.combinator_params)}" if cfg.combinator_params else "",
        )

    @property
    def names(self) -> list[str]:
        """Component names in config order."""
        return _component_names(self.cfg)

    def raw_scores(self, batch: ScoringBatch) -> dict[str, torch.Tensor]:
        """Every component's raw (B,) float32 score, on the composite's device.

        Raises:
            NonFiniteScoreError: A component gave NaN or inf (the message names it, the samples, the first
                one's prompt and response).
        """
        out = {}
        for name, scorer in self.scorers.items():
            scores = scorer.score(batch)
            if isinstance(scores, torch.Tensor) and scores.shape == (len(batch),):
                check_finite_scores(name, scores, batch=batch)
            out[name] = check_score_tensor(name, scores, len(batch)).to(self.device)
        return out

    def __call__(self, batch: ScoringBatch, *, update_stats: bool = True) -> CompositeScores:
        """Score, transform and combine.

        Args:
            batch: B samples.
            update_stats: Add this batch's raw scores to the running statistics before normalizing (training);
                ``False`` applies the current statistics only (evaluation).

        Returns:
            :class:`CompositeScores` with ``scores`` (B,), ``raw`` and ``normalized`` per component.

        Raises:
            ValueError: A ``reference`` component used before :meth:`calibrate_reference`, a ``running`` one
                without statistics and ``update_stats=False``, or a scorer returning a bad tensor.
        """
        return self.combine(self.raw_scores(batch), update_stats=update_stats)

    def combine(self, raw: Mapping[str, torch.Tensor], *, update_stats: bool = True) -> CompositeScores:
        """Normalize, clip and combine raw component scores: the second half of :meth:`__call__`.

        A data-parallel run scores its share of the batch on each process (:meth:`raw_scores`), gathers the raw
        scores and combines the whole batch here, so running statistics and clip fractions are those of the
        whole batch, identical on every process.

        Args:
            raw: Component name -> (B,) raw score, every component of the config.
            update_stats: As in :meth:`__call__`.
        """
        missing = [name for name in self.names if name not in raw]
        if missing:
            raise ValueError(f"raw scores missing for components {missing}")
        B = len(raw[self.names[0]])
        for name in self.names:  # before any statistic is updated: a NaN must not enter the running moments
            check_finite_scores(name, raw[name])
        normalized: dict[str, torch.Tensor] = {}
        for component in self.cfg.components:
            x = self._normalize(component, raw[component.name], update=update_stats)
            check_finite_scores(component.name, x, kind="normalized")
            if component.clip is not None:
                self._clipfrac[component.name] = (x.abs() > component.clip).float().mean().item()
                x = clip_scores_symmetric(x, clip=component.clip)  # s <- min(max(s, -c), c)
            normalized[component.name] = x
        combined_names = [c.name for c in self.cfg.combined()]  # monitors are scored, never combined
        stacked = torch.stack([normalized[name] for name in combined_names], dim=1)  # (B, C), config order
        kwargs = self._combine_kwargs
        if self._multipliers:  # constrained: the current multipliers, then one dual step on this batch
            kwargs = {"multipliers": [self._multipliers.get(name, 0.0) for name in combined_names]}
            self._used = dict(self._multipliers)
            for component in self.cfg.components:
                if component.target is None:
                    continue
                mean = float(normalized[component.name].double().mean())
                self._gaps[component.name] = mean - component.target
                if update_stats:
                    name = component.name
                    self._integrals[name], self._multipliers[name] = multiplier_step(
                        self._integrals[name],
                        mean,
                        component.target,
                        lr=self._multiplier_lr,
                        kp=self._multiplier_kp,
                    )
        combined = self._combine(stacked, **kwargs)
        if isinstance(combined, torch.Tensor) and combined.shape == (B,):
            check_finite_scores(f"combinator {self.cfg.combinator}", combined, kind="combined")
        scores = check_score_tensor(f"combinator {self.cfg.combinator}", combined, B)
        raw = {name: raw[name] for name in self.names}
        self._last = CompositeScores(scores=scores, raw=raw, normalized=normalized, stacked=stacked)
        return self._last

    def _normalize(self, component: ComponentConfig, x: torch.Tensor, *, update: bool) -> torch.Tensor:
        if component.normalize == "running":
            stats = self._running[component.name]
            if update:
                stats.update(x)
            if stats.count == 0:
                raise ValueError(
                    f"component {component.name!r}: no running statistics yet (update_stats=False)"
                )
            return stats.normalize(x)  # z = (x - mu) / (sigma + eps)
        if component.normalize == "reference":
            reference = self._reference[component.name]
            if reference is None:
                raise ValueError(
                    f"component {component.name!r} normalizes with reference statistics: call "
                    "calibrate_reference(batch) first"
                )
            return reference.normalize(x, eps=0.0)  # z = (x - mu_ref) / sigma_ref
        if component.normalize == "group":
            return group_advantages(x, self.group_size)  # z = (x - mean_g) / (std_g + eps), per prompt
        return x

    def calibrate_reference(self, batch: ScoringBatch) -> dict[str, dict[str, float]]:
        """Score reference samples (e.g. SFT responses to training prompts) and keep their mean and std.

        Only components with ``normalize: reference`` are scored; calling again replaces the statistics.

        Args:
            batch: N >= 2 reference samples.

        Returns:
            Component name -> ``{"mean", "std", "count"}`` of its raw reference scores.

        Raises:
            ValueError: Fewer than 2 samples, or a component's reference scores have zero spread.

        Reference: Ziegler et al. 2019 §2.2 (reward normalized to mean 0, std 1 on reference samples).
        """
        out: dict[str, dict[str, float]] = {}
        for name in self._reference:
            x = self.scorers[name].score(batch)
            if isinstance(x, torch.Tensor) and x.shape == (len(batch),):
                check_finite_scores(name, x, kind="reference", batch=batch)
            x = check_score_tensor(name, x, len(batch))
            if x.numel() < 2:
                raise ValueError(f"component {name!r}: reference calibration needs at least 2 samples")
            stats = RunningMeanStd.from_tensor(x)
            if stats.std == 0:
                raise ValueError(f"component {name!r}: reference scores have zero spread; cannot calibrate")
            self._reference[name] = stats
            out[name] = {"mean": stats.mean, "std": stats.std, "count": float(stats.count)}
            logger.info(
                "component %s calibrated on %d reference samples: mean %.4g std %.4g",
                name,
                stats.count,
                stats.mean,
                stats.std,
            )
        if not out:
            logger.warning("calibrate_reference: no component uses normalize: reference")
        return out

    def metrics(self) -> dict[str, float]:
        """Metrics of the last call (empty before the first): per-component ``reward/<name>/raw``,
        ``reward/<name>/normalized`` (means, plus ``_std``), ``reward/combined`` (+ ``_std``),
        ``reward/<name>/clipfrac`` for clipped components, ``reward/<name>/running_mean``/``running_std``
        for running normalization, and for the constrained combinator ``reward/<name>/multiplier`` (the
        multiplier this batch was combined with) and ``reward/<name>/constraint_gap`` (batch mean - target)."""
        if self._last is None:
            return {}
        out = self._last.metrics()
        for name, fraction in self._clipfrac.items():
            out[f"reward/{name}/clipfrac"] = fraction
        for name, stats in self._running.items():
            out[f"reward/{name}/running_mean"] = stats.mean
            out[f"reward/{name}/running_std"] = stats.std
        for name, multiplier in self._used.items():
            out[f"reward/{name}/multiplier"] = multiplier
            out[f"reward/{name}/constraint_gap"] = self._gaps[name]
        return out

    def state_dict(self) -> dict[str, Any]:
        """Normalization statistics and the constrained combinator's multipliers (plain floats, JSON-safe) for
        checkpoints."""
        state: dict[str, Any] = {
            "components": self.names,
            "running": {name: stats.state_dict() for name, stats in self._running.items()},
            "reference": {
                name: (stats.state_dict() if stats is not None else None)
                for name, stats in self._reference.items()
            },
        }
        if self._multipliers:  # absent otherwise: checkpoints of other combinators are unchanged
            state["multipliers"] = dict(self._multipliers)
            state["multiplier_integrals"] = dict(self._integrals)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore statistics saved by :meth:`state_dict` (the components must be the same).

        Raises:
            ValueError: If the saved components or normalization modes differ from this composite's.
        """
        if list(state.get("components", [])) != self.names:
            raise ValueError(f"saved components {state.get('components')} differ from {self.names}")
        running, reference = dict(state.get("running", {})), dict(state.get("reference", {}))
        if set(running) != set(self._running) or set(reference) != set(self._reference):
            raise ValueError(
                f"saved normalization (running {sorted(running)}, reference {sorted(reference)}) differs from "
                f"the config's (running {sorted(self._running)}, reference {sorted(self._reference)})"
            )
        multipliers = dict(state.get("multipliers", {}))
        if set(multipliers) != set(self._multipliers):
            raise ValueError(
                f"saved constrained multipliers {sorted(multipliers)} differ from the config's capped components "
                f"{sorted(self._multipliers)}"
            )
        self._multipliers = {name: float(value) for name, value in multipliers.items()}
        self._integrals = {
            name: float(v) for name, v in dict(state.get("multiplier_integrals", multipliers)).items()
        }
        for name, saved in running.items():
            self._running[name].load_state_dict(saved)
        for name, saved in reference.items():
            self._reference[name] = RunningMeanStd.from_moments(**saved) if saved is not None else None


def _component_names(cfg: CompositeConfig) -> list[str]:
    """Component names of ``cfg`` in order."""
    return [c.name for c in cfg.components]
