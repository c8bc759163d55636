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

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


# Pipeline order: data -> teachers/judges -> pairs -> SFT -> reward models -> PPO -> evaluation -> report.
# `run` chains any of them from one recipe file; `demo` comes last: it runs the embedded default end to end.
STAGES: tuple[Stage, ...] = (
    Stage(
        "run",
        "rewardmix.stages.run",
        "run a recipe: stages chained in order, finished steps skipped, an interrupted one resumed",
    ),
    Stage(
        "combine",
        "rewardmix.stages.combine",
        "several data files or hub datasets in one JSONL: per-input limits, seeded shuffle, copied fields, chat rows",
    ),
    Stage(
        "oasst",
        "rewardmix.stages.oasst",
        "OpenAssistant trees into CRS files: SFT threads, rankings, quality ratings, RL prompts, human pairs",
    ),
    Stage(
        "ratings",
        "rewardmix.stages.ratings",
        "a rated text corpus as rated answers to an instruction: [0, 1] ratings, train/eval split, pair groups, prompts, judge examples (CRS)",
    ),
    Stage(
        "split",
        "rewardmix.stages.split",
        "cut an NLU task's examples into seeded, disjoint, label-balanced splits (SFT, PPO prompts, test)",
    ),
    Stage(
        "rationales",
        "rewardmix.stages.rationales",
        "a teacher LLM writes rationales for the gold label and a wrong label of each NLU example (RLLR App. B, D)",
    ),
    Stage(
        "sample",
        "rewardmix.stages.sample",
        "a policy samples K answers (rationale + label) per NLU question, the input of `rank` (RLLR App. C)",
    ),
    Stage(
        "rank",
        "rewardmix.stages.rank",
        "a judge LLM ranks K sampled answers per question, ties allowed (RLLR App. C)",
    ),
    Stage(
        "pairs",
        "rewardmix.stages.pairs",
        "build preference pairs (label-sensitive, from rankings, from ratings), train/eval split, statistics",
    ),
    Stage(
        "sft",
        "rewardmix.stages.sft",
        "supervised fine-tuning on answers only (rationales optional), multi-turn, one or two phases, LoRA or full",
    ),
    Stage(
        "reward-model",
        "rewardmix.stages.reward_model",
        "train a reward model: pairwise Bradley-Terry, K-way ranking, or absolute ratings (MSE/sigmoid/logistic)",
    ),
    Stage(
        "export-rm",
        "rewardmix.stages.export_rm",
        "write a reward model as a Hugging Face AutoModelForSequenceClassification folder (num_labels=1), exact or refused",
    ),
    Stage(
        "evaluate-rm",
        "rewardmix.stages.evaluate_rm",
        "reward-model accuracy on held-out pairs, MSE/MAE per score range, probe orderings, score distributions",
    ),
    Stage(
        "ppo",
        "rewardmix.stages.ppo",
        "PPO with a composite reward (reward models + rules, normalized, combined) and a KL penalty",
    ),
    Stage(
        "sweep",
        "rewardmix.stages.sweep",
        "run the ppo stage once per value of one config key (e.g. the CRS weight) and tabulate the results",
    ),
    Stage(
        "evaluate",
        "rewardmix.stages.evaluate",
        "NLU accuracy per task (RLLR Table 4), judge win-rate matrix with SE/CI, reward-model agreement, lengths",
    ),
    Stage(
        "human-eval",
        "rewardmix.stages.human_eval",
        "annotators rank K models' responses per prompt on a local page; Tideman merge, Borda points (CRS §5.5.2)",
    ),
    Stage(
        "report",
        "rewardmix.stages.report",
        "a self-contained HTML and Markdown report: tables and plots of one run or a comparison",
    ),
    Stage(
        "toy-ppo",
        "rewardmix.stages.toy_ppo",
        "PPO on a toy policy with a composite (threshold-mixed) reward: the PPO math in seconds, no model",
    ),
    Stage(
        "demo",
        "rewardmix.stages.demo",
        "the embedded default: the RLLR recipe's demo profile on SmolLM2-135M (offline, CPU, minutes), summarized",
    ),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    known = ", ".join(s.name for s in STAGES)
    raise KeyError(f"unknown stage {name!r} (known stages: {known})")
