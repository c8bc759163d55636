"""LoRA roles: several named adapters on ONE frozen base model.

A *role* is a named LoRA adapter (``"policy"``, ``"value"``, ``"rm_label"``, ...). All roles share the base
weights, which stay frozen; the reference model of PPO is the base with every adapter disabled
(:func:`adapters_disabled`), so one copy of the weights serves policy, value, reward models and reference.

Rules this module keeps:

* Switching roles (:func:`set_active_role`, :func:`active_role`) changes only which adapter runs, never which
  parameters are trainable (peft's ``set_adapter`` would freeze every other adapter as a side effect; that
  would silently drop gradients of a role whose forward pass is already in the graph).
* :func:`trainable_parameters` returns exactly one role's adapter weights (plus its scalar head, if the model is
  a :class:`~rewardmix.models.heads.ScalarHeadModel` bound to that role): give only these to the optimizer and
  no other role or base weight can change.
* :func:`merge_and_save` merges one role into a *copy* of the base: the live model, its base weights and its
  other roles are untouched.

Reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (W + (alpha / r) B A).
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from rewardmix.models.folders import HEAD_CONFIG_NAME, save_pretrained_atomic

__all__ = [
    "LoraSettings",
    "active_role",
    "adapters_disabled",
    "add_adapters",
    "is_adapter_param",
    "load_adapter",
    "merge_and_save",
    "role_names",
    "save_adapter",
    "set_active_role",
    "trainable_parameters",
]

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_ROLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass
class LoraSettings:
    """LoRA hyperparameters shared by every role added in one :func:`add_adapters` call."""

    r: int = 16
    """Rank of the low-rank update B A."""
    alpha: int = 32
    """Scaling numerator: the update is multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the LoRA input (training mode only)."""
    target_modules: list[str] | None = field(default=None)
    """Module names to adapt (e.g. ``["q_proj", "v_proj"]``); ``None`` -> peft's ``"all-linear"`` (every linear
    layer except the output/LM head)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train. Biases are shared by all roles, so anything but ``"none"`` is refused with more
    than one role (it would let one role's training change another's model)."""


def add_adapters(model: torch.nn.Module, roles: Sequence[str], settings: LoraSettings) -> PeftModel:
    """Add one LoRA adapter per role to one base model; freeze the base.

    The base model is modified in place (LoRA layers are injected into its modules) and wrapped; use the
    returned model from now on. Every role starts as the identity (LoRA B = 0) and is trainable; the first role
    is the active one. Called on a model that already has roles, it adds the new ones.

    Args:
        model: A transformers model (a causal LM for policy/value roles, or a backbone), or a ``PeftModel``
            made by this function. For a :class:`~rewardmix.models.heads.ScalarHeadModel`, wrap its backbone:
            ``rm.backbone = add_adapters(rm.backbone, ...)``.
        roles: Adapter names, e.g. ``["policy", "value"]``: letters, digits, ``_`` or ``-``, unique.
        settings: LoRA hyperparameters.

    Returns:
        The ``PeftModel`` (a ``PeftModelForCausalLM`` when the base has an LM head, so ``generate`` works).

    Raises:
        ValueError: On an invalid, duplicate or existing role name, or a trainable bias with several roles.
        TypeError: If given a scalar-head model instead of its backbone.
    """
    if hasattr(model, "head") and hasattr(model, "backbone") and not isinstance(model, PeftModel):
        raise TypeError("add LoRA roles to the backbone: model.backbone = add_adapters(model.backbone, ...)")
    roles = list(roles)
    existing = list(model.peft_config) if isinstance(model, PeftModel) else []
    _check_role_names(roles, existing)
    if settings.bias != "none" and len(roles) + len(existing) > 1:
        raise ValueError("LoRA bias training is shared by all roles; use bias='none' with several roles")
    lora_config = _lora_config(model, settings)
    if isinstance(model, PeftModel):
        peft_model = model
        to_add = roles
    else:
        peft_model = get_peft_model(model, lora_config, adapter_name=roles[0])
        to_add = roles[1:]
    active = peft_model.active_adapter
    for role in to_add:
        peft_model.add_adapter(role, copy.deepcopy(lora_config))
    # Every role trainable (peft leaves adapters added later frozen until set_adapter); base stays frozen.
    peft_model.set_requires_grad(roles, requires_grad=True)
    set_active_role(peft_model, active if existing else roles[0])
    logger.info(
        "LoRA roles %s on %s: r=%d alpha=%d, %d trainable parameters per role",
        role_names(peft_model),
        type(peft_model.get_base_model()).__name__,
        settings.r,
        settings.alpha,
        sum(p.numel() for p in trainable_parameters(peft_model, roles[0])),
    )
    return peft_model


def role_names(model: torch.nn.Module) -> list[str]:
    """Names of the LoRA roles on ``model`` (a ``PeftModel`` or a scalar-head model over one)."""
    return list(_peft(model).peft_config)


def set_active_role(model: torch.nn.Module, role: str) -> None:
    """Make ``role`` the adapter that runs in the forward pass (trainable flags are left as they were)."""
    peft_model = _peft(model)
    _check_role(peft_model, role)
    if peft_model.active_adapter == role:
        return
    flags = {name: p.requires_grad for name, p in peft_model.named_parameters()}
    with _root_kept_gathered(peft_model):
        peft_model.set_adapter(role)
        # peft's set_adapter also (un)freezes adapters; restore the flags so switching never changes training.
        for name, p in peft_model.named_parameters():
            p.requires_grad_(flags[name])


@contextmanager
def active_role(model: torch.nn.Module, role: str) -> Iterator[None]:
    """Run a block with ``role`` active, then restore the previously active role."""
    peft_model = _peft(model)
    previous = peft_model.active_adapter
    set_active_role(peft_model, role)
    try:
        yield
    finally:
        set_active_role(peft_model, previous)


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run a block on the pristine base model (every adapter off): the PPO reference model.

    Trainable flags are the same after the block as before: peft re-enables the adapters with
    ``enable_adapter_layers``, which also freezes every adapter but the active one.
    """
    peft_model = _peft(model)
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    with _root_kept_gathered(peft_model):
        try:
            with peft_model.disable_adapter():
                yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def trainable_parameters(model: torch.nn.Module, role: str | None = None) -> list[torch.nn.Parameter]:
    """The parameters an optimizer for ``role`` should get: that role's adapter (and head), nothing else.

    Args:
        model: A ``PeftModel``, a scalar-head model (its head counts when the head is bound to ``role`` or to no
            role), or a plain model without adapters (full fine-tuning: every parameter with
            ``requires_grad``; ``role`` must then be ``None``).
        role: The role; ``None`` -> the active role.

    Returns:
        Parameters, in module order, without duplicates.
    """
    peft_model = _find_peft(model)
    if peft_model is None:
        if role is not None:
            raise ValueError(f"model has no LoRA roles, cannot select role {role!r}")
        return [p for p in model.parameters() if p.requires_grad]
    role = role if role is not None else peft_model.active_adapter
    _check_role(peft_model, role)
    params = [p for name, p in peft_model.named_parameters() if is_adapter_param(name, role)]
    head = _head_of(model, role)
    if head is not None:
        params += list(head.parameters())
    seen: set[int] = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]


def save_adapter(model: torch.nn.Module, role: str, out_dir: str | os.PathLike[str]) -> Path:
    """Save one role's adapter (and its scalar head, if any) into ``out_dir``, atomically, as safetensors.

    The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` directly (peft would put a
    non-default adapter in a sub-folder), plus ``head.safetensors`` and ``rewardmix_head.json`` when ``model``
    is a scalar-head model bound to ``role`` (or to no role). Load it back with :func:`load_adapter`.
    """
    peft_model = _peft(model)
    _check_role(peft_model, role)
    head_model = model if _head_of(model, role) is not None else None
    writer = _AdapterWriter(peft_model, role, head_model)
    return save_pretrained_atomic(writer, out_dir)


def load_adapter(
    model: torch.nn.Module, role: str, path: str | os.PathLike[str], *, trainable: bool = False
) -> None:
    """Load an adapter saved by :func:`save_adapter` into ``model`` as role ``role`` (a new role name).

    Args:
        model: A ``PeftModel`` (or a scalar-head model over one: its head is loaded too when saved).
        role: Name the loaded adapter gets.
        path: Folder written by :func:`save_adapter`.
        trainable: Leave the loaded weights trainable (to resume training) or frozen (to score).

    Raises:
        FileNotFoundError: If the folder has no safetensors adapter.
        ValueError: If the role exists already, or the saved tensors do not match the model's modules (the
            role is removed again).
    """
    path = Path(path)
    if not (path / ADAPTER_WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{path} has no {ADAPTER_WEIGHTS_NAME} (only safetensors adapters are loaded)"
        )
    peft_model = _peft(model)
    _check_role_names([role], list(peft_model.peft_config))
    result = peft_model.load_adapter(str(path), adapter_name=role, is_trainable=trainable)
    # peft matches saved tensors to modules by name and silently skips what does not match (e.g. an adapter
    # trained on a bare LlamaModel loaded onto a LlamaForCausalLM): the role would stay at its identity init.
    mismatched = list(getattr(result, "missing_keys", [])) + list(getattr(result, "unexpected_keys", []))
    if mismatched:
        peft_model.delete_adapter(role)
        raise ValueError(
            f"adapter {path} does not fit this model ({len(mismatched)} tensors unmatched, e.g. {mismatched[0]!r}); "
            "was it trained on a differently wrapped backbone (a bare body vs a causal LM)?"
        )
    if (path / HEAD_CONFIG_NAME).is_file() and hasattr(model, "load_head"):
        model.load_head(path)


def merge_and_save(
    model: torch.nn.Module,
    role: str,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
) -> Path:
    """Merge one role's adapter into a copy of the base and save the merged model (safetensors, atomic).

    The copy costs one extra model in memory (on the model's device); the live model is not modified. For a
    scalar-head model the merged backbone is saved with its head, loadable with
    ``ScalarHeadModel.from_pretrained``; otherwise the folder loads with ``load_causal_lm``/``load_backbone``.

    Args:
        model: A ``PeftModel`` or a scalar-head model over one.
        role: The role to merge (the other roles are dropped from the copy).
        out_dir: Destination folder.
        tokenizer: Saved into the same folder when given.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    peft_model = _peft(model)
    _check_role(peft_model, role)
    with torch.no_grad():
        merged = copy.deepcopy(peft_model).merge_and_unload(adapter_names=[role])
    if hasattr(model, "head") and hasattr(model, "with_backbone"):
        return model.with_backbone(merged).save_pretrained(out_dir, tokenizer=tokenizer)
    return save_pretrained_atomic(merged, out_dir, tokenizer=tokenizer)


class _AdapterWriter:
    """Adapter + head writer for :func:`save_pretrained_atomic` (it only needs ``save_pretrained``)."""

    def __init__(self, peft_model: PeftModel, role: str, head_model: Any) -> None:
        self.peft_model, self.role, self.head_model = peft_model, role, head_model

    def save_pretrained(self, folder: str) -> None:
        folder_path = Path(folder)
        self.peft_model.save_pretrained(folder, selected_adapters=[self.role], safe_serialization=True)
        sub = folder_path / self.role
        if self.role != "default" and sub.is_dir():  # peft writes non-default adapters to <folder>/<name>/
            for item in sub.iterdir():
                os.replace(item, folder_path / item.name)
            sub.rmdir()
        if self.head_model is not None:
            self.head_model.save_head(folder_path)


def _lora_config(model: torch.nn.Module, settings: LoraSettings) -> LoraConfig:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    generative = (
        callable(getattr(base, "get_output_embeddings", None)) and base.get_output_embeddings() is not None
    )
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules if settings.target_modules is not None else "all-linear",
        bias=settings.bias,
        # CAUSAL_LM gives PeftModelForCausalLM (generate() support); a backbone gets a plain PeftModel.
        task_type="CAUSAL_LM" if generative else None,
    )


def _find_peft(model: torch.nn.Module) -> PeftModel | None:
    if isinstance(model, PeftModel):
        return model
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, PeftModel) else None


@contextmanager
def _root_kept_gathered(peft_model: PeftModel) -> Iterator[None]:
    """Gather an FSDP root's weights again after PEFT resharded them, when they were held gathered.

    PEFT 0.22 and later reshard every FSDP2 module when adapters are switched or re-enabled, so that
    ``requires_grad`` lands on the shards. PPO under FSDP holds the shared base's own weights (embeddings,
    final norm, output layer) gathered for a whole rollout or update
    (:func:`rewardmix.train.sharded.full_weights_for_generation`), because its roles call the inner model;
    without this, the next role's forward would meet sharded weights. Weights do not change in between, so
    gathering again gives the same values.
    """
    from rewardmix.train.sharded import GATHERED

    try:
        yield
    finally:
        if getattr(peft_model, GATHERED, False):
            peft_model.unshard()


def _peft(model: torch.nn.Module) -> PeftModel:
    peft_model = _find_peft(model)
    if peft_model is None:
        raise TypeError(f"{type(model).__name__} has no LoRA roles (call add_adapters first)")
    return peft_model


def _head_of(model: torch.nn.Module, role: str) -> torch.nn.Module | None:
    # A scalar-head model's head belongs to the role it is bound to (any role when unbound).
    head = getattr(model, "head", None)
    if head is None or isinstance(model, PeftModel):
        return None
    bound = getattr(model, "role", None)
    return head if bound in (None, role) else None


def is_adapter_param(name: str, role: str) -> bool:
    """Whether a parameter name (as ``named_parameters`` gives it) belongs to the LoRA adapter of ``role``."""
    # peft names adapter weights "<module>.lora_A.<role>.weight", "...lora_magnitude_vector.<role>...", etc.
    parts = name.split(".")
    return any(
        part.startswith("lora_") and i + 1 < len(parts) and parts[i + 1] == role
        for i, part in enumerate(parts)
    )


def _check_role(peft_model: PeftModel, role: str) -> None:
    if role not in peft_model.peft_config:
        raise KeyError(f"no LoRA role {role!r}; roles: {list(peft_model.peft_config)}")


def _check_role_names(roles: list[str], existing: list[str]) -> None:
    if not roles:
        raise ValueError("at least one role is needed")
    for role in roles:
        # "lora_" inside a name would confuse peft's key matching (it warns and may re-initialise weights).
        if not _ROLE_NAME.match(role) or "lora" in role.lower():
            raise ValueError(f"invalid role name {role!r}: use letters, digits, '_' or '-', without 'lora'")
    duplicates = {r for r in roles if roles.count(r) > 1} | (set(roles) & set(existing))
    if duplicates:
        raise ValueError(f"duplicate role names: {sorted(duplicates)}")
