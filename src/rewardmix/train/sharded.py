"""FSDP (FSDP2) and DeepSpeed ZeRO-2/3 through Accelerate: what a stage does differently when sharded.

Under ``accelerate launch`` with an FSDP or DeepSpeed ZeRO-3 config every process holds a shard of each weight,
gradient and optimizer state; a layer's full weights exist only for the duration of its forward and backward
pass, gathered from all processes (ZeRO-2 shards the gradients and optimizer states and keeps the weights
whole). Three consequences for a stage, each handled by one function here:

- **Every forward pass is a collective**: all processes must run the same number of them, or the ones with
  fewer wait forever. :func:`lockstep` gives the count each process must reach (it pads with passes that carry
  no weight); generation, which calls the inner model directly, runs inside :func:`full_weights_for_generation`
  (PPO: every rollout and update, whose roles call the inner model too).
- **Checkpoints are sharded**: :func:`save_shards` / :func:`load_model_shards` / :func:`load_optimizer_shards`
  write and read each process's shards of the model and the optimizer: FSDP with Accelerate's FSDP helpers
  (``torch.distributed.checkpoint`` underneath; resumable on another number of processes, it reshards on
  load), DeepSpeed with the engine's own checkpoint, which Accelerate's ``save_state`` writes too (one
  ``zero_pp_rank_<r>_mp_rank_00_*`` file per process under ``engine/``; resumable on the same number of
  processes only). :mod:`rewardmix.train.checkpoint` adds them to a checkpoint folder, so the checkpoint stays
  atomic and checksummed.
- **Whole tensors must be gathered**: :func:`gathered_trainable_state` (the readable ``trainable.safetensors``
  copy of every checkpoint) and :func:`model_to_save` (the final model) gather them on the main process.

DeepSpeed adds one more: its engine applies the optimizer update inside the backward pass of the step's last
micro-batch (:func:`rewardmix.train.loop.sync_gradients_if` tells it which one that is), so a stage's
``optimizer.step()`` is a no-op there and a non-finite step cannot be skipped
(:class:`rewardmix.train.loop.NonFiniteGuard` stops the run instead).

With a data-parallel backend (DDP, gloo, one process) every function is the identity or the plain-torch way,
so those runs take exactly the code path they took before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "GATHERED",
    "SHARDS_DIR",
    "ZERO_TAG",
    "engine_of_shards",
    "full_state_dict",
    "full_weights_for_generation",
    "gathered_trainable_state",
    "is_deepspeed",
    "is_sharded",
    "load_model_shards",
    "load_optimizer_shards",
    "lockstep",
    "model_construction",
    "model_to_save",
    "numel",
    "save_shards",
    "zero_ranks",
]

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
"""Sub-folder of a checkpoint that holds the sharded model and optimizer (``pytorch_model_fsdp_0/``,
``optimizer_0/``: one ``__<rank>_0.distcp`` file per process and a ``.metadata`` index each)."""


GATHERED = "_rewardmix_root_gathered"
"""Attribute set on an FSDP root while :func:`full_weights_for_generation` holds its weights gathered."""

ZERO_TAG = "engine"
"""The DeepSpeed checkpoint tag: the sub-folder of ``shards/`` that holds the engine's files."""


def is_sharded(accelerator: Any) -> bool:
    """Whether gradients and optimizer states (FSDP, ZeRO-3: weights too) are sharded over the processes."""
    # DistributedType is a str enum
    return getattr(accelerator, "distributed_type", None) in ("FSDP", "DEEPSPEED")


def is_deepspeed(accelerator: Any) -> bool:
    """Whether the stage runs under a DeepSpeed engine (ZeRO-2 or ZeRO-3)."""
    return getattr(accelerator, "distributed_type", None) == "DEEPSPEED"


def _weights_sharded(accelerator: Any) -> bool:
    """Whether the weights themselves are sharded (FSDP, ZeRO-3), not only gradients and optimizer states."""
    if is_deepspeed(accelerator):
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return is_sharded(accelerator)


def engine_of_shards(folder: Path) -> str:
    """``"DeepSpeed"`` or ``"FSDP"``: which backend wrote a checkpoint's ``shards/`` folder."""
    return "DeepSpeed" if (folder / ZERO_TAG).is_dir() else "FSDP"


def lockstep(accelerator: Any, count: int) -> int:
    """How many forward passes this process must run when it has ``count`` of its own.

    Sharded: the largest ``count`` of any process (the extra passes are padding with no weight in any loss).
    Otherwise ``count``: DDP synchronizes once per backward pass that syncs, so processes may differ.
    """
    if not is_sharded(accelerator) or accelerator.num_processes == 1:
        return count
    value = torch.tensor([count], dtype=torch.int64, device=accelerator.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return int(value.item())


def numel(param: torch.nn.Parameter) -> int:
    """A parameter's number of elements, also when ZeRO-3 has partitioned it (its local tensor is then empty)."""
    return int(getattr(param, "ds_numel", param.numel()))


def zero_ranks(folder: Path) -> int:
    """How many processes wrote a DeepSpeed checkpoint's ``shards/`` folder (one optimizer partition each)."""
    return len(list((folder / ZERO_TAG).glob("*_optim_states.pt")))


@contextlib.contextmanager
def full_weights_for_generation(model: torch.nn.Module) -> Iterator[None]:
    """Gather the root's weights for ``generate`` (which calls the inner model, not the sharded root's
    ``forward``, so the embeddings and output layer would stay sharded); the layers gather their own.
    Every process must enter it. Nothing happens for an unsharded model.

    While inside, ``model.`` :data:`GATHERED` is True: PEFT (0.22 and later) reshards every FSDP module when it
    switches or re-enables adapters, and :mod:`rewardmix.models.lora` gathers the root again after it."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    setattr(model, GATHERED, True)
    try:
        yield
    finally:
        setattr(model, GATHERED, False)
        model.reshard()


def full_state_dict(accelerator: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of ``model``, whole, on the CPU of the main process (``{}`` on the others).

    Collective when sharded: every process must call it. Unsharded: the unwrapped model's ``state_dict()``.
    """
    if not _weights_sharded(accelerator):
        return accelerator.unwrap_model(model).state_dict()
    # FSDP2: full_state_dict + cpu_offload, rank 0 only; ZeRO-3: every partition gathered (collective)
    state = accelerator.get_state_dict(model)
    return dict(state) if accelerator.is_main_process else {}


def gathered_trainable_state(accelerator: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """name -> whole tensor of every trainable parameter (names without a ``module.`` prefix).

    Sharded: gathered on the main process (collective; ``{}`` on the others). Unsharded: the parameters
    themselves, detached (no copy), as :func:`rewardmix.train.loop.trainable_state`.
    """
    from rewardmix.train.loop import trainable_state

    unwrapped = accelerator.unwrap_model(model)
    if not _weights_sharded(accelerator):
        return trainable_state(unwrapped)
    names = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
    state = full_state_dict(accelerator, model)
    return {name: tensor for name, tensor in state.items() if name in names}


def save_shards(accelerator: Any, model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
    """Write this process's shards of ``model`` and ``optimizer`` under ``folder`` (collective).

    FSDP: Accelerate's ``save_fsdp_model`` / ``save_fsdp_optimizer`` with the launch config's
    ``fsdp_state_dict_type`` (``SHARDED_STATE_DICT``: one file per process; ``FULL_STATE_DICT``: one file
    written by the main process after gathering). DeepSpeed: the engine's ``save_checkpoint`` under
    ``folder/engine/`` (what Accelerate's ``save_state`` calls): each process's optimizer partition, and the
    trainable weights (frozen ones, e.g. a LoRA base, are left out: they never change).
    """
    from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

    if is_deepspeed(accelerator):
        model.save_checkpoint(str(folder), tag=ZERO_TAG, save_latest=False, exclude_frozen_parameters=True)
        return

    plugin = accelerator.state.fsdp_plugin
    save_fsdp_model(plugin, accelerator, model, str(folder))
    if optimizer is not None:
        save_fsdp_optimizer(plugin, accelerator, optimizer, model, str(folder))


def load_model_shards(accelerator: Any, model: torch.nn.Module, folder: Path) -> None:
    """Read ``model``'s weights back from :func:`save_shards`'s ``folder`` (collective).

    DeepSpeed reads the optimizer partitions with the weights (ZeRO keeps the full-precision weights there).
    """
    from accelerate.utils import load_fsdp_model

    if is_deepspeed(accelerator):
        _load_engine_checkpoint(model, folder)
        return

    load_fsdp_model(accelerator.state.fsdp_plugin, accelerator, model, str(folder))


def load_optimizer_shards(accelerator: Any, optimizer: Any, model: torch.nn.Module, folder: Path) -> None:
    """Read ``optimizer``'s state back from :func:`save_shards`'s ``folder`` (collective).

    DeepSpeed: the whole engine checkpoint again (weights and optimizer partitions belong together there), so
    that a state cleared in between (an SFT phase's fresh optimizer) is restored.
    """
    from accelerate.utils import load_fsdp_optimizer

    if is_deepspeed(accelerator):
        _load_engine_checkpoint(model, folder)
        return

    load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(folder))


def _load_engine_checkpoint(model: Any, folder: Path) -> None:
    """Weights, optimizer partitions and the engine's counters from a DeepSpeed checkpoint (collective).

    Not strict about the module's keys because :func:`save_shards` leaves the frozen weights out; the
    trainable ones are checked against the checkpoint's readable copy by the tests.
    """
    path, _ = model.load_checkpoint(
        str(folder),
        tag=ZERO_TAG,
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=False,
    )
    if path is None:
        raise FileNotFoundError(f"{folder / ZERO_TAG}: no DeepSpeed checkpoint to resume from")


def model_to_save(
    accelerator: Any, model: torch.nn.Module, build: Callable[[], torch.nn.Module]
) -> torch.nn.Module | None:
    """A model with whole weights, to save the final model with the stage's usual code.

    Unsharded (and ZeRO-2): the unwrapped model itself. Sharded (collective): on the main process, ``build()``
    (a fresh, unsharded copy of the architecture, on the CPU) loaded with the gathered weights; ``None`` on the
    others.
    The main process then briefly holds a second, whole copy of the model in CPU memory.
    """
    if not _weights_sharded(accelerator):
        return accelerator.unwrap_model(model)
    state = full_state_dict(accelerator, model)
    if not accelerator.is_main_process:
        return None
    with model_construction(accelerator, whole=True):
        plain = build()
    plain.load_state_dict(state)
    return plain


@contextlib.contextmanager
def model_construction(accelerator: Any, *, whole: bool = False) -> Iterator[None]:
    """Build a model as the launch config says: under ZeRO-3 with ``zero3_init_flag: true`` partitioned as it
    is built (``deepspeed.zero.Init``: each process holds only its part, for models larger than one
    process's memory), otherwise whole on every process (partitioned later, by the engine).

    Accelerate registers the DeepSpeed config with ``transformers`` whatever ``zero3_init_flag`` says, and
    ``transformers`` then builds every model partitioned under ZeRO-3; this context honours the flag.
    ``whole=True`` always builds whole (a model built by the main process alone: partitioned construction
    is a collective and would wait forever for the others).
    """
    if not is_deepspeed(accelerator):
        yield
        return
    plugin = accelerator.state.deepspeed_plugin
    if plugin.zero_stage != 3 or (plugin.zero3_init_flag and not whole):
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()
