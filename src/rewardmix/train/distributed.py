"""Data-parallel helpers: the accelerator every training stage starts with, and the few collectives they use.

rewardmix's training stages run data-parallel under ``accelerate launch`` (or ``torchrun``): every process holds
a full copy of the model, takes its share of each optimizer step's examples, and gradients are summed across
processes, so N processes x batch b give the update of 1 process x batch N*b. How to launch each stage is in
``docs/distributed.md``.

- :func:`make_accelerator`: the ``Accelerator`` of a stage; on a machine without CUDA a multi-process launch
  runs on the CPU with gloo, and a launch whose processes would each train alone is an error.
- :func:`check_backend`: refuse, before any work, a backend the stage cannot run under, naming why (FSDP
  runs ``sft``, ``reward-model`` and ``ppo``; DeepSpeed ZeRO-2/3 runs ``sft`` and ``reward-model``; see
  :mod:`rewardmix.train.sharded`).
- :func:`gather_rows`: every process's rows, concatenated in process order, padded to a common width.
- :func:`gather_objects`, :func:`any_process`: picklable objects and flags across processes.
- :func:`all_reduce_gradients`, :func:`broadcast_parameters`: what a stage that does not wrap its model in
  DDP (PPO: several roles on one base) does instead.

With one process every function returns its input (no copy, no communication), so single-process runs take
exactly the code path they took before.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from rewardmix.config import ConfigError

__all__ = [
    "all_reduce_gradients",
    "any_process",
    "broadcast_parameters",
    "check_backend",
    "gather_objects",
    "gather_rows",
    "launched_world_size",
    "make_accelerator",
]

logger = logging.getLogger(__name__)

# Backends whose processes each hold the whole model and only synchronize gradients: what the stages support.
_DATA_PARALLEL = {
    DistributedType.NO,
    DistributedType.MULTI_CPU,
    DistributedType.MULTI_GPU,
    DistributedType.MULTI_NPU,
    DistributedType.MULTI_MLU,
    DistributedType.MULTI_SDAA,
    DistributedType.MULTI_MUSA,
    DistributedType.MULTI_XPU,
    DistributedType.MULTI_HPU,
}


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE`` set by ``torchrun`` / ``accelerate launch``), 1 if none."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def make_accelerator(*, cpu: bool, mixed_precision: str, stage: str) -> Accelerator:
    """The ``Accelerator`` a training stage runs with.

    A multi-process launch on a machine without CUDA runs on the CPU (gloo): without ``cpu=True`` Accelerate
    would see no GPU and no CPU flag and give every process a world of its own, N independent runs writing
    the same run directory. On non-main processes the ``rewardmix`` loggers drop to WARNING, so INFO lines
    appear once.

    Args:
        cpu: The stage's ``cpu`` setting.
        mixed_precision: ``no``, ``bf16`` or ``fp16``.
        stage: The stage name, for messages.

    Raises:
        RuntimeError: The launcher started several processes but Accelerate runs each alone.
    """
    world = launched_world_size()
    if _deepspeed_requested() and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"{stage}: the accelerate config asks for DeepSpeed (distributed_type: DEEPSPEED) but the deepspeed "
            "package is not installed; install it with: pip install -c constraints.txt 'rewardmix[deepspeed]'"
        )
    if world > 1 and not cpu and not torch.cuda.is_available():
        cpu = True  # several processes, no GPU: gloo on the CPU (see the docstring)
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    if _fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        _switch_to_fsdp(accelerator, mixed_precision)
    if _deepspeed_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        _switch_to_deepspeed(accelerator, mixed_precision)
    if world > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"{stage}: launched with WORLD_SIZE={world} but Accelerate set up a single process "
            f"({accelerator.distributed_type}); each process would train alone into the same output_dir. "
            "Launch with `accelerate launch --multi_gpu --num_processes N ...` or a config from "
            "configs/accelerate/ (see docs/distributed.md)"
        )
    if accelerator.num_processes > 1:
        if not accelerator.is_main_process:
            logging.getLogger("rewardmix").setLevel(logging.WARNING)
        logger.info(
            "%s: %d processes (%s, backend %s), this is process %d on %s",
            stage,
            accelerator.num_processes,
            accelerator.distributed_type,
            accelerator.state.backend,
            accelerator.process_index,
            accelerator.device,
        )
    return accelerator


# Why a stage cannot run under a backend, by stage ("*": every stage). FSDP runs sft, reward-model and ppo;
# DeepSpeed ZeRO-2/3 runs sft and reward-model.
_REFUSED: dict[tuple[str, str], str] = {
    ("ppo", "DEEPSPEED"): (
        "a DeepSpeed engine wraps one module with one optimizer and applies the update inside its backward pass, "
        "while PPO runs every role (policy, value, reference, reward models) as LoRA adapters switched on ONE "
        "shared base, calls the inner model for rollouts and the other roles, and sums the gradients itself; "
        "use FSDP (configs/accelerate/fsdp.yaml) or DDP for ppo"
    ),
    ("*", "MEGATRON_LM"): "rewardmix has no Megatron-LM model code; use FSDP or DDP",
    ("*", "XLA"): "rewardmix's stages are not tested on TPUs/XLA; use a GPU or CPU launch",
}
_SUPPORTED = _DATA_PARALLEL | {DistributedType.FSDP, DistributedType.DEEPSPEED}


def check_backend(accelerator: Accelerator, stage: str, *, sharded_refusal: str | None = None) -> None:
    """Stop before any work when Accelerate was launched with a backend the stage cannot run under.

    Data parallelism (DDP on GPUs, gloo on CPUs) runs every stage; FSDP (FSDP2) runs ``sft``,
    ``reward-model`` and ``ppo``; DeepSpeed ZeRO stage 2 or 3 runs ``sft`` and ``reward-model``. The message
    names the limitation that stops the others (see ``_REFUSED``), or ``sharded_refusal``: why this config of
    the stage cannot run under FSDP (PPO: full fine-tuning, vLLM).

    Raises:
        ConfigError: The backend (the accelerate config's ``distributed_type``) is refused for this stage; the
            message says why and what to use (the CLI exits with code 2, no traceback).
    """
    kind = accelerator.distributed_type
    name = str(getattr(kind, "value", kind))
    reason = _REFUSED.get((stage, name)) or _REFUSED.get(("*", name))
    if reason is None and kind == DistributedType.FSDP:
        reason = sharded_refusal
    if reason is None and kind == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        reason = "rewardmix runs FSDP2 (fully_shard) only; set fsdp_version: 2 in the accelerate config"
    if reason is None and kind == DistributedType.DEEPSPEED:
        reason = _deepspeed_refusal(accelerator)
    if reason is None and kind not in _SUPPORTED:
        reason = "only data-parallel launches and FSDP are supported (docs/distributed.md)"
    if reason is not None:
        raise ConfigError(
            f"{stage}: accelerate config distributed_type {name} is not supported for this stage: {reason}; "
            "see docs/distributed.md"
        )


def _fsdp_requested() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config (it exports ``ACCELERATE_USE_FSDP=true``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _deepspeed_refusal(accelerator: Accelerator) -> str | None:
    """Why this DeepSpeed setup is refused (None: ZeRO stage 2 or 3 without offload, the tested ones)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin.zero_stage not in (2, 3):
        return (
            f"zero_stage {plugin.zero_stage}: rewardmix runs ZeRO stage 2 or 3 (stages 0 and 1 keep the "
            "gradients whole, which is what DDP does: use configs/accelerate/multi-gpu.yaml)"
        )
    accumulation = plugin.deepspeed_config.get("gradient_accumulation_steps", "auto")
    if accumulation not in ("auto", 1):
        return (
            f"gradient_accumulation_steps {accumulation}: set it to 1 (or auto) in the accelerate config; the "
            "stages accumulate micro-batches themselves (optim.gradient_accumulation_steps) and tell the engine "
            "where each optimizer step ends"
        )
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    offloaded = [
        key
        for key in ("offload_optimizer", "offload_param")
        if str(zero.get(key, {}).get("device", "none")).lower() not in ("none", "")
    ]
    if offloaded:
        return (
            f"{' and '.join(offloaded)} to the CPU needs DeepSpeed's own CPU Adam optimizer, while the stages "
            "build a torch AdamW (weight-decay groups and the warm-up + cosine schedule); set "
            "offload_optimizer_device and offload_param_device to none, or use FSDP with fsdp_offload_params"
        )
    return None


def _deepspeed_requested() -> bool:
    """Whether ``accelerate launch`` was given a DeepSpeed config (it exports ``ACCELERATE_USE_DEEPSPEED``)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _switch_to_deepspeed(accelerator: Accelerator, mixed_precision: str) -> None:
    """Run a DeepSpeed launch on CPU processes (gloo): Accelerate sets DeepSpeed up for accelerator devices only.

    As :func:`_switch_to_fsdp`: without CUDA ``accelerate launch`` gives a gloo process group of type MULTI_CPU
    and drops the DeepSpeed settings. DeepSpeed itself runs on the CPU (its CPU accelerator falls back to
    gloo), so its communication layer is started on the existing process group and the state switched to
    DEEPSPEED with the plugin read from the launch settings, as Accelerate does on GPUs.
    """
    import deepspeed
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin

    deepspeed.comm.init_distributed(dist_backend=accelerator.state.backend, auto_mpi_discovery=False)
    plugin = DeepSpeedPlugin()  # reads the ACCELERATE_DEEPSPEED_* variables that `accelerate launch` exported
    plugin.set_mixed_precision(mixed_precision)
    accelerator.state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
    accelerator.state.deepspeed_plugins = plugin
    plugin.select(_from_accelerator_state=True)
    accelerator.deepspeed_engine_wrapped = None
    logger.info("DeepSpeed ZeRO-%s on CPU processes (gloo)", plugin.zero_stage)


def _switch_to_fsdp(accelerator: Accelerator, mixed_precision: str) -> None:
    """Run an FSDP launch on CPU processes (gloo): Accelerate sets FSDP up for accelerator devices only.

    ``accelerate launch`` with an FSDP config on a machine without CUDA gives a gloo process group of type
    MULTI_CPU and drops the FSDP settings. FSDP2 (``fully_shard``) itself runs on CPU tensors with gloo, so
    the state is switched to FSDP with the plugin read from the same launch settings; on GPUs Accelerate does
    this itself and this function is not called. Both shared states are set, as Accelerate's own setup does,
    because every new ``AcceleratorState()`` copies ``PartialState``'s values.
    """
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables that `accelerate launch` exported
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP%s on CPU processes (gloo)", plugin.fsdp_version)


def gather_rows(
    accelerator: Accelerator,
    tensor: torch.Tensor,
    *,
    pad_value: float | int | bool = 0,
    side: Literal["right", "left"] = "right",
) -> torch.Tensor:
    """Every process's rows, concatenated in process order; dim 1 padded to the widest process's width.

    Args:
        accelerator: The stage's accelerator.
        tensor: (B_p,) or (B_p, T_p) on this process; B_p and T_p may differ between processes.
        pad_value: Written at padded positions.
        side: Pad dim 1 on the right (responses) or the left (left-padded prompts).

    Returns:
        (sum B_p,) or (sum B_p, max T_p), same dtype, on ``tensor``'s device.
    """
    if accelerator.num_processes == 1:
        return tensor
    if tensor.ndim not in (1, 2):
        raise ValueError(f"gather_rows takes 1-D or 2-D tensors, got shape {tuple(tensor.shape)}")
    dtype = tensor.dtype
    # gloo has no bool all_gather: move bools as uint8 and convert back.
    work = tensor.to(torch.uint8) if dtype == torch.bool else tensor
    shape = torch.tensor(list(work.shape) + [0] * (2 - work.ndim), device=work.device)
    shapes = _all_gather(shape)
    rows, width = int(max(s[0] for s in shapes)), int(max(s[1] for s in shapes))
    padded = torch.full(
        (rows, width) if work.ndim == 2 else (rows,), pad_value, dtype=work.dtype, device=work.device
    )
    if work.ndim == 2 and work.shape[1]:
        columns = slice(width - work.shape[1], width) if side == "left" else slice(0, work.shape[1])
        padded[: work.shape[0], columns] = work
    elif work.ndim == 1:
        padded[: work.shape[0]] = work
    pieces = _all_gather(padded)
    out = torch.cat([piece[: int(s[0])] for piece, s in zip(pieces, shapes, strict=True)])
    return out.to(dtype)


def gather_objects(accelerator: Accelerator, items: Sequence[Any]) -> list[Any]:
    """Every process's picklable ``items``, concatenated in process order (texts, rows)."""
    if accelerator.num_processes == 1:
        return list(items)
    gathered: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process when ``flag`` is True on at least one (so that all stop together)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_reduce_gradients(accelerator: Accelerator, params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over every process, in place, in one flat buffer.

    For a stage that computes each process's share of a loss already divided by the whole step's normalizer
    (PPO: token sums over the global minibatch's token count), the sum is the gradient of the whole step. A
    parameter without a gradient on some process counts as zeros there; one without a gradient on every
    process keeps ``grad = None`` (the optimizer then skips it, as in a single-process run).
    """
    if accelerator.num_processes == 1 or not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float32)
            for p in params
        ]
    )
    torch.distributed.all_reduce(has_grad)
    torch.distributed.all_reduce(flat)
    offset = 0
    for param, seen in zip(params, has_grad.tolist(), strict=True):
        n = param.numel()
        if seen:
            param.grad = flat[offset : offset + n].view_as(param).to(param.dtype).clone()
        offset += n


@torch.no_grad()
def broadcast_parameters(accelerator: Accelerator, params: Sequence[torch.nn.Parameter]) -> None:
    """Copy the main process's values of ``params`` to every process (start every replica identical)."""
    if accelerator.num_processes == 1 or not params:
        return
    flat = torch.cat([p.detach().reshape(-1).to(torch.float32) for p in params])
    torch.distributed.broadcast(flat, src=0)
    offset = 0
    for param in params:
        n = param.numel()
        param.copy_(flat[offset : offset + n].view_as(param).to(param.dtype))
        offset += n


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    pieces = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(pieces, tensor.contiguous())
    return pieces
