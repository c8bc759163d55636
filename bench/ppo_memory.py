"""Peak memory of PPO with every role on one base vs training the policy alone (SmolLM2-135M, CPU).

Issue 5, item 5: "with all roles on one base, peak memory stays close to that of training the policy alone;
measure and write down both numbers for SmolLM2-135M". Each measurement runs in its own subprocess, so its
peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own:

(a) ``policy``: the policy alone: SmolLM2-135M-Instruct (float32) with one LoRA role, AdamW, ``--steps``
    SFT-like optimizer steps (causal-LM loss on every token) on batches of ``--micro-batch`` sequences as
    long as the PPO run's (a prompt of the pool + ``--max-new-tokens`` response tokens).
(b) ``ppo``: ``rewardmix ppo`` itself for ``--steps`` iterations, every role on the same base: policy (LoRA
    role), value (LoRA role + scalar head), reference (adapters disabled), two reward models as two more LoRA
    roles + scalar heads, and a rule scorer. The reward models are UNTRAINED: their adapters are the identity
    (LoRA B = 0) and their heads random (different seeds), which costs exactly the memory and compute of
    trained ones (memory is what is measured here; their scores mean nothing).
(c) ``ppo_separate`` (issue 8, item 1): the same run with every role a separate copy of the model, as
    trainers without shared-base roles hold them: the policy (LoRA on copy 1), the reference (copy 2, frozen),
    the value model (LoRA + head on copy 3) and the two reward models as standalone scalar-head models
    (``reward_model.role: null``, copies 4 and 5; the same heads, no adapter). The stage code is the same;
    only ``rewardmix.stages.ppo.roles.load_models`` and ``roles.reference_context`` are swapped for the
    separate copies (the stage calls them through that module for this purpose).

The PPO run of (b) is also the issue's smoke run ("a short PPO run with two reward-model components plus a
rule completes on the 2-core CPU"): its metrics (per-component reward curves) are copied to
``bench/results/ppo_smollm2_metrics.jsonl`` and summarized in ``bench/results/ppo_memory.{json,md}``.

Usage (from the repository root; needs the offline SmolLM2 package, see README):

    .venv/bin/python bench/ppo_memory.py                    # defaults: 4 steps, batch 4, 16 new tokens
    .venv/bin/python bench/ppo_memory.py --no-separate      # only (a) and (b)
    .venv/bin/python bench/ppo_memory.py --steps 2 --batch 2 --threads 2

Reference: SPEC §7 (roles as LoRA adapters on one shared base, reference = adapters disabled); RLLR §4.1
("the policy, reward, and value models are equipped with their own set of LoRA parameters").
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import benchlib
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL = "offline:smollm2"
RULE = r"\b(zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b|\d"

log = logging.getLogger("bench.ppo_memory")


def rss_mb() -> float:
    """Current resident set size of this process, MiB (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------
# Children (each runs in its own process)


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Write the two untrained reward-model adapters (LoRA role on the causal-LM base + random head)."""
    from rewardmix.models.heads import ScalarHeadModel
    from rewardmix.models.loading import load_causal_lm, load_tokenizer
    from rewardmix.models.lora import LoraSettings, add_adapters, save_adapter

    base = load_causal_lm(MODEL)
    peft = add_adapters(base, ["rm_a", "rm_b"], LoraSettings(r=args.lora_r, alpha=2 * args.lora_r))
    for seed, role in enumerate(("rm_a", "rm_b"), start=1):
        save_adapter(ScalarHeadModel(peft, role=role, seed=seed), role, Path(args.workdir) / role)
    if args.separate:  # (c): the same reward models as standalone models (a full copy each, same heads)
        tokenizer = load_tokenizer(MODEL)
        for seed, role in enumerate(("rm_a", "rm_b"), start=1):
            standalone = ScalarHeadModel(load_causal_lm(MODEL), seed=seed)
            standalone.save_pretrained(Path(args.workdir) / f"{role}_standalone", tokenizer=tokenizer)
    return {}


def _prompt_lengths(args: argparse.Namespace, tokenizer: Any) -> list[list[int]]:
    from rewardmix.data.prompts import DataConfig, load_prompts

    return [p.input_ids for p in load_prompts(DataConfig(prompts="builtin:toy"), tokenizer)]


def child_policy(args: argparse.Namespace) -> dict[str, Any]:
    """(a) The policy alone: LoRA SFT-like steps on sequences as long as the PPO run's."""
    from rewardmix.algos.losses import masked_token_cross_entropy
    from rewardmix.models.loading import load_causal_lm, load_tokenizer
    from rewardmix.models.lora import LoraSettings, add_adapters, trainable_parameters
    from rewardmix.train.loop import pad_sequences

    started = time.perf_counter()
    tokenizer = load_tokenizer(MODEL)
    model = add_adapters(
        load_causal_lm(MODEL), ["policy"], LoraSettings(r=args.lora_r, alpha=2 * args.lora_r)
    )
    loaded = rss_mb()
    params = trainable_parameters(model, "policy")
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    prompts = _prompt_lengths(args, tokenizer)
    generator = torch.Generator().manual_seed(0)
    model.train()
    step_times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        for micro in range(args.batch // args.micro_batch):
            rows = []
            for i in range(args.micro_batch):
                prompt = prompts[(step * args.batch + micro * args.micro_batch + i) % len(prompts)]
                response = torch.randint(
                    10, len(tokenizer), (args.max_new_tokens,), generator=generator
                ).tolist()
                rows.append(prompt + response)
            ids = pad_sequences(rows, pad_value=tokenizer.pad_token_id)
            mask = pad_sequences([[1] * len(r) for r in rows], pad_value=0)
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = masked_token_cross_entropy(logits, ids, mask.bool(), reduction="mean").loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - t0)
    return {
        "rss_after_load_mb": loaded,
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": time.perf_counter() - started,
        "step_time_mean_s": sum(step_times) / len(step_times),
        "trainable_parameters": sum(p.numel() for p in params),
    }


def child_ppo(args: argparse.Namespace, *, separate: bool = False) -> dict[str, Any]:
    """(b) ``rewardmix ppo`` with policy, value, reference and two reward-model roles on one base + a rule;
    (c) with ``separate``: the same run with every role on its own copy of the model."""
    from rewardmix.config import from_dict
    from rewardmix.stages import ppo
    from rewardmix.stages.ppo import roles

    if separate:
        roles.load_models = _load_models_separate
        roles.reference_context = lambda models: nullcontext()  # copy 2 is the reference itself

    loaded: dict[str, float] = {}
    original = roles.build_reward

    def build_reward(*a: Any, **k: Any) -> Any:  # measure RSS once every role is on the base
        reward = original(*a, **k)
        loaded["rss"] = rss_mb()
        return reward

    roles.build_reward = build_reward
    workdir = Path(args.workdir)
    suffix, role = ("_standalone", None) if separate else ("", True)
    run_dir = workdir / ("run_separate" if separate else "run")
    data = {
        "output_dir": str(run_dir),
        "cpu": True,
        "model": {"name": MODEL},
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r},
        "data": {"prompts": "builtin:toy"},
        "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch},
        "ppo": {
            "steps": args.steps,
            "batch_size": args.batch,
            "minibatch_size": args.batch,
            "micro_batch_size": args.micro_batch,
            "forward_batch_size": args.batch,
            "ppo_epochs": args.ppo_epochs,
            "learning_rate": 1.41e-5,
            "kl": {"kind": "fixed", "init_coef": 0.05},
        },
        "reward": {
            "components": [
                {
                    "name": "rm_a",
                    "type": "reward_model",
                    "reward_model": {"path": str(workdir / f"rm_a{suffix}"), "role": role and "rm_a"},
                },
                {
                    "name": "rm_b",
                    "type": "reward_model",
                    "reward_model": {"path": str(workdir / f"rm_b{suffix}"), "role": role and "rm_b"},
                },
                {"name": "says_number", "type": "format", "format": {"pattern": RULE, "ignore_case": True}},
            ],
            "combinator": "sum",
        },
        "logging": {"sample_every": 1, "num_samples": 2, "checkpoint_every": 1000},
    }
    cfg = from_dict(ppo.Config, data)
    started = time.perf_counter()
    result = ppo.run(cfg)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {
        "rss_after_load_mb": loaded["rss"],
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": wall,
        "step_time_mean_s": sum(r["perf/step_time"] for r in rows) / len(rows),
        "global_step": result.global_step,
        "metrics_path": str(run_dir / "metrics.jsonl"),
        "samples_path": str(run_dir / "samples.jsonl"),
    }


def _load_models_separate(
    model: Any, lora_cfg: Any, device: torch.device, *, seed: int, value_model: str | None = "role"
) -> Any:
    """(c) The stage's roles, each on its own copy: policy (LoRA, copy 1), reference (copy 2, frozen, no
    adapter), value (LoRA + head, copy 3). Same signature, LoRA settings and dropout handling as
    ``roles.load_models`` (GAE only: the value model is a role)."""
    if value_model != "role":
        raise ValueError(
            f"the separate-copies layout measures the value role, not value_model={value_model!r}"
        )
    from rewardmix.models import heads, lora
    from rewardmix.models.dropout import disable_dropout
    from rewardmix.models.loading import load_causal_lm, load_tokenizer
    from rewardmix.stages.ppo import roles

    settings = lora.LoraSettings(r=lora_cfg.r, alpha=lora_cfg.alpha, dropout=0.0)
    tokenizer = load_tokenizer(MODEL)
    policy = lora.add_adapters(load_causal_lm(MODEL), [roles.POLICY_ROLE], settings)
    reference = load_causal_lm(MODEL)
    reference.requires_grad_(False)
    value_base = lora.add_adapters(load_causal_lm(MODEL), [roles.VALUE_ROLE], settings)
    value = heads.ScalarHeadModel(value_base, pooling="last", role=roles.VALUE_ROLE, seed=seed + 1)
    for module in (policy, reference, value):
        module.to(device)
        disable_dropout(module)
    params = lora.trainable_parameters(policy, roles.POLICY_ROLE) + lora.trainable_parameters(
        value, roles.VALUE_ROLE
    )
    return roles.Models(tokenizer, policy, reference, value, roles.POLICY_ROLE, params)


CHILDREN = {
    "prepare": child_prepare,
    "policy": child_policy,
    "ppo": child_ppo,
    "ppo_separate": lambda args: child_ppo(args, separate=True),
}


# ---------------------------------------------------------------------------------------------------------
# Parent


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.workdir) / f"{name}.json"
    command = [sys.executable, __file__, "--child", name, "--out-json", str(out), *_forward(args)]
    log.info("running %s", name)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - started
    return result


def _forward(args: argparse.Namespace) -> list[str]:
    keys = ("steps", "batch", "micro_batch", "max_new_tokens", "ppo_epochs", "lora_r", "threads", "workdir")
    out = []
    for key in keys:
        out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return out + ["--separate" if args.separate else "--no-separate"]


def curves(metrics_path: Path) -> dict[str, list[float]]:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    keys = [
        "objective/score",
        "objective/kl",
        "reward/rm_a/raw",
        "reward/rm_b/raw",
        "reward/says_number/raw",
        "reward/combined",
        "response/length_mean",
        "perf/step_time",
    ]
    return {key: [r.get(key) for r in rows] for key in keys}


def write_results(
    args: argparse.Namespace,
    policy: dict[str, Any],
    ppo_run: dict[str, Any],
    separate: dict[str, Any] | None,
    machine: dict[str, Any],
) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    metrics_copy = RESULTS / "ppo_smollm2_metrics.jsonl"
    shutil.copyfile(ppo_run["metrics_path"], metrics_copy)
    shutil.copyfile(ppo_run["samples_path"], RESULTS / "ppo_smollm2_samples.jsonl")
    ratio = ppo_run["peak_rss_mb"] / policy["peak_rss_mb"]
    extra_a = policy["peak_rss_mb"] - policy["rss_after_load_mb"]
    extra_b = ppo_run["peak_rss_mb"] - ppo_run["rss_after_load_mb"]
    result = {
        "model": "SmolLM2-135M-Instruct (offline:smollm2), float32, CPU",
        "settings": {
            k: getattr(args, k)
            for k in ("steps", "batch", "micro_batch", "max_new_tokens", "ppo_epochs", "lora_r")
        }
        | {"torch_threads": args.threads, "prompts": "builtin:toy (66 short arithmetic questions)"},
        "machine": benchlib.finish_machine_info(machine),
        "policy_alone": policy,
        "ppo_all_roles_one_base": {k: v for k, v in ppo_run.items() if not k.endswith("_path")},
        "ppo_separate_copies": {k: v for k, v in (separate or {}).items() if not k.endswith("_path")} or None,
        "peak_rss_ratio": ratio,
        "peak_rss_ratio_separate_over_policy": separate["peak_rss_mb"] / policy["peak_rss_mb"]
        if separate
        else None,
        "peak_rss_ratio_one_base_over_separate": ppo_run["peak_rss_mb"] / separate["peak_rss_mb"]
        if separate
        else None,
        "peak_minus_loaded_mb": {"policy_alone": extra_a, "ppo": extra_b},
        "weights_fp32_mb": 134.5e6 * 4 / 2**20,
        "curves": curves(metrics_copy),
        "metrics_file": str(metrics_copy.relative_to(REPO)),
    }
    (RESULTS / "ppo_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    c = result["curves"]
    lines = [
        "# PPO memory: every role on one base vs the policy alone (SmolLM2-135M, CPU)",
        "",
        f"Command: `.venv/bin/python bench/ppo_memory.py --steps {args.steps} --batch {args.batch} "
        f"--micro-batch {args.micro_batch} --max-new-tokens {args.max_new_tokens} --ppo-epochs {args.ppo_epochs} "
        f"--threads {args.threads}{'' if args.separate else ' --no-separate'}`",
        "",
        *benchlib.machine_lines(result["machine"]),
        "",
        "| run | RSS after load (MiB) | peak RSS (MiB) | peak - loaded (MiB) | mean step (s) | process wall (s) |",
        "|---|---|---|---|---|---|",
        f"| (a) policy alone: LoRA, SFT-like steps | {policy['rss_after_load_mb']:.0f} | {policy['peak_rss_mb']:.0f} | "
        f"{extra_a:.0f} | {policy['step_time_mean_s']:.2f} | {policy['process_wall_s']:.0f} |",
        f"| (b) PPO, policy + value + reference + 2 RM roles + rule on one base | {ppo_run['rss_after_load_mb']:.0f} | "
        f"{ppo_run['peak_rss_mb']:.0f} | {extra_b:.0f} | {ppo_run['step_time_mean_s']:.2f} | "
        f"{ppo_run['process_wall_s']:.0f} |",
        *(
            [
                f"| (c) the same PPO run, every role a separate model copy (5 copies) | "
                f"{separate['rss_after_load_mb']:.0f} | {separate['peak_rss_mb']:.0f} | "
                f"{separate['peak_rss_mb'] - separate['rss_after_load_mb']:.0f} | {separate['step_time_mean_s']:.2f} | "
                f"{separate['process_wall_s']:.0f} |"
            ]
            if separate
            else []
        ),
        "",
        f"Peak RSS ratio (b) / (a): **{ratio:.2f}** (target <= 1.3)"
        + (
            f"; (c) / (a): **{result['peak_rss_ratio_separate_over_policy']:.2f}**; (b) / (c): "
            f"**{result['peak_rss_ratio_one_base_over_separate']:.2f}**."
            if separate
            else "."
        )
        + f" One float32 copy of the model weighs ~{result['weights_fp32_mb']:.0f} MiB.",
        f"Each LoRA role (r={args.lora_r}, every linear layer) holds {policy['trainable_parameters']:,} parameters "
        f"({policy['trainable_parameters'] * 4 / 2**20:.0f} MiB in float32): (b) carries four roles and trains two "
        "(gradients and AdamW moments for both), which with the rollout tensors is the difference to (a). RSS "
        "includes the Python/torch runtime (~300 MiB) and memory the allocator keeps after freeing it.",
        "The reward models are untrained (identity LoRA adapters, random heads): they cost the memory and compute "
        "of trained ones, their scores carry no meaning.",
        "",
        f"Per-component reward curves of the PPO run ({args.steps} steps, batch {args.batch}; full rows in "
        f"`{result['metrics_file']}`):",
        "",
        "| step | objective/score | objective/kl | reward/rm_a/raw | reward/rm_b/raw | reward/says_number/raw | "
        "response/length_mean | step time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i in range(len(c["objective/score"])):
        lines.append(
            f"| {i + 1} | {c['objective/score'][i]:.4f} | {c['objective/kl'][i]:.4f} | {c['reward/rm_a/raw'][i]:.4f} | "
            f"{c['reward/rm_b/raw'][i]:.4f} | {c['reward/says_number/raw'][i]:.2f} | "
            f"{c['response/length_mean'][i]:.1f} | {c['perf/step_time'][i]:.1f} |"
        )
    (RESULTS / "ppo_memory.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="PPO iterations / SFT-like steps")
    parser.add_argument(
        "--batch", type=int, default=4, help="responses per PPO iteration (= sequences per SFT step)"
    )
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per forward/backward pass")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (2 threads thrash when other jobs share 2 cores)",
    )
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument(
        "--separate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure (c): the same PPO run with every role a separate model copy",
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.child:
        result = CHILDREN[args.child](args)
        Path(args.out_json).write_text(json.dumps(result, indent=2))
        return
    from rewardmix.models.loading import resolve_model_path

    resolve_model_path(MODEL)  # converts the GGUF once, outside the measured processes
    machine = benchlib.machine_info(args.threads)
    temporary = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="ppo_memory_")
    try:
        run_child("prepare", args)
        policy = run_child("policy", args)
        ppo_run = run_child("ppo", args)
        separate = run_child("ppo_separate", args) if args.separate else None
        result = write_results(args, policy, ppo_run, separate, machine)
    finally:
        if temporary:
            shutil.rmtree(args.workdir, ignore_errors=True)
    log.info(
        "peak RSS: policy alone %.0f MiB, PPO with all roles on one base %.0f MiB (ratio %.2f); results in %s",
        policy["peak_rss_mb"],
        ppo_run["peak_rss_mb"],
        result["peak_rss_ratio"],
        RESULTS / "ppo_memory.md",
    )


if __name__ == "__main__":
    main()
