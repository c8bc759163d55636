"""The pipeline's stages, in order. Each stage module defines a ``Config`` dataclass and ``run(cfg)``.

The CLI reads this table: a stage listed here is a subcommand, shown in ``rewardmix --help`` in this order.
Modules are imported only when their stage runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    help: str
    example: str
    """Overrides that ``rewardmix <stage> --help`` shows as an example (a test resolves each)."""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


# Pipeline order: data -> teachers/judges -> pairs -> SFT -> reward models -> PPO -> evaluation -> report.
# `run` chains any of them from one recipe file; `demo` comes last: it runs the embedded default end to end.
STAGES: tuple[Stage, ...] = (
    Stage(
        "run",
        "rewardmix.stages.run",
        "run a recipe: stages chained in order, finished steps skipped, an interrupted one resumed",
        "output_dir=runs/my-recipe",
    ),
    Stage(
        "combine",
        "rewardmix.stages.combine",
        "several data files or hub datasets in one JSONL: per-input limits, seeded shuffle, copied fields, chat rows",
        "seed=1",
    ),
    Stage(
        "oasst",
        "rewardmix.stages.oasst",
        "OpenAssistant trees into CRS files: SFT threads, rankings, quality ratings, RL prompts, human pairs",
        "min_rating_count=2",
    ),
    Stage(
        "ratings",
        "rewardmix.stages.ratings",
        "a rated text corpus as rated answers to an instruction: [0, 1] ratings, train/eval split, pair groups, prompts, judge examples (CRS)",
        "eval_fraction=0.2",
    ),
    Stage(
        "split",
        "rewardmix.stages.split",
        "cut an NLU task's examples into seeded, disjoint, label-balanced splits (SFT, PPO prompts, test)",
        "seed=1",
    ),
    Stage(
        "rationales",
        "rewardmix.stages.rationales",
        "a teacher LLM writes rationales for the gold label and a wrong label of each NLU example (RLLR App. B, D)",
        "teacher.temperature=0.2",
    ),
    Stage(
        "sample",
        "rewardmix.stages.sample",
        "a policy samples K answers (rationale + label) per NLU question, the input of `rank` (RLLR App. C)",
        "generation.num_samples=8",
    ),
    Stage(
        "rank",
        "rewardmix.stages.rank",
        "a judge LLM ranks K sampled answers per question, ties allowed (RLLR App. C)",
        "judge.concurrency=8",
    ),
    Stage(
        "pairs",
        "rewardmix.stages.pairs",
        "build preference pairs (label-sensitive, from rankings, from ratings), train/eval split, statistics",
        "eval_fraction=0.2",
    ),
    Stage(
        "sft",
        "rewardmix.stages.sft",
        "supervised fine-tuning on answers only (rationales optional), multi-turn, one or two phases, LoRA or full",
        "phases[0].max_steps=2 lora.r=8",
    ),
    Stage(
        "reward-model",
        "rewardmix.stages.reward_model",
        "train a reward model: pairwise Bradley-Terry, K-way ranking, or absolute ratings (MSE/sigmoid/logistic)",
        "lora.r=8 model.max_length=512",
    ),
    Stage(
        "export-rm",
        "rewardmix.stages.export_rm",
        "write a reward model as a Hugging Face AutoModelForSequenceClassification folder (num_labels=1), exact or refused",
        "model=runs/rm-pref output_dir=runs/rm-pref/hf",
    ),
    Stage(
        "evaluate-rm",
        "rewardmix.stages.evaluate_rm",
        "reward-model accuracy on held-out pairs, MSE/MAE per score range, probe orderings, score distributions",
        "batch_size=32",
    ),
    Stage(
        "ppo",
        "rewardmix.stages.ppo",
        "PPO with a composite reward (reward models + rules, normalized, combined) and a KL penalty",
        "ppo.learning_rate=1e-5 generation.max_new_tokens=32",
    ),
    Stage(
        "sweep",
        "rewardmix.stages.sweep",
        "run the ppo stage once per value of one config key (e.g. the CRS weight) and tabulate the results",
        "'values=[0.25, 0.75]'",
    ),
    Stage(
        "evaluate",
        "rewardmix.stages.evaluate",
        "NLU accuracy per task (RLLR Table 4), judge win-rate matrix with SE/CI, reward-model agreement, lengths",
        "generation.batch_size=16",
    ),
    Stage(
        "human-eval",
        "rewardmix.stages.human_eval",
        "annotators rank K models' responses per prompt on a local page; Tideman merge, Borda points (CRS §5.5.2)",
        "action=serve serve.port=8766",
    ),
    Stage(
        "report",
        "rewardmix.stages.report",
        "a self-contained HTML and Markdown report: tables and plots of one run or a comparison",
        "smoothing=5",
    ),
    Stage(
        "toy-ppo",
        "rewardmix.stages.toy_ppo",
        "PPO on a toy policy with a composite (threshold-mixed) reward: the PPO math in seconds, no model",
        "ppo.steps=20 reward.threshold=2.5",
    ),
    Stage(
        "demo",
        "rewardmix.stages.demo",
        "the embedded default: the RLLR recipe's demo profile on SmolLM2-135M (offline, CPU, minutes), summarized",
        "output_dir=runs/my-demo",
    ),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    known = ", ".join(s.name for s in STAGES)
    raise KeyError(f"unknown stage {name!r} (known stages: {known})")
