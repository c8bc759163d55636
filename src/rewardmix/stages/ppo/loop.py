"""The PPO stage's :func:`run`: set-up, the loop of five calls, and the update (:func:`ppo_update`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rewardmix.algos.advantages import (
    broadcast_to_tokens,
    group_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rewardmix.algos.gae import compute_gae, whiten
from rewardmix.algos.kl import AdaptiveKLController, FixedKLController, KLController, kl_shaped_rewards
from rewardmix.algos.masked import masked_mean
from rewardmix.algos.ppo import entropy_from_logits, policy_loss, value_loss
from rewardmix.algos.sequences import batch_indices, epoch_order, rollout_seeds
from rewardmix.config import to_dict
from rewardmix.data.prompts import load_prompts, prompt_hash
from rewardmix.data.readers import DataError
from rewardmix.stages.ppo import roles
from rewardmix.stages.ppo.config import Config, KLConfig, PPOConfig, needs_value
from rewardmix.stages.ppo.metrics import PhaseTimes, make_label_monitor, sample_rows, step_metrics
from rewardmix.stages.ppo.roles import Models
from rewardmix.stages.ppo.rollout import (
    Trajectory,
    calibrate_reward,
    policy_logits_logprobs,
    policy_logits_logprobs_values,
    rollout,
    value_estimates,
)
from rewardmix.train.distributed import all_reduce_gradients, broadcast_parameters
from rewardmix.train.hub import push_final_model
from rewardmix.train.loop import NonFiniteGuard, chunk, global_sum
from rewardmix.train.run import (
    check_sharding,
    every,
    finish,
    make_adamw,
    optimizer_step,
    restore_optimizer,
    restore_weights,
    resume,
    save_step,
    start_run,
)
from rewardmix.train.sharded import lockstep

log = logging.getLogger(__name__)


class PPOResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    model_dir: Path
    """The policy the next stage loads: the LoRA adapter, the merged model, or the full model."""
    adapter_dir: Path | None
    """The policy adapter when it was merged into ``model_dir``; None otherwise (``model_dir`` is then the adapter or
    the full model)."""
    value_dir: Path | None
    """The value role's adapter and head; None when the run trained no value model (critic-free)."""
    global_step: int
    """PPO iterations done."""
    metrics: dict[str, float]
    """The metrics row of the last iteration."""


class PPOStats(NamedTuple):
    """Means over every optimizer step of one PPO iteration (token-weighted within a minibatch)."""

    loss_policy: float
    loss_value: float
    clipfrac: float
    approx_kl: float
    value_clipfrac: float
    grad_norm: float


def run(cfg: Config, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> PPOResult:
    """Run PPO as configured; rerun the same config to resume after a kill.

    Args:
        cfg: The stage config.
        on_step: Called after every iteration (after its logging and checkpoint) with the step and its metrics
            row; tests use it to simulate a kill, benchmarks to read the ``perf/*`` timings.

    Returns:
        A :class:`PPOResult`.
    """
    # step 1. run directory, accelerator (data-parallel when launched with several processes), seed
    ctx = start_run(
        cfg,
        stage="ppo",
        mixed_precision=cfg.ppo.mixed_precision,
        sharded_refusal=roles.fsdp_refusal(cfg.lora.enabled, cfg.generation.backend),
    )
    accelerator, out, is_main = ctx

    # step 2. tokenizer, base and roles: policy, value (GAE only), reference (= adapters disabled)
    value_model = cfg.ppo.value_model if needs_value(cfg.ppo) else None
    reward_roles = any(c.reward_model is not None and c.reward_model.role for c in cfg.reward.components)
    models = roles.load_models(
        cfg.model,
        cfg.lora,
        accelerator.device,
        seed=cfg.seed,
        value_model=value_model,
        reward_roles=reward_roles,
    )
    broadcast_parameters(accelerator, models.params)  # every replica starts from the main process's weights
    models = roles.with_rollout_engine(  # generation.backend vllm: an engine with the policy's weights
        models, cfg.model, cfg.generation, seed=cfg.seed, max_prompt_tokens=cfg.data.max_prompt_tokens
    )
    n_train = sum(p.numel() for p in models.params)
    n_base = sum(p.numel() for p in models.shared.parameters())
    trained = "policy + value" if value_model else "policy"
    log.info("trainable parameters (%s): %d; shared base: %d", trained, n_train, n_base)

    # step 3. the composite reward; reward models with a role become roles on the shared base
    reward = roles.build_reward(cfg.reward, models, accelerator.device, group_size=cfg.ppo.samples_per_prompt)
    # under FSDP the base is sharded with every role on it (after the reward-model roles joined it)
    models, sharded = roles.shard_models(models, accelerator)

    # step 4. the prompt pool
    prompts = load_prompts(cfg.data, models.tokenizer, out=out if is_main else None)
    check_prompt_meta(reward, prompts, cfg.data.prompts)
    # Batch sizes are per process: an iteration takes batch_size responses from each process.
    global_batch = cfg.ppo.batch_size * accelerator.num_processes
    group = cfg.ppo.samples_per_prompt  # K answers per prompt, in consecutive rows of the batch
    total_steps = cfg.ppo.steps or math.ceil(len(prompts) * cfg.data.epochs / (global_batch // group))
    minibatches = math.ceil(cfg.ppo.batch_size / cfg.ppo.minibatch_size)
    optimizer, scheduler = make_adamw(
        models.params, cfg.ppo, total_steps=total_steps * cfg.ppo.ppo_epochs * minibatches
    )
    kl_ctl = make_kl_controller(cfg.ppo.kl)
    # What a checkpoint is only valid for: other prompts, batch or reward would not continue this run (the
    # global batch: a run may resume on another number of processes that keeps it).
    plan = {
        "prompts": prompt_hash(prompts),
        "batch_size": global_batch,
        "steps": total_steps,
        "components": reward.names,
    }
    if group > 1 or not needs_value(cfg.ppo):  # absent from plans written before these keys existed
        plan |= {"samples_per_prompt": group, "advantage": cfg.ppo.advantage}
    if cfg.ppo.value_model != "role":  # a checkpoint holds one kind of value model
        plan["value_model"] = cfg.ppo.value_model

    label_monitor = make_label_monitor(cfg.data, prompts)
    one_pass = single_pass(cfg.ppo, accelerator.num_processes)
    if one_pass:
        log.info(
            "one optimizer step per rollout batch: the update's forward pass gives the rollout's log-probabilities%s "
            "(no separate no-grad policy pass)",
            " and values" if models.policy_value_head is not None else "",
        )

    # step 5. resume from the latest valid checkpoint, or calibrate reference-normalized components afresh
    checkpoint, metrics, samples = resume(ctx, plan, logging=cfg.logging, config=to_dict(cfg))
    done = 0
    if checkpoint is not None:
        if sharded is not None:  # each process reads its shards of the weights and the AdamW state
            restore_weights(ctx, checkpoint, sharded)
            restore_optimizer(ctx, checkpoint, sharded, optimizer, scheduler)
        else:
            check_sharding(ctx, checkpoint)  # an FSDP checkpoint holds no optimizer.pt
            # a critic-free run of an earlier version also checkpointed its idle value role: dropped (logged)
            trainable_state, optimizer_state, scheduler_state = roles.drop_stale_value_state(
                models, checkpoint.trainable_state, checkpoint.optimizer_state, checkpoint.scheduler_state
            )
            roles.load_named_state(models, trainable_state)
            roles.sync_rollout_weights(models)  # the vLLM engine (if any) samples with the resumed policy
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
        kl_ctl.load_state_dict(checkpoint.extra["kl"])
        reward.load_state_dict(checkpoint.extra["reward"])
        done = checkpoint.step
    elif any(c.normalize == "reference" for c in cfg.reward.components):
        with roles.full_weights(models):
            calibrate_reward(
                models, reward, prompts, cfg.generation, samples=cfg.ppo.reference_samples, seed=cfg.seed
            )

    # step 6. the PPO loop, one rollout batch per step; every process holds the whole batch after the rollout
    guard = NonFiniteGuard()
    row: dict[str, float] = {}
    bar = tqdm(range(done + 1, total_steps + 1), desc="ppo", unit="step", disable=not is_main)
    for step in bar:
        timer = PhaseTimes()
        # The prompts and the sampling seeds are keyed by the 0-based batch number (step - 1); K answers per
        # prompt in consecutive rows.
        picked = batch_indices(len(prompts), step - 1, global_batch // group, seed=cfg.seed)
        batch = [prompts[i] for i in picked for _ in range(group)]
        seeds = rollout_seeds(cfg.seed, step - 1, range(global_batch))
        # 6.1 rollout: sample, score every component, log-probabilities (policy, reference), values, entropy
        with roles.full_weights(models):  # FSDP: the base's own weights gathered for every role's passes
            trajectory = rollout(
                models,
                reward,
                batch,
                seeds=seeds,
                generation=cfg.generation,
                ppo=cfg.ppo,
                accelerator=accelerator,
                step=step,
                timer=timer,
                policy_pass=not one_pass,
            )
        held = None
        if one_pass:  # the update's forward pass, taken now, gives the rollout's log-probabilities (exact)
            with timer("update"):
                held, trajectory = hold_policy_pass(
                    models, trajectory, temperature=cfg.generation.temperature, accelerator=accelerator
                )
        # 6.2 per-token rewards: -beta * KL_t, plus the score on the last token (RLLR Eq. 5)
        kl_coef = kl_ctl.value
        rewards, kl = kl_shaped_rewards(
            trajectory.scores,
            trajectory.logprobs,
            trajectory.ref_logprobs,
            trajectory.response_mask,
            kl_coef=kl_coef,
            estimator=cfg.ppo.kl.estimator,
        )
        # 6.3 advantages (GAE with the value role, or a critic-free group baseline) and returns
        advantages, returns = estimate_advantages(
            cfg.ppo, rewards, trajectory.values, trajectory.response_mask
        )
        # 6.4 PPO epochs over minibatches (clipped policy + value losses), then the KL controller sees this
        # batch's mean KL per response
        lr = optimizer.param_groups[0]["lr"]
        with timer("update"), roles.full_weights(models):
            stats = ppo_update(
                models,
                optimizer,
                scheduler,
                trajectory,
                advantages,
                returns,
                cfg.ppo,
                temperature=cfg.generation.temperature,
                seed=cfg.seed,
                accelerator=accelerator,
                guard=guard,
                step=step,
                held=held,
            )
        roles.sync_rollout_weights(models)  # the vLLM engine (if any) samples with the new weights
        kl_ctl.update(float(kl.sum(dim=1).mean()), global_batch)
        # 6.5 log: the metrics row, a sample table every logging.sample_every steps
        row = step_metrics(
            trajectory,
            stats,
            reward,
            kl=kl,
            returns=returns,
            kl_coef=kl_coef,
            lr=lr,
            ppo=cfg.ppo,
            label_monitor=label_monitor,
        )
        row |= timer.metrics(tokens=float(trajectory.attention_mask.sum()))
        metrics.log(step, row)
        bar.set_postfix(score=f"{row['objective/score']:.3f}", kl=f"{row['objective/kl']:.3f}")
        last = step == total_steps
        if samples.enabled and (last or every(cfg.logging.sample_every, step)):  # main process only
            samples.log(
                step, sample_rows(trajectory, kl, models.tokenizer, num_samples=cfg.logging.num_samples)
            )
        # 6.6 checkpoint: every logging.checkpoint_every steps and at the end
        if last or every(cfg.logging.checkpoint_every, step):
            save_step(
                ctx,
                step,
                trainable_state=roles.gathered_trainable(models, sharded, accelerator),
                optimizer=optimizer,
                scheduler=scheduler,
                extra={"plan": plan, "kl": kl_ctl.state_dict(), "reward": reward.state_dict()},
                keep=cfg.logging.keep_checkpoints,
                model=sharded,
            )
        if on_step is not None:
            on_step(step, row)
    bar.close()
    metrics.close()
    if not row and (out / "metrics.jsonl").is_file():  # rerun of a finished run: report its last row
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        row = {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}

    # step 7. save the policy (adapter, merged or full model) with its tokenizer, and the value model (if any)
    merged = cfg.lora.enabled and cfg.lora.merge_lora
    model_dir, adapter_dir = out / "model", (out / "adapter" if merged else None)
    value_dir = out / "value" if value_model else None
    final = roles.models_to_save(  # under FSDP: gathered into a whole copy on the main process
        models,
        sharded,
        accelerator,
        lambda: roles.load_models(
            cfg.model, cfg.lora, torch.device("cpu"), seed=cfg.seed, value_model=value_model
        ),
    )
    if is_main:
        model_dir, adapter_dir, value_dir = roles.save_final_models(
            final, out, merge_lora=cfg.lora.merge_lora
        )
        log.info("PPO done after %d steps; policy in %s", total_steps, model_dir)
    summary = {"global_step": total_steps, "model_dir": str(model_dir), "metrics": row}

    # step 8. push the final policy to the hub (hub.repo_id); a failed push is logged and the model kept
    if is_main and cfg.hub.repo_id is not None:
        lora_on = cfg.lora.enabled
        summary["hub"] = push_final_model(
            cfg.hub, out, stage="ppo", lora=lora_on, merged=not lora_on or cfg.lora.merge_lora,
            base_model=cfg.model.name, metrics=dict(row or {}), reward=to_dict(cfg.reward),
        )  # fmt: skip
    finish(ctx, summary, json_default=_json_float)
    return PPOResult(out, model_dir, adapter_dir, value_dir, total_steps, row)


def check_prompt_meta(reward: Any, prompts: Sequence[Any], source: str) -> None:
    """Check every prompt's meta with the components that read one (``label_correct``: the task and the gold
    label) before the first rollout, not when the prompt's batch comes up mid-training.

    Raises:
        DataError: Naming the prompt file and the prompt (``sample N``: the N-th prompt read, from 0).
    """
    metas = [p.meta for p in prompts]
    for scorer in reward.scorers.values():
        check = getattr(scorer, "check_meta", None)
        if check is None:
            continue
        try:
            check(metas)
        except ValueError as e:
            raise DataError(f"data.prompts {source}: {e} (sample N: the N-th prompt read, from 0)") from None


def _json_float(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)


# ---------------------------------------------------------------------------------------------------------
# Set-up


def make_kl_controller(kl: KLConfig) -> KLController:
    """Fixed or adaptive KL coefficient (Ziegler et al. 2019 §2.2)."""
    if kl.kind == "fixed":
        return FixedKLController(kl.init_coef)
    return AdaptiveKLController(kl.init_coef, kl.target, kl.horizon)


# ---------------------------------------------------------------------------------------------------------
# Advantages and the update


class HeldPass(NamedTuple):
    """The policy's forward pass over the whole rollout batch, with its autograd graph, held for the update."""

    logprobs: torch.Tensor
    """(B, R) log pi(token), requires grad."""
    values: torch.Tensor | None
    """(B, R) V(s_t) of ``value_model: policy_head`` (requires grad), or None."""


def single_pass(p: PPOConfig, num_processes: int) -> bool:
    """Whether an iteration's update is ONE forward-and-backward over the whole rollout batch that can also give
    the rollout's log-probabilities: one epoch, one minibatch, one micro-batch, one process, and no value role
    (a value role's forward pass would have to be held beside the policy's).

    Then the "old" log-probabilities of the PPO ratio are those of the very weights that will be updated, i.e.
    the update's own forward pass, detached: taking them there instead of in a separate no-grad pass at rollout
    time is exact (the ratio is 1 at the only optimizer step either way) and saves one forward pass of the
    policy per iteration. TRL's GRPO does the same when ``num_iterations`` is 1.
    """
    return (
        p.ppo_epochs == 1
        and p.minibatch_size >= p.batch_size
        and p.micro_batch_size >= p.batch_size
        and num_processes == 1
        and (not needs_value(p) or p.value_model == "policy_head")
    )


def hold_policy_pass(
    models: Models, t: Trajectory, *, temperature: float, accelerator: Accelerator
) -> tuple[HeldPass, Trajectory]:
    """:func:`single_pass`: the policy's forward pass (with gradients) over the whole batch, and ``t`` with the
    log-probabilities, values and entropy it gives (detached) filled in.

    Returns:
        ``(held, trajectory)``: the pass to backpropagate in :func:`ppo_update`, and the completed rollout.
    """
    R = t.response_mask.shape[1]
    models.policy.train()  # as in ppo_update: dropout is zeroed, training mode only enables checkpointing
    values = None
    with accelerator.autocast(), roles.policy_context(models):
        if models.policy_value_head is not None:
            logits, logprobs, values = policy_logits_logprobs_values(
                models, t.query_responses, t.attention_mask, R, temperature
            )
        else:
            logits, logprobs = policy_logits_logprobs(
                models.policy, t.query_responses, t.attention_mask, R, temperature
            )
    with torch.no_grad():
        entropy = masked_mean(entropy_from_logits(logits.detach()), t.response_mask)
    del logits
    filled = dataclasses.replace(
        t,
        logprobs=logprobs.detach(),
        values=values.detach().float() if values is not None else t.values,
        entropy=entropy,
    )
    return HeldPass(logprobs, values), filled


def estimate_advantages(
    p: PPOConfig, rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token advantages and value targets of one rollout batch, as ``p.advantage`` says.

    ``gae``: GAE(gamma, lambda) over the per-token rewards with the value role's estimates. ``rloo`` / ``grpo``:
    each response's sequence reward, the sum of its per-token rewards (score - beta * its KL), against the
    other answers to its prompt (groups of ``samples_per_prompt`` consecutive rows), given to every token.
    ``reinforce_pp``: per-token returns-to-go of the per-token rewards (the KL stays per token), minus the
    group's mean reward when ``samples_per_prompt >= 2``, always whitened over the batch. Critic-free, the
    returns are 0 (no value role trains). Advantages are whitened over the batch when configured.

    Args:
        p: The ``ppo`` config section.
        rewards: (B, R) per-token rewards (:func:`~rewardmix.algos.kl.kl_shaped_rewards`).
        values: (B, R) value estimates (unused by the critic-free estimators).
        response_mask: (B, R) True on valid response tokens.

    Returns:
        ``(advantages (B, R), returns (B, R))``.
    """
    if needs_value(p):
        advantages, returns = compute_gae(rewards, values, response_mask, gamma=p.gamma, lam=p.lam)
    elif p.advantage == "reinforce_pp":
        advantages = reinforce_pp_advantages(
            rewards, response_mask, gamma=p.gamma, group_size=p.samples_per_prompt
        )
        # REINFORCE++'s global batch normalization is part of the estimator, whatever whiten_advantages says
        return whiten(advantages, response_mask), torch.zeros_like(rewards)
    else:
        sequence_rewards = (rewards * response_mask).sum(dim=1)  # r_i = score_i - beta * sum_t KL_t
        if p.advantage == "rloo":
            per_response = rloo_advantages(sequence_rewards, p.samples_per_prompt)
        else:
            per_response = group_advantages(
                sequence_rewards, p.samples_per_prompt, scale_by_std=p.scale_by_std
            )
        advantages, returns = broadcast_to_tokens(per_response, response_mask), torch.zeros_like(rewards)
    if p.whiten_advantages:
        advantages = whiten(advantages, response_mask)
    return advantages, returns


def ppo_update(
    models: Models,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    trajectory: Trajectory,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    p: PPOConfig,
    *,
    temperature: float,
    seed: int,
    accelerator: Accelerator,
    guard: NonFiniteGuard,
    step: int,
    held: HeldPass | None = None,
) -> PPOStats:
    """``ppo_epochs`` passes over the rollout batch in shuffled minibatches, one optimizer step each.

    Each minibatch's loss is the token-level mean over all its response tokens of
    ``policy_loss + vf_coef * value_loss``; a micro-batch contributes its masked mean times
    ``(its tokens / the minibatch's tokens)``, so accumulation gives the update of one large pass.

    With ``ppo.value_model: policy_head`` the values come from the policy's own forward pass, so a micro-batch
    is one forward and one backward of ``policy_loss + vf_coef * value_loss``, and the value loss's gradient
    reaches the policy's weights too (a shared-trunk actor-critic, as in Schulman et al. 2017 Eq. 9).

    With N processes every process holds the whole batch (``trajectory``), a minibatch has
    ``minibatch_size * N`` responses, each process runs its share of them, and the gradients are summed across
    processes before clipping: the update of one process running the whole minibatch.

    Args:
        models: The roles; the policy and value weights (``models.params``) train.
        optimizer: AdamW over ``models.params``.
        scheduler: Its schedule, stepped once per optimizer step.
        trajectory: The rollout (old log-probabilities and values, masks).
        advantages: (B, R) advantages.
        returns: (B, R) value targets.
        p: The ``ppo`` section.
        temperature: ``generation.temperature`` (log-probabilities at the sampling temperature).
        seed: The run seed (the minibatch order).
        accelerator: The stage's accelerator.
        guard: Skips an optimizer step with a non-finite gradient.
        step: The iteration, 1-based.
        held: :func:`single_pass`: the policy's forward pass over the whole batch, already taken
            (:func:`hold_policy_pass`); the single micro-batch backpropagates it instead of a new pass.

    Reference: Schulman et al. 2017 (PPO) Eq. 7 and 9 (clipped surrogate, value loss with weight c1).
    """
    t = trajectory
    if held is not None and not single_pass(p, accelerator.num_processes):
        raise ValueError("a held forward pass serves only an update of one micro-batch (see single_pass)")
    R = t.response_mask.shape[1]
    rank, world = accelerator.process_index, accelerator.num_processes
    # FSDP averages the gradients over the processes; each process's losses are shares of the whole minibatch's
    # sum already, so they are scaled by N (data-parallel: all_reduce_gradients sums instead).
    sharded = roles.is_sharded(models)
    scale = world if sharded else 1
    models.policy.train()  # dropout is zeroed: training mode only enables gradient checkpointing
    if models.value is not None:
        models.value.train()
    totals = dict.fromkeys(PPOStats._fields, 0.0)
    n_optimizer_steps = 0
    for epoch in range(p.ppo_epochs):
        # A seeded order per (step, epoch): the same on every process and after a resume.
        B = t.response_mask.shape[0]
        order = epoch_order(B, seed=seed, epoch=(step - 1) * p.ppo_epochs + epoch, salt="ppo-minibatches")
        for minibatch in chunk(order, p.minibatch_size * world):
            n_tokens = float(t.response_mask[minibatch].sum())  # the whole minibatch's, on every process
            micros = [list(micro) for micro in chunk(minibatch[rank::world], p.micro_batch_size)]
            own = len(micros)
            # FSDP: every process runs as many passes as the busiest one; padding passes weigh 0
            micros += [[minibatch[0]]] * (lockstep(accelerator, own) - own)
            for k, rows in enumerate(micros):
                mask = t.response_mask[rows]
                # this micro-batch's share of the minibatch's tokens
                weight = float(mask.sum()) / n_tokens if k < own else 0.0
                if models.policy_value_head is not None:  # value head on the policy: one pass for both losses
                    losses = _shared_trunk_backward(
                        models, t, rows, advantages, returns, p, temperature, weight * scale, accelerator,
                        held=held,
                    )  # fmt: skip
                    for key, value in losses.items():
                        totals[key] += value * weight
                    continue
                # L = L_clip + c1 * L_V, backpropagated one term at a time: the policy and value roles train
                # disjoint weights, so the gradients are the same, and the policy's activations are freed
                # before the value's forward pass (the peak holds one role's activations, not two).
                if held is not None:
                    logprobs = held.logprobs[rows]
                else:
                    with accelerator.autocast(), roles.policy_context(models):
                        _, logprobs = policy_logits_logprobs(
                            models.policy, t.query_responses[rows], t.attention_mask[rows], R, temperature
                        )
                pg_loss, clipfrac, approx_kl = policy_loss(
                    logprobs, t.logprobs[rows], advantages[rows], mask, clip_range=p.clip_range
                )
                accelerator.backward(pg_loss * (weight * scale))
                del logprobs
                totals["loss_policy"] += float(pg_loss.detach()) * weight
                totals["clipfrac"] += float(clipfrac) * weight
                totals["approx_kl"] += float(approx_kl) * weight
                if not needs_value(p):  # critic-free: no value model to train
                    continue
                with accelerator.autocast():
                    values = value_estimates(models, t.query_responses[rows], t.attention_mask[rows], R)
                vf_loss, vf_clipfrac = value_loss(
                    values.float(), t.values[rows], returns[rows], mask, clip_range_value=p.clip_range_value
                )
                accelerator.backward(p.vf_coef * vf_loss * (weight * scale))
                totals["loss_value"] += float(vf_loss.detach()) * weight
                totals["value_clipfrac"] += float(vf_clipfrac) * weight
            # the sum of every process's share of the minibatch (FSDP reduced them in the backward passes)
            if not sharded:
                all_reduce_gradients(accelerator, models.params)
            # clip, skip a non-finite step (naming the culprits), update, schedule
            grad_norm = optimizer_step(
                optimizer,
                scheduler,
                models.params,
                max_grad_norm=p.max_grad_norm,
                accelerator=accelerator,
                guard=guard,
                step=step,
                named_parameters=lambda: roles.named_trainable(models).items(),
            )
            totals["grad_norm"] += grad_norm if grad_norm is not None else math.nan
            n_optimizer_steps += 1
    models.policy.eval()
    if models.value is not None:
        models.value.eval()
    # Token-weighted shares summed over processes; the gradient norm is the same on every process already.
    totals = {k: v if k == "grad_norm" else global_sum(accelerator, v) for k, v in totals.items()}
    return PPOStats(**{key: value / n_optimizer_steps for key, value in totals.items()})


def _shared_trunk_backward(
    models: Models,
    t: Trajectory,
    rows: list[int],
    advantages: torch.Tensor,
    returns: torch.Tensor,
    p: PPOConfig,
    temperature: float,
    weight: float,
    accelerator: Accelerator,
    *,
    held: HeldPass | None = None,
) -> dict[str, float]:
    """``value_model: policy_head``: one forward and one backward of ``weight * (L_clip + c1 * L_V)``.

    Returns:
        The micro-batch's unweighted statistics by :class:`PPOStats` field.
    """
    R, mask = t.response_mask.shape[1], t.response_mask[rows]
    if held is not None and held.values is not None:
        logprobs, values = held.logprobs[rows], held.values[rows]
    else:
        with accelerator.autocast(), roles.policy_context(models):
            _, logprobs, values = policy_logits_logprobs_values(
                models, t.query_responses[rows], t.attention_mask[rows], R, temperature
            )
    pg_loss, clipfrac, approx_kl = policy_loss(
        logprobs, t.logprobs[rows], advantages[rows], mask, clip_range=p.clip_range
    )
    vf_loss, vf_clipfrac = value_loss(
        values.float(), t.values[rows], returns[rows], mask, clip_range_value=p.clip_range_value
    )
    accelerator.backward((pg_loss + p.vf_coef * vf_loss) * weight)  # L = L_clip + c1 * L_V (PPO Eq. 9)
    return {
        "loss_policy": float(pg_loss.detach()),
        "clipfrac": float(clipfrac),
        "approx_kl": float(approx_kl),
        "loss_value": float(vf_loss.detach()),
        "value_clipfrac": float(vf_clipfrac),
    }
