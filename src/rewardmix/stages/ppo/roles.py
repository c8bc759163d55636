"""Every PPO role on one shared base: loading them, switching between them, their trained tensors, saving.

The policy is the LoRA role ``policy``, the value model a scalar head on its own LoRA role ``value`` (only
when the advantage estimator needs values: GAE; with ``ppo.value_model: policy_head`` a scalar head on the
policy's own hidden states instead), the reference the same base with every adapter disabled, and
reward models given with a ``role`` further LoRA roles on it: one copy of the weights serves them all. With
``lora.enabled: false`` the policy trains every weight and a frozen copy of the base is the reference and carries
the value and reward-model roles.

The run loop calls these functions through this module (``roles.load_models(...)``), so a benchmark may swap
the layout (e.g. one model copy per role) by replacing them here.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from rewardmix.models.dropout import disable_dropout
from rewardmix.scoring import BuildContext, CompositeConfig, CompositeReward, build_scorer
from rewardmix.stages.ppo.config import GenerationConfig, PolicyModelConfig, PPOLoraConfig

log = logging.getLogger(__name__)

POLICY_ROLE = "policy"
VALUE_ROLE = "value"
# Full fine-tuning without a value role: the inert LoRA role that makes the frozen copy a PeftModel, so reward
# models can be loaded onto it as roles (never trained, never active: the reference disables every adapter).
CONTAINER_ROLE = "container"


class Models(NamedTuple):
    """Every role, on one shared base."""

    tokenizer: Any
    policy: torch.nn.Module
    """A ``PeftModel`` whose role ``policy`` is the policy (LoRA), or the full model (full fine-tuning)."""
    shared: torch.nn.Module
    """The ``PeftModel`` on the frozen base: reference (adapters disabled), value role, reward-model roles. With
    LoRA it is ``policy`` itself."""
    value: torch.nn.Module | None
    """``ScalarHeadModel`` over ``shared`` bound to the role ``value``; None when no value role is needed
    (critic-free estimators)."""
    policy_role: str | None
    """``"policy"`` with LoRA, None with full fine-tuning."""
    params: list[torch.nn.Parameter]
    """What the optimizer trains: the policy's and the value role's weights (if any), nothing else."""
    rollout: Any = None
    """``generation.backend: vllm``: the :class:`~rewardmix.models.vllm_rollout.VllmRollout` engine that samples
    the rollouts with a copy of the policy's weights (synced by :func:`sync_rollout_weights`); None: the policy
    samples them itself."""
    policy_value_head: torch.nn.Module | None = None
    """``ppo.value_model: policy_head``: the :class:`~rewardmix.models.heads.PolicyValueHead` reading the policy's
    final hidden states in its own forward pass (``value`` is then None); None otherwise."""


def load_models(
    model: PolicyModelConfig,
    lora: PPOLoraConfig,
    device: torch.device,
    *,
    seed: int,
    value_model: Literal["role", "policy_head"] | None = "role",
    reward_roles: bool = False,
) -> Models:
    """The tokenizer and every role on one base, dropout off everywhere.

    Args:
        model: The ``model`` section: which base, its dtype, gradient checkpointing.
        lora: The ``lora`` section: LoRA roles (rank, targets) or full fine-tuning.
        device: Where every role goes.
        seed: The run seed (the tiny model's weights; the value head draws from ``seed + 1``).
        value_model: ``"role"``: a value model on its own LoRA role ``value``; ``"policy_head"``: a scalar head
            on the policy's final hidden states (no ``value`` role); None: no value model (critic-free
            estimators, :func:`~rewardmix.stages.ppo.config.needs_value`): no ``value`` adapter, no head.
        reward_roles: Some reward model is loaded as a LoRA role (``reward_model.role``). With full fine-tuning
            and no ``value`` role, the frozen copy then still becomes a ``PeftModel`` (holding one inert,
            untrained role, ``CONTAINER_ROLE``) so that the reward-model roles can be loaded onto it.
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
    value_roles = [VALUE_ROLE] if value_model == "role" else []
    if lora.enabled:
        shared = lora_roles.add_adapters(base, [POLICY_ROLE, *value_roles], settings)
        policy, policy_role = shared, POLICY_ROLE
    else:
        # Full fine-tuning changes the base itself: the reference (and the value / reward-model roles) need a
        # frozen copy of it.
        shared = copy.deepcopy(base)
        if value_roles or reward_roles:
            shared = lora_roles.add_adapters(shared, value_roles or [CONTAINER_ROLE], settings)
            if not value_roles:
                shared.requires_grad_(False)  # the container role never trains
        else:  # no role on the copy: it is the reference as it stands
            shared.requires_grad_(False)
        policy, policy_role = base, None
        for param in policy.parameters():
            param.requires_grad_(True)
    value, policy_value_head = None, None
    # seed: the value head is drawn from its own stream, so adding it does not shift the run's random state.
    if value_model == "role":
        value = heads.ScalarHeadModel(shared, pooling="last", role=VALUE_ROLE, seed=seed + 1)
    elif value_model == "policy_head":
        policy_value_head = heads.PolicyValueHead(base.config.hidden_size, seed=seed + 1)
    for module in (policy, shared, value, policy_value_head):
        if module is not None:
            module.to(device)
            disable_dropout(module)
    models = Models(tokenizer, policy, shared, value, policy_role, [], policy_value_head=policy_value_head)
    return models._replace(params=_trained_parameters(models))


def _trained_parameters(models: Models) -> list[torch.nn.Parameter]:
    """The policy's weights, then the value role's and its head's (or the head on the policy), in that order."""
    from rewardmix.models import lora as lora_roles

    if models.policy_role is not None:
        params = lora_roles.trainable_parameters(models.shared, POLICY_ROLE)
    else:
        params = list(models.policy.parameters())
    if models.value is not None:
        params += lora_roles.trainable_parameters(models.value, VALUE_ROLE)
    if models.policy_value_head is not None:
        params += list(models.policy_value_head.parameters())
    return params


# ---------------------------------------------------------------------------------------------------------
# FSDP: the roles sharded over the processes


class ShardedRoles(torch.nn.Module):
    """What FSDP shards, as one module: the shared base with every LoRA role, and the value heads.

    Under FSDP its state dict is what checkpoints hold (``shards/``, resharded on load) and what the optimizer
    state is keyed by. It has no ``forward``: the roles run as without FSDP (see :func:`shard_models`).
    """

    def __init__(self, models: Models) -> None:
        super().__init__()
        self.shared = models.shared
        if models.value is not None:
            self.value_head = models.value.head
        if models.policy_value_head is not None:
            self.policy_value_head = models.policy_value_head


def fsdp_refusal(lora_enabled: bool, backend: str) -> str | None:
    """Why this PPO config cannot run under FSDP, or None when it can (LoRA roles, ``generation.backend: hf``)."""
    if not lora_enabled:
        return (
            "lora.enabled: false trains a second, full copy of the base beside the frozen reference; under FSDP "
            "PPO shards one base whose roles are LoRA adapters: set lora.enabled: true or run data-parallel"
        )
    if backend == "vllm":
        return (
            "generation.backend: vllm loads whole policy weights into its engine after every update, which "
            "sharded weights would first have to gather: use generation.backend: hf or run data-parallel"
        )
    return None


def shard_models(models: Models, accelerator: Any) -> tuple[Models, ShardedRoles | None]:
    """Under FSDP: shard the base and every role on it, and return the models with their sharded trained weights.

    Unsharded launches get ``(models, None)`` back unchanged. Sharded (collective): Accelerate's FSDP2 wraps each
    decoder layer of the shared base (with the LoRA weights of every role in it) and then the base; each value
    head is a unit of its own. Roles are switched exactly as without FSDP (PEFT's active adapter and
    ``requires_grad`` flags: FSDP copies the flags onto the gathered weights at every gather). Two things
    differ, both so that every role's passes run through the same units:

    - the base's own weights (embeddings, final norm, output layer) are gathered for a whole rollout and a
      whole update (:func:`full_weights`): generation, the value role and the reward-model roles call the
      inner model, not the base's ``forward`` that would gather them;
    - one tiny forward pass through the base here, so that it is the root FSDP initializes from.

    Returns:
        ``(models, roles)``: ``models.params`` are now the sharded trained weights; ``roles`` the module whose
        shards checkpoints hold.
    """
    from rewardmix.train.sharded import is_sharded

    if not is_sharded(accelerator):
        return models, None
    from torch.distributed.fsdp import fully_shard

    shared = accelerator.prepare(models.shared)  # in place: fully_shard per decoder layer, then the root
    shared.set_reshard_after_forward(False, recurse=False)  # the root's weights stay gathered during
    shared.set_reshard_after_backward(False, recurse=False)  # full_weights(): reshard on leaving it only
    for head in (models.value.head if models.value is not None else None, models.policy_value_head):
        if head is not None:
            fully_shard(head)
    models = models._replace(shared=shared, policy=shared)
    with torch.no_grad(), policy_context(models):
        one = torch.ones((1, 1), dtype=torch.long, device=accelerator.device)
        shared(input_ids=one, attention_mask=one)  # the root's first forward: FSDP's lazy initialization
    shared.reshard()
    return models._replace(params=_trained_parameters(models)), ShardedRoles(models)


def models_to_save(
    models: Models, sharded: ShardedRoles | None, accelerator: Any, build: Callable[[], Models]
) -> Models | None:
    """The roles with whole weights, for :func:`save_final_models`.

    Unsharded: ``models``. Sharded (collective): on the main process ``build()`` (fresh roles on the CPU, the
    frozen base as loaded) given the gathered trained weights; None on the others.
    """
    if sharded is None:
        return models
    state = gathered_trainable(models, sharded, accelerator)
    if not accelerator.is_main_process:
        return None
    plain = build()
    load_named_state(plain, state)
    return plain


@contextmanager
def full_weights(models: Models) -> Iterator[None]:
    """Run a block (a rollout, an update) with the sharded base's own weights gathered; see :func:`shard_models`.

    Every process must enter it. Nothing happens when the models are not sharded.
    """
    from rewardmix.train.sharded import full_weights_for_generation

    with full_weights_for_generation(models.shared):
        yield


def is_sharded(models: Models) -> bool:
    """Whether the roles are sharded over the processes (FSDP)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(models.shared, FSDPModule)


def gathered_trainable(
    models: Models, sharded: ShardedRoles | None, accelerator: Any
) -> dict[str, torch.Tensor]:
    """Checkpoint name (:func:`named_trainable`) -> whole tensor of every trained weight.

    Unsharded: the parameters themselves, detached. Sharded (collective): gathered on the main process,
    ``{}`` on the others.
    """
    named = named_trainable(models)
    if sharded is None:
        return {name: p.detach() for name, p in named.items()}
    from rewardmix.train.sharded import full_state_dict

    by_id = {id(p): name for name, p in named.items()}
    rename = {key: by_id[id(p)] for key, p in sharded.named_parameters() if id(p) in by_id}
    state = full_state_dict(accelerator, sharded)
    return {rename[key]: tensor for key, tensor in state.items() if key in rename}


def build_reward(
    reward: CompositeConfig, models: Models, device: torch.device, *, group_size: int = 1
) -> CompositeReward:
    """The composite reward of the ``reward`` section; reward models with a ``role`` are loaded onto the shared
    base (with full fine-tuning: onto the frozen reference copy). ``group_size``: ``ppo.samples_per_prompt``
    (``normalize: group``)."""
    context = BuildContext(device=device, shared_backbone=models.shared, tokenizer=models.tokenizer)
    if models.policy_role is None and any(c.reward_model and c.reward_model.role for c in reward.components):
        from peft import PeftModel

        if not isinstance(models.shared, PeftModel):
            raise ValueError(
                "lora.enabled: false with a critic-free ppo.advantage keeps no LoRA role on the frozen reference "
                "copy, so reward models cannot be loaded onto it with a role: give them without reward_model.role"
            )
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
    """Run a block on the reference: the shared base with every adapter disabled (flags kept).

    With full fine-tuning and no value role the frozen copy has no adapter: it is the reference as it stands.
    """
    from peft import PeftModel

    from rewardmix.models.lora import adapters_disabled

    with adapters_disabled(models.shared) if isinstance(models.shared, PeftModel) else nullcontext():
        yield


def named_trainable(models: Models) -> dict[str, torch.nn.Parameter]:
    """Checkpoint name -> parameter for every trained tensor (policy, value role, value head).

    The names (``policy.*``, ``shared.*``, ``value_head.*``; ``policy_value_head.*`` for the head on the policy's
    hidden states) are what checkpoints store: changing them would make earlier checkpoints unreadable.
    """
    wanted = {id(p) for p in models.params}
    out: dict[str, torch.nn.Parameter] = {}
    modules = [("policy", models.policy), ("shared", models.shared)]
    if models.value is not None:
        modules.append(("value_head", models.value.head))
    if models.policy_value_head is not None:
        modules.append(("policy_value_head", models.policy_value_head.head))
    for prefix, module in modules:
        for name, param in module.named_parameters():
            if id(param) in wanted:
                wanted.discard(id(param))  # each tensor once, under its first name
                out[f"{prefix}.{name}"] = param
    return out


def is_value_role_entry(name: str) -> bool:
    """Whether a checkpoint name is a tensor of the value role: its LoRA (``policy.*`` with LoRA, where the
    roles share the policy's ``PeftModel``; ``shared.*`` with full fine-tuning) or its head (``value_head.*``)."""
    from rewardmix.models.lora import is_adapter_param

    prefix, _, rest = name.partition(".")
    if prefix == "value_head":
        return True
    return prefix in ("policy", "shared") and is_adapter_param(rest, VALUE_ROLE)


def drop_stale_value_state(
    models: Models,
    state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    scheduler_state: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], Mapping[str, Any], Mapping[str, Any]]:
    """A checkpoint of a run that trained no value model but still held one, without its value tensors.

    Critic-free runs of earlier versions carried an idle value role (never trained): their checkpoints hold its
    LoRA and head, and their optimizer state has its tensors after the policy's (``params`` listed the policy
    first, and the optimizer's two groups, matrices then vectors, keep that order; a group left with none of
    this run's tensors goes, with its entry in the schedule's state). Those entries are dropped (logged); with a
    value role, or when there is nothing to drop, everything comes back unchanged, and any other mismatch is
    left for :func:`load_named_state` and ``optimizer.load_state_dict`` to refuse.

    Args:
        models: The roles being resumed.
        state: The checkpoint's trained tensors by name.
        optimizer_state: The checkpoint's optimizer ``state_dict``.
        scheduler_state: The checkpoint's schedule ``state_dict`` (per-group lists).

    Returns:
        ``(state, optimizer_state, scheduler_state)`` for this run's trained parameters.
    """
    unchanged = dict(state), optimizer_state, scheduler_state
    if models.value is not None or models.policy_value_head is not None:
        return unchanged
    names = named_trainable(models)
    stale = [name for name in state if name not in names and is_value_role_entry(name)]
    if not stale:
        return unchanged
    log.info(
        "checkpoint of a critic-free run that still held a value role: dropping its %d value tensors (%s, ...)",
        len(stale),
        stale[0],
    )
    kept = {name: tensor for name, tensor in state.items() if name not in stale}
    # Old groups: [matrices, vectors] of (this run's params + the dropped ones), empty groups left out.
    new_counts = [sum(p.ndim >= 2 for p in models.params), sum(p.ndim < 2 for p in models.params)]
    old_counts = [
        new_counts[0] + sum(state[n].ndim >= 2 for n in stale),
        new_counts[1] + sum(state[n].ndim < 2 for n in stale),
    ]
    old_kinds = [kind for kind, n in enumerate(old_counts) if n]
    groups = optimizer_state["param_groups"]
    if [len(g["params"]) for g in groups] != [old_counts[kind] for kind in old_kinds]:
        return kept, optimizer_state, scheduler_state  # another layout: the optimizer refuses it
    new_groups, new_state, kept_groups, index = [], {}, [], 0
    for i, (kind, group) in enumerate(zip(old_kinds, groups, strict=True)):
        if not new_counts[kind]:
            continue
        kept_groups.append(i)
        ids = []
        for old_id in group["params"][: new_counts[kind]]:  # this run's params come first in each group
            if old_id in optimizer_state["state"]:
                new_state[index] = optimizer_state["state"][old_id]
            ids.append(index)
            index += 1
        new_groups.append({**group, "params": ids})
    schedule = {
        key: [value[i] for i in kept_groups]
        if isinstance(value, list) and len(value) == len(groups)
        else value
        for key, value in scheduler_state.items()
    }
    return kept, {"state": new_state, "param_groups": new_groups}, schedule


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


def save_final_models(
    models: Models, out: Path, *, merge_lora: bool
) -> tuple[Path, Path | None, Path | None]:
    """Write the policy with its tokenizer and the value model; returns ``(model_dir, adapter_dir, value_dir)``.

    LoRA: the policy adapter in ``<out>/model`` (with ``merge_lora``: the merged model there and the adapter in
    ``<out>/adapter``). Full fine-tuning: the full model in ``<out>/model``. The value role (adapter and head)
    goes to ``<out>/value``; so does the head on the policy's hidden states (``head.safetensors`` and a json
    saying what it reads: it needs the policy in ``<out>/model``); without a value model (critic-free) nothing
    is written there and ``value_dir`` is None.
    """
    from rewardmix.models import loading, lora

    model_dir, adapter_dir = out / "model", None
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
    value_dir = out / "value"
    if models.value is not None:
        lora.save_adapter(models.value, VALUE_ROLE, value_dir)
    elif models.policy_value_head is not None:
        models.policy_value_head.save_head(value_dir)
    else:
        return model_dir, adapter_dir, None
    return model_dir, adapter_dir, value_dir
