"""Supervised fine-tuning (``rewardmix sft``): causal-LM loss on the answer only, in one or more phases.

Phases run in order (CRS §5.2: *pre_sft* on one mixture, then *sft* on another), each from the weights the
previous one ended with and with its own AdamW and cosine schedule. Row formats and tokenization live in
:mod:`rewardmix.data.conversations`; start, resume and checkpoints in :mod:`rewardmix.train.run`. Rerunning the
same command after a kill resumes from the latest valid checkpoint (weights, optimizer, schedule, random state,
data position) and gives the result of an uninterrupted run.

Metrics (``metrics.jsonl``, one row per optimizer step; ``step`` counts optimizer steps over all phases):

- ``loss/train``: mean cross-entropy per answer token over the step's batch.
- ``loss/eval``: the same on the held-out set (rows where it was computed: step 0, every ``eval_every``
  steps, and each phase's end).
- ``lr``: learning rate used by the step. ``grad_norm``: global gradient L2 norm before clipping.
- ``tokens/step``: answer (loss) tokens in the step. ``perf/tokens_per_sec``: input tokens (prompt and answer,
  padding excluded) processed per second of the step, over all processes.
- ``phase``: 0-based phase index. ``epoch``: fractional epoch within the phase.

Reference: CRS §5.2 (answer-only SFT, two-stage pre_sft/sft, Table 3 hyper-parameters); RLLR §4.1 and
Table 3 (SFT and "SFT w. rat."), Appendix A (answer format).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rewardmix.algos.losses import TokenCrossEntropy, masked_token_cross_entropy
from rewardmix.config import check_ranges, to_dict
from rewardmix.data.conversations import (
    ConversationFormat,
    ExamplesConfig,
    SftExample,
    answer_tokens,
    data_hash,
    read_conversations,
    tokenize_examples,
)
from rewardmix.data.readers import DataError
from rewardmix.data.splits import split_records
from rewardmix.data.toy import BUILTIN_TOY
from rewardmix.models.tokens import pad_token_id, stop_token_ids
from rewardmix.rundir import atomic_write_text
from rewardmix.train.config import HubConfig, LoggingConfig, LoraConfig, ModelConfig, OptimConfig
from rewardmix.train.hub import check_push, push_final_model
from rewardmix.train.loop import (
    NonFiniteGuard,
    chunk,
    epoch_order,
    global_sum,
    pad_sequences,
    sync_gradients_if,
)
from rewardmix.train.run import (
    every,
    finish,
    optimizer_step,
    phase_optimizer,
    prepare_model,
    restore_optimizer,
    restore_weights,
    resume,
    save_step,
    start_run,
)
from rewardmix.train.sharded import (
    full_weights_for_generation,
    gathered_trainable_state,
    is_sharded,
    lockstep,
    model_construction,
    model_to_save,
)

log = logging.getLogger(__name__)

LORA_ROLE = "policy"


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class SftLoraConfig(LoraConfig):
    """The shared LoRA section, plus SFT's adapter dropout and merge."""

    dropout: float = 0.05
    """Dropout on the adapter input during training."""
    merge_lora: bool = False
    """At the end also merge the adapter into the base: ``<output_dir>/model`` is then a plain model and the
    adapter goes to ``<output_dir>/adapter``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, below_1=("dropout",))


@dataclass
class PhaseConfig:
    preflight_paths: ClassVar[dict[str, str]] = {"data": "data", "eval_data": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    data: str = BUILTIN_TOY
    """Training file (JSONL, CSV, TSV, Parquet), or ``builtin:toy`` (66 generated "What is two plus three?"
    examples, for smoke runs)."""
    format: ConversationFormat = "auto"
    """Row format; ``auto`` tells it from the first row's keys: messages; prompt+response; instruction+output
    (alpaca); instruction+response (dolly); question+answer (gsm8k); question+label (nlu)."""
    epochs: int = 1
    """Passes over the data (CRS §5.2: 1 for pre_sft, 2 for sft)."""
    name: str = ""
    """Name in logs and checkpoints; empty: ``phase{index}``."""
    eval_data: str | None = None
    """Held-out file in the same format for ``loss/eval``; null: use ``eval_fraction`` of ``data``."""
    eval_fraction: float = 0.0
    """Fraction of ``data`` held out for evaluation when ``eval_data`` is null (0: no eval set)."""
    learning_rate: float | None = None
    """Peak learning rate of this phase; null: ``optim.learning_rate``."""
    max_steps: int | None = None
    """Stop this phase after this many optimizer steps (null: run all its epochs)."""

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least_1=("epochs", "max_steps"),
            positive=("learning_rate",),
            below_1=("eval_fraction",),
        )


@dataclass
class SftLoggingConfig(LoggingConfig):
    """The shared logging section, plus SFT's eval and sample cadences."""

    eval_every: int = 100
    """Compute ``loss/eval`` every N optimizer steps (0: only at step 0 and at each phase's end)."""
    sample_every: int = 100
    """Write greedy completions of a few held-out prompts to samples.jsonl every N steps (0: at phase ends)."""
    max_new_tokens: int = 64
    """Generation budget of each sample."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least_0=("eval_every", "sample_every"), at_least_1=("max_new_tokens",))


@dataclass
class Config:
    output_dir: str = "runs/sft"
    """Run directory: config, metrics.jsonl, samples.jsonl, checkpoints/, model/ (rerun to resume)."""
    seed: int = 0
    """Seed of the data order, LoRA initialization and dropout."""
    cpu: bool = False
    """Train on the CPU even when a GPU is present."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: SftLoraConfig = field(default_factory=SftLoraConfig)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    """Training phases, run in order, each from the weights the previous one ended with (CRS §5.2)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: SftLoggingConfig = field(default_factory=SftLoggingConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    """Push the final model (``<output_dir>/model`` or ``adapter``) to the hub with a model card; off by default."""

    def __post_init__(self) -> None:
        if self.hub.repo_id is not None:
            lora = self.lora.enabled
            check_push(self.hub.push, lora=lora, merged=not lora or self.lora.merge_lora)
        if not self.phases:
            raise ValueError("phases: give at least one phase")
        # sizes, steps and rates: each section's check_ranges


# ---------------------------------------------------------------------------------------------------------
# Results


class SftResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    model_dir: Path
    """The model the next stage loads: full weights, the merged model, or the LoRA adapter."""
    adapter_dir: Path | None
    """The LoRA adapter when it was merged (otherwise it is ``model_dir`` itself, or there is none)."""
    global_step: int
    """Optimizer steps taken over all phases."""
    eval_loss: float | None
    """``loss/eval`` at the end (None without an eval set)."""


class PhaseData(NamedTuple):
    """A phase's examples and the shape of its schedule."""

    name: str
    train: list[SftExample]
    eval: list[SftExample]
    samples: list[SftExample]
    steps_per_epoch: int
    total_steps: int
    learning_rate: float


# ---------------------------------------------------------------------------------------------------------
# The stage


def run(cfg: Config, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> SftResult:
    """Run supervised fine-tuning as configured; rerun the same config to resume after a kill.

    Args:
        cfg: The stage config.
        on_step: Called after every optimizer step (after its logging and checkpoint) with the global step
            and the metrics row; tests use it to simulate a kill.

    Returns:
        An :class:`SftResult`.
    """
    # step 1. run directory, accelerator, seed
    ctx = start_run(cfg, stage="sft", mixed_precision=cfg.optim.mixed_precision)
    accelerator, out, is_main = ctx

    # step 2. tokenizer and model; a LoRA adapter unless full fine-tuning
    with model_construction(accelerator):  # ZeRO-3 with zero3_init_flag: partitioned as it is built
        tokenizer, model = load_model(cfg)
    model.train()
    micro_batch_size = cfg.optim.micro_batch_size
    # (under DeepSpeed the engine binds its one optimizer here; each phase makes it fresh again)
    model, engine_optimizer = prepare_model(
        accelerator,
        model,
        cfg.optim,
        micro_batch_size=micro_batch_size,
        max_grad_norm=cfg.optim.max_grad_norm,
    )
    unwrapped = accelerator.unwrap_model(model)
    pad_id = pad_token_id(tokenizer)

    # step 3. data: each phase's train / eval examples, tokenized with the answer-only loss mask
    global_batch = micro_batch_size * cfg.optim.gradient_accumulation_steps * accelerator.num_processes
    phases = [
        load_phase(cfg, i, tokenizer, global_batch=global_batch, out=out if is_main else None)
        for i in range(len(cfg.phases))
    ]
    # What a checkpoint is only valid for: resuming with other data or batch size would not continue this run.
    plan = [
        {"name": ph.name, "data": data_hash(ph.train), "steps": ph.total_steps, "batch": global_batch}
        for ph in phases
    ]

    # step 4. resume from the latest valid checkpoint (weights, random state and data position here; the
    # optimizer and schedule at the start of its phase), or evaluate the model before training
    checkpoint, metrics, samples = resume(
        ctx, plan, logging=cfg.logging, config=to_dict(cfg), plan_name="data/batch plan"
    )
    start_phase, start_step, step, eval_loss = 0, 0, 0, None
    if checkpoint is not None:
        restore_weights(ctx, checkpoint, model)
        start_phase, start_step = checkpoint.extra["phase"], checkpoint.extra["phase_step"]
        step, eval_loss = checkpoint.step, checkpoint.extra.get("eval_loss")
        if start_step >= phases[start_phase].total_steps:  # that phase was complete: go on with the next
            start_phase, start_step = start_phase + 1, 0
    elif phases[0].eval:
        metrics.log(0, {"loss/eval": evaluate(model, phases[0].eval, micro_batch_size, accelerator, pad_id)})

    # step 5. train phase after phase, each from the weights the previous one ended with
    guard = NonFiniteGuard()
    for p in range(start_phase, len(phases)):
        phase = phases[p]
        optimizer, scheduler = phase_optimizer(
            accelerator,
            model,
            engine_optimizer,
            cfg.optim,
            total_steps=phase.total_steps,
            learning_rate=phase.learning_rate,
        )
        first = start_step if p == start_phase else 0
        if first > 0:
            restore_optimizer(ctx, checkpoint, model, optimizer, scheduler)
        log.info(
            "phase %d (%s): %d examples, steps %d..%d",
            p,
            phase.name,
            len(phase.train),
            first,
            phase.total_steps,
        )
        bar = tqdm(
            range(first + 1, phase.total_steps + 1),
            desc=f"sft {phase.name}",
            unit="step",
            disable=not is_main,
        )
        for phase_step in bar:  # 1-based within the phase; `step` counts over all phases
            step += 1
            started = time.perf_counter()
            # step 5a. the examples of this optimizer step: a seeded order per epoch, this process's share
            epoch, index = divmod(phase_step - 1, phase.steps_per_epoch)
            order = epoch_order(len(phase.train), seed=cfg.seed, epoch=epoch, salt=phase.name)
            step_ids = order[index * global_batch : (index + 1) * global_batch]
            batch = [phase.train[i] for i in step_ids[accelerator.process_index :: accelerator.num_processes]]
            # step 5b. forward/backward per micro-batch: summed token loss / answer tokens of the whole step
            stats = accumulate_gradients(model, batch, micro_batch_size, accelerator, pad_id)
            # step 5c. clip, guard against NaN/inf (a bad step names its loss and parameters), update, schedule
            lr = optimizer.param_groups[0]["lr"]
            grad_norm = optimizer_step(
                optimizer,
                scheduler,
                [q for q in model.parameters() if q.requires_grad],
                max_grad_norm=cfg.optim.max_grad_norm,
                accelerator=accelerator,
                guard=guard,
                step=step,
                losses={"loss/train": stats["loss"]},
                named_parameters=unwrapped.named_parameters,
                skip=stats["tokens"] == 0,
            )
            # step 5d. log, evaluate, sample, checkpoint
            elapsed = time.perf_counter() - started
            row: dict[str, float] = {
                "loss/train": stats["loss"],
                "lr": lr,
                "tokens/step": stats["tokens"],
                "perf/tokens_per_sec": stats["input_tokens"] / max(elapsed, 1e-9),
                "phase": p,
                "epoch": phase_step / phase.steps_per_epoch,
            }
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            phase_end = phase_step == phase.total_steps
            if phase.eval and (phase_end or every(cfg.logging.eval_every, step)):
                eval_loss = row["loss/eval"] = evaluate(
                    model, phase.eval, micro_batch_size, accelerator, pad_id
                )
            metrics.log(step, row)
            bar.set_postfix(loss=f"{row['loss/train']:.4f}", lr=f"{lr:.2e}")
            # the main process writes them; under FSDP every process takes part in each forward pass
            sampling = samples.enabled or (is_sharded(accelerator) and bool(phase.samples))
            if sampling and (phase_end or every(cfg.logging.sample_every, step)):
                with full_weights_for_generation(unwrapped):
                    rows = generate_samples(
                        unwrapped, tokenizer, phase.samples, max_new_tokens=cfg.logging.max_new_tokens
                    )
                samples.log(step, rows)
            if phase_end or every(cfg.logging.checkpoint_every, step):
                save_step(
                    ctx,
                    step,
                    trainable_state=gathered_trainable_state(accelerator, model),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    extra={"phase": p, "phase_step": phase_step, "plan": plan, "eval_loss": eval_loss},
                    keep=cfg.logging.keep_checkpoints,
                    model=model,
                )
            if on_step is not None:
                on_step(step, row)
        bar.close()
    metrics.close()

    # step 6. save the model and tokenizer: full weights, or the adapter (and the merged model on request);
    # under FSDP the weights are gathered into a whole copy first
    model_dir, adapter_dir = out / "model", None
    whole = model_to_save(accelerator, model, lambda: load_model(cfg)[1])
    if is_main:
        model_dir, adapter_dir = save_final_model(cfg.lora, whole, tokenizer, out)
        log.info("SFT done after %d steps; model in %s", step, model_dir)
    summary: dict[str, Any] = {"global_step": step, "eval_loss": eval_loss, "model_dir": str(model_dir)}

    # step 7. push the final model to the hub (hub.repo_id); a failed push is logged and the model kept
    if is_main and cfg.hub.repo_id is not None:
        lora_on = cfg.lora.enabled
        summary["hub"] = push_final_model(
            cfg.hub, out, stage="sft", lora=lora_on, merged=not lora_on or cfg.lora.merge_lora,
            base_model=cfg.model.name, metrics={"global_step": step, "eval_loss": eval_loss},
        )  # fmt: skip
    finish(ctx, summary)
    return SftResult(out, model_dir, adapter_dir, step, eval_loss)


# ---------------------------------------------------------------------------------------------------------
# Model


def load_model(cfg: Config) -> tuple[Any, torch.nn.Module]:
    """The tokenizer and the model to train, with a LoRA adapter (role ``policy``) when ``lora.enabled``."""
    from rewardmix.models import loading, lora, tiny

    if cfg.model.name == "tiny":
        tokenizer = tiny.build_tiny_tokenizer()
        model = tiny.build_tiny_causal_lm(tokenizer, seed=cfg.seed)
    else:
        path = loading.resolve_model_path(cfg.model.name)
        tokenizer = loading.load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
        model = loading.load_causal_lm(
            path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
        )
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        settings = lora.LoraSettings(
            r=cfg.lora.r,
            alpha=cfg.lora.alpha,
            dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
        )
        model = lora.add_adapters(model, [LORA_ROLE], settings)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    return tokenizer, model


def save_final_model(
    lora_cfg: SftLoraConfig, model: torch.nn.Module, tokenizer: Any, out: Path
) -> tuple[Path, Path | None]:
    """Write the trained model with its tokenizer; returns ``(model_dir, adapter_dir)``.

    Full fine-tuning: the model in ``<out>/model``. LoRA: the adapter in ``<out>/model``; with
    ``lora.merge_lora`` the merged model in ``<out>/model`` and the adapter in ``<out>/adapter``.
    """
    from rewardmix.models import loading, lora

    model_dir = out / "model"
    if not lora_cfg.enabled:
        return loading.save_pretrained_atomic(model, model_dir, tokenizer=tokenizer), None
    adapter_dir = out / "adapter" if lora_cfg.merge_lora else model_dir
    lora.save_adapter(model, LORA_ROLE, adapter_dir)
    tokenizer.save_pretrained(str(adapter_dir))  # the adapter folder is complete without it; written after
    if lora_cfg.merge_lora:
        lora.merge_and_save(model, LORA_ROLE, model_dir, tokenizer=tokenizer)
    return model_dir, adapter_dir


# ---------------------------------------------------------------------------------------------------------
# Training and evaluation steps


def collate(examples: Sequence[SftExample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) ``input_ids``, ``attention_mask``, ``labels`` and ``loss_mask`` on ``device``.

    Right padding leaves every real token at the position it has alone, so a padded batch computes what the
    examples would one by one (padded positions are masked out of attention and never in the loss).
    ``labels`` are the input ids; only those under ``loss_mask`` (the answer) are ever used.
    """
    input_ids = pad_sequences([e.input_ids for e in examples], pad_value=pad_id).to(device)
    return {
        "input_ids": input_ids,
        "attention_mask": pad_sequences([[1] * len(e.input_ids) for e in examples], pad_value=0).to(device),
        "labels": input_ids.clone(),
        "loss_mask": pad_sequences([e.loss_mask for e in examples], pad_value=False, dtype=torch.bool).to(
            device
        ),
    }


def token_loss(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> TokenCrossEntropy:
    """Summed cross-entropy of the answer tokens of a collated batch, and how many there are.

    Reference: CRS §5.2 (the loss is on the assistant's tokens only).
    """
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return masked_token_cross_entropy(logits, inputs["labels"], inputs["loss_mask"], reduction="sum")


def accumulate_gradients(
    model: torch.nn.Module,
    batch: Sequence[SftExample],
    micro_batch_size: int,
    accelerator: Accelerator,
    pad_id: int,
) -> dict[str, float]:
    """Backward passes over this process's share of one optimizer step, gradients scaled for exactness.

    Each micro-batch contributes ``sum of its token losses * num_processes / N`` where ``N`` is the number of
    answer tokens of the whole step on every process; DDP averages gradients over processes, so the update is
    that of ``sum of all token losses / N`` however the step is split into micro-batches and processes.

    Returns:
        ``loss`` (mean token loss of the step, all processes), ``tokens`` (answer tokens, all processes) and
        ``input_tokens`` (non-padding tokens, all processes).
    """
    step_tokens = global_sum(accelerator, sum(answer_tokens(e) for e in batch))
    input_tokens = global_sum(accelerator, sum(len(e.input_ids) for e in batch))
    micro_batches = chunk(batch, micro_batch_size) or [[]]
    # Under FSDP every pass gathers weights from all processes: all run as many (the extra ones empty).
    micro_batches += [[]] * (lockstep(accelerator, len(micro_batches)) - len(micro_batches))
    loss_sum = 0.0
    for i, micro in enumerate(micro_batches):
        # A process without examples still runs one pass (weighted 0) so that DDP's all-reduce lines up.
        examples, weight = (micro, 1.0) if micro else ([_NO_ANSWER], 0.0)
        inputs = collate(examples, pad_id, accelerator.device)
        with sync_gradients_if(accelerator, model, i == len(micro_batches) - 1):
            ce = token_loss(model, inputs)
            if step_tokens > 0:
                # (sum of this micro-batch's token losses) / N, times num_processes to undo DDP's mean
                accelerator.backward(ce.loss * (weight * accelerator.num_processes / step_tokens))
        loss_sum += weight * float(ce.loss.detach())
    mean_loss = global_sum(accelerator, loss_sum) / step_tokens if step_tokens else math.nan
    return {"loss": mean_loss, "tokens": step_tokens, "input_tokens": input_tokens}


_NO_ANSWER = SftExample(input_ids=[0, 0], loss_mask=[False, False], prompt_length=2)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    examples: Sequence[SftExample],
    micro_batch_size: int,
    accelerator: Accelerator,
    pad_id: int,
) -> float:
    """Mean cross-entropy per answer token over ``examples`` (every process takes its share)."""
    model.eval()
    share = list(examples[accelerator.process_index :: accelerator.num_processes])
    micro_batches = chunk(share, micro_batch_size)
    # Under FSDP all processes run as many passes; a padding pass has no answer token, so it adds nothing.
    micro_batches += [[_NO_ANSWER]] * (lockstep(accelerator, len(micro_batches)) - len(micro_batches))
    total, tokens = 0.0, 0
    for micro in micro_batches:
        ce = token_loss(model, collate(micro, pad_id, accelerator.device))
        total += float(ce.loss)
        tokens += int(ce.num_tokens)
    model.train()
    total, tokens = global_sum(accelerator, total), global_sum(accelerator, tokens)
    return total / tokens if tokens else math.nan


@torch.no_grad()
def generate_samples(
    model: torch.nn.Module, tokenizer: Any, examples: Sequence[SftExample], *, max_new_tokens: int
) -> list[dict[str, str]]:
    """Greedy completions of the examples' prompts: rows ``{prompt, completion, reference}``."""
    model.eval()
    device = next(model.parameters()).device
    stop_ids = stop_token_ids(tokenizer)
    rows = []
    # Generation must not move the training random stream (resume equality), whatever it does inside.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for example in examples:
            prompt = example.input_ids[: example.prompt_length]
            input_ids = torch.tensor([prompt], device=device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_token_id(tokenizer),
                eos_token_id=stop_ids or None,
            )
            new = output[0, len(prompt) :].tolist()
            rows.append(
                {
                    "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                    "completion": tokenizer.decode(new, skip_special_tokens=True),
                    "reference": tokenizer.decode(
                        example.input_ids[example.prompt_length :], skip_special_tokens=True
                    ),
                }
            )
    model.train()
    return rows


# ---------------------------------------------------------------------------------------------------------
# Data


def load_phase(cfg: Config, index: int, tokenizer: Any, *, global_batch: int, out: Path | None) -> PhaseData:
    """Read, convert and tokenize one phase's data; work out its steps. Counts go to ``<out>/data_report.json``."""
    phase = cfg.phases[index]
    name = phase.name or f"phase{index}"
    train_convs, train_report = read_conversations(phase.data, phase.format, cfg.examples)
    if phase.eval_data is not None:
        eval_convs, eval_report = read_conversations(phase.eval_data, phase.format, cfg.examples)
    elif phase.eval_fraction > 0:
        split = split_records(train_convs, sizes={"eval": phase.eval_fraction, "train": None}, seed=cfg.seed)
        train_convs, eval_convs, eval_report = split["train"], split["eval"], None
    else:
        eval_convs, eval_report = [], None
    train, train_counts = tokenize_examples(train_convs, tokenizer, cfg.examples)
    evals, eval_counts = tokenize_examples(eval_convs, tokenizer, cfg.examples)
    if not train:
        raise DataError(f"{phase.data}: phase {name}: no training example with an answer token")
    steps_per_epoch = math.ceil(len(train) / global_batch)
    total = steps_per_epoch * phase.epochs
    if phase.max_steps is not None:
        total = min(total, phase.max_steps)
    report = {
        "phase": name,
        "train": _split_report(train_report, train, train_counts),
        "eval": _split_report(eval_report, evals, eval_counts),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
    }
    log.info(
        "phase %s: %d train / %d eval examples, %d steps; train examples truncated %d, dropped %d",
        name,
        len(train),
        len(evals),
        total,
        train_counts["truncated"],
        train_counts["dropped_no_answer_tokens"],
    )
    if out is not None:
        _save_data_report(out, index, report)
    samples = (evals or train)[: cfg.logging.num_samples]
    lr = phase.learning_rate if phase.learning_rate is not None else cfg.optim.learning_rate
    return PhaseData(name, train, evals, samples, steps_per_epoch, total, lr)


def _split_report(
    read: dict[str, Any] | None, examples: Sequence[SftExample], counts: dict[str, int]
) -> dict[str, Any]:
    return {
        **(read or {}),
        **counts,
        "examples": len(examples),
        "answer_tokens": sum(answer_tokens(e) for e in examples),
        "input_tokens": sum(len(e.input_ids) for e in examples),
    }


def _save_data_report(out: Path, index: int, report: dict[str, Any]) -> None:
    path = out / "data_report.json"
    existing = json.loads(path.read_text()) if index > 0 and path.exists() else []
    atomic_write_text(path, json.dumps([*existing[:index], report], indent=2) + "\n")
