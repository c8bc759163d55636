"""Reward-model evaluation (``rewardmix evaluate-rm``): held-out pair accuracy, error by score range, probes.

The model is ``<reward-model run>/model``, loaded through :class:`~rewardmix.scoring.RewardModelScorer`,
which builds every input exactly as training did (chat-rendered or text pair, same truncation). A part runs
when its input is given: ``pairs`` (files written by ``rewardmix pairs``; RLLR Tables 5 and 9 hold out the
label-sensitive pairs), ``ratings`` (``{"prompt"?, "response", "score"}`` rows, scores in [0, 1]; the
predicted rating is ``sigmoid(score)`` for sigmoid/logistic models, the score itself otherwise) and ``probes``
(default the shipped CRS probe set: each prompt's responses in their intended order, best first, CRS
Tables 24-27). ``scores.jsonl`` holds one row per scored pair, rating and probe.

Keys of ``eval.json`` (those of a part without data are absent):

- ``rm/accuracy``, ``rm/accuracy/<task>``, ``rm/accuracy/kind/<kind>``: share of pairs whose chosen answer
  scores higher (a tie counts 1/2); ``rm/margin_mean``: mean ``score(chosen) - score(rejected)``;
  ``rm/pairs``, ``rm/pairs/<task>``: pair counts.
- ``rm/mse``, ``rm/mae``, ``rm/mse/<range>``, ``rm/mae/<range>``, ``rm/count/<range>`` for the target ranges
  ``low``, ``mid``, ``high`` (CRS Tables 6-7: low <= 0.4, mid between, high >= 0.9; ``ranges``).
- ``rm/probe_order_rate``: share of prompts whose scores follow the intended order strictly;
  ``rm/probe_pair_accuracy``: share of correctly ordered response pairs; ``rm/probe/mean_score/<position>``;
  ``rm/probes``: probe count.
- ``rm/score_distribution/<source>`` (raw scores of the sources ``pairs/chosen``, ``pairs/rejected``,
  ``ratings``, ``probes``; CRS Fig. 24): ``{"count", "mean", "std", "min", "max", "quantiles": {"q05": ...},
  "histogram": {"edges", "counts"}}``.

Reference: RLLR §4.3 Table 5 and Appendix F Table 9 (accuracy on held-out label-sensitive pairs); CRS
§5.3.1-5.3.2, Tables 6-7 (MSE/MAE by range) and Tables 24-27 (probe responses), Fig. 24 (distributions).
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch

from rewardmix.algos.losses import pairwise_accuracy
from rewardmix.config import check_ranges
from rewardmix.data.pairs import PreferencePair, read_pairs
from rewardmix.data.readers import DataError, as_float, read_records
from rewardmix.evaluation.rewards import distribution
from rewardmix.rundir import atomic_write_text, prepare_run_dir, read_jsonl
from rewardmix.scoring.base import ScoringBatch
from rewardmix.scoring.reward_model import RewardModelScorer

log = logging.getLogger(__name__)

BUILTIN_PROBES = "builtin:crs"
Scorer = Callable[[Sequence[Any], Sequence[str]], list[float]]
"""``scorer(prompts, answers) -> raw scores``; may carry a ``score_transform`` attribute."""


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class RangesConfig:
    low_max: float = 0.4
    """Targets <= this are the low range (CRS Tables 6-7: "below 0.4", the low end 0 to 0.40)."""
    high_min: float = 0.9
    """Targets >= this are the high range (CRS: "above 0.9", 0.9 to 1.0); the rest is the mid range."""


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {
        "model": "reward_model",
        "pairs": "data",
        "ratings": "data",
        "probes": "data",
    }
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    output_dir: str = "runs/evaluate-rm"
    """Run directory: config, eval.json, scores.jsonl."""
    model: str = "runs/reward-model/model"
    """The reward model: ``<output_dir>/model`` of a reward-model run (a ScalarHeadModel folder)."""
    pairs: list[str] = field(default_factory=list)
    """Held-out preference-pair files (JSONL from ``rewardmix pairs``); all are pooled, reported per task."""
    ratings: str | None = None
    """Held-out rating file (JSONL/CSV/TSV/Parquet) for MSE/MAE by range; null: skip."""
    prompt_key: str = "prompt"
    """Ratings: field holding the prompt (absent or empty: the response is scored alone)."""
    text_key: str = "response"
    """Ratings: field holding the rated response."""
    score_key: str = "score"
    """Ratings: field holding the target rating in [0, 1]."""
    probes: str | None = BUILTIN_PROBES
    """Probe file (JSONL rows ``{"prompt", "responses" (best first), "positions"?}``); ``builtin:crs`` is the
    shipped set in the spirit of CRS Tables 24-27 (6 prompts x best/bad/irrelevant/meaningless); null: skip."""
    limit: int | None = None
    """Score only the first N pairs of each pair file and the first N ratings (null: all)."""
    score_transform: Literal["auto", "identity", "sigmoid"] = "auto"
    """How a score reads as a rating: ``auto`` takes the model's own (sigmoid for sigmoid/logistic absolute
    models, else identity)."""
    batch_size: int = 16
    """Sequences per forward pass."""
    max_length: int | None = None
    """Input token budget; null: the one the model was trained with (rewardmix_rm.json)."""
    min_prompt_tokens: int | None = None
    """Prompt floor under truncation; null: the one the model was trained with."""
    ranges: RangesConfig = field(default_factory=RangesConfig)
    quantiles: list[float] = field(default_factory=lambda: [0.05, 0.25, 0.5, 0.75, 0.95])
    """Quantiles of each score distribution."""
    histogram_bins: int = 20
    """Equal-width bins of each score histogram (between the minimum and maximum score)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Backbone dtype when loading the model."""
    cpu: bool = False
    """Score on the CPU even when a GPU is present."""

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least_1=("batch_size", "histogram_bins", "limit", "max_length"),
            at_least_0=("min_prompt_tokens",),
        )
        if not 0.0 <= self.ranges.low_max < self.ranges.high_min <= 1.0:
            raise ValueError("ranges: need 0 <= low_max < high_min <= 1")
        if any(not 0.0 <= q <= 1.0 for q in self.quantiles):
            raise ValueError("quantiles must lie in [0, 1]")


class EvalResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    eval_path: Path
    """``eval.json``."""
    metrics: dict[str, Any]
    """Its content."""


class Probe(NamedTuple):
    """One probe prompt and its responses in the intended order, best first."""

    prompt: str
    responses: tuple[str, ...]
    positions: tuple[str, ...]
    """Names of the positions (e.g. best, bad, irrelevant, meaningless)."""
    id: str = ""


# ---------------------------------------------------------------------------------------------------------
# The stage


def run(cfg: Config, *, scorer: Scorer | None = None) -> EvalResult:
    """Evaluate a reward model as configured.

    Args:
        cfg: The stage config.
        scorer: Use this instead of loading ``cfg.model`` (tests inject scorers with known outputs).

    Returns:
        An :class:`EvalResult`.
    """
    # step 1. run directory
    out = prepare_run_dir(cfg.output_dir, cfg, stage="evaluate-rm")

    # step 2. the scorer, building inputs as training did
    if scorer is None:
        scorer = load_scorer(cfg)
    transform = (
        cfg.score_transform
        if cfg.score_transform != "auto"
        else getattr(scorer, "score_transform", "identity")
    )
    metrics: dict[str, Any] = {"model": cfg.model}
    rows: list[dict[str, Any]] = []
    distributions: dict[str, list[float]] = {}

    # step 3. held-out pairs: accuracy overall, per task and per kind
    pairs = [p for path in cfg.pairs for p in read_pairs(path)[: cfg.limit]]
    if pairs:
        chosen = scorer([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = scorer([p.prompt for p in pairs], [p.rejected for p in pairs])
        metrics.update(pair_metrics(pairs, chosen, rejected))
        distributions["pairs/chosen"], distributions["pairs/rejected"] = chosen, rejected
        rows += [
            {"source": "pairs", "task": p.task, "kind": p.kind, "chosen_score": c, "rejected_score": r}
            for p, c, r in zip(pairs, chosen, rejected, strict=True)
        ]

    # step 4. ratings: MSE / MAE of the predicted rating, overall and per target range
    if cfg.ratings is not None:
        prompts, texts, targets = read_ratings(cfg)
        scores = scorer(prompts, texts)
        predictions = as_ratings(scores, transform)
        metrics.update(rating_metrics(predictions, targets, cfg.ranges))
        distributions["ratings"] = scores
        rows += [
            {"source": "ratings", "target": t, "score": s, "prediction": p}
            for t, s, p in zip(targets, scores, predictions, strict=True)
        ]

    # step 5. probes: do the scores follow best > bad > irrelevant > meaningless?
    if cfg.probes is not None:
        probes = read_probes(cfg.probes)
        flat_prompts = [probe.prompt for probe in probes for _ in probe.responses]
        flat_answers = [answer for probe in probes for answer in probe.responses]
        flat = scorer(flat_prompts, flat_answers)
        per_probe, start = [], 0
        for probe in probes:
            per_probe.append(flat[start : start + len(probe.responses)])
            start += len(probe.responses)
        metrics.update(probe_metrics(probes, per_probe))
        distributions["probes"] = flat
        rows += [
            {
                "source": "probes",
                "id": probe.id,
                "prompt": probe.prompt,
                "scores": dict(zip(probe.positions, s, strict=True)),
            }
            for probe, s in zip(probes, per_probe, strict=True)
        ]

    # step 6. score distributions
    for source, scores in distributions.items():
        metrics[f"rm/score_distribution/{source}"] = distribution(
            scores, quantiles=cfg.quantiles, bins=cfg.histogram_bins
        )

    # step 7. eval.json and scores.jsonl
    eval_path = out / "eval.json"
    atomic_write_text(eval_path, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "scores.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    log.info("reward-model evaluation: %s", json.dumps(summary))
    return EvalResult(out, eval_path, metrics)


def load_scorer(cfg: Config) -> Scorer:
    """Raw scores of the reward model ``cfg.model`` (:class:`~rewardmix.scoring.RewardModelScorer`), on a GPU
    when there is one; its ``score_transform`` is the model's own (``rewardmix_rm.json``)."""
    device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    scorer = RewardModelScorer.from_pretrained(
        cfg.model,
        batch_size=cfg.batch_size,
        device=device,
        max_length=cfg.max_length,
        min_prompt_tokens=cfg.min_prompt_tokens,
        dtype=cfg.dtype,
    )
    return RawScores(scorer)


class RawScores:
    """``scorer(prompts, answers) -> raw head values`` over a reward-model scorer, with its score transform."""

    def __init__(self, scorer: RewardModelScorer) -> None:
        self.scorer = scorer
        self.score_transform = scorer.score_transform

    def __call__(self, prompts: Sequence[Any], answers: Sequence[str]) -> list[float]:
        return self.scorer.head_values(ScoringBatch(list(prompts), list(answers))).tolist()


# ---------------------------------------------------------------------------------------------------------
# Metrics (pure functions of scores)


def pair_metrics(
    pairs: Sequence[PreferencePair], chosen: Sequence[float], rejected: Sequence[float]
) -> dict[str, float]:
    """Pairwise accuracy (ties count 1/2) overall, per task and per kind; mean margin; counts.

    Reference: RLLR Tables 5 and 9 (reward-model accuracy on held-out label-sensitive pairs).
    """

    def accuracy(index: Sequence[int]) -> float:
        c = torch.tensor([chosen[i] for i in index], dtype=torch.float64)
        r = torch.tensor([rejected[i] for i in index], dtype=torch.float64)
        return float(pairwise_accuracy(c, r))

    everything = list(range(len(pairs)))
    out = {
        "rm/accuracy": accuracy(everything),
        "rm/margin_mean": sum(chosen[i] - rejected[i] for i in everything) / len(everything),
        "rm/pairs": float(len(everything)),
    }
    by_task: dict[str, list[int]] = defaultdict(list)
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        if pair.task is not None:
            by_task[pair.task].append(i)
        by_kind[pair.kind].append(i)
    for task, index in sorted(by_task.items()):
        out[f"rm/accuracy/{task}"] = accuracy(index)
        out[f"rm/pairs/{task}"] = float(len(index))
    for kind, index in sorted(by_kind.items()):
        out[f"rm/accuracy/kind/{kind}"] = accuracy(index)
    return out


def as_ratings(scores: Sequence[float], transform: str) -> list[float]:
    """Scores as ratings: ``sigmoid(score)`` or the score itself."""
    if transform == "sigmoid":
        return torch.sigmoid(torch.tensor(scores, dtype=torch.float64)).tolist()
    if transform != "identity":
        raise ValueError(f"score_transform must be 'identity' or 'sigmoid', got {transform!r}")
    return [float(s) for s in scores]


def score_range(target: float, ranges: RangesConfig) -> str:
    """``low`` (<= low_max), ``high`` (>= high_min) or ``mid``."""
    if target <= ranges.low_max:
        return "low"
    return "high" if target >= ranges.high_min else "mid"


def rating_metrics(
    predictions: Sequence[float], targets: Sequence[float], ranges: RangesConfig
) -> dict[str, float]:
    """MSE and MAE overall and per target range (ranges without data are left out).

    Reference: CRS Tables 6-7 (mse / mae below 0.4, above 0.9, between 0.4 and 0.9).
    """
    if len(predictions) != len(targets) or not targets:
        raise ValueError(
            f"need as many predictions as targets (>0), got {len(predictions)} and {len(targets)}"
        )
    groups: dict[str, list[int]] = defaultdict(list)
    for i, target in enumerate(targets):
        groups[score_range(target, ranges)].append(i)

    def errors(index: Sequence[int]) -> tuple[float, float]:
        diffs = [predictions[i] - targets[i] for i in index]
        return sum(d * d for d in diffs) / len(diffs), sum(abs(d) for d in diffs) / len(diffs)

    out: dict[str, float] = {}
    out["rm/mse"], out["rm/mae"] = errors(range(len(targets)))
    for name in ("low", "mid", "high"):
        if groups[name]:
            out[f"rm/mse/{name}"], out[f"rm/mae/{name}"] = errors(groups[name])
            out[f"rm/count/{name}"] = float(len(groups[name]))
    return out


def probe_metrics(probes: Sequence[Probe], scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Share of probes scored in strictly decreasing order, share of ordered pairs right, mean per position.

    Reference: CRS §5.3.2 and Tables 24-27 ("the reward model should provide the feedback score in such a way
    that it ranks responses similar to the given order").
    """
    in_order, right, pairs = 0, 0, 0
    by_position: dict[str, list[float]] = defaultdict(list)
    for probe, values in zip(probes, scores, strict=True):
        in_order += all(a > b for a, b in zip(values, values[1:], strict=False))
        for i in range(len(values)):
            by_position[probe.positions[i]].append(values[i])
            for j in range(i + 1, len(values)):
                right += values[i] > values[j]
                pairs += 1
    out = {
        "rm/probe_order_rate": in_order / len(probes),
        "rm/probe_pair_accuracy": right / pairs,
        "rm/probes": float(len(probes)),
    }
    for position, values in by_position.items():
        out[f"rm/probe/mean_score/{position}"] = sum(values) / len(values)
    return out


# ---------------------------------------------------------------------------------------------------------
# Data


def read_ratings(cfg: Config) -> tuple[list[str], list[str], list[float]]:
    """Prompts, responses and target ratings of ``cfg.ratings`` (first ``cfg.limit``).

    Raises:
        DataError: A bad record, naming file, line and field.
    """
    rows, _ = read_records(
        cfg.ratings, fields={cfg.text_key: _rating_text, cfg.score_key: _rating}, on_bad_row="error"
    )
    rows = rows[: cfg.limit]
    if not rows:
        raise DataError(f"{cfg.ratings}: no ratings")
    prompts = [row.get(cfg.prompt_key) or "" for row in rows]
    return prompts, [row[cfg.text_key] for row in rows], [row[cfg.score_key] for row in rows]


def _rating_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def _rating(value: Any) -> float:
    target = as_float(value)  # finite numbers (or numeric strings) only
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"{target} is outside [0, 1]")
    return target


def read_probes(source: str) -> list[Probe]:
    """Probes from a JSONL file (or ``builtin:crs``): ``{"prompt", "responses", "positions"?, "id"?}`` rows.

    ``responses`` are in their intended order, best first; ``positions`` names them (default
    ``["1", "2", ...]``). Every row needs at least two responses.

    Raises:
        DataError: A bad line, naming file, line and field.
    """
    if source == BUILTIN_PROBES:
        resource = importlib.resources.files("rewardmix.data") / "probes" / "crs_probes.jsonl"
        with importlib.resources.as_file(resource) as path:
            rows = read_jsonl(path)
    else:
        rows, _ = read_records(source, format="jsonl", check=lambda row: _probe(row, ""))
    probes = [_probe(row, f"{source}: record {i + 1}") for i, row in enumerate(rows)]
    if not probes:
        raise DataError(f"{source}: no probes")
    return probes


def _probe(row: Mapping[str, Any], where: str) -> Probe:
    prompt, responses = row.get("prompt"), row.get("responses")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: field 'prompt': expected a non-empty string")
    if (
        not isinstance(responses, list)
        or len(responses) < 2
        or not all(isinstance(r, str) for r in responses)
    ):
        raise DataError(f"{where}: field 'responses': expected a list of at least two strings")
    positions = row.get("positions") or [str(k + 1) for k in range(len(responses))]
    if not isinstance(positions, list) or len(positions) != len(responses):
        raise DataError(f"{where}: field 'positions': expected {len(responses)} names")
    return Probe(prompt, tuple(responses), tuple(str(p) for p in positions), str(row.get("id", "")))
