"""The constrained combinator on ``toy-ppo``: does a learned Lagrange multiplier hold the capped reward at its
target, as RLLR's hand-set threshold does, without tuning it (issue 15, item 3)?

``toy-ppo`` rewards a context-free toy policy with two rules: ``target`` (how often token 3 occurs, up to 8) and
``distinct`` (the fraction of distinct tokens). The same runs are made with

* ``threshold``: RLLR Eq. 4, ``min(target, 3) + distinct`` (the hand-set cap);
* ``sum``: ``target + distinct`` (no cap: the target count runs to 8);
* ``constrained``: ``(1 - mu) target + distinct`` with ``mu`` learned by PI dual ascent towards
  ``E[target] <= 3`` (``multiplier_lr`` K_I in {0.05, 0.1, 0.2}, ``multiplier_kp`` K_P 1; and K_P 0: plain dual
  ascent, Moskovitz et al. 2023),

each with 5 seeds. Reported per setting: the target reward's mean over the last quarter of the steps (mean over
seeds +- SE across seeds), its step-to-step standard deviation there (how much it oscillates), the distinct
fraction, and the final multiplier. Every number comes from the runs; about 1 minute on 2 idle cores.

Usage (from the repository root)::

    .venv/bin/python bench/constrained_toy.py
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import benchlib

TARGET = 3.0
SETTINGS: dict[str, dict[str, Any]] = {
    "threshold": {"combinator": "threshold"},
    "sum": {"combinator": "sum"},
    "constrained lr 0.05 kp 1": {"combinator": "constrained", "multiplier_lr": 0.05, "multiplier_kp": 1.0},
    "constrained lr 0.1 kp 1": {"combinator": "constrained", "multiplier_lr": 0.1, "multiplier_kp": 1.0},
    "constrained lr 0.2 kp 1": {"combinator": "constrained", "multiplier_lr": 0.2, "multiplier_kp": 1.0},
    "constrained lr 0.1 kp 0": {"combinator": "constrained", "multiplier_lr": 0.1, "multiplier_kp": 0.0},
}


def _mean_se(values: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # e.g. no multiplier outside the constrained combinator
        return math.nan, math.nan
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


def run_setting(reward: dict[str, Any], seed: int, steps: int, workdir: Path) -> dict[str, float]:
    """One toy-ppo run; the last quarter's statistics of its metrics."""
    from rewardmix.rundir import read_jsonl
    from rewardmix.stages import toy_ppo

    cfg = toy_ppo.Config(
        output_dir=str(workdir / f"{reward['combinator']}-{len(os.listdir(workdir))}"), seed=seed
    )
    cfg.ppo.steps = steps
    cfg.reward.threshold = TARGET
    for key, value in reward.items():
        setattr(cfg.reward, key, value)
    result = toy_ppo.run(cfg)
    rows = read_jsonl(result.output_dir / "metrics.jsonl")
    tail = rows[-max(1, steps // 4) :]
    target = [r["reward/target/raw"] for r in tail]
    return {
        "target_last_quarter": statistics.fmean(target),
        "target_step_sd": statistics.pstdev(target),
        "distinct_last_quarter": statistics.fmean(r["reward/distinct/raw"] for r in tail),
        "final_multiplier": rows[-1].get("reward/target/multiplier", math.nan),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=120, help="PPO steps per run")
    parser.add_argument("--results-dir", type=Path, default=benchlib.RESULTS)
    args = parser.parse_args(argv)
    benchlib.setup_logging()
    logging.getLogger("rewardmix").setLevel(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    info = benchlib.machine_info(threads=1)
    import torch

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, reward in SETTINGS.items():
            runs = [run_setting(reward, seed, args.steps, Path(tmp)) for seed in range(args.seeds)]
            summary: dict[str, Any] = {"runs": runs, "reward": reward}
            for key in ("target_last_quarter", "target_step_sd", "distinct_last_quarter", "final_multiplier"):
                mean, se = _mean_se([r[key] for r in runs])
                summary[key], summary[f"{key}_se"] = mean, se
            results[name] = summary
            logging.info(
                "%-26s target %.2f +- %.2f (step sd %.2f), distinct %.2f",
                name,
                summary["target_last_quarter"],
                summary["target_last_quarter_se"],
                summary["target_step_sd"],
                summary["distinct_last_quarter"],
            )
    info = benchlib.finish_machine_info(info)
    record = {
        "machine": info,
        "settings": {
            "target": TARGET,
            "seeds": args.seeds,
            "steps": args.steps,
            "config": "configs/toy-ppo.yaml",
        },
        "results": results,
    }
    lines = [
        "# The constrained combinator on toy-ppo: a learned multiplier against the hand-set threshold",
        "",
        f"Command: `.venv/bin/python bench/constrained_toy.py --seeds {args.seeds} --steps {args.steps}`",
        "",
        *benchlib.machine_lines(info),
        "",
        f"toy-ppo (configs/toy-ppo.yaml), {args.steps} steps, {args.seeds} seeds per row; target reward capped at "
        f"{TARGET:g} (the threshold's lambda, the constrained combinator's target). Last quarter of the steps: "
        "mean over seeds +- SE across seeds; 'step sd' is the step-to-step standard deviation of the batch mean "
        "(how much it oscillates), averaged over seeds.",
        "",
        "| combinator | target reward (last quarter) | step sd | distinct fraction | final multiplier |",
        "|---|---|---|---|---|",
    ]
    for name, s in results.items():
        mu = (
            ""
            if math.isnan(s["final_multiplier"])
            else f"{s['final_multiplier']:.2f} +- {s['final_multiplier_se']:.2f}"
        )
        lines.append(
            f"| {name} | {s['target_last_quarter']:.2f} +- {s['target_last_quarter_se']:.2f} | "
            f"{s['target_step_sd']:.2f} | {s['distinct_last_quarter']:.2f} +- {s['distinct_last_quarter_se']:.2f} | {mu} |"
        )
    json_path, md_path = benchlib.write_results("constrained_toy", record, lines, args.results_dir)
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
