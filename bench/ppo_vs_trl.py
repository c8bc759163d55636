"""PPO throughput and peak memory: ``rewardmix ppo`` vs TRL's RLOOTrainer and GRPOTrainer (issue 8, item 1).

The three systems get the same work per update, each run in its own fresh process (so its peak RSS is its
own), alternating A B C A B C ... and repeated; the tables report medians and rewardmix / TRL ratios.

Matched on every side:

* **model**: the tiny in-memory Llama (``tiny``, 2 layers, width 32) and SmolLM2-135M-Instruct
  (``offline:smollm2``), float32, CPU, one torch thread per process; the policy is a LoRA adapter (r 16,
  alpha 32, every linear layer, dropout 0) on the frozen base;
* **samples per update**: ``--batch`` completions (rewardmix: ``--batch`` prompts x 1; TRL: ``--batch / 2``
  prompts x ``num_generations`` 2, the least RLOO/GRPO accept), one optimizer step per update over all of
  them in one micro-batch (rewardmix ``ppo_epochs 1``, ``minibatch = micro_batch = batch``; TRL
  ``num_iterations 1``, ``per_device_train_batch_size = batch``, no gradient accumulation);
* **response length**: exactly ``--max-new-tokens`` tokens: the stop tokens (EOS, ``<|im_end|>``) are
  suppressed on both sides (``suppress_tokens``), so no run gets cheaper by stopping early;
* **prompts**: the 66 ``builtin:toy`` arithmetic prompts rendered with the chat template (TRL gets the
  rendered text);
* **reward model**: the same function on both sides: the base + a linear scalar head (the same head weights)
  read at the last token. rewardmix holds it as a LoRA role on the policy's shared base (identity adapter);
  TRL, as its API asks, as a separate ``AutoModelForSequenceClassification`` (a second copy of the base);
* **KL to the reference**: beta 0.05 everywhere (TRL's GRPO default is 0: set so that all three compute the
  reference log-probabilities; the reference is the base with adapters disabled on every side);
* **TRL defaults changed to match**: ``gradient_checkpointing False`` and ``bf16 False`` (TRL turns both on
  by default), ``disable_dropout True``, ``learning_rate 1e-5``.

Not the same by design: rewardmix is PPO, so it also runs a value model (a LoRA role + head on the same
base) forward at rollout and forward + backward in the update, and a policy forward at rollout for the old
log-probabilities; GRPO/RLOO have no value model and reuse the training forward for the old log-probabilities
when ``num_iterations`` is 1.

Time per update is the interval between consecutive ends of updates (``on_step`` callback of
``rewardmix.stages.ppo.run``; ``TrainerCallback.on_step_end`` for TRL), without the first update (warm-up)
and the last (rewardmix writes its final checkpoint there). samples/s = ``--batch`` / median interval.
rewardmix's phases (generate, reward, rollout forward passes, PPO update) are the ``perf/*_time`` metrics the
stage logs every step (``docs/metrics.md``), read from the ``on_step`` rows; the stage's functions are not
wrapped. Its setup is: ``roles.load_models`` is wrapped once to suppress the stop tokens and
``roles.build_reward`` to read the RSS once every role is loaded.

Usage (from the repository root; TRL is the ``bench`` extra: ``.venv/bin/pip install -c constraints.txt trl``)::

    .venv/bin/python bench/ppo_vs_trl.py                      # tiny (~1.5 min) and SmolLM2 (~4-8 min)
    .venv/bin/python bench/ppo_vs_trl.py --models tiny        # only the tiny model
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

SYSTEMS = ("rewardmix", "trl_rloo", "trl_grpo")
MODELS, LORA_R = benchlib.MODELS, benchlib.LORA_R
# Per model: completions per update, response tokens, updates per run, runs per system. SmolLM2 settings are
# small so that the 6 runs fit in ~4-8 minutes on 2 shared cores (an update of 8 x 32 tokens takes ~40-70 s).
DEFAULTS = {
    "tiny": {"batch": 8, "max_new_tokens": 32, "steps": 10, "repeats": 3},
    "smollm2": {"batch": 4, "max_new_tokens": 16, "steps": 4, "repeats": 2},
}
KL_BETA = 0.05
LR = 1e-5
log = logging.getLogger("bench.ppo_vs_trl")


# ---------------------------------------------------------------------------------------------------------
# Shared set-up (runs inside each child)


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write the reward model as a LoRA role folder (identity adapter + a seeded head) for rewardmix."""
    benchlib.write_reward_roles(args.model, Path(args.workdir), {"rm": 1})
    return {}


# ---------------------------------------------------------------------------------------------------------
# rewardmix


def child_rewardmix(args: argparse.Namespace) -> dict[str, Any]:
    """``rewardmix.stages.ppo.run`` itself; its phase times are the ``perf/*_time`` metrics it logs."""
    from rewardmix.config import from_dict
    from rewardmix.stages import ppo

    workdir = Path(args.workdir)
    out = workdir / f"rewardmix-{time.monotonic_ns()}"
    data = {
        "output_dir": str(out),
        "cpu": True,
        "model": {"name": MODELS[args.model]},
        "lora": {"r": LORA_R, "alpha": 2 * LORA_R},
        "data": {"prompts": "builtin:toy"},
        "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch},
        "ppo": {
            "steps": args.steps,
            "batch_size": args.batch,
            "minibatch_size": args.batch,
            "micro_batch_size": args.batch,
            "forward_batch_size": args.batch,
            "ppo_epochs": 1,
            "learning_rate": LR,
            "kl": {"kind": "fixed", "init_coef": KL_BETA},
        },
        "reward": {
            "components": [
                {
                    "name": "rm",
                    "type": "reward_model",
                    "reward_model": {"path": str(workdir / "rm"), "role": "rm"},
                }
            ]
        },
        "logging": {"sample_every": 0, "num_samples": 0, "checkpoint_every": 10_000},
    }
    cfg = from_dict(ppo.Config, data)
    with benchlib.RewardmixProbe() as probe:
        ppo.run(cfg, on_step=probe)
    shutil.rmtree(out, ignore_errors=True)
    return probe.result()


# ---------------------------------------------------------------------------------------------------------
# TRL


def child_trl(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    if kind == "grpo":
        from trl import GRPOConfig as TrainerConfig
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as TrainerConfig
        from trl import RLOOTrainer as Trainer

    workdir = Path(args.workdir)
    tokenizer, base, path = benchlib.load_base(args.model)
    rm = benchlib.trl_reward_model(base, path, workdir / "rm", tokenizer)
    dataset = benchlib.trl_prompt_dataset(tokenizer)
    loaded = benchlib.rss_mb()

    timer = benchlib.trl_timer()
    out = workdir / f"trl-{kind}-{time.monotonic_ns()}"
    trainer_args = TrainerConfig(
        **benchlib.trl_trainer_kwargs(
            out,
            batch=args.batch,
            max_new_tokens=args.max_new_tokens,
            steps=args.steps,
            tokenizer=tokenizer,
            beta=KL_BETA,
            lr=LR,
        ),
        num_generations=2,
    )
    trainer = Trainer(
        model=base,
        reward_funcs=rm,
        args=trainer_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_processing_classes=tokenizer,
        peft_config=benchlib.trl_lora_config(),
        callbacks=[timer],
    )
    generate_times = benchlib.time_calls(trainer, "_generate")
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    return benchlib.trl_result(timer, rss_after_load_mb=loaded, phases_s={"generate": generate_times[1:]})


CHILDREN = {
    "prepare": child_prepare,
    "rewardmix": child_rewardmix,
    "trl_rloo": lambda args: child_trl(args, "rloo"),
    "trl_grpo": lambda args: child_trl(args, "grpo"),
}


# ---------------------------------------------------------------------------------------------------------
# Parent


def settings_for(args: argparse.Namespace, model: str) -> dict[str, int]:
    return benchlib.settings_for(args, model, DEFAULTS)


def bench_model(args: argparse.Namespace, model: str, workdir: Path) -> dict[str, Any]:
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
        script, SYSTEMS, options, workdir, repeats=settings["repeats"], label=model
    )
    summary = {s: benchlib.summarize_runs(runs[s], settings["batch"]) for s in SYSTEMS}
    ours = summary["rewardmix"]
    ratios = {}
    for other in ("trl_rloo", "trl_grpo"):
        ratios[other] = {
            "samples_per_s": ours["samples_per_s"] / summary[other]["samples_per_s"],
            "peak_rss": ours["peak_rss_mb_median"] / summary[other]["peak_rss_mb_median"],
            "generate_time": ours["generate_s_median"] / summary[other]["generate_s_median"],
        }
    return {"settings": settings, "summary": summary, "ratios_rewardmix_over": ratios, "runs": runs}


def markdown(args: argparse.Namespace, record: dict[str, Any]) -> list[str]:
    command = f".venv/bin/python bench/ppo_vs_trl.py --models {','.join(args.models)}"
    for key in ("batch", "max_new_tokens", "repeats", "steps"):
        if getattr(args, key) is not None:
            command += f" --{key.replace('_', '-')} {getattr(args, key)}"
    lines = [
        "# PPO throughput and peak memory: rewardmix vs TRL RLOO / GRPO",
        "",
        f"Command: `{command}`",
        "",
        *benchlib.machine_lines(record["machine"]),
        "",
        "Per update: a batch of completions of exactly the response length (stop tokens suppressed), one "
        "optimizer step, LoRA r 16 on every linear layer, KL beta 0.05, one reward model on the same base "
        "(rewardmix: a LoRA role on the shared base; TRL: a separate sequence-classification copy). rewardmix runs "
        "PPO with a value model (a LoRA role on the same base), TRL's trainers have none. Medians over "
        "alternating runs, each in a fresh process; the first and last update of each run are not timed.",
        "",
        "| model | completions x tokens / update | runs | system | s / update | samples/s | generate s / update "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, result in record["models"].items():
        st = result["settings"]
        for system in SYSTEMS:
            s = result["summary"][system]
            lines.append(
                f"| {model} | {st['batch']} x {st['max_new_tokens']} | {s['runs']} | {system} | "
                f"{s['update_s_median']:.3f} | {s['samples_per_s']:.2f} | {s['generate_s_median']:.3f} | "
                f"{s['peak_rss_mb_median']:.0f} |"
            )
    lines += [
        "",
        "Ratios rewardmix / TRL (targets: samples/s >= 1.5, peak memory <= 0.6):",
        "",
        "| model | vs | samples/s ratio | peak RSS ratio | generation time ratio |",
        "|---|---|---|---|---|",
    ]
    for model, result in record["models"].items():
        for other, r in result["ratios_rewardmix_over"].items():
            lines.append(
                f"| {model} | {other} | {r['samples_per_s']:.2f} | {r['peak_rss']:.2f} | {r['generate_time']:.2f} |"
            )
    lines += [
        "",
        "Where rewardmix's time per update goes (median seconds per phase, from the `perf/*_time` metrics the "
        "stage logs), and when its peak RSS is reached (peak after each of the first three updates, MiB):",
        "",
        "| model | generate | reward | rollout forward (policy, reference, value) | PPO update | peak after update |",
        "|---|---|---|---|---|---|",
    ]
    for model, result in record["models"].items():
        p = result["summary"]["rewardmix"]["phases_s_median"]
        peaks = result["runs"]["rewardmix"][0]["peak_rss_after_update_mb"][:3]
        lines.append(
            f"| {model} | {p['generate']:.3f} | {p['reward']:.3f} | {p['rollout_forward']:.3f} | "
            f"{p['ppo_update']:.3f} | {', '.join(str(v) for v in peaks)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["tiny", "smollm2"])
    parser.add_argument(
        "--batch", type=int, help="completions per update, even (default: per model, see DEFAULTS)"
    )
    parser.add_argument("--max-new-tokens", type=int, help="response length (default: per model)")
    parser.add_argument("--repeats", type=int, help="runs per system (default: per model)")
    parser.add_argument("--steps", type=int, help="updates per run, >= 4 (default: per model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (2 cores, shared)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    benchlib.setup_logging()
    if args.child:
        benchlib.child_main(CHILDREN, args)
        return
    if args.batch is not None and args.batch % 2:
        parser.error("--batch must be even (TRL's RLOO and GRPO sample 2 completions per prompt)")
    if args.steps is not None and args.steps < 4:
        parser.error("--steps must be >= 4 (the first and last updates are not timed)")
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    machine = benchlib.machine_info(args.threads)
    if "smollm2" in args.models:
        from rewardmix.models.loading import resolve_model_path

        resolve_model_path(MODELS["smollm2"])  # converts the GGUF once, outside the measured processes
    temporary = args.workdir is None
    root = Path(args.workdir or tempfile.mkdtemp(prefix="ppo_vs_trl_"))
    started = time.perf_counter()
    try:
        models = {}
        for model in args.models:
            workdir = root / model
            workdir.mkdir(parents=True, exist_ok=True)
            models[model] = bench_model(args, model, workdir)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    record = {
        "benchmark": "ppo_vs_trl",
        "settings": {"models": args.models, "threads": args.threads, "lora_r": LORA_R, "kl_beta": KL_BETA}
        | {
            "learning_rate": LR,
            "num_generations_trl": 2,
            "per_model": {m: settings_for(args, m) for m in args.models},
        },
        "machine": benchlib.finish_machine_info(machine),
        "wall_s": time.perf_counter() - started,
        "models": models,
    }
    json_path, md_path = benchlib.write_results("ppo_vs_trl", record, markdown(args, record))
    for model, result in models.items():
        for other, r in result["ratios_rewardmix_over"].items():
            log.info(
                "%s vs %s: samples/s x%.2f, peak RSS x%.2f", model, other, r["samples_per_s"], r["peak_rss"]
            )
    log.info("results in %s and %s (%.0f s)", json_path, md_path, record["wall_s"])
    print(json.dumps({m: r["ratios_rewardmix_over"] for m, r in models.items()}, indent=2))


if __name__ == "__main__":
    main()
