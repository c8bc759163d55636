"""Rollout generation tokens/s and reward scoring sequences/s (issue 8, item 1: "Rollout generation").

Two measurements per model (the tiny in-memory Llama and SmolLM2-135M-Instruct), each model in its own
fresh process, variants alternating within it (A B C A B C ...), medians over ``--repeats``:

1. **Generation**: the same PPO policy (``rewardmix.stages.ppo.roles.load_models``: LoRA roles ``policy`` and
   ``value`` on the base, the policy role active), the same left-padded batch of ``builtin:toy`` prompts, the
   same number of new tokens (stop tokens suppressed, so every row makes exactly ``--max-new-tokens``):

   * ``rewardmix``: ``rewardmix.stages.ppo.rollout.generate_responses``, the stage's own rollout path (per-row
     seeded sampling, masks, padding), the whole batch in one ``generate`` call;
   * ``rewardmix_half_batches``: the same with ``generation.batch_size`` = half the batch (two calls);
   * ``plain_generate``: ``model.generate(do_sample=True)`` on the same model and inputs;
   * ``plain_generate_static_cache``: the same with ``cache_implementation="static"``;
   * ``plain_generate_static_compiled`` (tiny model only, ``--compile``): static cache + ``torch.compile`` of
     the forward (transformers' ``CompileConfig``; on CPU it must be forced); its compile time is reported
     apart and is not in the tokens/s.

   tokens/s = batch x new tokens / seconds per call.

2. **Reward scoring**: a reward model as a LoRA role on the same base with a scalar head (as PPO holds it),
   ``rewardmix.scoring.RewardModelScorer`` over ``--score-samples`` (prompt, response) pairs whose responses
   have random lengths (1 to 48 words), batches of 16, with ``bucket_by_length`` on (sorted by length, the
   default) and off (input order). The two score vectors are compared (they must agree to float rounding).

Usage (from the repository root)::

    .venv/bin/python bench/rollout.py                  # tiny + SmolLM2, ~6.5 minutes on 2 busy cores
    .venv/bin/python bench/rollout.py --models tiny    # ~2 minutes, most of it the tiny model's compile
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path
from typing import Any

import benchlib

MODELS = {"tiny": "tiny", "smollm2": "offline:smollm2"}
DEFAULTS = {
    "tiny": {"batch": 16, "max_new_tokens": 64, "repeats": 5, "score_samples": 256},
    "smollm2": {"batch": 8, "max_new_tokens": 32, "repeats": 3, "score_samples": 64},
}

log = logging.getLogger("bench.rollout")


def _models(model: str) -> tuple[Any, Any]:
    """The PPO stage's default config for ``model`` and its roles (policy and value LoRA roles on the base)."""
    import torch

    from rewardmix.config import from_dict
    from rewardmix.stages import ppo
    from rewardmix.stages.ppo import roles

    # The stage's config needs a reward; this benchmark scores nothing, so a rule stands in.
    rule = {"name": "says_five", "type": "contains", "contains": {"substring": "five"}}
    cfg = from_dict(ppo.Config, {"model": {"name": MODELS[model]}, "reward": {"components": [rule]}})
    return cfg, roles.load_models(cfg.model, cfg.lora, torch.device("cpu"), seed=cfg.seed)


def child_generation(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import CompileConfig

    from rewardmix.data.prompts import load_prompts
    from rewardmix.models.tokens import pad_token_id, stop_token_ids
    from rewardmix.stages.ppo.roles import policy_context
    from rewardmix.stages.ppo.rollout import generate_responses
    from rewardmix.train.loop import pad_sequences

    cfg, models = _models(args.model)
    tokenizer = models.tokenizer
    stops = stop_token_ids(tokenizer)
    models.policy.get_base_model().generation_config.suppress_tokens = stops  # exactly R new tokens per row
    cfg.generation.max_new_tokens = args.max_new_tokens
    prompts = load_prompts(cfg.data, tokenizer)[: args.batch]
    pad = pad_token_id(tokenizer)
    ids = pad_sequences([p.input_ids for p in prompts], pad_value=pad, side="left")
    mask = pad_sequences([[1] * len(p.input_ids) for p in prompts], pad_value=0, side="left")
    seeds = list(range(len(prompts)))

    def stage(batch_size: int) -> Any:
        def call() -> int:
            cfg.generation.batch_size = batch_size
            _, _, response_mask, _ = generate_responses(models, prompts, cfg.generation, seeds=seeds)
            return int(response_mask.sum())

        return call

    def plain(**extra: Any) -> Any:
        def call() -> int:
            with torch.no_grad(), policy_context(models):
                out = models.policy.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=args.max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=stops,
                    **extra,
                )
            return int(out.shape[0] * (out.shape[1] - ids.shape[1]))

        return call

    variants = {
        "rewardmix": stage(args.batch),
        "rewardmix_half_batches": stage(max(1, args.batch // 2)),
        "plain_generate": plain(),
        "plain_generate_static_cache": plain(cache_implementation="static"),
    }
    compile_s = None
    if args.compile:
        config = CompileConfig()
        config._compile_all_devices = True  # transformers compiles on CPU only when told to
        variants["plain_generate_static_compiled"] = plain(
            cache_implementation="static", compile_config=config
        )
    first: dict[str, float] = {}
    for name, call in variants.items():  # warm-up: first-call costs (compile) apart
        t0 = time.perf_counter()
        call()
        first[name] = time.perf_counter() - t0
    if args.compile:
        compile_s = first["plain_generate_static_compiled"]
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, int] = {}
    for rep in range(args.repeats):
        names = list(variants)
        names = names[rep % len(names) :] + names[: rep % len(names)]
        for name in names:
            t0 = time.perf_counter()
            tokens[name] = variants[name]()
            times[name].append(time.perf_counter() - t0)
    expected = args.batch * args.max_new_tokens
    return {
        "expected_tokens": expected,
        "tokens": tokens,
        "seconds": times,
        "tokens_per_s": {name: expected / benchlib.median(t) for name, t in times.items()},
        "first_call_s": first,
        "compile_s": compile_s,
        "prompt_width": int(ids.shape[1]),
    }


def child_scoring(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rewardmix.data.prompts import load_prompts
    from rewardmix.models.heads import ScalarHeadModel
    from rewardmix.models.lora import LoraSettings, add_adapters
    from rewardmix.scoring import RewardModelScorer, ScoringBatch

    cfg, models = _models(args.model)
    add_adapters(models.shared, ["rm"], LoraSettings(r=16, alpha=32))  # a reward-model role, as PPO holds it
    rm = ScalarHeadModel(models.shared, role="rm", seed=1)
    words = "one two three four five six seven eight nine ten eleven twelve the answer is".split()
    rng = random.Random(0)
    prompts = [p.messages[-1].content for p in load_prompts(cfg.data, models.tokenizer)]
    n = args.score_samples
    batch = ScoringBatch(
        prompts=[prompts[i % len(prompts)] for i in range(n)],
        responses=[" ".join(rng.choice(words) for _ in range(rng.randint(1, 48))) for _ in range(n)],
    )
    scorers = {
        bucket: RewardModelScorer(rm, models.tokenizer, role="rm", batch_size=16, bucket_by_length=bucket)
        for bucket in (True, False)
    }
    encoded = scorers[True].encode(batch)
    lengths = [len(x) for x in encoded]
    padded = {}
    for bucket in (True, False):  # tokens the forward passes process (real + padding), from the batching rule
        order = sorted(range(n), key=lambda i: -lengths[i]) if bucket else list(range(n))
        padded[bucket] = sum(
            len(order[i : i + 16]) * max(lengths[j] for j in order[i : i + 16]) for i in range(0, n, 16)
        )
    scores = {bucket: scorers[bucket].score(batch) for bucket in (True, False)}  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(args.repeats):
        for bucket in (True, False) if rep % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            scorers[bucket].score(batch)
            times[bucket].append(time.perf_counter() - t0)
    return {
        "samples": n,
        "length_min_max_mean": [min(lengths), max(lengths), sum(lengths) / n],
        "processed_tokens": {"bucketed": padded[True], "unbucketed": padded[False], "real": sum(lengths)},
        "seconds": {"bucketed": times[True], "unbucketed": times[False]},
        "sequences_per_s": {
            "bucketed": n / benchlib.median(times[True]),
            "unbucketed": n / benchlib.median(times[False]),
        },
        "max_abs_score_difference": float((scores[True] - scores[False]).abs().max()),
        "scores_allclose_1e-5": bool(torch.allclose(scores[True], scores[False], rtol=0, atol=1e-5)),
    }


CHILDREN = {"generation": child_generation, "scoring": child_scoring}


def markdown(record: dict[str, Any], command: str) -> list[str]:
    lines = [
        "# Rollout generation and reward scoring throughput",
        "",
        f"Command: `{command}`",
        "",
        *benchlib.machine_lines(record["machine"]),
        "",
        "## Generation (tokens/s; the same PPO policy, prompts and number of new tokens)",
        "",
        "| model | batch x new tokens | variant | tokens/s | vs plain generate | first call (s) |",
        "|---|---|---|---|---|---|",
    ]
    for model, result in record["models"].items():
        g = result["generation"]
        base = g["tokens_per_s"]["plain_generate"]
        st = result["settings"]
        for name, tps in g["tokens_per_s"].items():
            lines.append(
                f"| {model} | {st['batch']} x {st['max_new_tokens']} | {name} | {tps:.0f} | {tps / base:.2f} | "
                f"{g['first_call_s'][name]:.1f} |"
            )
    lines += [
        "",
        "## Reward scoring (sequences/s; a reward-model LoRA role on the shared base, batches of 16)",
        "",
        "| model | samples | tokens min / max / mean | processed tokens bucketed / unbucketed | sequences/s "
        "bucketed | sequences/s unbucketed | ratio | max score difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, result in record["models"].items():
        s = result["scoring"]
        lo, hi, mean = s["length_min_max_mean"]
        b, u = s["sequences_per_s"]["bucketed"], s["sequences_per_s"]["unbucketed"]
        lines.append(
            f"| {model} | {s['samples']} | {lo} / {hi} / {mean:.0f} | {s['processed_tokens']['bucketed']} / "
            f"{s['processed_tokens']['unbucketed']} | {b:.1f} | {u:.1f} | {b / u:.2f} | "
            f"{s['max_abs_score_difference']:.1e} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["tiny", "smollm2"])
    parser.add_argument("--batch", type=int, help="prompts per generation batch (default: per model)")
    parser.add_argument("--max-new-tokens", type=int, help="new tokens per response (default: per model)")
    parser.add_argument("--repeats", type=int, help="timed calls per variant (default: per model)")
    parser.add_argument(
        "--score-samples", type=int, help="(prompt, response) pairs scored (default: per model)"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time a static-cache + torch.compile variant (default: tiny model only; compiling takes "
        "~1.5 min for the tiny model on 2 cores and much longer for SmolLM2)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out-json", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    benchlib.setup_logging()
    if args.child:
        benchlib.child_main(CHILDREN, args)
        return
    import tempfile

    machine = benchlib.machine_info(args.threads)
    script = Path(__file__).resolve()
    started = time.perf_counter()
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rollout_") as tmp:
        for model in args.models:
            given = {k: getattr(args, k) for k in DEFAULTS[model] if getattr(args, k) is not None}
            settings = DEFAULTS[model] | given
            compile_ = args.compile if args.compile is not None else model == "tiny"
            options = {"model": model, "threads": args.threads, "compile": compile_, **settings}
            log.info("%s: generation", model)
            generation = benchlib.run_child(script, "generation", options, Path(tmp))
            log.info("%s: scoring", model)
            scoring = benchlib.run_child(script, "scoring", options, Path(tmp))
            models[model] = {
                "settings": settings | {"compile": compile_},
                "generation": generation,
                "scoring": scoring,
            }
    record = {
        "benchmark": "rollout",
        "machine": benchlib.finish_machine_info(machine),
        "wall_s": time.perf_counter() - started,
        "models": models,
    }
    command = ".venv/bin/python bench/rollout.py " + " ".join(
        f"--{k.replace('_', '-')} {getattr(args, k)}"
        for k in ("batch", "max_new_tokens", "repeats", "score_samples")
        if getattr(args, k) is not None
    )
    command = f"{command.strip()} --models {','.join(args.models)}"
    json_path, md_path = benchlib.write_results("rollout", record, markdown(record, command))
    for model, result in models.items():
        g, s = result["generation"]["tokens_per_s"], result["scoring"]["sequences_per_s"]
        log.info(
            "%s: generation rewardmix / plain generate = %.2f; scoring bucketed / unbucketed = %.2f",
            model,
            g["rewardmix"] / g["plain_generate"],
            s["bucketed"] / s["unbucketed"],
        )
    log.info("results in %s and %s (%.0f s)", json_path, md_path, record["wall_s"])


if __name__ == "__main__":
    main()
