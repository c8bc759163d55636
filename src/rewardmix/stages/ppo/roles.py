"""Every PPO role on one shared base: loading them, switching between them, their trained tensors, saving.

The policy is the LoRA role ``policy``, the value model a scalar head on its own LoRA role ``value``, the
reference the same base with every adapter disabled, and reward models given with a ``role`` further LoRA roles
on it: one copy of the weights serves them all. With ``lora.enabled: false`` the policy trains every weight and
a frozen copy of the base is the reference and carries the value and reward-model roles.

The run loop calls these functions through this module (``roles.load_models(...)``), so a benchmark may swap
the layout (e.g. one model copy per role) by replacing them here.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rewardmix.models.dropout import disable_dropout
from rewardmix.scoring import BuildContext, CompositeConfig, CompositeReward, build_scorer
from rewardmix.stages.ppo.config import GenerationConfig, PolicyModelConfig, PPOLoraConfig

log = logging.getLogger(__name__)

POLICY_ROLE = "policy"
VALUE_ROLE = "value"


class Models(NamedTuple):
    """Every role, on one shared base."""

    tokenizer: Any
    policy: torch.nn.Module
    """A ``PeftModel`` whose role ``policy`` is the policy (LoRA), or the full model (full fine-tuning)."""
    shared: torch.nn.Module
    """The ``PeftModel`` on the frozen base: reference (adapters disabled), value role, reward-model roles. With
    LoRA it is ``policy`` itself."""
    value: torch.nn.Module
    """``ScalarHeadModel`` over ``shared`` bound to the role ``value``."""
    policy_role: str | None
    """``"policy"`` with LoRA, None with full fine-tuning."""
    params: list[torch.nn.Parameter]
    """What the optimizer trains: the policy's and the value role's weights, nothing else."""
    rollout: Any = None
    """``generation.backend: vllm``: the :class:`~rewardmix.models.vllm_rollout.VllmRollout` engine that samples
    the rollouts with a copy of the policy's weights (synced by :func:`sync_rollout_weights`); None: the policy
    samples them itself."""


def load_models(model: PolicyModelConfig, lora: PPOLoraConfig, device: torch.device, *, seed: int) -> Models:
    """The tokenizer and every role on one base, dropout off everywhere.

    Args:
        model: The ``model`` section: which base, its dtype, gradient checkpointing.
        lora: The ``lora`` section: LoRA roles (rank, targets) or full fine-tuning.
        device: Where every role goes.
        seed: The run seed (the tiny model's weights; the value head draws from ``seed + 1``).
    """
    from rewardmix.models import heads, loading, tiny
    from rewardmix.models import lora as lora_roles

    if model.name == "tiny":
        tokenizer = tiny.build_tiny_tokenizer()
        base = tiny.build_tiny_causal_lm(tokenizer, seed=seed)
    else:
        path = loading.resolve_model_path(model.name)
        tokenizer = loading.load_tokenizer(path, trust_remote_code=model.trust_remote_code)
        base = loading.load_causal_lm(path, dtype=model.dtype, trust_remote_code=model.trust_remote_code)
    if model.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # LoRA dropout 0: dropout would make the policy's two forward passes in the PPO ratio differ.
    settings = lora_roles.LoraSettings(
        r=lora.r, alpha=lora.alpha, dropout=0.0, target_modules=lora.target_modules
    )
    if lora.enabled:
        shared = lora_roles.add_adapters(base, [POLICY_ROLE, VALUE_ROLE], settings)
        policy, policy_role = shared, POLICY_ROLE
    else:
        # Full fine-tuning changes the base itself: the reference (and the value / reward-model roles) need a
        # frozen copy of it.
        shared = lora_roles.add_adapters(copy.deepcopy(base), [VALUE_ROLE], settings)
        policy, policy_role = base, None
        for param in policy.parameters():
            param.requires_grad_(True)
    # seed: the value head is drawn from its own stream, so adding it does not shift the run's random state.
    value = heads.ScalarHeadModel(shared, pooling="last", role=VALUE_ROLE, seed=seed + 1)
    for module in (policy, shared, value):
        module.to(device)
        disable_dropout(module)
    if lora.enabled:
        params = lora_roles.trainable_parameters(shared, POLICY_ROLE)
    else:
        params = list(policy.parameters())
    params += lora_roles.trainable_parameters(value, VALUE_ROLE)
    return Models(tokenizer, policy, shared, value, policy_role, params)


def build_reward(
    reward: CompositeConfig, models: Models, device: torch.device, *, group_size: int = 1
) -> CompositeReward:
    """The composite reward of the ``reward`` section; reward models with a ``role`` are loaded onto the shared
    base (with full fine-tuning: onto the frozen reference copy). ``group_size``: ``ppo.samples_per_prompt``
    (``normalize: group``)."""
    context = BuildContext(device=device, shared_backbone=models.shared, tokenizer=models.tokenizer)
    if models.policy_role is None and any(c.reward_model and c.reward_model.role for c in reward.components):
        log.info("full fine-tuning: reward-model roles are loaded onto the frozen reference copy")
    # the composite checks every raw score (NonFiniteScoreError names the component, the samples, the text)
    scorers = {c.name: build_scorer(c, context) for c in reward.components}
    return CompositeReward(reward, scorers=scorers, context=context, group_size=group_size)


def with_rollout_engine(
    models: Models,
    model: PolicyModelConfig,
    generation: GenerationConfig,
    *,
    seed: int,
    max_prompt_tokens: int,
) -> Models:
    """``generation.backend: vllm``: ``models`` with a vLLM engine holding the policy's current weights.

    The engine loads the base from its folder and is then given the policy's weights (LoRA role merged out of
    place); with ``backend: hf`` the models come back unchanged and vLLM is never imported.

    Args:
        models: The roles (:func:`load_models`).
        model: The ``model`` section (the base's folder, its dtype).
        generation: The ``generation`` section (backend, the engine's share of GPU memory, response length).
        seed: The run seed (the engine's).
        max_prompt_tokens: ``data.max_prompt_tokens``: with ``max_new_tokens``, the engine's longest sequence.
    """
    if generation.backend != "vllm":
        return models
    from rewardmix.models import loading
    from rewardmix.models.vllm_rollout import VllmRollout

    engine = VllmRollout(
        loading.resolve_model_path(model.name),
        seed=seed,
        dtype=model.dtype,
        gpu_memory_utilization=generation.vllm_gpu_memory_utilization,
        max_model_len=max_prompt_tokens + generation.max_new_tokens,
    )
    models = models._replace(rollout=engine)
    sync_rollout_weights(models)
    return models


def sync_rollout_weights(models: Models) -> None:
    """Load the policy's current weights into the rollout engine, if there is one (after each update, resume)."""
    if models.rollout is not None:
        models.rollout.sync_weights(models.policy, models.policy_role)


@contextmanager
def policy_context(models: Models) -> Iterator[None]:
    """Run a block with the policy active (the role ``policy``; nothing to switch with full fine-tuning)."""
    from rewardmix.models.lora import active_role

    with active_role(models.policy, models.policy_role) if models.policy_role else nullcontext():
        yield


@contextmanager
def reference_context(models: Models) -> Iterator[None]:
    """Run a block on the reference: the shared base with every adapter disabled (flags kept)."""
    from rewardmix.models.lora import adapters_disabled

    with adapters_disabled(models.shared):
        yield


def named_trainable(models: Models) -> dict[str, torch.nn.Parameter]:
    """Checkpoint name -> parameter for every trained tensor (policy, value role, value head).

    The names (``policy.*``, ``shared.*``, ``value_head.*``) are what checkpoints store: changing them would
    make earlier checkpoints unreadable.
    """
    wanted = {id(p) for p in models.params}
    out: dict[str, torch.nn.Parameter] = {}
    for prefix, module in (
        ("policy", models.policy),
        ("shared", models.shared),
        ("value_head", models.value.head),
    ):
        for name, param in module.named_parameters():
            if id(param) in wanted:
                wanted.discard(id(param))  # each tensor once, under its first name
                out[f"{prefix}.{name}"] = param
    return out


def load_named_state(models: Models, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a checkpoint's tensors into the trained parameters; names and shapes must match exactly."""
    params = named_trainable(models)
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not match the trained parameters: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def save_final_models(models: Models, out: Path, *, merge_lora: bool) -> tuple[Path, Path | None, Path]:
    """Write the policy with its tokenizer and the value role; returns ``(model_dir, adapter_dir, value_dir)``.

    LoRA: the policy adapter in ``<out>/model`` (with ``merge_lora``: the merged model there and the adapter in
    ``<out>/adapter``). Full fine-tuning: the full model in ``<out>/model``. The value role (adapter and head)
    always goes to ``<out>/value``.
    """
    from rewardmix.models import loading, lora

    model_dir, adapter_dir, value_dir = out / "model", None, out / "value"
    if models.policy_role is None:
        loading.save_pretrained_atomic(models.policy, model_dir, tokenizer=models.tokenizer)
    else:
        adapter_dir = out / "adapter" if merge_lora else model_dir
        lora.save_adapter(models.policy, POLICY_ROLE, adapter_dir)
        models.tokenizer.save_pretrained(str(adapter_dir))
        if merge_lora:
            lora.merge_and_save(models.policy, POLICY_ROLE, model_dir, tokenizer=models.tokenizer)
        else:
            adapter_dir = None
    lora.save_adapter(models.value, VALUE_ROLE, value_dir)
    return model_dir, adapter_dir, value_dir
