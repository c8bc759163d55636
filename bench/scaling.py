"""Time per PPO update as the response length doubles and as reward components are added (issue 8, item 1).

Two sweeps of ``rewardmix.stages.ppo.run`` itself, all configurations of a model in one process (imports
paid once), alternating over ``--repeats`` (the order rotates each repeat), medians reported:

* **response length** 64 -> 128 -> 256 new tokens (one reward-model component), on the tiny model;
* **reward components**: 0 (a rule only: no reward-model forward pass), then 1, 2 and 4 reward models, each
  a LoRA role with its own scalar head on the policy's shared base (``reward_model.role``; untrained,
  identity adapters and random heads: the compute of trained ones), combined by ``sum``; on the tiny model
  and on SmolLM2-135M (``offline:smollm2``, smaller settings).

Responses are exactly as long as asked (the stop tokens are suppressed), so a longer setting is never
cheaper by chance. Time per update = the median interval between ends of consecutive updates, the first
(warm-up) and last (final checkpoint) left out. What a reward component costs is reported two ways, both as
a fraction of the update with one reward model: from whole-update times, ``(t(k) - t(1)) / (k - 1) / t(1)``
(noisy when other jobs share the cores), and from the reward phase alone (``perf/reward_time``, the seconds
the stage logs for scoring the responses every step), ``(reward(k) - reward(0)) / k / t(1)`` (target: <= 15%).

Usage (from the repository root)::

    .venv/bin/python bench/scaling.py                    # ~6.5 min: tiny ~1.5 min, SmolLM2 components ~5 min
    .venv/bin/python bench/scaling.py --models tiny      # tiny only
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

MODELS = {"tiny": "tiny", "smollm2": "offline:smollm2"}
RULE = r"\d"
LORA_R = 16
MAX_RMS = 4
DEFAULTS = {
    # lengths: the response-length sweep (with one reward model); components at length `component_tokens`
    "tiny": {
        "batch": 8,
        "steps": 5,
        "repeats": 3,
        "lengths": [64, 128, 256],
        "components": [0, 1, 2, 4],
        "component_tokens": 64,
    },
    "smollm2": {
        "batch": 4,
        "steps": 4,
        "repeats": 2,
        "lengths": [],
        "components": [0, 1, 2, 4],
        "component_tokens": 16,
    },
}

log = logging.getLogger("bench.scaling")


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write ``MAX_RMS`` reward-model adapter folders (identity LoRA role + a head of its own seed)."""
    from rewardmix.models.heads import ScalarHeadModel
    from rewardmix.models.lora import LoraSettings, add_adapters, save_adapter
    from rewardmix.stages import ppo
    from rewardmix.stages.ppo import roles

    model = ppo.PolicyModelConfig(name=MODELS[args.model])
    base = roles.load_models(model, ppo.PPOLoraConfig(), __import__("torch").device("cpu"), seed=0).shared
    roles = [f"rm_{i}" for i in range(MAX_RMS)]
    add_adapters(base, roles, LoraSettings(r=LORA_R, alpha=2 * LORA_R))
    for i, role in enumerate(roles):
        save_adapter(ScalarHeadModel(base, role=role, seed=10 + i), role, Path(args.workdir) / role)
    return {}


def ppo_run(args: argparse.Namespace, n_rms: int, tokens: int) -> dict[str, Any]:
    """One PPO run with ``n_rms`` reward-model roles (0: a rule only) and ``tokens`` new tokens per response."""
    from rewardmix.config import from_dict
    from rewardmix.stages import ppo

    workdir = Path(args.workdir)
    components: list[dict[str, Any]] = [
        {
            "name": f"rm_{i}",
            "type": "reward_model",
            "reward_model": {"path": str(workdir / f"rm_{i}"), "role": f"rm_{i}"},
        }
        for i in range(n_rms)
    ]
    if not components:
        components = [{"name": "digit", "type": "format", "format": {"pattern": RULE}}]
    out = workdir / f"run-{time.monotonic_ns()}"
    data = {
        "output_dir": str(out),
        "cpu": True,
        "model": {"name": MODELS[args.model]},
        "lora": {"r": LORA_R, "alpha": 2 * LORA_R},
        "generation": {"max_new_tokens": tokens, "batch_size": args.batch},
        "ppo": {
            "steps": args.steps,
            "batch_size": args.batch,
            "minibatch_size": args.batch,
            "micro_batch_size": args.batch,
            "forward_batch_size": args.batch,
            "ppo_epochs": 1,
            "kl": {"kind": "fixed", "init_coef": 0.05},
        },
        "reward": {"components": components, "combinator": "sum"},
        "logging": {"sample_every": 0, "num_samples": 0, "checkpoint_every": 10_000},
    }
    ends: list[float] = []
    lengths: list[float] = []
    reward_times: list[float] = []

    def on_step(step: int, row: dict[str, float]) -> None:
        ends.append(time.perf_counter())
        lengths.append(row["response/length_mean"])
        reward_times.append(row["perf/reward_time"])  # the stage's reward phase: every component's raw scores

    ppo.run(from_dict(ppo.Config, data), on_step=on_step)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "update_s": benchlib.median([b - a for a, b in zip(ends, ends[1:], strict=False)][:-1]),
        "reward_s": benchlib.median(reward_times[1:-1]),
        "response_length_mean": sum(lengths) / len(lengths),
    }


def child_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration in this one process, alternating (the order rotates each repeat)."""
    from rewardmix.models.tokens import stop_token_ids
    from rewardmix.stages.ppo import roles

    original = roles.load_models

    def load_models(*a: Any, **k: Any) -> Any:
        models = original(*a, **k)
        # Every response exactly max_new_tokens long: no run is cheaper by stopping early.
        models.policy.get_base_model().generation_config.suppress_tokens = stop_token_ids(models.tokenizer)
        return models

    roles.load_models = load_models  # the stage's set-up; its phases are timed by the stage itself
    configs = [tuple(c) for c in json.loads(args.configs)]
    results: dict[str, list[dict[str, Any]]] = {f"{t}:{k}": [] for t, k in configs}
    for rep in range(args.repeats):
        for tokens, n_rms in configs[rep % len(configs) :] + configs[: rep % len(configs)]:
            log.info("%s: %d tokens, %d reward models (repeat %d)", args.model, tokens, n_rms, rep + 1)
            results[f"{tokens}:{n_rms}"].append(ppo_run(args, n_rms, tokens))
    return {"results": results}


CHILDREN = {"prepare": child_prepare, "sweep": child_sweep}


def sweep(args: argparse.Namespace, model: str, settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    script = Path(__file__).resolve()
    common = {"model": model, "batch": settings["batch"], "steps": settings["steps"], "threads": args.threads}
    benchlib.run_child(script, "prepare", {**common, "workdir": workdir}, workdir)
    configs = [(n, 1) for n in settings["lengths"]]
    configs += [(settings["component_tokens"], k) for k in settings["components"]]
    configs = list(dict.fromkeys(configs))
    options = {**common, "workdir": workdir, "repeats": settings["repeats"], "configs": json.dumps(configs)}
    raw = benchlib.run_child(script, "sweep", options, workdir)["results"]

    def med(tokens: int, k: int, key: str = "update_s") -> float:
        return benchlib.median([r[key] for r in raw[f"{tokens}:{k}"]])

    ct = settings["component_tokens"]
    by_length = {n: med(n, 1) for n in settings["lengths"]}
    by_components = {k: med(ct, k) for k in settings["components"]}
    reward_by_components = {k: med(ct, k, "reward_s") for k in settings["components"]}
    out: dict[str, Any] = {
        "settings": settings,
        "update_s_by_length": by_length,
        "update_s_by_components": by_components,
        "reward_phase_s_by_components": reward_by_components,
        "runs": raw,
    }
    lengths_sorted = sorted(by_length)
    out["length_doubling_ratios"] = {
        f"{a}->{b}": by_length[b] / by_length[a]
        for a, b in zip(lengths_sorted, lengths_sorted[1:], strict=False)
    }
    if 1 in by_components:
        t1, r1 = by_components[1], reward_by_components[1]
        # Whole-update differences (noisy on a busy machine) and the reward phase alone (what a component adds).
        out["added_per_component_vs_one"] = {
            k: (by_components[k] - t1) / (k - 1) / t1 for k in by_components if k > 1
        }
        out["reward_phase_per_component_vs_one"] = {
            k: (reward_by_components[k] - reward_by_components.get(0, 0.0)) / k / t1
            for k in by_components
            if k > 0
        }
        out["reward_phase_added_per_component_vs_one"] = {
            k: (reward_by_components[k] - r1) / (k - 1) / t1 for k in by_components if k > 1
        }
    return out


def markdown(record: dict[str, Any], command: str) -> list[str]:
    lines = [
        "# PPO update time vs response length and number of reward components",
        "",
        f"Command: `{command}`",
        "",
        *benchlib.machine_lines(record["machine"]),
        "",
        "Each configuration is a run of `rewardmix.stages.ppo.run` (all of a model's runs in one process, "
        "alternating; LoRA r 16, one optimizer step per update over the whole batch, responses exactly as long "
        "as asked); medians over the repeats. The reward phase is the stage's `perf/reward_time` (every "
        "component's raw scores), logged every step.",
        "",
    ]
    for model, r in record["models"].items():
        st = r["settings"]
        if r["update_s_by_length"]:
            lines += [
                f"## {model}: response length (batch {st['batch']}, one reward-model role)",
                "",
                "| new tokens | s / update | ratio to the previous length |",
                "|---|---|---|",
            ]
            previous = None
            for tokens, t in sorted(r["update_s_by_length"].items()):
                ratio = f"{t / previous:.2f}" if previous else "-"
                lines.append(f"| {tokens} | {t:.3f} | {ratio} |")
                previous = t
            lines.append("")
        lines += [
            f"## {model}: reward components (batch {st['batch']}, {st['component_tokens']} new tokens, "
            "reward models as LoRA roles on the shared base)",
            "",
            "| reward models | s / update | added per component vs 1 (whole update) | reward phase (s) | reward "
            "phase per component / update with 1 (target <= 15%) |",
            "|---|---|---|---|---|",
        ]
        added = r.get("added_per_component_vs_one", {})
        phase = r.get("reward_phase_per_component_vs_one", {})
        for k, t in sorted(r["update_s_by_components"].items()):
            note = "rule only" if k == 0 else (f"{100 * added[k]:.1f}%" if k in added else "-")
            share = f"{100 * phase[k]:.1f}%" if k in phase else "-"
            lines.append(f"| {k} | {t:.3f} | {note} | {r['reward_phase_s_by_components'][k]:.3f} | {share} |")
        if "first_reward_model_vs_rule_only" in r:
            lines.append("")
            lines.append(
                f"The first reward model adds {100 * r['first_reward_model_vs_rule_only']:.1f}% to a rule-only update."
            )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["tiny", "smollm2"])
    parser.add_argument("--repeats", type=int, help="runs per configuration (default: per model)")
    parser.add_argument("--steps", type=int, help="updates per run, >= 4 (default: per model)")
    parser.add_argument("--batch", type=int, help="responses per update (default: per model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--configs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    benchlib.setup_logging()
    if args.child:
        benchlib.child_main(CHILDREN, args)
        return
    if args.steps is not None and args.steps < 4:
        parser.error("--steps must be >= 4 (the first and last updates are not timed)")
    machine = benchlib.machine_info(args.threads)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="scaling_"))
    try:
        models = {}
        for model in args.models:
            given = {
                k: getattr(args, k) for k in ("repeats", "steps", "batch") if getattr(args, k) is not None
            }
            (root / model).mkdir()
            models[model] = sweep(args, model, DEFAULTS[model] | given, root / model)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    record = {
        "benchmark": "scaling",
        "machine": benchlib.finish_machine_info(machine),
        "wall_s": time.perf_counter() - started,
        "models": models,
    }
    command = f".venv/bin/python bench/scaling.py --models {','.join(args.models)}" + "".join(
        f" --{k} {getattr(args, k)}" for k in ("repeats", "steps", "batch") if getattr(args, k) is not None
    )
    json_path, md_path = benchlib.write_results("scaling", record, markdown(record, command))
    for model, r in models.items():
        log.info(
            "%s: length ratios %s; added per component %s",
            model,
            {k: round(v, 2) for k, v in r["length_doubling_ratios"].items()},
            {k: round(v, 3) for k, v in r.get("added_per_component_vs_one", {}).items()},
        )
    log.info("results in %s and %s (%.0f s)", json_path, md_path, record["wall_s"])


if __name__ == "__main__":
    main()
