"""GRPO throughput and peak memory in the CRS setting: ``rewardmix ppo`` with ``advantage: grpo`` vs TRL's
GRPOTrainer (issue 15, item 5); also rewardmix PPO with and without the shared value head.

Each run is a fresh process (so its peak RSS is its own); the systems alternate (A B C D, B C D A, ...) and
repeat; the tables report medians and the rewardmix GRPO / TRL GRPO ratios.

Matched on both sides (the CRS setting, CRS §5.4):

* **model**: SmolLM2-135M-Instruct (``offline:smollm2``) or the tiny in-memory Llama (``tiny``, for a quick
  check), float32, CPU, one torch thread per process; the policy is a LoRA adapter (r 16, alpha 32, every
  linear layer, dropout 0) on the frozen base;
* **the composite reward** ``w * pref + (1 - w) * abs + rule`` with w = 0.25: two reward models, each the base
  plus a linear scalar head read at the last token (different seeded heads, identity adapters), and one rule,
  ``contains "five"`` (case-insensitive, 1/0). rewardmix holds the reward models as LoRA roles on the policy's
  shared base and combines with ``combinator: weighted`` (``normalize: false``, weights 0.25, 0.75, 1);
  TRL, as its API asks, as two separate ``AutoModelForSequenceClassification`` copies of the base, with the
  rule as a reward function (calling the same rewardmix ``ContainsScorer``) and ``reward_weights`` 0.25,
  0.75, 1;
* **samples per update**: ``--batch`` completions, ``--batch / 4`` prompts x 4 samples (rewardmix
  ``ppo.samples_per_prompt: 4``; TRL ``num_generations=4``), one optimizer step over all of them in one
  micro-batch (rewardmix ``ppo_epochs 1``, ``minibatch = micro_batch = batch``; TRL ``num_iterations 1``,
  ``per_device_train_batch_size = batch``, no gradient accumulation), the same number of updates;
* **the GRPO estimator**: group mean and std (rewardmix ``scale_by_std``; TRL ``scale_rewards="group"``), no
  batch whitening after it (rewardmix ``whiten_advantages: false``), a token-level mean loss over the batch
  (TRL ``loss_type="dapo"``), clip 0.2, AdamW betas (0.9, 0.95), weight decay 1e-6, cosine schedule,
  gradient-norm clip 1, learning rate 1e-5, KL beta 0.05 (TRL's default is 0);
* **response length**: exactly ``--max-new-tokens`` tokens, stop tokens suppressed on both sides;
* **prompts**: the 66 ``builtin:toy`` arithmetic prompts, chat-rendered (TRL gets the rendered text);
* **TRL defaults changed to match**: ``gradient_checkpointing False``, ``bf16 False``, ``disable_dropout``.

Not the same by design: rewardmix puts the KL into the reward (score - beta * sum_t KL_t, k1, before the group
baseline, RLLR Eq. 5); TRL's GRPO adds beta * KL_t (k3) to the loss. Both need the same reference forward
pass. With one optimizer step per update both take the old log-probabilities from the training pass (TRL when
``num_iterations`` is 1; rewardmix ``loop.single_pass``), so neither runs a separate policy pass at rollout.

rewardmix PPO (``advantage: gae``, 1 sample per prompt, the same batch, whitened advantages as usual) runs
as ``rewardmix_ppo`` (value model = its own LoRA role + head) and ``rewardmix_ppo_head`` (``ppo.value_model:
policy_head``, the value head on the policy's own pass, which with one optimizer step per update is also the
update's pass; the bench skips it, with a note, on a rewardmix without that field).

Measured: samples/s (``--batch`` / the median interval between update ends, first and last update not
timed), peak RSS (``ru_maxrss`` of the run's process), rewardmix's phases (its ``perf/*_time`` metrics, read
from the ``on_step`` rows), TRL's generation and reward time (``_generate`` and ``_calculate_rewards`` timed),
and for rewardmix the overhead ratio ``update_time / (generate_time + one policy forward-and-backward)``: after
the run, the child times a forward-and-backward of the policy (LoRA role) on its last rollout batch (same
shapes; median of 3), i.e. how far the update is from the least a trainer must do per sample.

Usage (from the repository root; TRL is the ``bench`` extra: ``.venv/bin/pip install -c constraints.txt trl``)::

    .venv/bin/python bench/grpo_vs_trl.py                     # SmolLM2, 4 systems x 3 runs (~15-25 min)
    .venv/bin/python bench/grpo_vs_trl.py --models tiny       # the tiny model (~2.5 min)
    .venv/bin/python bench/grpo_vs_trl.py --models tiny --quick --systems rewardmix_grpo,trl_grpo
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchlib

SYSTEMS = ("rewardmix_grpo", "trl_grpo", "rewardmix_ppo", "rewardmix_ppo_head")
REWARDMIX_SYSTEMS = ("rewardmix_grpo", "rewardmix_ppo", "rewardmix_ppo_head")
MODELS, LORA_R = benchlib.MODELS, benchlib.LORA_R
# Per model: completions per update (a multiple of GROUP), response tokens, updates per run, runs per system.
DEFAULTS = {
    "tiny": {"batch": 8, "max_new_tokens": 32, "steps": 10, "repeats": 3},
    "smollm2": {"batch": 8, "max_new_tokens": 16, "steps": 5, "repeats": 3},
}
QUICK = {"steps": 4, "repeats": 1}
"""``--quick``: the fewest updates that time one interval, one run per system."""
GROUP = 4
"""Samples per prompt of GRPO (rewardmix ``samples_per_prompt``, TRL ``num_generations``)."""
PREFERENCE_WEIGHT = 0.25
"""CRS's w in ``w * pref + (1 - w) * abs`` (+ the rule, weight 1)."""
REWARD_MODEL_SEEDS = {"pref": 1, "abs": 2}
"""The two reward models' head seeds (rewardmix role name -> seed)."""
RULE = {"substring": "five", "ignore_case": True}
"""The rule component: rewardmix's ``contains`` scorer on both sides."""
KL_BETA = 0.05
LR = 1e-5
ADAM_BETAS = (0.9, 0.95)  # rewardmix's default (CRS Table 8)
WEIGHT_DECAY = 1e-6  # rewardmix's default (CRS Table 8)
TARGETS = {"samples_per_s": 1.3, "peak_rss": 0.6}
"""rewardmix GRPO / TRL GRPO: at least 1.3x the samples/s, at most 0.6x the peak RSS."""

log = logging.getLogger("bench.grpo_vs_trl")


def weights() -> list[float]:
    """Component weights in order pref, abs, rule."""
    return [PREFERENCE_WEIGHT, 1 - PREFERENCE_WEIGHT, 1.0]


def group_sizes(keys: Sequence[Any]) -> list[int]:
    """Lengths of the runs of equal consecutive keys: K per prompt when each prompt's K samples are adjacent."""
    return [len(list(run)) for _, run in itertools.groupby(keys)]


def has_value_model_field() -> bool:
    """Whether this rewardmix's PPO config has ``ppo.value_model`` (the shared value head)."""
    from rewardmix.stages.ppo.config import PPOConfig

    return "value_model" in {f.name for f in dataclasses.fields(PPOConfig)}


# ---------------------------------------------------------------------------------------------------------
# Children


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write both reward models as LoRA role folders (identity adapters + seeded heads) for rewardmix."""
    benchlib.write_reward_roles(args.model, Path(args.workdir), REWARD_MODEL_SEEDS)
    return {}


def rewardmix_config(args: argparse.Namespace, system: str, out: Path) -> dict[str, Any]:
    """The ``rewardmix ppo`` config of one system, as a dict (``from_dict`` checks every key)."""
    ppo: dict[str, Any] = {
        "steps": args.steps,
        "batch_size": args.batch,
        "minibatch_size": args.batch,
        "micro_batch_size": args.batch,
        "forward_batch_size": args.batch,
        "ppo_epochs": 1,
        "learning_rate": LR,
        "adam_betas": list(ADAM_BETAS),
        "weight_decay": WEIGHT_DECAY,
        "kl": {"kind": "fixed", "init_coef": KL_BETA},
    }
    if system == "rewardmix_grpo":
        # TRL normalizes within the group only; rewardmix would whiten over the batch again by default
        ppo |= {"advantage": "grpo", "samples_per_prompt": GROUP, "whiten_advantages": False}
    if system == "rewardmix_ppo_head":
        ppo["value_model"] = "policy_head"
    workdir = Path(args.workdir)
    reward_models = [
        {
            "name": name,
            "type": "reward_model",
            "reward_model": {"path": str(workdir / name), "role": name},
            "weight": weight,
        }
        for name, weight in zip(REWARD_MODEL_SEEDS, weights(), strict=False)
    ]
    rule = {"name": "says_five", "type": "contains", "contains": dict(RULE), "weight": weights()[2]}
    return {
        "output_dir": str(out),
        "cpu": True,
        "model": {"name": MODELS[args.model]},
        "lora": {"r": LORA_R, "alpha": 2 * LORA_R},
        "data": {"prompts": "builtin:toy"},
        "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch},
        "ppo": ppo,
        "reward": {
            "components": [*reward_models, rule],
            "combinator": "weighted",
            "combinator_params": {"normalize": False},  # w * pref + (1 - w) * abs + rule, not an average
        },
        "logging": {"sample_every": 0, "num_samples": 0, "checkpoint_every": 10_000},
    }


def policy_forward_backward_s(models: Any, trajectory: Any, *, repeats: int = 3) -> float:
    """Median seconds of one forward-and-backward pass of the policy (LoRA role) over a rollout batch."""
    from rewardmix.algos.masked import masked_mean
    from rewardmix.stages.ppo import roles
    from rewardmix.stages.ppo.rollout import policy_logits_logprobs

    t = trajectory
    width = t.response_mask.shape[1]
    times = []
    models.policy.train()
    for _ in range(repeats):
        started = time.perf_counter()
        with roles.policy_context(models):
            _, logprobs = policy_logits_logprobs(
                models.policy, t.query_responses, t.attention_mask, width, 1.0
            )
        masked_mean(logprobs, t.response_mask).backward()
        times.append(time.perf_counter() - started)
        for param in models.params:
            param.grad = None
        del logprobs
    models.policy.eval()
    return benchlib.median(times)


def child_rewardmix(args: argparse.Namespace, system: str) -> dict[str, Any]:
    """``rewardmix.stages.ppo.run`` itself; its phase times are the ``perf/*_time`` metrics it logs."""
    from rewardmix.config import from_dict
    from rewardmix.stages import ppo

    out = Path(args.workdir) / f"{system}-{time.monotonic_ns()}"
    cfg = from_dict(ppo.Config, rewardmix_config(args, system, out))
    with benchlib.RewardmixProbe() as probe:
        ppo.run(cfg, on_step=probe)
    result = probe.result()  # peak RSS of the run, before the extra pass below
    trajectory = probe.trajectory
    result["group_sizes"] = group_sizes([tuple(p.input_ids) for p in trajectory.prompts])
    result["rollout_shape"] = list(trajectory.query_responses.shape)
    result["policy_forward_backward_s"] = policy_forward_backward_s(probe.models, trajectory)
    shutil.rmtree(out, ignore_errors=True)
    return result


def child_trl_grpo(args: argparse.Namespace) -> dict[str, Any]:
    """TRL's GRPOTrainer with two reward-model copies and the rule as a reward function."""
    from trl import GRPOConfig, GRPOTrainer

    from rewardmix.scoring import ScoringBatch
    from rewardmix.scoring.rules import ContainsConfig, ContainsScorer

    workdir = Path(args.workdir)
    tokenizer, base, path = benchlib.load_base(args.model)
    reward_models = [
        benchlib.trl_reward_model(base, path, workdir / name, tokenizer) for name in REWARD_MODEL_SEEDS
    ]
    scorer = ContainsScorer(ContainsConfig(**RULE), name="says_five")
    seen_groups: list[int] = []

    def says_five(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        seen_groups[:] = group_sizes(prompts)  # the last batch's samples per prompt
        return scorer.score(ScoringBatch(prompts=prompts, responses=completions)).tolist()

    dataset = benchlib.trl_prompt_dataset(tokenizer)
    loaded = benchlib.rss_mb()

    timer = benchlib.trl_timer()
    out = workdir / f"trl-grpo-{time.monotonic_ns()}"
    trainer_args = GRPOConfig(
        **benchlib.trl_trainer_kwargs(
            out,
            batch=args.batch,
            max_new_tokens=args.max_new_tokens,
            steps=args.steps,
            tokenizer=tokenizer,
            beta=KL_BETA,
            lr=LR,
        ),
        num_generations=GROUP,
        reward_weights=weights(),
        scale_rewards="group",
        loss_type="dapo",
        epsilon=0.2,
        adam_beta1=ADAM_BETAS[0],
        adam_beta2=ADAM_BETAS[1],
        weight_decay=WEIGHT_DECAY,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
    )
    trainer = GRPOTrainer(
        model=base,
        reward_funcs=[*reward_models, says_five],
        args=trainer_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_processing_classes=[tokenizer, tokenizer, None],
        peft_config=benchlib.trl_lora_config(),
        callbacks=[timer],
    )
    generate_times = benchlib.time_calls(trainer, "_generate")
    reward_times = benchlib.time_calls(trainer, "_calculate_rewards")
    rollout_times = benchlib.time_calls(trainer, "_generate_and_score_completions")
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    # the first update is the warm-up; "rollout" = generate + rewards + reference log-probabilities
    phases = {"generate": generate_times[1:], "reward": reward_times[1:], "rollout": rollout_times[1:]}
    return benchlib.trl_result(timer, rss_after_load_mb=loaded, phases_s=phases) | {
        "group_sizes": seen_groups
    }


CHILDREN = {
    "prepare": child_prepare,
    "rewardmix_grpo": lambda args: child_rewardmix(args, "rewardmix_grpo"),
    "rewardmix_ppo": lambda args: child_rewardmix(args, "rewardmix_ppo"),
    "rewardmix_ppo_head": lambda args: child_rewardmix(args, "rewardmix_ppo_head"),
    "trl_grpo": child_trl_grpo,
}


# ---------------------------------------------------------------------------------------------------------
# Parent


def settings_for(args: argparse.Namespace, model: str) -> dict[str, int]:
    defaults = {m: d | QUICK for m, d in DEFAULTS.items()} if args.quick else DEFAULTS
    return benchlib.settings_for(args, model, defaults)


def summarize(system: str, runs: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """:func:`benchlib.summarize_runs` plus the samples per prompt seen and rewardmix's overhead ratio."""
    out = benchlib.summarize_runs(runs, batch)
    out["group_sizes"] = [r["group_sizes"] for r in runs]
    if system in REWARDMIX_SYSTEMS:
        per_run = []
        for r in runs:
            phases = {k: benchlib.median(v) for k, v in r["phases_s"].items()}
            fwd_bwd = r["policy_forward_backward_s"]
            per_run.append(phases["ppo_update"] / (phases["generate"] + fwd_bwd))
        out["policy_forward_backward_s_median"] = benchlib.median(
            [r["policy_forward_backward_s"] for r in runs]
        )
        out["overhead_ratio_per_run"] = per_run
        out["overhead_ratio"] = benchlib.median(per_run)  # update / (generate + one policy fwd+bwd)
    return out


def bench_model(
    args: argparse.Namespace, model: str, systems: Sequence[str], workdir: Path
) -> dict[str, Any]:
    settings = settings_for(args, model)
    options = {
        "model": model,
        "batch": settings["batch"],
        "max_new_tokens": settings["max_new_tokens"],
        "steps": settings["steps"],
        "threads": args.threads,
        "workdir": workdir,
    }
    script = Path(__file__).resolve()
    benchlib.run_child(script, "prepare", options, workdir)
    runs = benchlib.alternate_runs(
        script, systems, options, workdir, repeats=settings["repeats"], label=model
    )
    summary = {s: summarize(s, runs[s], settings["batch"]) for s in systems}
    ratios = None
    if "rewardmix_grpo" in summary and "trl_grpo" in summary:
        ours, theirs = summary["rewardmix_grpo"], summary["trl_grpo"]
        ratios = {
            "samples_per_s": ours["samples_per_s"] / theirs["samples_per_s"],
            "peak_rss": ours["peak_rss_mb_median"] / theirs["peak_rss_mb_median"],
            "generate_time": ours["generate_s_median"] / theirs["generate_s_median"],
        }
    return {"settings": settings, "summary": summary, "ratios": ratios, "runs": runs}


def markdown(record: dict[str, Any]) -> list[str]:
    lines = [
        "# GRPO in the CRS setting: rewardmix vs TRL GRPOTrainer (and rewardmix PPO)",
        "",
        f"Command: `{record['command']}`",
        "",
        *benchlib.machine_lines(record["machine"]),
        "",
        "Per update: a batch of completions of exactly the response length (stop tokens suppressed), one optimizer "
        "step, LoRA r 16 on every linear layer, KL beta 0.05, the reward 0.25 * pref + 0.75 * abs + contains('five') "
        "(two reward models on the same base: rewardmix LoRA roles on the shared base, TRL two separate "
        "sequence-classification copies). GRPO: batch / 4 prompts x 4 samples; rewardmix PPO: batch prompts x 1, "
        "with a value model (its own LoRA role + head, or with `value_model: policy_head` the head on the policy's "
        "pass). Medians over alternating runs, each in a fresh process; the first and last update of each run "
        "are not timed.",
        "",
    ]
    for note in record["notes"]:
        lines.append(f"Note: {note}")
    if record["notes"]:
        lines.append("")
    lines += [
        "| model | completions x tokens / update | system | runs | samples per prompt | s / update | samples/s "
        "| generate s / update | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, result in record["models"].items():
        st = result["settings"]
        for system, s in result["summary"].items():
            groups = sorted({g for run in s["group_sizes"] for g in run})
            lines.append(
                f"| {model} | {st['batch']} x {st['max_new_tokens']} | {system} | {s['runs']} | "
                f"{', '.join(str(g) for g in groups)} | {s['update_s_median']:.3f} | {s['samples_per_s']:.2f} | "
                f"{s['generate_s_median']:.3f} | {s['peak_rss_mb_median']:.0f} |"
            )
    lines += [
        "",
        f"Ratios rewardmix GRPO / TRL GRPO (targets: samples/s >= {TARGETS['samples_per_s']}, peak RSS <= "
        f"{TARGETS['peak_rss']}):",
        "",
        "| model | samples/s ratio | met? | peak RSS ratio | met? | generation time ratio |",
        "|---|---|---|---|---|---|",
    ]
    for model, result in record["models"].items():
        r = result["ratios"]
        if r is None:
            lines.append(f"| {model} | - | not run | - | not run | - |")
            continue
        fast = "yes" if r["samples_per_s"] >= TARGETS["samples_per_s"] else "no"
        small = "yes" if r["peak_rss"] <= TARGETS["peak_rss"] else "no"
        lines.append(
            f"| {model} | {r['samples_per_s']:.2f} | {fast} | {r['peak_rss']:.2f} | {small} | "
            f"{r['generate_time']:.2f} |"
        )
    lines += [
        "",
        "rewardmix's time per update by phase (median seconds, its `perf/*_time` metrics), one policy "
        "forward-and-backward over the rollout batch (measured after the run) and the overhead ratio "
        "update / (generate + policy forward-and-backward):",
        "",
        "| model | system | generate | reward | rollout forward | update | policy fwd+bwd | overhead ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, result in record["models"].items():
        for system, s in result["summary"].items():
            if system not in REWARDMIX_SYSTEMS:
                continue
            p = s["phases_s_median"]
            lines.append(
                f"| {model} | {system} | {p['generate']:.3f} | {p['reward']:.3f} | {p['rollout_forward']:.3f} | "
                f"{p['ppo_update']:.3f} | {s['policy_forward_backward_s_median']:.3f} | {s['overhead_ratio']:.2f} |"
            )
    trl_rows = [
        (m, r["summary"]["trl_grpo"]) for m, r in record["models"].items() if "trl_grpo" in r["summary"]
    ]
    if trl_rows:
        lines += [
            "",
            "TRL GRPO's phases (median seconds per update; rollout = generate + rewards + reference "
            "log-probabilities; the rest of an update is its loss, backward and optimizer step):",
            "",
            "| model | generate | reward | rollout | s / update |",
            "|---|---|---|---|---|",
        ]
        for model, s in trl_rows:
            p = s["phases_s_median"]
            lines.append(
                f"| {model} | {p['generate']:.3f} | {p['reward']:.3f} | {p['rollout']:.3f} | "
                f"{s['update_s_median']:.3f} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["smollm2"])
    parser.add_argument(
        "--systems",
        type=lambda s: s.split(","),
        default=list(SYSTEMS),
        help=f"comma-separated, from {','.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--batch", type=int, help=f"completions per update, a multiple of {GROUP} (default: per model)"
    )
    parser.add_argument("--max-new-tokens", type=int, help="response length (default: per model)")
    parser.add_argument("--repeats", type=int, help="runs per system (default: per model)")
    parser.add_argument("--steps", type=int, help="updates per run, >= 4 (default: per model)")
    parser.add_argument("--quick", action="store_true", help=f"a quick check: {QUICK} unless given")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (2 cores, shared)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument(
        "--results-dir", type=Path, default=benchlib.RESULTS, help="where grpo_vs_trl.json/.md go"
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    benchlib.setup_logging()
    if args.child:
        benchlib.child_main(CHILDREN, args)
        return None
    if args.batch is not None and args.batch % GROUP:
        parser.error(f"--batch must be a multiple of {GROUP} (GRPO samples {GROUP} completions per prompt)")
    if args.steps is not None and args.steps < 4:
        parser.error("--steps must be >= 4 (the first and last updates are not timed)")
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {list(SYSTEMS)}")
    systems = [s for s in SYSTEMS if s in args.systems]
    notes = []
    if "rewardmix_ppo_head" in systems and not has_value_model_field():
        systems.remove("rewardmix_ppo_head")
        notes.append(
            "rewardmix_ppo_head skipped: this rewardmix's PPOConfig has no `value_model` field "
            "(`ppo.value_model: role | policy_head`)"
        )
        print(f"note: {notes[-1]}", flush=True)
    if not systems:
        parser.error("no system left to run")
    machine = benchlib.machine_info(args.threads)
    if "smollm2" in args.models:
        from rewardmix.models.loading import resolve_model_path

        resolve_model_path(MODELS["smollm2"])  # converts the GGUF once, outside the measured processes
    temporary = args.workdir is None
    root = Path(args.workdir or tempfile.mkdtemp(prefix="grpo_vs_trl_"))
    started = time.perf_counter()
    try:
        models = {}
        for model in args.models:
            workdir = root / model
            workdir.mkdir(parents=True, exist_ok=True)
            models[model] = bench_model(args, model, systems, workdir)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    # The headline ratios: SmolLM2's (the CRS setting) when it ran, else the first model's.
    headline = "smollm2" if "smollm2" in models else args.models[0]
    command = ".venv/bin/python bench/grpo_vs_trl.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    record = {
        "benchmark": "grpo_vs_trl",
        "command": command.strip(),
        "date": machine["date_utc"],
        "settings": {
            "models": args.models,
            "systems": systems,
            "threads": args.threads,
            "lora_r": LORA_R,
            "lora_alpha": 2 * LORA_R,
            "kl_beta": KL_BETA,
            "learning_rate": LR,
            "samples_per_prompt_grpo": GROUP,
            "reward": {
                "formula": "w * pref + (1 - w) * abs + rule",
                "w": PREFERENCE_WEIGHT,
                "reward_model_seeds": REWARD_MODEL_SEEDS,
                "rule": {"contains": RULE},
            },
            "targets": TARGETS,
            "per_model": {m: settings_for(args, m) for m in args.models},
        },
        "machine": benchlib.finish_machine_info(machine),
        "notes": notes,
        "wall_s": time.perf_counter() - started,
        "ratios_model": headline,
        "ratios": models[headline]["ratios"],
        "models": models,
    }
    json_path, md_path = benchlib.write_results("grpo_vs_trl", record, markdown(record), args.results_dir)
    for model, result in models.items():
        if result["ratios"] is not None:
            r = result["ratios"]
            log.info("%s: samples/s x%.2f, peak RSS x%.2f", model, r["samples_per_s"], r["peak_rss"])
    log.info("results in %s and %s (%.0f s)", json_path, md_path, record["wall_s"])
    print(json.dumps({m: r["ratios"] for m, r in models.items()}, indent=2))
    return record


if __name__ == "__main__":
    main()
