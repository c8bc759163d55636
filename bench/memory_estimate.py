"""Memory per GPU of rewardmix's training stages, from a model's config.json: weights, LoRA roles, optimizer.

What it counts, per process, for a decoder-only model (Llama, Qwen2, Mistral, SmolLM2 layouts):

- **base weights**: every parameter of the model in ``--dtype`` (bf16: 2 bytes), counted from the config
  (embeddings, attention with grouped-query key/value heads and optional q/k/v biases, gated MLP, norms,
  the output layer unless tied). DDP holds them whole on every GPU; FSDP and ZeRO-3 hold 1/N of them
  (plus one layer gathered at a time, counted as ``gathered layer``).
- **LoRA roles**: ``r * (in + out)`` parameters per adapted linear layer (``all-linear``: every linear layer of
  the decoder, not the output layer), float32. A *trained* role (SFT policy; PPO policy and value) also holds
  a float32 gradient and two AdamW moments: 16 bytes per parameter; a frozen role (a reward model loaded as a
  role) 4 bytes. Scalar heads (value, reward models) add ``hidden + 1`` parameters each.
- **full fine-tuning** (``--full``): weights and gradients in ``--dtype`` plus two float32 AdamW moments.

Not counted: activations and generation's KV cache (they depend on batch and length; gradient checkpointing
cuts the former), the CUDA context (~0.5 GiB) and allocator slack. Treat the result as the floor that decides
the engine; measure the rest with ``bench/gpu_check.sh``.

Checked against measurements on the CPU (tests/bench/test_memory_estimate.py): the parameter counts equal
those of the models rewardmix builds (the tiny test model with its LoRA roles, counted tensor by tensor), and
for SmolLM2-135M the float32 size (513 MiB) and LoRA role size (4,884,480 parameters at r=16) recorded in
``bench/results/ppo_memory.md``.

Usage:

    python bench/memory_estimate.py --config path/to/config.json --roles 4 --processes 8
    python bench/memory_estimate.py --preset qwen2.5-7b --markdown     # the table of docs/distributed.md
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Public config.json values of a few models (the keys this script reads), for the table in docs/distributed.md.
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                     "tie_word_embeddings": True},
    "qwen2.5-0.5b": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                     "tie_word_embeddings": True, "model_type": "qwen2"},
    "qwen2.5-1.5b": {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
                     "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                     "tie_word_embeddings": True, "model_type": "qwen2"},
    "qwen2.5-7b": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                   "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                   "tie_word_embeddings": False, "model_type": "qwen2"},
    "llama-3.1-8b": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "tie_word_embeddings": False},
    "qwen2.5-32b": {"vocab_size": 152064, "hidden_size": 5120, "intermediate_size": 27648,
                    "num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8,
                    "tie_word_embeddings": False, "model_type": "qwen2"},
    "llama-3.1-70b": {"vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672,
                      "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                      "tie_word_embeddings": False},
}  # fmt: skip


@dataclass(frozen=True)
class Counts:
    """Parameter counts of a decoder-only model."""

    total: int
    """Every parameter of the model."""
    per_layer: int
    """One decoder layer (what FSDP gathers at a time)."""
    lora_per_role: int
    """One LoRA role at the given rank on every linear layer of the decoder."""
    head: int
    """One scalar head (value or reward model): ``hidden + 1``."""


def count_parameters(config: dict[str, Any], *, lora_rank: int = 16) -> Counts:
    """Parameter counts from a Hugging Face ``config.json`` (decoder-only, gated MLP).

    Args:
        config: The config's keys ``vocab_size``, ``hidden_size``, ``intermediate_size``,
            ``num_hidden_layers``, ``num_attention_heads``; optional ``num_key_value_heads`` (default: as
            many as attention heads), ``head_dim``, ``tie_word_embeddings`` (default False),
            ``attention_bias`` (default: True for ``model_type: qwen2``, else False), ``mlp_bias``.
        lora_rank: LoRA rank ``r``.
    """
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    inter, layers = config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    qkv_bias = config.get("attention_bias", config.get("model_type") == "qwen2")
    mlp_bias = bool(config.get("mlp_bias", False))
    # (in, out) of every linear layer of one decoder layer: q, k, v, o, gate, up, down
    linears = [(hidden, q_out), (hidden, kv_out), (hidden, kv_out), (q_out, hidden)]
    linears += [(hidden, inter), (hidden, inter), (inter, hidden)]
    weights = sum(i * o for i, o in linears)
    biases = (q_out + 2 * kv_out if qkv_bias else 0) + (2 * inter + hidden if mlp_bias else 0)
    per_layer = weights + biases + 2 * hidden  # + input and post-attention RMSNorm
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    total = embeddings + layers * per_layer + hidden  # + the final norm
    lora = layers * lora_rank * sum(i + o for i, o in linears)
    return Counts(total=total, per_layer=per_layer, lora_per_role=lora, head=hidden + 1)


def estimate(
    counts: Counts,
    *,
    dtype: str = "bfloat16",
    trained_roles: int = 1,
    frozen_roles: int = 0,
    heads: int = 0,
    processes: int = 1,
    engine: str = "ddp",
    full: bool = False,
) -> dict[str, float]:
    """GiB per process of each part, and their sum (``total``).

    Args:
        counts: From :func:`count_parameters`.
        dtype: The base weights' dtype (``model.dtype``).
        trained_roles: LoRA roles with gradients and AdamW moments (SFT / RM: 1; PPO: policy + value = 2).
        frozen_roles: LoRA roles loaded but not trained (PPO's reward models given a ``role``).
        heads: Scalar heads (value, reward models); trained ones are counted with the optimizer.
        processes: N, the processes (GPUs) the model is sharded over.
        engine: ``ddp`` (whole copy per process), ``fsdp`` or ``zero3`` (1/N of everything, one layer
            gathered at a time), ``zero2`` (whole weights, 1/N of gradients and optimizer states).
        full: Full fine-tuning instead of LoRA (``lora.enabled: false``; one trained model).
    """
    width = DTYPE_BYTES[dtype]
    shard_weights = engine in ("fsdp", "zero3")
    shard_states = engine in ("fsdp", "zero3", "zero2")
    weights = counts.total * width / (processes if shard_weights else 1)
    gathered = 2 * counts.per_layer * width if shard_weights and processes > 1 else 0.0  # this + prefetched
    if full:
        grads = counts.total * width
        adam = counts.total * 8  # two float32 moments
        states = (grads + adam) / (processes if shard_states else 1)
        parts = {"base weights": weights, "gathered layer": gathered, "roles": 0.0, "optimizer": states}
    else:
        lora_params = counts.lora_per_role * (trained_roles + frozen_roles) + counts.head * heads
        trained = counts.lora_per_role * trained_roles
        roles = lora_params * 4 / (processes if shard_weights else 1)
        states = trained * 12 / (processes if shard_states else 1)  # float32 gradient + 2 AdamW moments
        parts = {"base weights": weights, "gathered layer": gathered, "roles": roles, "optimizer": states}
    out = {key: value / GIB for key, value in parts.items()}
    out["total"] = sum(out.values())
    return out


# Setups a user chooses between, as (name, trained roles, frozen roles, heads).
SETUPS = [
    ("SFT / reward model (1 role)", 1, 0, 0),
    ("PPO: policy + value (+ reference)", 2, 0, 1),
    ("PPO: + 2 reward-model roles", 2, 2, 3),
]


def table(counts: Counts, *, dtype: str, processes: int) -> list[dict[str, Any]]:
    """GiB per GPU of each setup under DDP, FSDP/ZeRO-3 and ZeRO-2 (LoRA), and of full fine-tuning."""
    rows = []
    for name, trained, frozen, heads in SETUPS:
        row: dict[str, Any] = {"setup": name}
        for engine in ("ddp", "zero2", "fsdp"):
            row[engine] = estimate(
                counts, dtype=dtype, trained_roles=trained, frozen_roles=frozen, heads=heads,
                processes=processes, engine=engine,
            )["total"]  # fmt: skip
        rows.append(row)
    full = {"setup": "SFT, full fine-tuning"}
    for engine in ("ddp", "zero2", "fsdp"):
        full[engine] = estimate(counts, dtype=dtype, processes=processes, engine=engine, full=True)["total"]
    rows.append(full)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="a model's config.json (or its folder)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a known model's config")
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bfloat16")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--processes", type=int, default=8, help="GPUs the model is sharded over (FSDP/ZeRO)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table instead of JSON")
    args = parser.parse_args(argv)
    if args.config is not None:
        path = args.config / "config.json" if args.config.is_dir() else args.config
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            print(f"memory_estimate: error: {path}: {e}", file=sys.stderr)
            return 1
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in config]  # fmt: skip
        if missing:
            print(
                f"memory_estimate: error: {path}: no {', '.join(missing)} (not a decoder config?)",
                file=sys.stderr,
            )
            return 1
        name = str(path)
    else:
        config, name = PRESETS[args.preset], args.preset
    counts = count_parameters(config, lora_rank=args.lora_rank)
    rows = table(counts, dtype=args.dtype, processes=args.processes)
    if not args.markdown:
        print(json.dumps({"model": name, "parameters": counts.__dict__, "processes": args.processes,
                          "dtype": args.dtype, "gib_per_gpu": rows}, indent=2))  # fmt: skip
        return 0
    print(f"{name}: {counts.total / 1e9:.2f} B parameters, LoRA r={args.lora_rank}: "
          f"{counts.lora_per_role / 1e6:.1f} M per role; GiB per GPU ({args.dtype}, N={args.processes})\n")  # fmt: skip
    print("| setup | DDP | ZeRO-2 | FSDP / ZeRO-3 |\n|---|---|---|---|")
    for row in rows:
        # PPO runs data-parallel or under FSDP (LoRA roles; it also keeps the embeddings and output layer gathered
        # during rollouts and updates, not counted here: docs/distributed.md); ZeRO-2 is what it would take
        sharded = [
            f"{row[e]:.1f}" + (" (not supported)" if e == "zero2" and row["setup"].startswith("PPO") else "")
            for e in ("zero2", "fsdp")
        ]
        print(f"| {row['setup']} | {row['ddp']:.1f} | {sharded[0]} | {sharded[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
