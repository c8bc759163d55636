"""``rewardmix evaluate``: NLU accuracy, judged win rates and reward-model checks over a list of models.

What a run does, in order (the numbered steps of :func:`run`):

1. Prepare the run directory; read every input first (task files, prompts, human preferences), so a bad
   file stops the run before any model is loaded.
2. Generate, model after model (one in memory at a time): a greedy answer to every NLU question (the task's
   template as one user turn, rendered with the model's chat template) and to every prompt of
   ``win_rate.prompts``. Every answer goes to ``generations/<model>.jsonl`` as soon as its batch is done; a
   rerun reuses them (a complete rerun loads no model at all).
3. NLU: parse each answer's label, score each task (accuracy; Pearson for STS-B), count unparseable answers,
   average like RLLR Table 4. Every parsed answer is in ``nlu_predictions.jsonl``. Every pair of models is
   compared on the same items of each accuracy task (an unparseable answer is wrong): accuracy difference
   with its paired SE, exact McNemar test and a paired bootstrap. STS-B (Pearson) has no per-item
   correctness and gets no paired test.
4. Win rates: the judge compares every pair of models on every prompt, the two answers in a random order
   (seeded per pair and prompt, recorded), with the RLLR Appendix G prompt or the AlpacaEval one. The judge's
   raw answers go to ``judge_outputs.jsonl`` (resumable, cached), the parsed verdicts to ``judgments.jsonl``.
   When no comparison is judged, or more than ``win_rate.judge.max_failed_fraction`` of them fail (after
   retries; an answer without a verdict counts as failed), the stage stops with an error (exit code 1)
   naming the share and the most common cause, before any win rate is computed from the few that succeeded;
   the failures are listed in ``judge_outputs.failures.jsonl`` and a rerun asks only for the missing ones.
   Matrices row vs column with SE and 95% CI (CRS Eq. 7.1), per dataset, per category and per dataset x
   category when the prompts have those fields, and win / tie / lose against ``win_rate.baseline``.
5. Reward models: score every judged answer; agreement with the judge (overall, per dataset, per model pair),
   with human preference pairs when given, correlation of score and answer length, score distributions.
   Every score is in ``rm_scores.jsonl``.
6. Write ``eval.json`` and ``tables.md`` (the tables of :mod:`rewardmix.evaluation.tables`).

Keys of ``eval.json`` (parts without data are absent; rates are fractions in [0, 1]):

- ``eval/models``, ``eval/tasks``, ``eval/task_info`` (``{task: {display_name, metric}}``), ``eval/baseline``,
  ``eval/reward_models``, ``eval/datasets``, ``eval/categories``, ``eval/judge_prompt``: what was evaluated.
- ``eval/<model>/<task>/accuracy`` (or ``/pearson``, ``null`` when undefined), ``eval/<model>/<task>/
  unparseable_rate``, ``eval/<model>/<task>/n``; ``eval/<model>/avg``: the AVG. column of RLLR Table 4.
- ``eval/paired/<task>/<a>/<b>/<field>`` for every pair of models (a listed before b) on every accuracy task,
  from the per-item correctness of both on the same items: ``n``, ``acc_a``, ``acc_b``, ``diff``
  (``acc_a - acc_b``), ``diff_se`` (paired SE), ``ci_low`` / ``ci_high`` (``diff ± 1.96 diff_se``), ``b``
  (a right, b wrong), ``c`` (a wrong, b right), ``mcnemar_p`` (exact, two-sided), ``bootstrap_p``,
  ``bootstrap_ci_low`` / ``bootstrap_ci_high`` (paired percentile bootstrap of ``diff``).
- ``eval/<model>/response_length/mean``: mean answer length to the prompts, in characters.
- ``eval/win_rate/<a>/<b>``: win rate of a against b (ties count ``tie_value``), with ``/se``, ``/ci_low``,
  ``/ci_high``, ``/n``, ``/wins``, ``/losses``, ``/ties``, ``/tie_rate``; the same under
  ``eval/win_rate_by_dataset/<dataset>/``, ``eval/win_rate_by_category/<category>/`` and
  ``eval/win_rate_by_dataset_category/<dataset>/<category>/``.
- ``eval/vs_baseline/<model>/win``, ``/tie``, ``/lose``, ``/n``: RLLR Fig. 4.
- ``eval/judge/comparisons``, ``eval/judge/judged``, ``eval/judge/failed``, ``eval/judge/swapped``.
- ``eval/rm/<rm>/judge_agreement`` (+ ``/n``), ``eval/rm/<rm>/judge_agreement_by_dataset/<dataset>``,
  ``eval/rm/<rm>/judge_agreement_by_pair/<a>/<b>``, ``eval/rm/<rm>/judge_agreement_by_pair_dataset/<a>/<b>/
  <dataset>`` (each with ``/n``), ``eval/rm/<rm>/human_agreement`` (+ ``/n``), ``eval/rm/<rm>/length_pearson``,
  ``/length_spearman``, ``/length_n``, ``eval/rm/<rm>/score_distribution`` (all answers) and
  ``eval/rm/<rm>/score_distribution/<model>``: ``{count, mean, std, min, max, quantiles, histogram}``.

Reference: RLLR §4.1, Table 4, Fig. 4, Appendix G; CRS §5.5, §6, Tables 10-23, Figs. 24 and 27, Eq. 7.1.
"""

from __future__ import annotations

from rewardmix.stages.evaluate.config import (
    RESERVED_NAMES,
    Config,
    GenerationConfig,
    GoldConfig,
    ModelEntry,
    PairedConfig,
    RewardModelEntry,
    TaskEntry,
    WinRateConfig,
)
from rewardmix.stages.evaluate.run import (
    EvalPrompt,
    EvaluateResult,
    Scorer,
    generate_model,
    gold_metrics,
    judge_all,
    load_scorer,
    nlu_metrics,
    paired_metrics,
    read_human_preferences,
    read_prompts,
    read_tasks,
    reward_model_metrics,
    rm_answer_metrics,
    run,
    win_rate_metrics,
)

__all__ = [
    "RESERVED_NAMES",
    "Config",
    "EvalPrompt",
    "EvaluateResult",
    "GenerationConfig",
    "GoldConfig",
    "ModelEntry",
    "PairedConfig",
    "RewardModelEntry",
    "Scorer",
    "TaskEntry",
    "WinRateConfig",
    "generate_model",
    "gold_metrics",
    "judge_all",
    "load_scorer",
    "nlu_metrics",
    "paired_metrics",
    "read_human_preferences",
    "read_prompts",
    "read_tasks",
    "reward_model_metrics",
    "rm_answer_metrics",
    "run",
    "win_rate_metrics",
]
