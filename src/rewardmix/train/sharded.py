"""FSDP (FSDP2 through Accelerate): what a stage does differently when its weights are sharded over processes.

Under ``accelerate launch`` with an FSDP config every process holds a shard of each weight, gradient and
optimizer state; a layer's full weights exist only for the duration of its forward and backward pass, gathered
from all processes. Three consequences for a stage, each handled by one function here:

- **Every forward pass is a collective**: all processes must run the same number of them, or the ones with
  fewer wait forever. :func:`lockstep` gives the count each process must reach (it pads with passes that carry
  no weight); generation, which calls the inner model directly, runs inside :func:`full_weights_for_generation`
  (PPO: every rollout and update, whose roles call the inner model too).
- **Checkpoints are sharded**: :func:`save_shards` / :func:`load_model_shards` / :func:`load_optimizer_shards`
  write and read each process's shards of the model and the optimizer with Accelerate's FSDP helpers
  (``torch.distributed.checkpoint`` underneath); :mod:`rewardmix.train.checkpoint` adds them to a checkpoint
  folder, so the checkpoint stays atomic and checksummed. A checkpoint can be resumed on another number of
  processes (distributed checkpoint reshards on load).
- **Whole tensors must be gathered**: :func:`gathered_trainable_state` (the readable ``trainable.safetensors``
  copy of every checkpoint) and :func:`model_to_save` (the final model) gather them on the main process.

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
    "SHARDS_DIR",
    "full_state_dict",
    "full_weights_for_generation",
    "gathered_trainable_state",
    "is_sharded",
    "load_model_shards",
    "load_optimizer_shards",
    "lockstep",
    "model_to_save",
    "save_shards",
]

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
"""Sub-folder of a checkpoint that holds the sharded model and optimizer (``pytorch_model_fsdp_0/``,
``optimizer_0/``: one ``__<rank>_0.distcp`` file per process and a ``.metadata`` index each)."""


def is_sharded(accelerator: Any) -> bool:
    """Whether the weights are sharded over the processes (Accelerate's FSDP backend)."""
    return getattr(accelerator, "distributed_type", None) == "FSDP"  # DistributedType is a str enum


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


@contextlib.contextmanager
def full_weights_for_generation(model: torch.nn.Module) -> Iterator[None]:
    """Gather the root's weights for ``generate`` (which calls the inner model, not the sharded root's
    ``forward``, so the embeddings and output layer would stay sharded); the layers gather their own.
    Every process must enter it. Nothing happens for an unsharded model."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def full_state_dict(accelerator: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of ``model``, whole, on the CPU of the main process (``{}`` on the others).

    Collective when sharded: every process must call it. Unsharded: the unwrapped model's ``state_dict()``.
    """
    if not is_sharded(accelerator):
        return accelerator.unwrap_model(model).state_dict()
    state = accelerator.get_state_dict(model)  # FSDP2: full_state_dict + cpu_offload, rank 0 only
    return dict(state) if accelerator.is_main_process else {}


def gathered_trainable_state(accelerator: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """name -> whole tensor of every trainable parameter (names without a ``module.`` prefix).

    Sharded: gathered on the main process (collective; ``{}`` on the others). Unsharded: the parameters
    themselves, detached (no copy), as :func:`rewardmix.train.loop.trainable_state`.
    """
    from rewardmix.train.loop import trainable_state

    unwrapped = accelerator.unwrap_model(model)
    if not is_sharded(accelerator):
        return trainable_state(unwrapped)
    names = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
    state = full_state_dict(accelerator, model)
    return {name: tensor for name, tensor in state.items() if name in names}


def save_shards(accelerator: Any, model: torch.nn.Module, optimizer: Any, folder: Path) -> None:
    """Write this process's shards of ``model`` and ``optimizer`` under ``folder`` (collective).

    Accelerate's ``save_fsdp_model`` / ``save_fsdp_optimizer`` with the launch config's
    ``fsdp_state_dict_type`` (``SHARDED_STATE_DICT``: one file per process; ``FULL_STATE_DICT``: one file
    written by the main process after gathering).
    """
    from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

    plugin = accelerator.state.fsdp_plugin
    save_fsdp_model(plugin, accelerator, model, str(folder))
    if optimizer is not None:
        save_fsdp_optimizer(plugin, accelerator, optimizer, model, str(folder))


def load_model_shards(accelerator: Any, model: torch.nn.Module, folder: Path) -> None:
    """Read ``model``'s weights back from :func:`save_shards`'s ``folder`` (collective)."""
    from accelerate.utils import load_fsdp_model

    load_fsdp_model(accelerator.state.fsdp_plugin, accelerator, model, str(folder))


def load_optimizer_shards(accelerator: Any, optimizer: Any, model: torch.nn.Module, folder: Path) -> None:
    """Read ``optimizer``'s state back from :func:`save_shards`'s ``folder`` (collective)."""
    from accelerate.utils import load_fsdp_optimizer

    load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(folder))


def model_to_save(
    accelerator: Any, model: torch.nn.Module, build: Callable[[], torch.nn.Module]
) -> torch.nn.Module | None:
    """A model with whole weights, to save the final model with the stage's usual code.

    Unsharded: the unwrapped model itself. Sharded (collective): on the main process, ``build()`` (a fresh,
    unsharded copy of the architecture, on the CPU) loaded with the gathered weights; ``None`` on the others.
    The main process then briefly holds a second, whole copy of the model in CPU memory.
    """
    if not is_sharded(accelerator):
        return accelerator.unwrap_model(model)
    state = full_state_dict(accelerator, model)
    if not accelerator.is_main_process:
        return None
    plain = build()
    plain.load_state_dict(state)
    return plain
