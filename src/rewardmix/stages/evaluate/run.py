"""``rewardmix evaluate``: :func:`run` and its numbered steps, one section each ("Step 1: inputs" ...).

What each step does and the keys of ``eval.json`` are in the package docstring (:mod:`rewardmix.stages.evaluate`).
"""

from __future__ import annotations

import gc
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rewardmix.algos.stats import paired_accuracy_difference, paired_bootstrap
from rewardmix.config import ConfigError
from rewardmix.data.readers import as_str, read_records, save_report
from rewardmix.data.tasks import Example, get_task, load_task_examples
from rewardmix.evaluation.generation import (
    GenerationRequest,
    GenerationStore,
    Generator,
    generate_all,
    load_generator,
)
from rewardmix.evaluation.gold import gold_judgments, gold_scores
from rewardmix.evaluation.nlu import nlu_requests, score_task, table4_average
from rewardmix.evaluation.rewards import distribution, human_agreement, judge_agreement, length_correlation
from rewardmix.evaluation.tables import eval_tables, tables_markdown
from rewardmix.evaluation.winrate import (
    Judgment,
    flatten_matrix,
    group_matrices,
    judge_request,
    model_pairs,
    outcome,
    pair_rng,
    parse_verdict,
    vs_baseline,
    win_rates,
)
from rewardmix.llm.batch import check_failures, read_batch_texts, run_batch
from rewardmix.llm.config import build_client
from rewardmix.rundir import atomic_write_text, prepare_run_dir
from rewardmix.stages.evaluate.config import Config, ModelEntry, RewardModelEntry

log = logging.getLogger(__name__)

Scorer = Callable[[Sequence[str], Sequence[str]], list[float]]
"""``scorer(prompts, responses) -> scores``: one raw reward per (prompt, response)."""


# ---------------------------------------------------------------------------------------------------------
# Results


class EvaluateResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    eval_path: Path
    """``eval.json``."""
    tables_path: Path
    """``tables.md``."""
    metrics: dict[str, Any]
    """The content of ``eval.json``."""


class EvalPrompt(NamedTuple):
    """One prompt of the win-rate set."""

    id: str
    text: str
    dataset: str | None
    category: str | None


# ---------------------------------------------------------------------------------------------------------
# The stage


def run(
    cfg: Config,
    *,
    generator_factory: Callable[[ModelEntry], Generator] | None = None,
    scorer_factory: Callable[[RewardModelEntry], Scorer] | None = None,
) -> EvaluateResult:
    """Evaluate the configured models; rerun the same config to resume.

    Args:
        cfg: The stage config.
        generator_factory: Builds the generator of a model (default: :func:`load_generator` on its path);
            tests pass generators with known answers.
        scorer_factory: Builds the scorer of a reward model (default: :func:`load_scorer`).

    Returns:
        An :class:`EvaluateResult`.
    """
    # step 1. run directory; read every input before loading any model
    if not cfg.models:
        raise ConfigError(
            "models: nothing to evaluate; give at least one model, e.g. `models: [{name: sft, path: runs/sft/model}]`"
        )
    out = prepare_run_dir(cfg.output_dir, cfg, stage="evaluate")
    device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    examples, reports = read_tasks(cfg)
    prompts, prompt_report = read_prompts(cfg)
    reports += [prompt_report] if prompt_report is not None else []
    save_report(reports, out / "read_report.json")
    names = [m.name for m in cfg.models]
    metrics: dict[str, Any] = {
        "eval/models": names,
        "eval/tasks": [t.task for t in cfg.tasks],
        "eval/task_info": {
            t.task: {"display_name": get_task(t.task).display_name, "metric": get_task(t.task).metric}
            for t in cfg.tasks
        },
        "eval/baseline": cfg.win_rate.baseline,
        "eval/reward_models": [r.name for r in cfg.reward_models],
    }

    # step 2. answers of every model, one model in memory at a time, stored as they come
    factory = generator_factory or (lambda m: _default_generator(m, cfg, device))
    answers = {m.name: generate_model(cfg, m, examples, prompts, out, factory) for m in cfg.models}

    # step 3. NLU: parse, score, Table 4 averages, paired tests between models on the same items
    if cfg.tasks:
        metrics.update(nlu_metrics(cfg, examples, answers, out))

    # step 4. judge every pair of models on every prompt; win-rate matrices and breakdowns
    judgments: list[Judgment] = []
    if prompts:
        for m in names:
            lengths = [len(answers[m]["prompts"][p.id]) for p in prompts]
            metrics[f"eval/{m}/response_length/mean"] = sum(lengths) / len(lengths)
        if len(names) >= 2 and cfg.win_rate.use_judge:
            judgments, judge_stats = judge_all(cfg, prompts, answers, out)
            metrics.update(judge_stats)
            metrics.update(win_rate_metrics(cfg, judgments, prompts))
        elif len(names) < 2:
            log.info("one model only: no win rates")

    # step 5. reward models: agreement with the judge and humans, length correlation, distributions
    if cfg.reward_models:
        if not prompts and cfg.human_preferences is None:
            log.warning("reward_models given without win_rate.prompts or human_preferences: nothing to score")
        make_scorer = scorer_factory or (lambda r: load_scorer(r, device))
        metrics.update(reward_model_metrics(cfg, prompts, answers, judgments, out, make_scorer))

    # step 6. eval.json and tables.md
    metrics = _json_safe(metrics)
    eval_path, tables_path = out / "eval.json", out / "tables.md"
    atomic_write_text(eval_path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    atomic_write_text(tables_path, tables_markdown(eval_tables(metrics), title=f"Evaluation: {out.name}"))
    log.info("evaluate: %d models -> %s", len(names), eval_path)
    return EvaluateResult(out, eval_path, tables_path, metrics)


# ---------------------------------------------------------------------------------------------------------
# Step 1: inputs


def read_tasks(cfg: Config) -> tuple[dict[str, list[Example]], list[Any]]:
    """The examples of every configured task (``limit`` applied) and the readers' reports."""
    examples, reports = {}, []
    for entry in cfg.tasks:
        rows, report = load_task_examples(
            entry.task, entry.data, on_bad_row=cfg.on_bad_row, limit=entry.limit
        )
        if not rows:
            raise ValueError(f"task {entry.task}: no examples in {entry.data or 'its default file'}")
        examples[entry.task] = rows
        reports.append(report)
        log.info("task %s: %d examples", entry.task, len(rows))
    return examples, reports


def read_prompts(cfg: Config) -> tuple[list[EvalPrompt], Any]:
    """The win-rate prompts: text from ``prompt``/``instruction``/``question``, optional id/dataset/category."""
    path = cfg.win_rate.prompts
    if path is None:
        return [], None
    rows, report = read_records(path, on_bad_row=cfg.on_bad_row)
    prompts: list[EvalPrompt] = []
    for number, row in enumerate(rows, start=1):
        where = f"{path}: record {number}"
        try:
            text_key = next((k for k in ("prompt", "instruction", "question") if k in row), None)
            if text_key is None:
                raise ValueError("field 'prompt': missing (also accepted: 'instruction', 'question')")
            try:
                text = as_str(row[text_key])
            except (TypeError, ValueError) as e:
                raise ValueError(f"field {text_key!r}: {e}") from None
            groups = _group(row, "dataset"), _group(row, "category")
        except ValueError as e:
            if cfg.on_bad_row == "error":
                raise ValueError(f"{where}: {e}") from None
            log.warning("%s: %s; skipped", where, e)
            continue
        prompt_id = str(row["id"]) if row.get("id") is not None else str(number - 1)
        prompts.append(EvalPrompt(prompt_id, text, *groups))
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{path}: field 'id': repeated ids {dupes[:5]}")
    if cfg.win_rate.limit is not None:
        prompts = prompts[: cfg.win_rate.limit]
    log.info("win-rate prompts: %d from %s", len(prompts), path)
    return prompts, report


def _group(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"field {name!r}: expected a string, got {type(value).__name__}")
    return str(value).strip().replace("/", "_")  # a key segment of eval.json


# ---------------------------------------------------------------------------------------------------------
# Step 2: generation


def _default_generator(entry: ModelEntry, cfg: Config, device: str) -> Generator:
    return load_generator(
        entry.path,
        base=entry.base,
        batch_size=cfg.generation.batch_size,
        device=device,
        dtype=entry.dtype,
        trust_remote_code=entry.trust_remote_code,
    )


def generate_model(
    cfg: Config,
    entry: ModelEntry,
    examples: Mapping[str, Sequence[Example]],
    prompts: Sequence[EvalPrompt],
    out: Path,
    factory: Callable[[ModelEntry], Generator],
) -> dict[str, Any]:
    """One model's answers: ``{"nlu": {task: [answers]}, "prompts": {prompt_id: answer}}``.

    The model is loaded only if an answer is missing from ``generations/<model>.jsonl``, and released after.
    """
    store = GenerationStore(out / "generations" / f"{entry.name}.jsonl")
    holder: list[Generator] = []

    def get_generator() -> Generator:
        if not holder:
            log.info("loading %s from %s", entry.name, entry.path)
            holder.append(factory(entry))
        return holder[0]

    model_path = entry.path if entry.base is None else f"{entry.base}+{entry.path}"
    system = (
        [{"role": "system", "content": cfg.generation.system_prompt}] if cfg.generation.system_prompt else []
    )
    nlu: dict[str, list[str]] = {}
    for task, rows in examples.items():
        requests = [r._replace(messages=system + r.messages) for r in nlu_requests(task, rows)]
        texts = generate_all(
            store,
            requests,
            get_generator,
            model_path=model_path,
            max_new_tokens=cfg.generation.nlu_max_new_tokens,
            desc=f"{entry.name} {task}",
        )
        nlu[task] = [texts[r.id] for r in requests]
    prompt_requests = [
        GenerationRequest(
            f"prompt/{p.id}",
            system + [{"role": "user", "content": p.text}],
            {"kind": "prompt", "prompt_id": p.id, "dataset": p.dataset, "category": p.category},
        )
        for p in prompts
    ]
    texts = generate_all(
        store,
        prompt_requests,
        get_generator,
        model_path=model_path,
        max_new_tokens=cfg.generation.prompt_max_new_tokens,
        desc=f"{entry.name} prompts",
    )
    if holder:
        holder.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"nlu": nlu, "prompts": {p.id: texts[f"prompt/{p.id}"] for p in prompts}}


# ---------------------------------------------------------------------------------------------------------
# Step 3: NLU


def nlu_metrics(
    cfg: Config, examples: Mapping[str, Sequence[Example]], answers: Mapping[str, Any], out: Path
) -> dict[str, Any]:
    """Per model and task: the metric, unparseable rate, n; the Table 4 average; paired tests between models;
    ``nlu_predictions.jsonl``."""
    metrics: dict[str, Any] = {}
    rows = []
    correct: dict[str, dict[str, list[bool]]] = {}  # task -> model -> per-item correctness (accuracy tasks)
    for m in cfg.models:
        scores: dict[str, float | None] = {}
        for entry in cfg.tasks:
            task = entry.task
            values, predictions = score_task(task, answers[m.name]["nlu"][task], examples[task])
            metric = get_task(task).metric
            scores[task] = values[metric]
            for key, value in values.items():
                metrics[f"eval/{m.name}/{task}/{key}"] = value
            if metric == "accuracy":
                correct.setdefault(task, {})[m.name] = [bool(p["correct"]) for p in predictions]
            rows += [
                {"model": m.name, "task": task, "id": f"nlu/{task}/{p['index']}", **p} for p in predictions
            ]
            log.info(
                "%s %s: %s %s, unparseable %.1f%%",
                m.name,
                task,
                metric,
                values[metric],
                100 * values["unparseable_rate"],
            )
        metrics[f"eval/{m.name}/avg"] = table4_average(scores)
    for task, by_model in correct.items():
        metrics.update(paired_metrics(cfg, task, by_model))
    atomic_write_text(
        out / "nlu_predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    return metrics


def paired_metrics(cfg: Config, task: str, correct: Mapping[str, Sequence[bool]]) -> dict[str, Any]:
    """Every pair of models (list order) on the same items of one accuracy task: ``eval/paired/<task>/<a>/<b>/*``.

    Args:
        cfg: The stage config (models, ``paired``).
        task: The task name.
        correct: ``model -> per-item correctness``, shape (n,) each, the items in the same order.
    """
    metrics: dict[str, Any] = {}
    for a, b in model_pairs([m.name for m in cfg.models]):
        stats = paired_accuracy_difference(correct[a], correct[b])
        boot = paired_bootstrap(
            correct[a], correct[b], resamples=cfg.paired.bootstrap_resamples, seed=cfg.paired.seed
        )
        prefix = f"eval/paired/{task}/{a}/{b}"
        fields = {
            **stats._asdict(),
            "bootstrap_p": boot.p,
            "bootstrap_ci_low": boot.ci_low,
            "bootstrap_ci_high": boot.ci_high,
        }
        metrics.update({f"{prefix}/{key}": value for key, value in fields.items()})
        log.info(
            "%s %s vs %s: diff %+.4f ± %.4f, McNemar p %.3g",
            task,
            a,
            b,
            stats.diff,
            stats.diff_se,
            stats.mcnemar_p,
        )
    return metrics


# ---------------------------------------------------------------------------------------------------------
# Step 4: judging and win rates


def judge_all(
    cfg: Config, prompts: Sequence[EvalPrompt], answers: Mapping[str, Any], out: Path
) -> tuple[list[Judgment], dict[str, Any]]:
    """Judge every model pair on every prompt (resumable); returns the parsed judgments and counts.

    The batch id of a comparison holds a hash of its request, so a comparison whose answers changed (a model
    regenerated) is judged again instead of reusing the old verdict.
    """
    kind = cfg.win_rate.judge_prompt
    requests, meta = [], {}
    for a, b in model_pairs([m.name for m in cfg.models]):
        for p in prompts:
            request, swapped = judge_request(
                kind,
                cfg.win_rate.judge,
                p.text,
                answers[a]["prompts"][p.id],
                answers[b]["prompts"][p.id],
                pair_rng(cfg.seed, a, b, p.id),
            )
            item_id = f"{a}|{b}|{p.id}|{request.key()[:12]}"
            requests.append((item_id, request))
            meta[item_id] = (a, b, p, swapped)
    client = build_client(cfg.win_rate.judge, out)
    report = run_batch(
        requests,
        client,
        out_path=out / "judge_outputs.jsonl",
        concurrency=cfg.win_rate.judge.concurrency,
        desc="judge",
        validate=lambda item_id, response: parse_verdict(kind, response.text, meta[item_id][3]),
    )
    texts = read_batch_texts(out / "judge_outputs.jsonl")
    judgments, rows = [], []
    for item_id, _ in requests:
        a, b, p, swapped = meta[item_id]
        if item_id not in texts:
            continue  # failed after retries: in judge_outputs.failures.jsonl, counted below
        verdict = parse_verdict(kind, texts[item_id], swapped)
        judgment = Judgment(a, b, p.id, verdict, swapped, p.dataset, p.category)
        judgments.append(judgment)
        rows.append(
            {
                "id": item_id, **judgment._asdict(), "outcome": outcome(verdict), "judge_text": texts[item_id],
            }
        )  # fmt: skip
    atomic_write_text(
        out / "judgments.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    stats = {
        "eval/judge_prompt": kind,
        "eval/judge/comparisons": len(requests),
        "eval/judge/judged": len(judgments),
        "eval/judge/failed": len(requests) - len(judgments),
        "eval/judge/swapped": sum(j.swapped for j in judgments),
    }
    if report.failed:
        log.warning("judge: %d comparisons failed (see %s)", len(report.failed), report.failures_path)
    # a win rate from the few comparisons that succeeded is not a result: stop, as rationales and rank do
    check_failures(report, cfg.win_rate.judge.max_failed_fraction, what="evaluate: judge requests")
    return judgments, stats


def win_rate_metrics(
    cfg: Config, judgments: Sequence[Judgment], prompts: Sequence[EvalPrompt]
) -> dict[str, Any]:
    """Matrices overall, per dataset, per category, per dataset x category; win / tie / lose vs the baseline."""
    names = [m.name for m in cfg.models]
    kw = {"tie_value": cfg.win_rate.tie_value, "ddof": cfg.win_rate.ddof}
    metrics: dict[str, Any] = {
        "eval/datasets": sorted({p.dataset for p in prompts if p.dataset is not None}),
        "eval/categories": sorted({p.category for p in prompts if p.category is not None}),
    }
    matrix = win_rates(judgments, names, **kw)
    metrics.update(flatten_matrix("eval/win_rate", matrix))
    groups: dict[str, Callable[[Judgment], str | None]] = {
        "dataset": lambda j: j.dataset,
        "category": lambda j: j.category,
        "dataset_category": lambda j: f"{j.dataset}/{j.category}" if j.dataset and j.category else None,
    }
    for by, key in groups.items():
        for group, group_matrix in group_matrices(judgments, names, key, **kw).items():
            metrics.update(flatten_matrix(f"eval/win_rate_by_{by}/{group}", group_matrix))
    if cfg.win_rate.baseline is not None:
        for model, shares in vs_baseline(matrix, cfg.win_rate.baseline).items():
            for name, value in shares.items():
                metrics[f"eval/vs_baseline/{model}/{name}"] = value
    return metrics


# ---------------------------------------------------------------------------------------------------------
# Step 5: reward models


def load_scorer(entry: RewardModelEntry, device: str) -> Scorer:
    """A reward model as ``scorer(prompts, responses) -> scores``, inputs built exactly as in its training.

    Uses :class:`rewardmix.scoring.reward_model.RewardModelScorer` (``ScalarHeadModel.from_pretrained``,
    right-padded batches of similar length).
    """
    from rewardmix.scoring.base import ScoringBatch
    from rewardmix.scoring.reward_model import RewardModelScorer

    scorer = RewardModelScorer.from_pretrained(
        entry.path,
        device=device,
        dtype=entry.dtype,
        name=entry.name,
        output=entry.output,
        batch_size=entry.batch_size,
    )

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return scorer.score(ScoringBatch(list(prompts), list(responses))).tolist()

    return score


def reward_model_metrics(
    cfg: Config,
    prompts: Sequence[EvalPrompt],
    answers: Mapping[str, Any],
    judgments: Sequence[Judgment],
    out: Path,
    make_scorer: Callable[[RewardModelEntry], Scorer],
) -> dict[str, Any]:
    """Score the answers (and human pairs) with every reward model, one model in memory at a time."""
    names = [m.name for m in cfg.models]
    human = read_human_preferences(cfg) if cfg.human_preferences is not None else []
    answered = [(m, p, answers[m]["prompts"][p.id]) for m in names for p in prompts]
    metrics: dict[str, Any] = {}
    score_rows = []
    all_scores: dict[str, dict[tuple[str, str], float]] = {}
    for entry in cfg.reward_models:
        scorer = make_scorer(entry)
        prefix = f"eval/rm/{entry.name}"
        if answered:
            raw = scorer([p.text for _, p, _ in answered], [text for _, _, text in answered])
            values = _checked(raw, len(answered), entry.name)
            scores = {(m, p.id): v for (m, p, _), v in zip(answered, values, strict=True)}
            all_scores[entry.name] = scores
            lengths = [len(text) for _, _, text in answered]
            metrics.update(rm_answer_metrics(prefix, cfg, judgments, prompts, scores, lengths))
            score_rows += [
                {"reward_model": entry.name, "model": m, "prompt_id": p.id, "dataset": p.dataset,
                 "category": p.category, "score": v, "length": n}
                for (m, p, _), v, n in zip(answered, values, lengths, strict=True)
            ]  # fmt: skip
        if human:
            prompts_h = [h["prompt"] for h in human]
            chosen = _checked(scorer(prompts_h, [h["chosen"] for h in human]), len(human), entry.name)
            rejected = _checked(scorer(prompts_h, [h["rejected"] for h in human]), len(human), entry.name)
            _put_agreement(metrics, f"{prefix}/human_agreement", human_agreement(chosen, rejected))
        del scorer
        gc.collect()
    if score_rows:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in score_rows)
        atomic_write_text(out / "rm_scores.jsonl", text)
    if cfg.gold.reward_model is not None and all_scores:
        metrics.update(gold_metrics(cfg, prompts, all_scores))
    return metrics


def gold_metrics(
    cfg: Config, prompts: Sequence[EvalPrompt], scores: Mapping[str, Mapping[tuple[str, str], float]]
) -> dict[str, Any]:
    """The gold-reward-model protocol (:mod:`rewardmix.evaluation.gold`): each model's mean gold score ± SE, the
    gold win-rate matrix (overall and per dataset / category), and every other reward model's agreement with the
    gold comparisons (``eval/rm/<rm>/gold_agreement``).

    Args:
        cfg: The stage config (``gold``, models, win-rate settings).
        prompts: The win-rate prompts every model answered.
        scores: Reward model -> ``(model, prompt_id) -> score``; holds ``cfg.gold.reward_model``.
    """
    gold_name = cfg.gold.reward_model
    assert gold_name is not None
    names = [m.name for m in cfg.models]
    gold = scores[gold_name]
    metrics: dict[str, Any] = {"eval/gold_reward_model": gold_name}
    for model, g in gold_scores(gold, names, [p.id for p in prompts]).items():
        metrics |= {
            f"eval/gold/{model}/mean": g.mean,
            f"eval/gold/{model}/se": g.se,
            f"eval/gold/{model}/n": g.n,
        }
    if len(names) < 2:
        return metrics
    judged = gold_judgments(gold, names, prompts, tolerance=cfg.gold.tie_tolerance)
    kw = {"tie_value": cfg.win_rate.tie_value, "ddof": cfg.win_rate.ddof}
    metrics.update(flatten_matrix("eval/gold_win_rate", win_rates(judged, names, **kw)))
    for by, key in (("dataset", lambda j: j.dataset), ("category", lambda j: j.category)):
        for group, matrix in group_matrices(judged, names, key, **kw).items():
            metrics.update(flatten_matrix(f"eval/gold_win_rate_by_{by}/{group}", matrix))
    for rm, rm_scores in scores.items():
        if rm != gold_name:
            _put_agreement(metrics, f"eval/rm/{rm}/gold_agreement", judge_agreement(judged, rm_scores))
    return metrics


def rm_answer_metrics(
    prefix: str,
    cfg: Config,
    judgments: Sequence[Judgment],
    prompts: Sequence[EvalPrompt],
    scores: Mapping[tuple[str, str], float],
    lengths: Sequence[int],
) -> dict[str, Any]:
    """One reward model on the models' answers: agreement with the judge (overall, per dataset, per model pair,
    per pair and dataset), score-length correlation, score distributions (all answers and per model).

    Args:
        prefix: ``eval/rm/<rm>``.
        cfg: The stage config (models, histogram bins).
        judgments: The judge's verdicts.
        prompts: The win-rate prompts.
        scores: ``(model, prompt_id) -> score``, in the order of ``lengths``.
        lengths: Answer lengths in characters.
    """
    metrics: dict[str, Any] = {}
    names = [m.name for m in cfg.models]
    datasets = sorted({p.dataset for p in prompts if p.dataset is not None})

    def agreement(key: str, where: Callable[[Judgment], bool] | None = None) -> None:
        _put_agreement(metrics, f"{prefix}/{key}", judge_agreement(judgments, scores, where=where))

    agreement("judge_agreement")
    for d in datasets:
        agreement(f"judge_agreement_by_dataset/{d}", lambda j, d=d: j.dataset == d)
    for a, b in model_pairs(names):
        agreement(f"judge_agreement_by_pair/{a}/{b}", lambda j, a=a, b=b: (j.model_a, j.model_b) == (a, b))
        for d in datasets:
            agreement(
                f"judge_agreement_by_pair_dataset/{a}/{b}/{d}",
                lambda j, a=a, b=b, d=d: (j.model_a, j.model_b, j.dataset) == (a, b, d),
            )
    values = list(scores.values())
    corr = length_correlation(values, lengths)
    metrics[f"{prefix}/length_pearson"] = corr["pearson"]
    metrics[f"{prefix}/length_spearman"] = corr["spearman"]
    metrics[f"{prefix}/length_n"] = corr["n"]
    span = (min(values), max(values))  # shared histogram edges: the per-model distributions compare
    metrics[f"{prefix}/score_distribution"] = distribution(values, bins=cfg.histogram_bins, value_range=span)
    for m in names:
        mine = [scores[(m, p.id)] for p in prompts]
        metrics[f"{prefix}/score_distribution/{m}"] = distribution(
            mine, bins=cfg.histogram_bins, value_range=span
        )
    return metrics


def read_human_preferences(cfg: Config) -> list[dict[str, Any]]:
    """Human preference pairs: ``prompt``, ``chosen``, ``rejected`` (other fields ignored)."""
    assert cfg.human_preferences is not None
    rows, _ = read_records(
        cfg.human_preferences,
        fields={"prompt": as_str, "chosen": as_str, "rejected": as_str},
        on_bad_row=cfg.on_bad_row,
    )
    log.info("human preferences: %d pairs from %s", len(rows), cfg.human_preferences)
    return rows


def _checked(values: Sequence[float], n: int, name: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != n:
        raise ValueError(f"reward model {name}: {len(values)} scores for {n} responses")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"reward model {name}: non-finite scores")
    return values


def _put_agreement(metrics: dict[str, Any], key: str, found: tuple[float | None, int]) -> None:
    value, n = found
    if n:
        metrics[key], metrics[f"{key}/n"] = value, n


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None, recursively (eval.json is strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
