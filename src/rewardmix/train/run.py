"""The scaffold of a training run, as plain functions that a stage calls from its own loop.

``sft``, ``reward-model`` and ``ppo`` start, resume, checkpoint and finish a run the same way; only their
loops differ, and each stage keeps its loop in its own ``run()``:

- :func:`start_run`: the accelerator, the run directory (resolved config and provenance), the seed.
- :func:`make_adamw`: AdamW with weight decay on matrices only, and its warm-up + cosine schedule.
- :func:`prepare_model`, :func:`phase_optimizer`: the model prepared for the launch's backend and, for each
  stretch of training with its own schedule (an SFT phase, a reward-model run), a fresh optimizer; under
  DeepSpeed one engine binds one optimizer, which each stretch resets instead.
- :func:`resume`: the latest valid checkpoint (refused when written for another plan), the metrics and
  sample logs cut back to its step and opened, the random state it saved. The stage then loads its own
  tensors from the checkpoint.
- :func:`restore_weights`, :func:`restore_optimizer`: load a checkpoint's tensors into the model, the
  optimizer and its schedule (from the gathered copy, or from the shards under FSDP / DeepSpeed).
- In the loop: :func:`optimizer_step` (clip, skip a non-finite step, update, schedule), :func:`every` for
  the cadences, :func:`save_step` for a checkpoint (sharded under FSDP and DeepSpeed:
  :mod:`rewardmix.train.sharded`).
- :func:`finish`: ``summary.json``.

Nothing here imports ``transformers`` or ``peft``. A function reads no more of a stage's config than it names:
``output_dir``, ``seed`` and ``cpu``, and the shared sections of :mod:`rewardmix.train.config`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from accelerate import Accelerator

from rewardmix.config import ConfigError, expand_path
from rewardmix.rundir import RunDirError, atomic_write_text, prepare_run_dir
from rewardmix.train.checkpoint import (
    Checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
    shards_path,
)
from rewardmix.train.config import LoggingConfig
from rewardmix.train.distributed import check_backend, gather_objects, make_accelerator
from rewardmix.train.loop import (
    NamedParameters,
    NonFiniteGuard,
    SampleTable,
    TrainLogger,
    clip_gradients,
    load_trainable_state,
    set_seed,
    truncate_jsonl_after,
)
from rewardmix.train.schedule import cosine_with_warmup, warmup_steps_for
from rewardmix.train.sharded import (
    engine_of_shards,
    is_deepspeed,
    is_sharded,
    load_model_shards,
    load_optimizer_shards,
    numel,
    save_shards,
    zero_ranks,
)

__all__ = [
    "LOG_FILES",
    "AdamWSettings",
    "Resumed",
    "RunContext",
    "RunSettings",
    "check_plan",
    "every",
    "finish",
    "make_adamw",
    "optimizer_step",
    "check_sharding",
    "phase_optimizer",
    "prepare_model",
    "restore_optimizer",
    "restore_weights",
    "resume",
    "save_step",
    "start_run",
]

log = logging.getLogger(__name__)

LOG_FILES = ("metrics.jsonl", "samples.jsonl")
"""The append-only logs of a run, cut back to the checkpoint's step on resume."""


class RunSettings(Protocol):
    """The top-level fields every stage config has."""

    output_dir: str
    seed: int
    cpu: bool


class AdamWSettings(Protocol):
    """The optimizer fields :func:`make_adamw` reads (``OptimConfig``, or PPO's ``ppo`` section)."""

    learning_rate: float
    weight_decay: float
    adam_betas: tuple[float, float]
    adam_epsilon: float
    warmup_ratio: float
    min_lr_ratio: float


class RunContext(NamedTuple):
    """What every later call of a run needs."""

    accelerator: Accelerator
    out: Path
    """The run directory."""
    is_main: bool
    """Whether this is the main process (the one that writes files)."""


class Resumed(NamedTuple):
    """Where a run goes on from, and its open logs."""

    checkpoint: Checkpoint | None
    """The checkpoint to continue from; None: a fresh start."""
    metrics: TrainLogger
    """``metrics.jsonl`` (and the extra sinks), appending after the checkpoint's step."""
    samples: SampleTable
    """``samples.jsonl``, appending after the checkpoint's step."""

    @property
    def step(self) -> int:
        """The step the checkpoint was taken after (0 on a fresh start)."""
        return self.checkpoint.step if self.checkpoint is not None else 0


# ---------------------------------------------------------------------------------------------------------
# Start and resume


def start_run(
    cfg: RunSettings, *, stage: str, mixed_precision: str, sharded_refusal: str | None = None
) -> RunContext:
    """The accelerator (data-parallel under ``accelerate launch``), the run directory, the seed.

    The main process checks and locks the run directory and writes the resolved config and the run's
    provenance (``config.yaml``, ``run_info.json``; :func:`rewardmix.rundir.prepare_run_dir`, ``resumable``:
    a run there with another config is refused); every process waits for it and stops with the same error
    when it was refused, then seeds Python, NumPy and torch with ``cfg.seed``.

    Args:
        cfg: The stage config (``output_dir``, ``seed``, ``cpu``; saved whole into the run directory).
        stage: The stage name (``sft``, ``reward-model``, ``ppo``), for messages and ``config.yaml``.
        mixed_precision: ``no``, ``bf16`` or ``fp16``.
        sharded_refusal: Why this config cannot run under FSDP (None: it can); see :func:`check_backend`.

    Raises:
        RunDirError: On every process, when the main process refused the run directory.
    """
    accelerator = make_accelerator(cpu=cfg.cpu, mixed_precision=mixed_precision, stage=stage)
    check_backend(accelerator, stage, sharded_refusal=sharded_refusal)
    out, refused = Path(expand_path(cfg.output_dir)), None
    if accelerator.is_main_process:
        try:
            out = prepare_run_dir(out, cfg, stage=stage, resumable=True)
        except RunDirError as e:
            refused = str(e)
    # the other processes stop too (with the main process's message) instead of waiting for it forever
    refusals = [r for r in gather_objects(accelerator, [refused]) if r is not None]
    if refusals:
        raise RunDirError(refusals[0])
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)
    return RunContext(accelerator, out, accelerator.is_main_process)


def check_plan(checkpoint: Checkpoint, plan: Any, *, out: Path, plan_name: str = "plan") -> None:
    """Refuse a checkpoint written for another plan (data, batch, steps): it would not continue this run.

    Raises:
        ValueError: The checkpoint's ``extra["plan"]`` differs from ``plan``; the message names both and the
            way out (another ``output_dir``, or deleting the checkpoints).
    """
    if checkpoint.extra.get("plan") != plan:
        raise ValueError(
            f"{checkpoint.path} was written for another {plan_name} ({checkpoint.extra.get('plan')}) than this "
            f"config's ({plan}); use a new output_dir or delete {out / 'checkpoints'}"
        )


def resume(
    ctx: RunContext,
    plan: Any,
    *,
    logging: LoggingConfig,
    config: Mapping[str, Any],
    samples: bool = True,
    plan_name: str = "plan",
) -> Resumed:
    """Continue from the latest valid checkpoint, if there is one, and open the run's logs.

    In order: the newest checkpoint that verifies (a damaged one is skipped with a warning), refused when its
    plan is not ``plan``; on the main process checkpoints older than the newest ``keep_checkpoints`` pruned and
    the rows after its step dropped from ``metrics.jsonl`` and
    ``samples.jsonl`` (the steps redone must not appear twice); the logs opened (appending when resuming);
    last, the random state the checkpoint saved. The stage then loads the tensors it saved (weights,
    optimizer, schedule...) from ``Resumed.checkpoint``; none of that draws random numbers.

    Args:
        ctx: From :func:`start_run`.
        plan: What the checkpoint is valid for (JSON data: data hashes, batch size, steps...), saved in every
            checkpoint's ``extra["plan"]`` by the stage.
        logging: The stage's logging section (``report_to``, ``num_samples``).
        config: The resolved config as a plain dict (W&B's run config).
        samples: False keeps the sample table closed whatever ``logging.num_samples`` says (e.g. no eval set).
        plan_name: How the refusal names the plan (``"data/batch plan"``).

    Raises:
        ValueError: The newest valid checkpoint was written for another plan (see :func:`check_plan`).
    """
    checkpoint = load_latest_checkpoint(ctx.out)
    if checkpoint is not None:
        check_plan(checkpoint, plan, out=ctx.out, plan_name=plan_name)
        if ctx.is_main:
            for name in LOG_FILES:
                truncate_jsonl_after(ctx.out / name, checkpoint.step)
            # a kill between a save and its pruning left older checkpoints behind
            prune_checkpoints(ctx.out, keep=logging.keep_checkpoints, up_to=checkpoint.step)
    resuming = checkpoint is not None
    metrics = TrainLogger(
        ctx.out, report_to=logging.report_to, resume=resuming, config=config, enabled=ctx.is_main
    )
    table = SampleTable(
        ctx.out / "samples.jsonl",
        resume=resuming,
        enabled=ctx.is_main and samples and logging.num_samples > 0,
    )
    if checkpoint is not None and checkpoint.rng_state is not None:
        restore_rng(checkpoint.rng_state)
    return Resumed(checkpoint, metrics, table)


def restore_weights(ctx: RunContext, checkpoint: Checkpoint, model: torch.nn.Module) -> None:
    """Load the checkpoint's trainable weights into ``model`` (every process; collective under FSDP).

    Data-parallel: from ``trainable.safetensors`` into the unwrapped model. FSDP: each process reads its
    shards from ``shards/`` (resharded when the process count changed).

    Raises:
        ConfigError: The checkpoint and the launch disagree on sharding (an FSDP checkpoint resumed
            data-parallel, or the other way round): the optimizer state could not be restored.
    """
    check_sharding(ctx, checkpoint)
    if checkpoint.shards is not None:
        load_model_shards(ctx.accelerator, model, checkpoint.shards)
    else:
        load_trainable_state(ctx.accelerator.unwrap_model(model), checkpoint.trainable_state)


def restore_optimizer(
    ctx: RunContext, checkpoint: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any
) -> None:
    """Load the checkpoint's optimizer state and learning-rate schedule (every process; collective under FSDP)."""
    check_sharding(ctx, checkpoint)
    if checkpoint.shards is not None:
        load_optimizer_shards(ctx.accelerator, optimizer, model, checkpoint.shards)
    else:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    scheduler.load_state_dict(checkpoint.scheduler_state)


def check_sharding(ctx: RunContext, checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint that this launch cannot read: written by another backend (FSDP, DeepSpeed or
    data-parallel), or by DeepSpeed with another number of processes (its optimizer partitions are per process).

    Raises:
        ConfigError: Naming the checkpoint, both launches and the way out.
    """
    accelerator = ctx.accelerator
    now = "DeepSpeed" if is_deepspeed(accelerator) else "FSDP" if is_sharded(accelerator) else "data-parallel"
    written = engine_of_shards(checkpoint.shards) if checkpoint.shards is not None else "data-parallel"
    if written != now:
        raise ConfigError(
            f"{checkpoint.path} was written by a {written} run and this launch is {now}: its optimizer state "
            f"cannot be restored across that change; resume with the launch config it was written with, or use "
            f"a new output_dir"
        )
    if now == "DeepSpeed" and checkpoint.shards is not None:
        ranks = zero_ranks(checkpoint.shards)
        if ranks != accelerator.num_processes:
            raise ConfigError(
                f"{checkpoint.path} was written by a DeepSpeed run of {ranks} processes and this launch has "
                f"{accelerator.num_processes}: ZeRO's optimizer partitions are per process; resume with "
                f"--num_processes {ranks}, or use a new output_dir"
            )


# ---------------------------------------------------------------------------------------------------------
# Optimizer and steps


def make_adamw(
    params: torch.nn.Module | Iterable[torch.nn.Parameter],
    optim: AdamWSettings,
    *,
    total_steps: int,
    learning_rate: float | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on matrices only, and its linear warm-up + cosine schedule.

    Two parameter groups: tensors with two or more dimensions decay by ``optim.weight_decay``, biases and
    norms (one dimension) do not; an empty group is left out.

    Args:
        params: A module (its parameters that require a gradient) or the parameters themselves, in order.
        optim: The optimizer settings (``learning_rate``, ``weight_decay``, ``adam_betas``, ``adam_epsilon``,
            ``warmup_ratio``, ``min_lr_ratio``).
        total_steps: Optimizer steps the schedule spans; the warm-up is ``warmup_ratio`` of them.
        learning_rate: The peak learning rate, when not ``optim.learning_rate`` (an SFT phase's own).

    Returns:
        ``(optimizer, scheduler)``; call ``scheduler.step()`` after every optimizer step.
    """
    if isinstance(params, torch.nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    params = list(params)
    # ZeRO-3 with zero3_init_flag leaves each weight an empty 1-D partition: its own shape is ds_shape
    matrix = [len(getattr(p, "ds_shape", p.shape)) >= 2 for p in params]
    groups = [
        {"params": [p for p, m in zip(params, matrix, strict=True) if m], "weight_decay": optim.weight_decay},
        {"params": [p for p, m in zip(params, matrix, strict=True) if not m], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=optim.learning_rate if learning_rate is None else learning_rate,
        betas=optim.adam_betas,
        eps=optim.adam_epsilon,
    )
    return optimizer, _schedule(optimizer, optim, total_steps)


def _schedule(
    optimizer: torch.optim.Optimizer, optim: AdamWSettings, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of ``total_steps``, then cosine down to ``min_lr_ratio``."""
    return cosine_with_warmup(
        optimizer,
        warmup_steps=warmup_steps_for(total_steps, optim.warmup_ratio),
        total_steps=max(1, total_steps),
        min_lr_ratio=optim.min_lr_ratio,
    )


def prepare_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optim: AdamWSettings,
    *,
    micro_batch_size: int,
    max_grad_norm: float | None,
) -> tuple[torch.nn.Module, Any]:
    """The model prepared for the launch's backend, and under DeepSpeed the optimizer its engine binds.

    Data-parallel and FSDP: ``accelerator.prepare(model)`` (FSDP2 shards the parameters in place, so the
    optimizer is made afterwards, by :func:`phase_optimizer`) and ``None``. DeepSpeed: the model and an AdamW
    from :func:`make_adamw` prepared together into one engine (it binds one optimizer for its lifetime); the
    engine's settings that the stage owns are set from the stage config: ``train_micro_batch_size_per_gpu``,
    ``gradient_accumulation_steps`` 1 (the stage accumulates its micro-batches itself and tells the engine
    where a step ends) and ``gradient_clipping`` = ``max_grad_norm``; ZeRO-3 gathers whole weights when the
    final model is saved.

    Logs how many of the model's parameters train (counted whole also when ZeRO-3 has partitioned them).

    Returns:
        ``(model, engine_optimizer)``: pass ``engine_optimizer`` to :func:`phase_optimizer`.
    """
    engine_optimizer = None
    if is_deepspeed(accelerator):
        model, engine_optimizer = _prepare_engine(accelerator, model, optim, micro_batch_size, max_grad_norm)
    else:
        model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(model)
    n_train = sum(numel(p) for p in unwrapped.parameters() if p.requires_grad)
    n_all = sum(numel(p) for p in unwrapped.parameters())
    log.info("trainable parameters: %d of %d (%.2f%%)", n_train, n_all, 100.0 * n_train / max(1, n_all))
    return model, engine_optimizer


def _prepare_engine(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optim: AdamWSettings,
    micro_batch_size: int,
    max_grad_norm: float | None,
) -> tuple[torch.nn.Module, Any]:
    """The DeepSpeed engine of ``model`` and the AdamW it binds (see :func:`prepare_model`)."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config["gradient_clipping"] = float(max_grad_norm) if max_grad_norm else 0.0
    if accelerator.state.deepspeed_plugin.zero_stage == 3:
        config.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    optimizer, _ = make_adamw(model, optim, total_steps=1)
    return accelerator.prepare(model, optimizer)


def phase_optimizer(
    accelerator: Accelerator,
    model: torch.nn.Module,
    engine_optimizer: Any,
    optim: AdamWSettings,
    *,
    total_steps: int,
    learning_rate: float | None = None,
) -> tuple[Any, torch.optim.lr_scheduler.LambdaLR]:
    """A fresh AdamW and its schedule for ``total_steps`` steps (an SFT phase, or a whole run).

    Data-parallel and FSDP: :func:`make_adamw` on the prepared parameters, prepared by Accelerate.
    DeepSpeed (``engine_optimizer`` from :func:`prepare_model`): the engine's optimizer made fresh again, its
    moments and step counts cleared and its peak rate set, with a new schedule on it. Either way the first
    step of the stretch is that of a new AdamW.
    """
    if engine_optimizer is None:
        optimizer, scheduler = make_adamw(model, optim, total_steps=total_steps, learning_rate=learning_rate)
        return accelerator.prepare_optimizer(optimizer), scheduler
    adamw = (
        engine_optimizer.optimizer.optimizer
    )  # Accelerate's wrapper -> ZeRO's optimizer -> the torch AdamW
    adamw.state.clear()
    for group in adamw.param_groups:
        group["lr"] = optim.learning_rate if learning_rate is None else learning_rate
        group.pop("initial_lr", None)
    return engine_optimizer, _schedule(adamw, optim, total_steps)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: Iterable[torch.nn.Parameter],
    *,
    max_grad_norm: float | None,
    accelerator: Accelerator | None,
    guard: NonFiniteGuard,
    step: int,
    losses: Mapping[str, float] | None = None,
    named_parameters: NamedParameters | Callable[[], NamedParameters] | None = None,
    skip: bool = False,
) -> float | None:
    """Clip the gradients, take the step unless it is not finite, advance the schedule, zero the gradients.

    A step whose gradient norm or loss is NaN/inf leaves the weights as they are (:class:`NonFiniteGuard`
    warns, naming the culprits, and stops the run after too many in a row); the schedule advances either way,
    so a skipped step keeps the learning rates of the steps after it.

    Args:
        optimizer: The optimizer (Accelerate-wrapped or not).
        scheduler: Its schedule.
        params: The parameters that train (their gradients are clipped).
        max_grad_norm: Clip the global L2 norm to this (None: measure only).
        accelerator: Unscales fp16 gradients and clips sharded ones; None: plain torch.
        guard: The run's guard (one per run: it counts bad steps in a row).
        step: The 1-based step being taken, for the messages.
        losses: Metric key -> the step's loss, checked too (``{"loss/train": ...}``).
        named_parameters: ``(name, parameter)`` pairs, or a function returning them, to name the culprits.
        skip: Skip the update without asking the guard (a step that had nothing to learn from).

    Under DeepSpeed the engine has already applied the update inside the last backward pass (clipped by its
    ``gradient_clipping``): ``optimizer.step()`` and ``zero_grad()`` are no-ops, the norm is the engine's, and a
    non-finite step stops the run (:class:`NonFiniteGuard`, ``can_skip=False``).

    Returns:
        The gradient norm before clipping (None when the backend does not report it).
    """
    grad_norm = clip_gradients(list(params), max_grad_norm, accelerator=accelerator)
    can_skip = not is_deepspeed(accelerator)
    if not skip and guard.step_ok(
        grad_norm, step, losses=losses, parameters=named_parameters, can_skip=can_skip
    ):
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def every(n: int, step: int) -> bool:
    """Whether a cadence of ``n`` steps falls on ``step`` (1-based); ``n <= 0`` never does."""
    return n > 0 and step % n == 0


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and the end


def save_step(
    ctx: RunContext,
    step: int,
    *,
    trainable_state: Mapping[str, torch.Tensor],
    optimizer: Any,
    scheduler: Any,
    extra: Mapping[str, Any],
    keep: int,
    model: torch.nn.Module | None = None,
) -> None:
    """Checkpoint after ``step``: the main process writes it, every process waits for it.

    See :func:`rewardmix.train.checkpoint.save_checkpoint` (atomic, checksummed, the newest ``keep`` kept).
    Data-parallel: every process holds the same weights and optimizer state, so one copy is enough. FSDP:
    every process first writes its shards of ``model`` and ``optimizer`` into a temporary folder, which the
    main process moves into the checkpoint (``shards/``, in the manifest; DeepSpeed: the engine's checkpoint
    under ``shards/engine/``); ``trainable_state`` is then the
    gathered copy (:func:`rewardmix.train.sharded.gathered_trainable_state`). The random state saved is the
    main process's. ``extra`` is the stage's own state and must hold the ``plan`` that :func:`resume` checks.

    Args:
        model: The prepared model; required under FSDP and DeepSpeed (its shards are saved).
    """
    shards = None
    if is_sharded(ctx.accelerator):
        if model is None:
            raise ValueError("save_step under FSDP or DeepSpeed needs the prepared model")
        token = gather_objects(ctx.accelerator, [uuid.uuid4().hex[:12]])[0]  # the main process's, everywhere
        shards = shards_path(ctx.out, step, token)
        save_shards(ctx.accelerator, model, optimizer, shards)
        ctx.accelerator.wait_for_everyone()
    if ctx.is_main:
        save_checkpoint(
            ctx.out,
            step,
            trainable_state=trainable_state,
            optimizer=optimizer if shards is None else None,
            scheduler=scheduler,
            extra=extra,
            keep=keep,
            shards=shards,
        )
    ctx.accelerator.wait_for_everyone()


def finish(
    ctx: RunContext, summary: Mapping[str, Any], *, json_default: Callable[[Any], Any] | None = None
) -> None:
    """Write ``summary.json`` (main process, atomically) and wait for every process.

    Args:
        ctx: From :func:`start_run`.
        summary: What the run ends with (steps, final metrics, where the model is).
        json_default: ``json.dumps``'s ``default`` for values JSON does not know (e.g. tensors).
    """
    if ctx.is_main:
        text = json.dumps(dict(summary), indent=2, default=json_default) + "\n"
        atomic_write_text(ctx.out / "summary.json", text)
    ctx.accelerator.wait_for_everyone()
