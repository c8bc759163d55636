"""The measurements of bench/gpu_check.sh: short PPO runs on one GPU, each in its own process.

Runs, in order (each a fresh process, so that its peak memory is its own):

1. ``rm``: ``rewardmix reward-model`` for a few steps (LoRA, ``builtin:toy`` pairs) on ``--model``: a reward
   model adapter that the PPO runs load twice, as two LoRA roles on their base.
2. ``policy_alone``: PPO with the policy as the only LoRA role (``value_model: policy_head``) and a rule
   reward.
3. ``all_roles_hf``: the same PPO with every role on one base: policy and value LoRA roles, the value head,
   the reference (adapters off), two reward-model roles with their heads, and the rule; ``generation.backend:
   hf``.
4. ``all_roles_vllm``: run 3 with ``generation.backend: vllm`` (skipped when vLLM is not importable).

Every PPO run is bf16 (``model.dtype: bfloat16``, ``ppo.mixed_precision: bf16``) with the same prompts,
batch and lengths. Measured: peak GPU memory (``torch.cuda.max_memory_allocated``, and reserved) of the
training process, and rollout tokens/s = response tokens / ``perf/generate_time`` summed over the steps after
the first (the first carries compilation and CUDA-graph capture). Under vLLM the engine runs in the training
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so its memory is in the peak too: the
``vllm_gpu_memory_utilization`` share it reserves for its KV cache.

``--dry-run`` runs the same sequence on the CPU with the tiny built-in model and float32 (run 4 is recorded
as skipped); peak memory is then the process's peak resident set size. It checks the script end to end
(tests/bench/test_gpu_check.py), not the GPU.

Usage (bench/gpu_check.sh calls it; by hand from the repository root):

    python bench/gpu_check.py --model HuggingFaceTB/SmolLM2-135M-Instruct --out bench/results/gpu_check.json
    python bench/gpu_check.py --dry-run --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RULE = {"name": "e_count", "type": "contains", "contains": {"substring": "e", "mode": "count"}}


def ppo_config(args: argparse.Namespace, work: Path, *, all_roles: bool, backend: str) -> dict[str, Any]:
    """One PPO run's config (the stage's keys; see docs/reference.md)."""
    components: list[dict[str, Any]] = [RULE]
    if all_roles:
        adapter = str(work / "rm" / "adapter")
        for name in ("rm_a", "rm_b"):
            components.append(
                {"name": name, "type": "reward_model", "reward_model": {"path": adapter, "role": name}}
            )
    return {
        "seed": 0,
        "cpu": args.dry_run,
        "model": {"name": args.model, "dtype": "float32" if args.dry_run else "bfloat16"},
        "lora": {"r": 16, "alpha": 32},
        "generation": {"max_new_tokens": args.new_tokens, "batch_size": args.batch, "backend": backend},
        "ppo": {
            "steps": args.steps,
            "batch_size": args.batch,
            "minibatch_size": args.batch // 2,
            "micro_batch_size": args.batch // 2,
            "ppo_epochs": 1,
            "mixed_precision": "no" if args.dry_run else "bf16",
            "value_model": "role" if all_roles else "policy_head",
        },
        "reward": {"components": components},
        "logging": {"num_samples": 0, "checkpoint_every": 1000},
        "output_dir": str(work / ("all_roles_" + backend if all_roles else "policy_alone")),
    }


def rm_config(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    return {
        "seed": 0,
        "cpu": args.dry_run,
        "model": {"name": args.model, "dtype": "float32" if args.dry_run else "bfloat16"},
        "lora": {"r": 16, "alpha": 32},
        "data": {"train": "builtin:toy"},
        "optim": {"micro_batch_size": 4, "max_steps": 2},
        "logging": {"num_samples": 0, "checkpoint_every": 1000},
        "output_dir": str(work / "rm"),
    }


# ---------------------------------------------------------------------------------------------------------
# One run, in a child process


def child(stage: str, config_path: Path, result_path: Path) -> int:
    """Run ``stage`` in this process with the config at ``config_path``; write what it measured."""
    import torch

    from rewardmix.config import from_dict
    from rewardmix.rundir import read_jsonl
    from rewardmix.stages import ppo, reward_model

    os.environ.setdefault(
        "VLLM_ENABLE_V1_MULTIPROCESSING", "0"
    )  # the engine in this process: its memory counts
    config = json.loads(config_path.read_text())
    module = ppo if stage == "ppo" else reward_model
    started = time.perf_counter()
    module.run(from_dict(module.Config, config))
    result: dict[str, Any] = {"wall_s": round(time.perf_counter() - started, 2)}
    if torch.cuda.is_available():
        result["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    else:  # the dry run: the process's peak resident set (KiB on Linux)
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    if stage == "ppo":
        rows = [r for r in read_jsonl(Path(config["output_dir"]) / "metrics.jsonl") if r["step"] >= 1]
        timed = rows[1:] or rows  # the first step compiles / captures graphs
        tokens = sum(r["response/length_mean"] * config["ppo"]["batch_size"] for r in timed)
        seconds = sum(r["perf/generate_time"] for r in timed)
        result["rollout_tokens_per_s"] = round(tokens / max(seconds, 1e-9), 1)
        result["steps_timed"] = len(timed)
        result["final_score"] = rows[-1].get("objective/score")
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_child(stage: str, name: str, config: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh process; its result, or why it failed."""
    config_path, result_path = work / f"{name}.config.json", work / f"{name}.result.json"
    config_path.write_text(json.dumps(config, indent=2))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        stage,
        str(config_path),
        str(result_path),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    (work / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": f"exit code {done.returncode}: " + " | ".join(tail)}
    return json.loads(result_path.read_text())


# ---------------------------------------------------------------------------------------------------------
# The check


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    for package in ("transformers", "peft", "accelerate", "vllm"):
        try:
            info[package] = __import__(package).__version__
        except Exception:  # not installed (vllm on a CPU machine) or broken: recorded, not fatal
            info[package] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "CONFIG", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, no vLLM: checks the script")
    parser.add_argument(
        "--model", default=None, help="model folder or hub id (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    parser.add_argument(
        "--steps", type=int, default=None, help="PPO iterations per run (default 6; dry run 2)"
    )
    parser.add_argument("--batch", type=int, default=None, help="responses per iteration (default 32; dry 4)")
    parser.add_argument("--new-tokens", type=int, default=None, help="max new tokens (default 128; dry 6)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run (4 runs)")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], Path(args.child[1]), Path(args.child[2]))
    args.model = args.model or ("tiny" if args.dry_run else "HuggingFaceTB/SmolLM2-135M-Instruct")
    args.steps = args.steps or (2 if args.dry_run else 6)
    args.batch = args.batch or (4 if args.dry_run else 32)
    args.new_tokens = args.new_tokens or (6 if args.dry_run else 128)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: error: no CUDA GPU visible here; use --dry-run to check the script on a CPU",
            file=sys.stderr,
        )
        return 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rewardmix-gpu-check-") as tmp:
        work = Path(tmp)
        runs: dict[str, Any] = {
            "rm": run_child("reward-model", "rm", rm_config(args, work), work, args.timeout)
        }
        runs["policy_alone"] = run_child(
            "ppo", "policy_alone", ppo_config(args, work, all_roles=False, backend="hf"), work, args.timeout
        )
        runs["all_roles_hf"] = run_child(
            "ppo", "all_roles_hf", ppo_config(args, work, all_roles=True, backend="hf"), work, args.timeout
        )
        vllm_missing = importlib.util.find_spec("vllm") is None
        if args.dry_run or vllm_missing:
            runs["all_roles_vllm"] = {"skipped": "dry run" if args.dry_run else "vllm is not installed"}
        else:
            config = ppo_config(args, work, all_roles=True, backend="vllm")
            runs["all_roles_vllm"] = run_child("ppo", "all_roles_vllm", config, work, args.timeout)
        failed = {name: run["error"] for name, run in runs.items() if "error" in run}
        logs = {
            name: (work / f"{name}.log").read_text()[-2000:]
            for name in failed
            if (work / f"{name}.log").exists()
        }

    peak = "peak_rss_gib" if args.dry_run else "peak_gpu_allocated_gib"
    ratios: dict[str, float | None] = {}
    alone, hf, vllm = runs["policy_alone"], runs["all_roles_hf"], runs["all_roles_vllm"]
    ratios["all_roles_vs_policy_alone_peak_memory"] = (
        round(hf[peak] / alone[peak], 3) if peak in hf and peak in alone else None
    )
    ratios["vllm_vs_hf_rollout_tokens_per_s"] = (
        round(vllm["rollout_tokens_per_s"] / hf["rollout_tokens_per_s"], 2)
        if "rollout_tokens_per_s" in vllm and "rollout_tokens_per_s" in hf
        else None
    )
    report = {
        "dry_run": args.dry_run,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "model": args.model,
        "settings": {
            "steps": args.steps,
            "batch": args.batch,
            "max_new_tokens": args.new_tokens,
            "lora_r": 16,
            "dtype": "float32" if args.dry_run else "bfloat16",
        },  # fmt: skip
        "environment": environment(),
        "peak_memory_key": peak,
        "runs": runs,
        "ratios": ratios,
        "failed": failed,
        "failure_logs": logs,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps({"out": str(args.out), "ratios": ratios, "failed": failed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
