"""The reward-model stage's :func:`run`, read top to bottom, and the model, loss and step functions it calls."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rewardmix.algos.losses import (
    absolute_loss,
    bradley_terry_loss,
    pairwise_accuracy,
    ranking_loss,
    ranking_pairs,
)
from rewardmix.config import to_dict
from rewardmix.data.readers import DataError
from rewardmix.data.rm_items import (
    AugmentConfig,
    Item,
    Similarity,
    balance_ratings,
    build_items,
    items_hash,
    read_data,
    sample_rows,
)
from rewardmix.data.splits import split_records
from rewardmix.models.dropout import disable_dropout
from rewardmix.models.tokens import pad_token_id
from rewardmix.rundir import atomic_write_text
from rewardmix.scoring.rm_export import export_reward_model
from rewardmix.scoring.rm_inputs import (
    BackboneKind,
    InputEncoder,
    collate,
    score_sequences,
    score_transform_of,
    write_rm_meta,
)
from rewardmix.stages.reward_model.config import ObjectiveConfig, RmLoggingConfig
from rewardmix.train.hub import push_final_model
from rewardmix.train.loop import NonFiniteGuard, chunk, epoch_order, global_sum, sync_gradients_if
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
    gathered_trainable_state,
    lockstep,
    model_construction,
    model_to_save,
)

if TYPE_CHECKING:  # the package defines Config and imports this module
    from rewardmix.stages.reward_model import Config

log = logging.getLogger(__name__)

LORA_ROLE = "reward"


# ---------------------------------------------------------------------------------------------------------
# Result


class RewardModelResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    model_dir: Path
    """A ``ScalarHeadModel`` folder (LoRA merged) with tokenizer and ``rewardmix_rm.json``."""
    adapter_dir: Path | None
    """The LoRA adapter and head alone (None for full fine-tuning)."""
    global_step: int
    """Optimizer steps taken."""
    eval_metrics: dict[str, float]
    """The last evaluation (``loss/eval``, ``rm/accuracy``, ... ; empty without an eval set)."""


# ---------------------------------------------------------------------------------------------------------
# The stage


def run(cfg: Config, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> RewardModelResult:
    """Train a reward model as configured; rerun the same config to resume after a kill.

    Args:
        cfg: The stage config.
        on_step: Called after every optimizer step (after its logging and checkpoint) with the step and the
            metrics row; tests use it to simulate a kill.

    Returns:
        A :class:`RewardModelResult`.
    """
    # step 1. run directory, accelerator, seed
    ctx = start_run(cfg, stage="reward-model", mixed_precision=cfg.optim.mixed_precision)
    accelerator, out, is_main = ctx

    # step 2. tokenizer, backbone + scalar head; a LoRA adapter unless full fine-tuning
    with model_construction(accelerator):  # ZeRO-3 with zero3_init_flag: partitioned as it is built
        tokenizer, model, kind = load_model(cfg)
    model.train()
    model, engine_optimizer = prepare_model(  # DeepSpeed: the engine and the optimizer it binds
        accelerator,
        model,
        cfg.optim,
        micro_batch_size=cfg.optim.micro_batch_size,
        max_grad_norm=cfg.optim.max_grad_norm,
    )
    unwrapped = accelerator.unwrap_model(model)
    encoder = InputEncoder(
        tokenizer, kind, max_length=cfg.model.max_length, min_prompt_tokens=cfg.model.min_prompt_tokens
    )
    pad_id = pad_token_id(tokenizer)

    # step 3. data: items of the objective's kind, every response tokenized with its prompt
    train_items, eval_items, report = load_items(cfg, encoder)
    if is_main:
        atomic_write_text(out / "data_report.json", json.dumps(report, indent=2) + "\n")
    global_batch = (
        cfg.optim.micro_batch_size * cfg.optim.gradient_accumulation_steps * accelerator.num_processes
    )
    steps_per_epoch = math.ceil(len(train_items) / global_batch)
    total_steps = steps_per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps is not None:
        total_steps = min(total_steps, cfg.optim.max_steps)
    # What a checkpoint is only valid for: resuming with other data or batch size would not continue this run.
    plan = {"data": items_hash(train_items), "steps": total_steps, "batch": global_batch}
    log.info(
        "%s objective: %d train / %d eval items, %d steps of %d items",
        cfg.objective.kind,
        len(train_items),
        len(eval_items),
        total_steps,
        global_batch,
    )

    # step 4. resume from the latest valid checkpoint (weights, optimizer, schedule, random state, data
    # position), or evaluate the model before training
    checkpoint, metrics, samples = resume(
        ctx,
        plan,
        logging=cfg.logging,
        config=to_dict(cfg),
        samples=bool(eval_items),
        plan_name="data/batch plan",
    )
    optimizer, scheduler = phase_optimizer(
        accelerator, model, engine_optimizer, cfg.optim, total_steps=total_steps
    )
    start, eval_metrics, eval_batch = 0, {}, cfg.logging.eval_batch_size
    if checkpoint is not None:
        restore_weights(ctx, checkpoint, model)
        restore_optimizer(ctx, checkpoint, model, optimizer, scheduler)
        start, eval_metrics = checkpoint.step, dict(checkpoint.extra.get("eval_metrics", {}))
    elif eval_items:
        eval_metrics = evaluate(
            unwrapped, eval_items, cfg.objective, accelerator, pad_id, batch_size=eval_batch
        )
        metrics.log(0, eval_metrics)
        samples.log(0, scored_samples(unwrapped, eval_items, cfg.logging, pad_id))

    # step 5. train: exact accumulation over micro-batches, clip, guard, step, schedule
    guard = NonFiniteGuard()
    bar = tqdm(
        range(start + 1, total_steps + 1),
        desc=f"reward-model {cfg.objective.kind}",
        unit="step",
        disable=not is_main,
    )
    for step in bar:
        started = time.perf_counter()
        # step 5a. this optimizer step's items: a seeded order per epoch, this process's share
        epoch, index = divmod(step - 1, steps_per_epoch)
        order = epoch_order(len(train_items), seed=cfg.seed, epoch=epoch)
        step_ids = order[index * global_batch : (index + 1) * global_batch]
        batch = [train_items[i] for i in step_ids[accelerator.process_index :: accelerator.num_processes]]
        # step 5b. forward/backward per micro-batch: summed loss / items of the whole step
        stats = accumulate_gradients(
            model,
            batch,
            cfg.objective,
            accelerator,
            pad_id,
            micro_batch_size=cfg.optim.micro_batch_size,
            filler=train_items[0],
        )
        # step 5c. clip, guard against NaN/inf (a bad step names its loss and parameters), update, schedule
        lr = optimizer.param_groups[0]["lr"]
        grad_norm = optimizer_step(
            optimizer,
            scheduler,
            [p for p in model.parameters() if p.requires_grad],
            max_grad_norm=cfg.optim.max_grad_norm,
            accelerator=accelerator,
            guard=guard,
            step=step,
            losses={"loss/train": stats["loss"]},
            named_parameters=unwrapped.named_parameters,
        )
        # step 5d. log, evaluate, sample, checkpoint
        row: dict[str, float] = {
            "loss/train": stats["loss"],
            "lr": lr,
            "epoch": step / steps_per_epoch,
            "perf/items_per_sec": stats["items"] / max(time.perf_counter() - started, 1e-9),
        }
        if "accuracy" in stats:
            row["rm/train/accuracy"] = stats["accuracy"]
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        last = step == total_steps
        if eval_items and (last or every(cfg.logging.eval_every, step)):
            eval_metrics = evaluate(
                unwrapped, eval_items, cfg.objective, accelerator, pad_id, batch_size=eval_batch
            )
            row.update(eval_metrics)
            samples.log(step, scored_samples(unwrapped, eval_items, cfg.logging, pad_id))
        metrics.log(step, row)
        bar.set_postfix(loss=f"{row['loss/train']:.4f}", lr=f"{lr:.2e}")
        if last or every(cfg.logging.checkpoint_every, step):
            save_step(
                ctx,
                step,
                trainable_state=gathered_trainable_state(accelerator, model),
                optimizer=optimizer,
                scheduler=scheduler,
                extra={"plan": plan, "eval_metrics": eval_metrics},
                keep=cfg.logging.keep_checkpoints,
                model=model,
            )
        if on_step is not None:
            on_step(step, row)
    bar.close()
    metrics.close()

    # step 6. save <output_dir>/model (merged when LoRA), the adapter, the tokenizer and rewardmix_rm.json;
    # under FSDP the weights are gathered into a whole copy first
    model_dir, adapter_dir = out / "model", (out / "adapter" if cfg.lora.enabled else None)
    whole = model_to_save(accelerator, model, lambda: load_model(cfg)[1])
    if is_main:
        save_final_model(cfg, whole, tokenizer, kind, out)
        log.info("reward model done after %d steps; model in %s", total_steps, model_dir)
        if cfg.export_hf:
            export_reward_model(model_dir, out / "hf")
    summary: dict[str, Any] = {
        "global_step": total_steps,
        "eval_metrics": eval_metrics,
        "model_dir": str(model_dir),
    }

    # step 7. push the final model to the hub (hub.repo_id); a failed push is logged and the model kept
    if is_main and cfg.hub.repo_id is not None:
        summary["hub"] = push_final_model(
            cfg.hub, out, stage="reward-model", lora=cfg.lora.enabled, merged=True, base_model=cfg.model.name,
            metrics={"global_step": total_steps, "eval": eval_metrics or {}},
        )  # fmt: skip
    finish(ctx, summary)
    return RewardModelResult(out, model_dir, adapter_dir, total_steps, eval_metrics)


# ---------------------------------------------------------------------------------------------------------
# Model


def load_model(cfg: Config) -> tuple[Any, torch.nn.Module, BackboneKind]:
    """The tokenizer, the scalar-head model to train (LoRA role ``reward`` when enabled) and the backbone kind."""
    from rewardmix.models import heads, loading, lora, tiny

    name = cfg.model.name
    if name in ("tiny", "tiny-encoder"):
        tokenizer = tiny.build_tiny_tokenizer()
        kind: BackboneKind = "causal_lm" if name == "tiny" else "encoder"
        if kind == "causal_lm":
            backbone = tiny.build_tiny_causal_lm(tokenizer, seed=cfg.seed)
            backbone = backbone if cfg.lora.enabled else backbone.base_model
        else:
            backbone = tiny.build_tiny_encoder(tokenizer, seed=cfg.seed)
    else:
        path = loading.resolve_model_path(name)
        kind = cfg.model.kind if cfg.model.kind != "auto" else guess_kind(path)
        tokenizer = loading.load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
        if kind == "causal_lm" and cfg.lora.enabled:
            backbone = loading.load_causal_lm(
                path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
            )
        else:
            backbone = loading.load_backbone(
                path, kind=kind, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
            )
    pooling = (
        cfg.model.pooling if cfg.model.pooling != "auto" else ("last" if kind == "causal_lm" else "mean")
    )
    if cfg.model.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # LoRA on a decoder: the adapter goes on the whole causal LM (the head reads its body), so it loads as a
    # role on the same base the PPO policy uses. Full fine-tuning keeps the body only (no unused LM head).
    model = heads.ScalarHeadModel(backbone, pooling=pooling, kind=kind, seed=cfg.seed)
    if cfg.lora.enabled:
        settings = lora.LoraSettings(
            r=cfg.lora.r,
            alpha=cfg.lora.alpha,
            dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
        )
        model.backbone = lora.add_adapters(model.backbone, [LORA_ROLE], settings)
        for param in model.head.parameters():
            param.requires_grad_(True)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    if cfg.model.disable_dropout:
        disable_dropout(model)
    log.info("reward model: %s backbone %s, pooling %s, LoRA %s", kind, name, pooling, cfg.lora.enabled)
    return tokenizer, model, kind


def guess_kind(path: str) -> BackboneKind:
    """``causal_lm`` when the folder's config.json names a ``*ForCausalLM`` architecture, else ``encoder``.

    A hub id (no local folder) is taken as ``causal_lm``; set ``model.kind`` for an encoder from the hub.

    Raises:
        ValueError: If the folder is a LoRA adapter (from an SFT run without ``lora.merge_lora``).
    """
    folder = Path(path)
    if not folder.is_dir():
        log.info("%s is not a local folder; taking it as a causal LM (set model.kind otherwise)", path)
        return "causal_lm"
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder} is a LoRA adapter, not a model: run the SFT stage with lora.merge_lora: true (or merge "
            "the adapter) and give the merged model folder"
        )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    return "causal_lm" if any(str(a).endswith("ForCausalLM") for a in architectures) else "encoder"


def save_final_model(
    cfg: Config, model: torch.nn.Module, tokenizer: Any, kind: BackboneKind, out: Path
) -> Path:
    """Write ``<out>/model`` (a ScalarHeadModel folder; LoRA merged), ``<out>/adapter`` and ``rewardmix_rm.json``."""
    from rewardmix.models import lora

    model_dir = out / "model"
    if cfg.lora.enabled:
        lora.save_adapter(model, LORA_ROLE, out / "adapter")
        lora.merge_and_save(model, LORA_ROLE, model_dir, tokenizer=tokenizer)
    else:
        model.save_pretrained(model_dir, tokenizer=tokenizer)
    write_rm_meta(
        model_dir,
        objective=cfg.objective.kind,
        absolute_loss=cfg.objective.absolute_loss,
        kind=kind,
        max_length=cfg.model.max_length,
        min_prompt_tokens=cfg.model.min_prompt_tokens,
        base_model=cfg.model.name,
    )
    return model_dir


# ---------------------------------------------------------------------------------------------------------
# Losses and statistics of items


def items_loss(objective: ObjectiveConfig, items: Sequence[Item], scores: torch.Tensor) -> torch.Tensor:
    """The summed loss of ``items`` given the scores of all their sequences, concatenated in item order.

    Args:
        objective: The objective settings.
        items: M items.
        scores: (sum of len(item.sequences),) scores.

    Returns:
        Scalar: sum over items of the per-item loss (weighted for absolute items).

    Reference: RLLR Eq. 2-3 (pairwise), CRS Eq. 2.12 (ranking), CRS §5.3.1 (absolute).
    """
    device = scores.device
    if objective.kind == "absolute":
        targets = torch.tensor([it.target for it in items], dtype=torch.float32, device=device)
        weights = torch.tensor([it.weight for it in items], dtype=torch.float32, device=device)
        extra = {"penalty": objective.range_penalty} if objective.absolute_loss == "mse_range_penalty" else {}
        return absolute_loss(
            objective.absolute_loss, scores, targets, weights=weights, reduction="sum", **extra
        )
    if objective.kind == "pairwise":
        margins = torch.tensor([it.margin for it in items], dtype=torch.float32, device=device)
        return bradley_terry_loss(scores[0::2], scores[1::2], margin=margins, reduction="sum")
    group_ids, ranks = _groups_and_ranks(items, device)
    return ranking_loss(scores, group_ids, ranks, reduction="sum")


def _groups_and_ranks(items: Sequence[Item], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    group_ids = torch.tensor([g for g, it in enumerate(items) for _ in it.sequences], device=device)
    ranks = torch.tensor([r for it in items for r in it.ranks], dtype=torch.float32, device=device)
    return group_ids, ranks


def ordered_pairs(items: Sequence[Item], scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the (better, worse) responses of every ranked pair in ``items``: two (P,) tensors."""
    group_ids, ranks = _groups_and_ranks(items, scores.device)
    winner, loser, _ = ranking_pairs(group_ids, ranks)
    return scores[winner], scores[loser]


def predicted_ratings(objective: ObjectiveConfig, scores: torch.Tensor) -> torch.Tensor:
    """Scores of an absolute model as ratings: ``sigmoid(score)`` or the score itself."""
    transform = score_transform_of(objective.kind, objective.absolute_loss)
    return torch.sigmoid(scores) if transform == "sigmoid" else scores


def accumulate_gradients(
    model: torch.nn.Module,
    batch: Sequence[Item],
    objective: ObjectiveConfig,
    accelerator: Accelerator,
    pad_id: int,
    *,
    micro_batch_size: int,
    filler: Item,
) -> dict[str, float]:
    """Backward passes over this process's share of one optimizer step, scaled for exact accumulation.

    Each micro-batch contributes ``(sum of its item losses) * num_processes / N`` where ``N`` is the number of
    items of the whole step on every process; DDP averages gradients over processes, so the update is that of
    ``mean item loss`` however the step is split into micro-batches and processes. Micro-batches are cut from
    the items sorted by length, which saves padding when a step has several.

    Args:
        micro_batch_size: Items per forward/backward pass.
        filler: An item a process without items (the last step of an epoch) runs with weight 0, so that
            DDP's gradient all-reduce still lines up.

    Returns:
        ``loss`` (mean item loss of the step), ``items`` (all processes) and, for pairwise/ranking,
        ``accuracy`` (share of the step's pairs ordered right, all processes).
    """
    n_items = global_sum(accelerator, len(batch))
    loss_sum, wins, n_pairs = 0.0, 0.0, 0
    # The step's loss is a sum over its items, so how they are grouped does not change the update: group them
    # by length, so that each micro-batch pads little (a stable sort keeps the order of equal lengths).
    by_length = sorted(batch, key=lambda item: max(len(seq) for seq in item.sequences))
    micro_batches = chunk(by_length, micro_batch_size) or [[]]
    # Under FSDP every pass gathers weights from all processes: all run as many (the extra ones weighted 0).
    micro_batches += [[]] * (lockstep(accelerator, len(micro_batches)) - len(micro_batches))
    for i, micro in enumerate(micro_batches):
        items, weight = (micro, 1.0) if micro else ([filler], 0.0)
        sequences = [seq for item in items for seq in item.sequences]
        inputs = collate(sequences, pad_id, device=accelerator.device)
        with sync_gradients_if(accelerator, model, i == len(micro_batches) - 1):
            scores = model(**inputs).float()  # float32 even under autocast: the losses need the precision
            loss = items_loss(objective, items, scores)
            accelerator.backward(loss * (weight * accelerator.num_processes / n_items))
        loss_sum += weight * float(loss.detach())
        if objective.kind != "absolute" and micro:
            better, worse = ordered_pairs(micro, scores.detach())
            wins += float(pairwise_accuracy(better, worse)) * better.numel()
            n_pairs += better.numel()
    stats = {"loss": global_sum(accelerator, loss_sum) / n_items, "items": n_items}
    if objective.kind != "absolute":  # the same branch on every process: the sums below are collective
        all_pairs = global_sum(accelerator, n_pairs)
        if all_pairs:
            stats["accuracy"] = global_sum(accelerator, wins) / all_pairs
    return stats


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    items: Sequence[Item],
    objective: ObjectiveConfig,
    accelerator: Accelerator,
    pad_id: int,
    *,
    batch_size: int,
) -> dict[str, float]:
    """Eval metrics over ``items`` (every process scores its share, ``batch_size`` sequences per forward
    pass): see the module docstring."""
    share = list(items[accelerator.process_index :: accelerator.num_processes])
    sums = {
        "loss": 0.0,
        "items": float(len(share)),
        "wins": 0.0,
        "pairs": 0.0,
        "margin": 0.0,
        "se": 0.0,
        "ae": 0.0,
    }
    sequences = [seq for item in share for seq in item.sequences]
    # Under FSDP all processes run as many forward passes: pad with whole batches of a filler sequence.
    passes = math.ceil(len(sequences) / batch_size)
    real = len(sequences)
    sequences += [items[0].sequences[0]] * (batch_size * (lockstep(accelerator, passes) - passes))
    if sequences:
        scores = score_sequences(
            model, sequences, pad_id=pad_id, batch_size=batch_size, device=accelerator.device
        ).cpu()[:real]  # the metrics below are computed on the CPU
    if share:
        # Unweighted: loss weights are a training device, the eval loss measures the data as it is.
        plain = [item._replace(weight=1.0) for item in share]
        sums["loss"] = float(items_loss(objective, plain, scores))
        if objective.kind == "absolute":
            targets = torch.tensor([item.target for item in share], dtype=torch.float32)
            error = predicted_ratings(objective, scores) - targets
            sums["se"], sums["ae"] = float((error**2).sum()), float(error.abs().sum())
        else:
            better, worse = ordered_pairs(share, scores)
            sums["pairs"] = float(better.numel())
            sums["wins"] = float(pairwise_accuracy(better, worse)) * better.numel()
            sums["margin"] = float((better - worse).sum())
    total = {key: global_sum(accelerator, value) for key, value in sums.items()}
    n = max(total["items"], 1.0)
    out = {"loss/eval": total["loss"] / n}
    if objective.kind == "absolute":
        out["rm/mse"], out["rm/mae"] = total["se"] / n, total["ae"] / n
    elif total["pairs"]:
        out["rm/accuracy"] = total["wins"] / total["pairs"]
        out["rm/margin_mean"] = total["margin"] / total["pairs"]
    return out


def scored_samples(
    model: torch.nn.Module, items: Sequence[Item], logging_cfg: RmLoggingConfig, pad_id: int
) -> list[dict[str, Any]]:
    """The first ``logging.num_samples`` eval items with their scores (rows of samples.jsonl)."""
    shown = list(items[: logging_cfg.num_samples])
    if not shown:
        return []
    sequences = [seq for item in shown for seq in item.sequences]
    scores = score_sequences(model, sequences, pad_id=pad_id, batch_size=logging_cfg.eval_batch_size)
    return sample_rows(shown, scores.tolist())


# ---------------------------------------------------------------------------------------------------------
# Data


def load_items(cfg: Config, encoder: InputEncoder) -> tuple[list[Item], list[Item], dict[str, Any]]:
    """Read, split, balance and tokenize the training and eval data into items; and a report of the counts.

    Raises:
        DataError: A malformed file, or a format the objective cannot use.
        ValueError: No training item is left.
    """
    data = cfg.data
    train_records, fmt, train_read = read_data(data.train, data, cfg.objective.kind, seed=cfg.seed)
    if data.limit is not None:
        train_records = train_records[: data.limit]
    report: dict[str, Any] = {"objective": cfg.objective.kind, "format": fmt, "train_read": train_read}
    if data.eval is not None:
        eval_records, eval_fmt, report["eval_read"] = read_data(
            data.eval, data, cfg.objective.kind, seed=cfg.seed + 1
        )
    elif data.eval_fraction > 0:
        split = split_records(train_records, sizes={"eval": data.eval_fraction, "train": None}, seed=cfg.seed)
        train_records, eval_records, eval_fmt = split["train"], split["eval"], fmt
    else:
        eval_records, eval_fmt = [], fmt
    if fmt == "ratings" and train_records:
        similarity = load_similarity(cfg.augment) if cfg.augment.paraphrases is not None else None
        train_records, report["balance"] = balance_ratings(
            train_records, cfg.balance, cfg.augment, data, seed=cfg.seed, similarity=similarity
        )
    train, report["train"] = build_items(train_records, fmt, cfg.objective, data, encoder)
    evals, report["eval"] = build_items(eval_records, eval_fmt, cfg.objective, data, encoder)
    if not train:
        raise DataError(f"{data.train}: no training item left (see the counts: {report['train']})")
    return train, evals, report


def load_similarity(augment: AugmentConfig) -> Similarity:
    """The sentence encoder's similarity for paraphrase augmentation (``augment.similarity_model``)."""
    from rewardmix.models.encoder import SentenceEncoder
    from rewardmix.models.loading import resolve_model_path

    return SentenceEncoder.from_pretrained(resolve_model_path(augment.similarity_model)).similarity
