"""PPO with a composite reward (``rewardmix ppo``): every role on one shared base model.

What a run does, in order (the numbered steps of :func:`run`):

1. Prepare the run directory and Accelerate (device placement, mixed precision). Under ``accelerate launch``
   with N processes the run is data-parallel: each process generates, scores and evaluates its share of every
   rollout batch, every process then holds the whole batch, and the gradients of each minibatch are summed
   across processes, so N processes x ``batch_size`` b give the run of 1 process x N*b
   (``docs/distributed.md``).
2. Load the tokenizer and the base (the SFT model: a folder, a hub id, ``offline:smollm2`` or ``tiny``) and put
   the roles on it: the policy is the LoRA role ``policy``, the value model a scalar head on its own LoRA role
   ``value`` (:class:`~rewardmix.models.heads.ScalarHeadModel.token_scores`), and the reference is the same
   base with every adapter disabled, so one copy of the weights serves them all. With ``lora.enabled: false``
   the policy trains every weight and a frozen copy of the base is the reference and carries the value role.
   Dropout is switched off everywhere (every ``p = 0``): PPO's ratio compares two forward passes of the same
   weights, which dropout would make differ.
3. Build the composite reward (:class:`~rewardmix.scoring.CompositeReward`): reward models given with a
   ``role`` are loaded as further LoRA roles on the shared base, the others as separate models; rule scorers
   (label correctness, length, format, target token) need no model.
4. Read the prompt pool (JSONL/CSV/Parquet rows with ``prompt``, ``messages`` or NLU ``question`` + ``label``,
   or a task's data file), keep each row's other fields (the gold label, the task) as the sample's ``meta``
   for rule scorers, render each prompt with the chat template and cut it from its start to
   ``data.max_prompt_tokens`` (CRS §5.3).
5. Resume from the latest valid checkpoint when there is one (trainable weights, optimizer, schedule, KL
   coefficient, reward-normalizer statistics, random state): rerunning the same command after a kill gives
   the result of an uninterrupted run.
6. The PPO loop, one iteration per step (after torchtune's PPO recipe):

   1. generate: sample a response to each prompt with ``generate`` (left-padded prompts; tokens after the
      first EOS are masked out), each from its own seed (run seed, step, place in the batch), so a response
      does not depend on the batch, the process or the generation batch size it is made with;
   2. score: the composite reward per response (every component's raw and normalized score is kept), an
      optional penalty for responses that never emit EOS, an optional score clip (CRS Table 8);
   3. log-probabilities of the responses under the policy and the reference, and the values;
   4. per-token rewards: ``-beta * KL_t`` on every token plus the score on the last one (RLLR Eq. 5), with a
      fixed or adaptive KL controller;
   5. advantages: GAE with the value role, or critic-free (``ppo.advantage: rloo | grpo``: each answer's
      sequence reward against the other answers to its prompt, K = ``ppo.samples_per_prompt``; no value role
      runs); advantages whitened;
   6. ``ppo_epochs`` passes over the batch in minibatches: clipped policy loss + ``vf_coef`` * clipped value
      loss, gradient accumulation over micro-batches (token-level mean over the whole minibatch, so the update
      does not depend on the split), gradient clipping, a step with a non-finite gradient skipped;
   7. update the KL controller with the measured KL;
   8. log the metrics (``metrics.jsonl``), a sample table with every component's score every N steps
      (``samples.jsonl``), a checkpoint every N steps.
7. Save the policy with its tokenizer to ``<output_dir>/model`` (the LoRA adapter, or the merged model with
   ``lora.merge_lora``, or the full model) and the value role to ``<output_dir>/value``.

A score that is NaN or infinite stops the run before any weight changes, with an error naming the reward
component, the samples and their text; the last checkpoint stays valid (fix the scorer, rerun to resume).

Variants are configs, not code: RLHF (one rationale-sensitive reward model), RLLR (one label-sensitive reward
model), RLLR_MIXED (both, ``combinator: threshold``, RLLR Eq. 4), preference-only, absolute-only and the CRS
weighted average (``combinator: weighted``; sweep the weight with ``rewardmix sweep``): see the headers of
``configs/ppo.yaml``, ``configs/ppo-rllr-mixed.yaml`` and ``configs/ppo-crs.yaml``. Every logged metric is
explained in ``docs/metrics.md``.

Reference: RLLR §3.3, Eq. 4-5 and Table 3; CRS §5.4 and Table 8; Ziegler et al. 2019 §2.2 (KL-shaped reward,
adaptive KL); Schulman et al. 2017 (PPO) and 2016 (GAE); STYLE.md example 2 (torchtune's PPO recipe).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rewardmix.algos.advantages import (
    broadcast_to_tokens,
    group_advantages,
    group_pair_accuracy,
    rloo_advantages,
)
from rewardmix.algos.combine import clip_scores_symmetric
from rewardmix.algos.gae import compute_gae, whiten
from rewardmix.algos.kl import AdaptiveKLController, FixedKLController, KLController, kl_shaped_rewards
from rewardmix.algos.masked import masked_mean
from rewardmix.algos.ppo import entropy_from_logits, explained_variance, policy_loss, value_loss
from rewardmix.algos.stats import clustered_standard_error
from rewardmix.config import to_dict
from rewardmix.data.chat import ChatDataError, Message, as_messages, tokenize_prompt, truncate_prompt_ids
from rewardmix.data.readers import DataError, read_converted
from rewardmix.rundir import atomic_write_text, prepare_run_dir
from rewardmix.scoring import (
    BuildContext,
    CompositeConfig,
    CompositeReward,
    NonFiniteScoreError,
    ScoringBatch,
    build_scorer,
)
from rewardmix.train.checkpoint import load_latest_checkpoint, restore_rng, save_checkpoint
from rewardmix.train.distributed import (
    all_reduce_gradients,
    any_process,
    broadcast_parameters,
    check_data_parallel,
    gather_objects,
    gather_rows,
    make_accelerator,
)
from rewardmix.train.loop import (
    NonFiniteGuard,
    SampleTable,
    TrainLogger,
    chunk,
    clip_gradients,
    epoch_order,
    global_sum,
    pad_sequences,
    set_seed,
    truncate_jsonl_after,
)
from rewardmix.train.schedule import cosine_with_warmup, warmup_steps_for

log = logging.getLogger(__name__)

POLICY_ROLE = "policy"
VALUE_ROLE = "value"
BUILTIN_TOY = "builtin:toy"
PromptFormat = Literal["auto", "prompt", "messages", "nlu", "task"]


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class ModelConfig:
    name: str = "tiny"
    """The base the policy starts from (the SFT model): a folder, a hub id, ``offline:smollm2`` or ``tiny`` (a
    random 2-layer Llama built in memory, for tests and smoke runs)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype when loading."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""


@dataclass
class LoraConfig:
    enabled: bool = True
    """Policy = LoRA role ``policy`` on the frozen base (true), or every weight trains (false: full fine-tuning;
    the reference is then a frozen copy of the base, which also carries the value role)."""
    r: int = 16
    """Adapter rank of the policy and value roles (RLLR: 16; CRS Table 8: 16)."""
    alpha: int = 32
    """LoRA scaling numerator; the update is scaled by alpha / r (CRS Table 8: 32)."""
    target_modules: list[str] | None = None
    """Module names to adapt; null: every linear layer but the LM head (CRS Table 8 "Lora Target Module: All")."""
    merge_lora: bool = False
    """At the end also merge the policy adapter into the base: ``<output_dir>/model`` is then a plain model and
    the adapter goes to ``<output_dir>/adapter``."""


@dataclass
class DataConfig:
    prompts: str = BUILTIN_TOY
    """Prompt pool: a JSONL/CSV/TSV/Parquet file, or ``builtin:toy`` (66 "What is two plus three?" prompts)."""
    format: PromptFormat = "auto"
    """Row format. ``prompt``: a text field (``prompt_key``); ``messages``: a conversation (a trailing assistant
    turn is dropped and kept as ``meta.reference``); ``nlu``: ``question`` (+ ``label``, ``task``) rows; ``task``:
    ``prompts`` is a data file of the NLU task ``task``, read by its declaration. ``auto`` tells the first three
    apart by the first row's keys. Every other field of a row is kept in the sample's ``meta``."""
    task: str | None = None
    """NLU task name (``sst2``, ...): needed by ``format: task``; with other formats, the ``meta.task`` of rows
    that have none (what ``label_correct`` reads)."""
    prompt_key: str = "prompt"
    """Field holding the prompt text for ``format: prompt``."""
    system_prompt: str | None = None
    """A system message put before every prompt that has none; null: no system message."""
    max_prompt_tokens: int = 1024
    """Prompt tokens kept, cut from the start (CRS §5.4: prompts up to 1024 tokens; CRS §5.3: from the start)."""
    epochs: int = 1
    """Passes over the prompt pool when ``ppo.steps`` is null (RLLR Table 3: 1 epoch)."""
    limit: int | None = None
    """Use only the first N prompts (null: all)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A malformed row: stop with its file, line and field (``error``), or count it, log it and go on."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    """Longest response (CRS §5.4: 512); a response that reaches it without EOS counts as truncated."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are computed at the same temperature, so PPO stays on-policy."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0: off). Anything but 0 / top_p 1 samples from a truncated
    distribution while the loss uses the full one (TRL's advice: leave them off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off)."""
    batch_size: int = 16
    """Prompts per ``generate`` call on a process (memory and speed only: every response has its own seed, so the
    samples do not depend on it; the rollout batch is ``ppo.batch_size``)."""
    missing_eos_penalty: float | None = None
    """Subtract this from the score of a response that never emits EOS (TRL's ``missing_eos_penalty``); null:
    no penalty."""
    backend: Literal["hf", "vllm"] = "hf"
    """Who samples the rollouts: ``hf`` (``generate`` on the policy itself; any device) or ``vllm`` (a vLLM engine
    on the GPU holding a copy of the policy, synced after every update: ``rewardmix.models.vllm_rollout``; needs
    the ``vllm`` extra, installed in a separate environment, and a model folder, not ``tiny``)."""
    vllm_gpu_memory_utilization: float = 0.3
    """``backend: vllm``: fraction of the GPU's memory the engine may take (its weights and KV cache); the
    training model shares the GPU."""

    def __post_init__(self) -> None:
        if self.backend == "vllm":
            from rewardmix.models.vllm_rollout import INSTALL_HINT, vllm_available  # imports torch only

            if not vllm_available():
                raise ValueError(f"backend: vllm, but the vllm package is not installed here: {INSTALL_HINT}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError("vllm_gpu_memory_utilization must be in (0, 1]")


@dataclass
class KLConfig:
    kind: Literal["fixed", "adaptive"] = "adaptive"
    """``fixed`` keeps beta at ``init_coef``; ``adaptive`` moves it towards ``target`` (Ziegler et al. 2019)."""
    init_coef: float = 0.2
    """Initial KL coefficient beta of RLLR Eq. 5 (CRS Table 8: 0.002)."""
    target: float = 6.0
    """Adaptive controller: target KL per response, in nats."""
    horizon: int = 10000
    """Adaptive controller: responses over which the error is corrected."""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the reward (k1 = log pi - log pi_ref, as Ziegler et al.)."""


@dataclass
class PPOConfig:
    steps: int | None = None
    """PPO iterations (one rollout batch each); null: ``data.epochs`` passes over the prompt pool."""
    batch_size: int = 16
    """Responses per iteration on each process: the rollout batch is ``batch_size * num_processes`` (CRS Table 8:
    16; RLLR Table 3: 16-32)."""
    ppo_epochs: int = 4
    """Optimization passes over each rollout batch (CRS Table 8: 4)."""
    minibatch_size: int = 4
    """Responses per optimizer step on each process (``minibatch_size * num_processes`` in all)."""
    micro_batch_size: int = 4
    """Responses per forward/backward pass on a process; a minibatch is accumulated over
    ``minibatch_size / micro_batch_size`` passes with the exact same update."""
    forward_batch_size: int = 16
    """Responses per no-grad forward pass (log-probabilities, reference, values) at rollout time."""
    learning_rate: float = 1.41e-5
    """Peak AdamW learning rate (CRS Table 8: 1.41e-5; RLLR Table 3: 2e-6 to 1e-5)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2) (CRS Table 8)."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon (CRS Table 8)."""
    weight_decay: float = 1e-6
    """Decoupled weight decay on matrices (CRS Table 8: 1e-6)."""
    warmup_ratio: float = 0.0
    """Linear warm-up over this fraction of the optimizer steps."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of the peak (RLLR: cosine schedule); 1.0 keeps the learning rate constant."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm (null: no clipping)."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon (CRS Table 8: 0.4)."""
    clip_range_value: float = 0.2
    """Value clip around the rollout values (CRS Table 8: 0.4)."""
    vf_coef: float = 0.1
    """Weight of the value loss in ``loss = policy_loss + vf_coef * value_loss``."""
    gamma: float = 1.0
    """Discount over response tokens (1: the final score counts fully for every token)."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalize advantages to mean 0, std 1 over the batch's response tokens."""
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    """How advantages are estimated. ``gae``: per-token GAE with the value role (PPO as in RLLR / CRS).
    ``rloo``: critic-free, each response's sequence reward (score - beta * its KL) minus the mean of the other
    answers to the same prompt (Ahmadian et al. 2024). ``grpo``: the same reward minus its group's mean, divided
    by the group's std when ``scale_by_std`` (Shao et al. 2024). Critic-free estimators need
    ``samples_per_prompt >= 2``; they train no value role and skip its forward passes."""
    samples_per_prompt: int = 1
    """K responses sampled per prompt (each with its own seed): an iteration answers ``batch_size / K`` prompts
    K times. The group of a critic-free baseline; with ``gae`` it only changes which prompts a batch holds."""
    scale_by_std: bool = True
    """``advantage: grpo``: divide by the group's std (GRPO); false keeps the mean-centred reward (Dr. GRPO)."""
    score_clip: float | None = None
    """Clip the final score to [-score_clip, score_clip] (CRS Table 8: 4); null: no clip. Per-component clips are
    set on the reward's components."""
    kl: KLConfig = field(default_factory=KLConfig)
    reference_samples: int = 64
    """Responses generated at the start (by the initial policy = the SFT model) to calibrate reward components
    with ``normalize: reference``; unused otherwise."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast through Accelerate; ``no`` computes in the weights' dtype."""


def _default_reward() -> CompositeConfig:
    from rewardmix.scoring import ComponentConfig, ContainsConfig

    return CompositeConfig(
        components=[
            ComponentConfig(name="says_five", type="contains", contains=ContainsConfig(substring="five"))
        ]
    )


@dataclass
class LoggingConfig:
    sample_every: int = 10
    """Write a sample table (prompt, response, every component's score) every N steps (0: only at the end)."""
    num_samples: int = 4
    """Responses of the rollout batch in each sample table (0: none)."""
    checkpoint_every: int = 50
    """Save a checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest)."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Extra metric sinks, used when installed; metrics.jsonl is always written."""


@dataclass
class Config:
    output_dir: str = "runs/ppo"
    """Run directory: config, metrics.jsonl, samples.jsonl, checkpoints/, model/, value/ (rerun to resume)."""
    seed: int = 0
    """Seed of the prompt order, LoRA initialization, value head and sampling."""
    cpu: bool = False
    """Run on the CPU even when a GPU is present."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward: CompositeConfig = field(default_factory=_default_reward)
    """The composite reward: components (reward models, rules) and a combinator (see rewardmix.scoring)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        p, g = self.ppo, self.generation
        for name, value in (
            ("ppo.batch_size", p.batch_size),
            ("ppo.ppo_epochs", p.ppo_epochs),
            ("ppo.minibatch_size", p.minibatch_size),
            ("ppo.micro_batch_size", p.micro_batch_size),
            ("ppo.forward_batch_size", p.forward_batch_size),
            ("generation.max_new_tokens", g.max_new_tokens),
            ("generation.batch_size", g.batch_size),
            ("data.max_prompt_tokens", self.data.max_prompt_tokens),
            ("data.epochs", self.data.epochs),
            ("logging.checkpoint_every", self.logging.checkpoint_every),
            ("logging.keep_checkpoints", self.logging.keep_checkpoints),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if p.steps is not None and p.steps < 1:
            raise ValueError("ppo.steps must be >= 1 or null")
        if p.samples_per_prompt < 1 or p.batch_size % p.samples_per_prompt:
            raise ValueError(
                f"ppo.samples_per_prompt must be >= 1 and divide ppo.batch_size ({p.batch_size}), "
                f"got {p.samples_per_prompt}"
            )
        if p.advantage != "gae" and p.samples_per_prompt < 2:
            raise ValueError(
                f"ppo.advantage: {p.advantage} needs ppo.samples_per_prompt >= 2 (its group baseline)"
            )
        if p.minibatch_size > p.batch_size:
            raise ValueError("ppo.minibatch_size must be <= ppo.batch_size")
        if not g.temperature > 0:
            raise ValueError("generation.temperature must be > 0 (sampling; PPO needs a stochastic policy)")
        if not 0 < g.top_p <= 1 or g.top_k < 0:
            raise ValueError("generation.top_p must be in (0, 1] and generation.top_k >= 0")
        if p.score_clip is not None and not p.score_clip > 0:
            raise ValueError("ppo.score_clip must be > 0 or null")
        if self.data.format == "task" and self.data.task is None:
            raise ValueError("data.format: task needs data.task")
        if not self.reward.components:
            raise ValueError("reward.components: give at least one component")
        if g.backend == "vllm" and self.model.name == "tiny":
            raise ValueError("generation.backend: vllm loads the base from a folder; tiny is built in memory")


# ---------------------------------------------------------------------------------------------------------
# Typed results


class PpoResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    model_dir: Path
    """The policy the next stage loads: the LoRA adapter, the merged model, or the full model."""
    adapter_dir: Path | None
    """The policy adapter when it was merged into ``model_dir``; None otherwise (``model_dir`` is then the adapter or
    the full model)."""
    value_dir: Path
    """The value role's adapter and head."""
    global_step: int
    """PPO iterations done."""
    metrics: dict[str, float]
    """The metrics row of the last iteration."""


class PromptExample(NamedTuple):
    """One prompt of the pool."""

    messages: list[Message]
    """The conversation the policy answers (ends with a user turn)."""
    input_ids: list[int]
    """Its rendering with the assistant header, cut from the start to ``data.max_prompt_tokens``."""
    meta: dict[str, Any]
    """The row's other fields (gold label, task, ...), passed to the scorers."""


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


class Trajectory(NamedTuple):
    """One rollout batch of B responses; response tensors are (B, R), right-padded."""

    query_responses: torch.Tensor
    """(B, P + R) left-padded prompt ids followed by the response ids."""
    attention_mask: torch.Tensor
    """(B, P + R) 1 on real prompt tokens and on response tokens up to and including EOS."""
    response_mask: torch.Tensor
    """(B, R) True on response tokens up to and including the first EOS."""
    has_eos: torch.Tensor
    """(B,) whether the response ended with EOS (False: cut at ``max_new_tokens``)."""
    logprobs: torch.Tensor
    """(B, R) log pi(token) under the policy at rollout time (old log-probabilities of the PPO ratio)."""
    ref_logprobs: torch.Tensor
    """(B, R) log pi_ref(token) under the reference (adapters disabled)."""
    values: torch.Tensor
    """(B, R) V(s_t) before each response token, at rollout time."""
    scores: torch.Tensor
    """(B,) final score: composite, minus the missing-EOS penalty, clipped."""
    rewards: torch.Tensor
    """(B, R) per-token rewards: -beta * KL_t, plus the score on the last token (RLLR Eq. 5)."""
    kl: torch.Tensor
    """(B, R) per-token KL estimate."""
    advantages: torch.Tensor
    """(B, R) GAE advantages (whitened when configured)."""
    returns: torch.Tensor
    """(B, R) GAE returns (value targets)."""
    entropy: torch.Tensor
    """() mean entropy of the policy over the response tokens."""


class PPOStats(NamedTuple):
    """Means over every optimizer step of one PPO iteration (token-weighted within a minibatch)."""

    loss_policy: float
    loss_value: float
    clipfrac: float
    approx_kl: float
    value_clipfrac: float
    grad_norm: float


# ---------------------------------------------------------------------------------------------------------
# The stage


def run(cfg: Config, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> PpoResult:
    """Run PPO as configured; rerun the same config to resume after a kill.

    Args:
        cfg: The stage config.
        on_step: Called after every iteration (after its logging and checkpoint) with the step and its metrics
            row; tests use it to simulate a kill.

    Returns:
        A :class:`PpoResult`.
    """
    # step 1. run directory, accelerator (data-parallel when launched with several processes), seed
    accelerator = make_accelerator(cpu=cfg.cpu, mixed_precision=cfg.ppo.mixed_precision, stage="ppo")
    check_data_parallel(accelerator, "ppo")
    is_main = accelerator.is_main_process
    out = Path(cfg.output_dir)
    if is_main:
        prepare_run_dir(out, cfg, stage="ppo")
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)

    # step 2. tokenizer, base and roles: policy, value, reference (= adapters disabled)
    models = load_models(cfg, accelerator.device)
    broadcast_parameters(accelerator, models.params)  # every replica starts from the main process's weights
    models = with_rollout_engine(cfg, models)  # generation.backend vllm: an engine with the policy's weights
    n_train = sum(p.numel() for p in models.params)
    n_base = sum(p.numel() for p in models.shared.parameters())
    log.info("trainable parameters (policy + value): %d; shared base: %d", n_train, n_base)

    # step 3. the composite reward; reward models with a role become roles on the shared base
    reward = build_reward(cfg, models, accelerator.device)

    # step 4. the prompt pool
    prompts = load_prompts(cfg, models.tokenizer, out=out if is_main else None)
    # Batch sizes are per process: an iteration takes batch_size responses from each process.
    global_batch = cfg.ppo.batch_size * accelerator.num_processes
    group = cfg.ppo.samples_per_prompt  # K answers per prompt, in consecutive rows of the batch
    total_steps = cfg.ppo.steps or math.ceil(len(prompts) * cfg.data.epochs / (global_batch // group))
    minibatches = math.ceil(cfg.ppo.batch_size / cfg.ppo.minibatch_size)
    optimizer, scheduler = make_optimizer(cfg, models.params, total_steps * cfg.ppo.ppo_epochs * minibatches)
    kl_ctl = make_kl_controller(cfg.ppo.kl)
    # What a checkpoint is only valid for: other prompts, batch or reward would not continue this run (the
    # global batch: a run may resume on another number of processes that keeps it).
    plan = {
        "prompts": prompt_hash(prompts),
        "batch_size": global_batch,
        "steps": total_steps,
        "components": reward.names,
    }
    if group > 1 or cfg.ppo.advantage != "gae":  # absent from plans written before these keys existed
        plan |= {"samples_per_prompt": group, "advantage": cfg.ppo.advantage}

    label_monitor = make_label_monitor(cfg, prompts)

    # step 5. resume from the latest valid checkpoint, or calibrate reference-normalized components afresh
    checkpoint = load_latest_checkpoint(out)
    step = 0
    if checkpoint is not None:
        if checkpoint.extra.get("plan") != plan:
            raise ValueError(
                f"{checkpoint.path} was written for another plan ({checkpoint.extra.get('plan')}) than this "
                f"config's ({plan}); use a new output_dir or delete {out / 'checkpoints'}"
            )
        load_named_state(models, checkpoint.trainable_state)
        sync_rollout_weights(models)  # the vLLM engine (if any) samples with the resumed policy
        optimizer.load_state_dict(checkpoint.optimizer_state)
        scheduler.load_state_dict(checkpoint.scheduler_state)
        kl_ctl.load_state_dict(checkpoint.extra["kl"])
        reward.load_state_dict(checkpoint.extra["reward"])
        restore_rng(checkpoint.rng_state)
        step = checkpoint.step
        for name in ("metrics.jsonl", "samples.jsonl"):  # the redone steps must not appear twice
            if is_main:
                truncate_jsonl_after(out / name, step)
    elif any(c.normalize == "reference" for c in cfg.reward.components):
        calibrate_reward(cfg, models, reward, prompts, accelerator)
    resuming = checkpoint is not None
    metrics = TrainLogger(
        out, report_to=cfg.logging.report_to, resume=resuming, config=to_dict(cfg), enabled=is_main
    )
    samples = SampleTable(
        out / "samples.jsonl", resume=resuming, enabled=is_main and cfg.logging.num_samples > 0
    )

    # step 6. the PPO loop; each process generates, scores and evaluates its share of the batch, then every
    # process holds the whole batch (gathered) for the rest of the iteration
    guard = NonFiniteGuard()
    row: dict[str, float] = {}
    rank, b = accelerator.process_index, cfg.ppo.batch_size
    share = slice(rank * b, (rank + 1) * b)
    bar = tqdm(range(step, total_steps), desc="ppo", unit="step", disable=not is_main)
    for s in bar:
        started = time.perf_counter()
        picked = batch_indices(len(prompts), s, global_batch // group, seed=cfg.seed)
        batch = [prompts[i] for i in picked for _ in range(group)]
        mine = batch[share]  # a contiguous slice: gathering in process order restores the batch order
        models.policy.eval()  # rollouts: no dropout (it is zeroed anyway), no autograd
        # 6.1 generate: left-padded prompts, sampled responses, tokens after EOS masked; each response from
        # its own seed (run seed, step, place in the batch), whichever process makes it
        seeds = rollout_seeds(cfg.seed, s, range(global_batch))[share]
        query_responses, attention_mask, response_mask, has_eos = generate_responses(
            models, mine, cfg, seeds=seeds
        )
        generate_time = time.perf_counter() - started
        # 6.2 score: every component's raw score here, the composite over the whole batch (running statistics
        # of all processes), missing-EOS penalty, score clip
        texts = decode_responses(models.tokenizer, query_responses, response_mask)
        raw = score_responses(reward, mine, texts, query_responses, response_mask, accelerator, step=s + 1)
        # 6.3 log-probabilities (policy, reference), entropy and values of the sampled tokens; then the whole
        # batch on every process
        with accelerator.autocast():
            logprobs, ref_logprobs, values, entropy = rollout_forward(
                models, query_responses, attention_mask, response_mask, cfg
            )
        entropy = gather_mean(accelerator, entropy, response_mask.sum())
        texts = gather_objects(accelerator, texts)
        query_responses, attention_mask, response_mask, has_eos, logprobs, ref_logprobs, values = gather_rollout(
            accelerator, pad_token_id(models.tokenizer), query_responses, attention_mask, response_mask, has_eos,
            logprobs, ref_logprobs, values,
        )  # fmt: skip
        composite = reward.combine({name: gather_rows(accelerator, x) for name, x in raw.items()})
        scores, score_clipfrac = final_scores(composite.scores, has_eos, cfg)
        # 6.4 per-token rewards: -beta * KL_t, plus the score on the last token (RLLR Eq. 5)
        kl_coef = kl_ctl.value
        rewards, kl = kl_shaped_rewards(
            scores, logprobs, ref_logprobs, response_mask, kl_coef=kl_coef, estimator=cfg.ppo.kl.estimator
        )
        # 6.5 advantages (GAE with the value role, or a critic-free group baseline) and returns
        advantages, returns = estimate_advantages(cfg.ppo, rewards, values, response_mask)
        trajectory = Trajectory(
            query_responses, attention_mask, response_mask, has_eos, logprobs, ref_logprobs, values,
            scores, rewards, kl, advantages, returns, entropy,
        )  # fmt: skip
        # 6.6 PPO epochs over minibatches: clipped policy + value losses, accumulation, clipping, NaN guard
        lr = optimizer.param_groups[0]["lr"]
        stats = ppo_update(models, optimizer, scheduler, trajectory, cfg, accelerator, guard, step=s + 1)
        sync_rollout_weights(models)  # the vLLM engine (if any) samples the next batch with the new weights
        # 6.7 the KL controller sees this batch's mean KL per response
        kl_per_response = kl.sum(dim=1)
        kl_ctl.update(float(kl_per_response.mean()), global_batch)
        # 6.8 log, sample table, checkpoint
        elapsed = time.perf_counter() - started
        row = step_metrics(
            trajectory, stats, reward, kl_coef=kl_coef, lr=lr, with_value=cfg.ppo.advantage == "gae"
        )
        row["objective/score_clipfrac"] = score_clipfrac
        # SE over prompts: the K answers to one prompt are correlated
        row["objective/score_se"] = clustered_standard_error(scores, group)
        if label_monitor is not None:  # gold labels known: how right the policy is, how the reward sees it
            row |= label_metrics(label_monitor, batch, texts, composite, scores, group)
        row["perf/step_time"] = elapsed
        row["perf/generate_time"] = generate_time
        row["perf/tokens_per_sec"] = float(attention_mask.sum()) / max(elapsed, 1e-9)
        metrics.log(s + 1, row)
        bar.set_postfix(score=f"{row['objective/score']:.3f}", kl=f"{row['objective/kl']:.3f}")
        last = s + 1 == total_steps
        if cfg.logging.num_samples > 0 and (last or _every(cfg.logging.sample_every, s + 1)):
            samples.log(s + 1, sample_rows(batch, texts, trajectory, composite, models.tokenizer, cfg))
        if last or _every(cfg.logging.checkpoint_every, s + 1):
            if is_main:  # every process holds the same weights and statistics: one writes them
                save_checkpoint(
                    out,
                    s + 1,
                    trainable_state={name: p.detach() for name, p in named_trainable(models).items()},
                    optimizer=optimizer,
                    scheduler=scheduler,
                    extra={"plan": plan, "kl": kl_ctl.state_dict(), "reward": reward.state_dict()},
                    keep=cfg.logging.keep_checkpoints,
                )
            accelerator.wait_for_everyone()
        if on_step is not None:
            on_step(s + 1, row)
    bar.close()
    metrics.close()
    if not row and (out / "metrics.jsonl").is_file():  # rerun of a finished run: report its last row
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        row = {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}

    # step 7. save the policy (adapter, merged or full model) with its tokenizer, and the value role
    merged = cfg.lora.enabled and cfg.lora.merge_lora
    model_dir, adapter_dir, value_dir = out / "model", (out / "adapter" if merged else None), out / "value"
    if is_main:
        model_dir, adapter_dir, value_dir = save_final_models(cfg, models, out)
        summary = {"global_step": total_steps, "model_dir": str(model_dir), "metrics": row}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=_json_float) + "\n")
        log.info("PPO done after %d steps; policy in %s", total_steps, model_dir)
    accelerator.wait_for_everyone()
    return PpoResult(out, model_dir, adapter_dir, value_dir, total_steps, row)


def _every(n: int, step: int) -> bool:
    return n > 0 and step % n == 0


def _json_float(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)


# ---------------------------------------------------------------------------------------------------------
# Models and roles


def load_models(cfg: Config, device: torch.device) -> Models:
    """The tokenizer and every role on one base (see step 2 of the module docstring)."""
    from rewardmix.models import heads, loading, lora, tiny

    if cfg.model.name == "tiny":
        tokenizer = tiny.build_tiny_tokenizer()
        base = tiny.build_tiny_causal_lm(tokenizer, seed=cfg.seed)
    else:
        path = loading.resolve_model_path(cfg.model.name)
        tokenizer = loading.load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
        base = loading.load_causal_lm(
            path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code
        )
    if cfg.model.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # LoRA dropout 0: dropout would make the policy's two forward passes in the PPO ratio differ.
    settings = lora.LoraSettings(
        r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=0.0, target_modules=cfg.lora.target_modules
    )
    if cfg.lora.enabled:
        shared = lora.add_adapters(base, [POLICY_ROLE, VALUE_ROLE], settings)
        policy, policy_role = shared, POLICY_ROLE
    else:
        # Full fine-tuning changes the base itself: the reference (and the value / reward-model roles) need a
        # frozen copy of it.
        shared = lora.add_adapters(copy.deepcopy(base), [VALUE_ROLE], settings)
        policy, policy_role = base, None
        for param in policy.parameters():
            param.requires_grad_(True)
    # seed: the value head is drawn from its own stream, so adding it does not shift the run's random state.
    value = heads.ScalarHeadModel(shared, pooling="last", role=VALUE_ROLE, seed=cfg.seed + 1)
    for module in (policy, shared, value):
        module.to(device)
        disable_dropout(module)
    params = lora.trainable_parameters(shared, POLICY_ROLE) if cfg.lora.enabled else list(policy.parameters())
    params += lora.trainable_parameters(value, VALUE_ROLE)
    return Models(tokenizer, policy, shared, value, policy_role, params)


def with_rollout_engine(cfg: Config, models: Models) -> Models:
    """``generation.backend: vllm``: ``models`` with a vLLM engine holding the policy's current weights.

    The engine loads the base from its folder and is then given the policy's weights (LoRA role merged out of
    place); with ``backend: hf`` the models come back unchanged and vLLM is never imported.
    """
    if cfg.generation.backend != "vllm":
        return models
    from rewardmix.models import loading
    from rewardmix.models.vllm_rollout import VllmRollout

    engine = VllmRollout(
        loading.resolve_model_path(cfg.model.name),
        seed=cfg.seed,
        dtype=cfg.model.dtype,
        gpu_memory_utilization=cfg.generation.vllm_gpu_memory_utilization,
        max_model_len=cfg.data.max_prompt_tokens + cfg.generation.max_new_tokens,
    )
    models = models._replace(rollout=engine)
    sync_rollout_weights(models)
    return models


def sync_rollout_weights(models: Models) -> None:
    """Load the policy's current weights into the rollout engine, if there is one (after each update, resume)."""
    if models.rollout is not None:
        models.rollout.sync_weights(models.policy, models.policy_role)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability of ``model`` to 0, in training mode too; returns how many were set.

    ``torch.nn.Dropout`` modules get ``p = 0``; float ``attention_dropout`` / ``dropout`` attributes (attention
    implementations read them, e.g. Llama) and the config's ``*dropout*`` fields are set to 0.

    Reference: SPEC §7 ("dropout off"); Ziegler et al. 2019 / TRL (``disable_dropout_in_model``).
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            if module.p != 0.0:
                count += 1
            module.p = 0.0
        for attr in ("attention_dropout", "dropout"):
            value = getattr(module, attr, None)
            if isinstance(value, float) and not isinstance(value, bool) and value != 0.0:
                setattr(module, attr, 0.0)
                count += 1
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key, value in config.to_dict().items():
                if "dropout" in key and isinstance(value, float) and value != 0.0:
                    setattr(config, key, 0.0)
                    count += 1
    return count


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
    """Checkpoint name -> parameter for every trained tensor (policy, value role, value head)."""
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


# ---------------------------------------------------------------------------------------------------------
# Reward


def build_reward(cfg: Config, models: Models, device: torch.device) -> CompositeReward:
    """The composite reward of ``cfg.reward``; reward models with a ``role`` are loaded onto the shared base."""
    context = BuildContext(device=device, shared_backbone=models.shared, tokenizer=models.tokenizer)
    if not cfg.lora.enabled and any(c.reward_model and c.reward_model.role for c in cfg.reward.components):
        log.info("full fine-tuning: reward-model roles are loaded onto the frozen reference copy")
    # the composite checks every raw score (NonFiniteScoreError names the component, the samples, the text)
    scorers = {c.name: build_scorer(c, context) for c in cfg.reward.components}
    return CompositeReward(cfg.reward, scorers=scorers, context=context)


def scoring_batch(
    prompts: Sequence[PromptExample],
    texts: Sequence[str],
    query_responses: torch.Tensor,
    response_mask: torch.Tensor,
) -> ScoringBatch:
    """What the scorers see: prompt conversations, response texts and tokens, and each prompt's meta."""
    response_ids = query_responses[:, query_responses.shape[1] - response_mask.shape[1] :]
    return ScoringBatch(
        prompts=[[m.to_dict() for m in p.messages] for p in prompts],
        responses=list(texts),
        meta=[p.meta for p in prompts],
        response_ids=response_ids,
        response_mask=response_mask,
    )


def score_responses(
    reward: CompositeReward,
    prompts: Sequence[PromptExample],
    texts: Sequence[str],
    query_responses: torch.Tensor,
    response_mask: torch.Tensor,
    accelerator: Accelerator,
    *,
    step: int,
) -> dict[str, torch.Tensor]:
    """Every component's raw (B_p,) score of this process's responses.

    A non-finite score on any process stops every process (the one that saw it names the component and the
    sample), before any weight changes.

    Raises:
        NonFiniteScoreError: A component returned NaN or inf on this or another process.
    """
    error: NonFiniteScoreError | None = None
    raw: dict[str, torch.Tensor] = {}
    try:
        raw = reward.raw_scores(scoring_batch(prompts, texts, query_responses, response_mask))
    except NonFiniteScoreError as e:
        error = e
    if any_process(accelerator, error is not None):
        reason = error or "a reward component returned a non-finite score on another process (see its log)"
        raise NonFiniteScoreError(
            f"step {step}: {reason}. No weight was changed by this step; the last checkpoint is still valid: "
            "fix the scorer and rerun the same command to resume"
        ) from None
    return raw


def gather_mean(accelerator: Accelerator, mean: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    """The mean over every process of per-process means, each weighted by its ``count`` (e.g. tokens)."""
    if accelerator.num_processes == 1:
        return mean
    total = global_sum(accelerator, float(mean) * float(count))
    n = global_sum(accelerator, float(count))
    return torch.tensor(total / n if n else math.nan)


def gather_rollout(
    accelerator: Accelerator,
    pad_id: int,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    has_eos: torch.Tensor,
    *per_token: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The whole batch's rollout on every process, in the layout one process would have made.

    Each process's prompts are left-padded to the widest prompt of the batch and its responses right-padded
    to the longest response, so row ``i`` of the result is response ``i`` of the batch with every real token
    at the position it has alone (padding is masked everywhere).

    Args:
        accelerator: The stage's accelerator.
        pad_id: Id written at padded positions.
        query_responses: (B_p, P_p + R_p) this process's ids.
        attention_mask: (B_p, P_p + R_p).
        response_mask: (B_p, R_p) bool.
        has_eos: (B_p,) bool.
        per_token: (B_p, R_p) tensors (log-probabilities, values), padded with 0.

    Returns:
        ``(query_responses, attention_mask, response_mask, has_eos, *per_token)`` of the B = sum B_p responses.
    """
    if accelerator.num_processes == 1:
        return (query_responses, attention_mask, response_mask, has_eos, *per_token)
    P = query_responses.shape[1] - response_mask.shape[1]
    ids = torch.cat(
        [
            gather_rows(accelerator, query_responses[:, :P], pad_value=pad_id, side="left"),
            gather_rows(accelerator, query_responses[:, P:], pad_value=pad_id),
        ],
        dim=1,
    )
    mask = torch.cat(
        [
            gather_rows(accelerator, attention_mask[:, :P], pad_value=0, side="left"),
            gather_rows(accelerator, attention_mask[:, P:], pad_value=0),
        ],
        dim=1,
    )
    return (
        ids,
        mask,
        gather_rows(accelerator, response_mask, pad_value=False),
        gather_rows(accelerator, has_eos),
        *(gather_rows(accelerator, x, pad_value=0.0) for x in per_token),
    )


def final_scores(scores: torch.Tensor, has_eos: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, float]:
    """The score the policy optimizes: composite, minus the missing-EOS penalty, clipped.

    Args:
        scores: (B,) combined scores of the composite reward.
        has_eos: (B,) whether each response emitted EOS.
        cfg: The stage config (``generation.missing_eos_penalty``, ``ppo.score_clip``).

    Returns:
        ``(scores (B,), fraction of scores the clip changed)``.

    Reference: CRS Table 8 ("score clip 4"); TRL ``missing_eos_penalty``.
    """
    scores = scores.to(torch.float32)
    if cfg.generation.missing_eos_penalty is not None:
        penalty = cfg.generation.missing_eos_penalty * (~has_eos).to(scores.dtype)
        scores = scores - penalty.to(scores.device)  # s <- s - penalty on responses without EOS
    clipfrac = 0.0
    if cfg.ppo.score_clip is not None:
        clipfrac = float((scores.abs() > cfg.ppo.score_clip).float().mean())
        scores = clip_scores_symmetric(scores, clip=cfg.ppo.score_clip)  # s <- clip(s, -c, c)
    return scores, clipfrac


@torch.no_grad()
def calibrate_reward(
    cfg: Config,
    models: Models,
    reward: CompositeReward,
    prompts: Sequence[PromptExample],
    accelerator: Accelerator,
) -> None:
    """Give ``normalize: reference`` components the statistics of the initial policy's (= SFT) responses.

    With several processes each one generates and scores all of them (seeded per sample, so every process
    computes the same statistics without communicating; it runs once per run).

    Reference: Ziegler et al. 2019 §2.2 (reward normalized on samples of the initial policy).
    """
    n = min(len(prompts), cfg.ppo.reference_samples)
    picked = [prompts[i] for i in epoch_order(len(prompts), seed=cfg.seed, epoch=0, salt="reference")[:n]]
    models.policy.eval()
    seeds = rollout_seeds(cfg.seed, "reference", range(n))
    query_responses, _, response_mask, _ = generate_responses(models, picked, cfg, seeds=seeds)
    texts = decode_responses(models.tokenizer, query_responses, response_mask)
    reward.calibrate_reference(scoring_batch(picked, texts, query_responses, response_mask))


# ---------------------------------------------------------------------------------------------------------
# Rollouts


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a response: EOS and, when the vocabulary has it, ChatML's ``<|im_end|>``."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def pad_token_id(tokenizer: Any) -> int:
    """The id written at padded positions (never used to find padding: masks do that)."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def response_mask_from_ids(
    response_ids: torch.Tensor, stop_ids: Sequence[int], widths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which response tokens count: every token up to and including the first stop token.

    Args:
        response_ids: (B, R) generated ids (anything may follow the first stop token).
        stop_ids: Ids that end a response (EOS, ``<|im_end|>``).
        widths: (B,) tokens actually generated per row (a row without stop token keeps that many);
            None: R for every row.

    Returns:
        ``(response_mask (B, R) bool, has_eos (B,) bool)``.
    """
    B, R = response_ids.shape
    positions = torch.arange(R, device=response_ids.device)
    is_stop = torch.isin(response_ids, torch.tensor(list(stop_ids), device=response_ids.device))
    first_stop = torch.where(is_stop, positions, R).amin(dim=1) if R else torch.zeros(B, dtype=torch.long)
    has_eos = first_stop < R
    full = (
        torch.full((B,), R, device=response_ids.device) if widths is None else widths.to(response_ids.device)
    )
    length = torch.where(has_eos, first_stop + 1, full)  # keep the stop token itself: its log-prob is learned
    return positions.unsqueeze(0) < length.unsqueeze(1), has_eos


def rollout_seeds(seed: int, step: int | str, positions: Iterable[int]) -> list[int]:
    """One sampling seed per response: a pure function of the run seed, the step and the place in the batch.

    What a response gets therefore depends neither on the batch it is generated with, nor on the process that
    generates it, nor on the global random state (a resumed run needs no generator restored).
    """
    out = []
    for position in positions:
        digest = hashlib.sha256(f"{seed}:{step}:{position}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return out


@torch.no_grad()
def generate_responses(
    models: Models, prompts: Sequence[PromptExample], cfg: Config, *, seeds: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one response per prompt with the policy, response ``i`` from its own seed ``seeds[i]``.

    Prompts are left-padded to the batch's longest (so every response starts at column P); responses of all
    ``generate`` calls are right-padded to the longest, R. Sampling is an inverse-transform draw inside greedy
    decoding (:class:`rewardmix.models.sampling.SeededSampling`): a draw from the same temperature / top-k /
    top-p distribution as ``do_sample=True``, but each row from its own generator.

    Args:
        seeds: One per prompt (see :func:`rollout_seeds`); None draws them from the global torch generator.

    Returns:
        ``(query_responses (B, P + R), attention_mask (B, P + R), response_mask (B, R), has_eos (B,))``.
    """
    from rewardmix.models.sampling import seeded_sampling

    if seeds is None:
        seeds = torch.randint(0, 2**63 - 1, (len(prompts),)).tolist()
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    tokenizer, gen = models.tokenizer, cfg.generation
    device = next(models.policy.parameters()).device
    pad, stops = pad_token_id(tokenizer), stop_token_ids(tokenizer)
    prompt_ids = pad_sequences([p.input_ids for p in prompts], pad_value=pad, side="left").to(device)
    prompt_mask = pad_sequences([[1] * len(p.input_ids) for p in prompts], pad_value=0, side="left").to(
        device
    )
    P = prompt_ids.shape[1]
    pieces: list[torch.Tensor] = []
    if models.rollout is not None:  # generation.backend vllm: one seeded engine request per prompt
        responses = models.rollout.generate(
            [p.input_ids for p in prompts], seeds=seeds, max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p, stop_ids=stops,
        )  # fmt: skip
        pieces = [torch.tensor(r, dtype=prompt_ids.dtype, device=device).reshape(1, -1) for r in responses]
    else:
        for rows in chunk(range(len(prompts)), gen.batch_size):
            rows = list(rows)
            with policy_context(models):
                output = models.policy.generate(
                    input_ids=prompt_ids[rows],
                    attention_mask=prompt_mask[rows],
                    # Greedy over the seeded processor's scores = sampling, one generator per row (see above).
                    do_sample=False,
                    logits_processor=seeded_sampling(
                        [seeds[i] for i in rows],
                        temperature=gen.temperature,
                        top_k=gen.top_k,
                        top_p=gen.top_p,
                        device=device,
                    ),
                    repetition_penalty=1.0,
                    max_new_tokens=gen.max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=stops or None,
                )
            pieces.append(output[:, P:])
    R = max(p.shape[1] for p in pieces)
    widths = torch.cat([torch.full((p.shape[0],), p.shape[1]) for p in pieces]).to(device)
    response_ids = torch.cat([torch.nn.functional.pad(p, (0, R - p.shape[1]), value=pad) for p in pieces])
    response_mask, has_eos = response_mask_from_ids(response_ids, stops, widths)
    query_responses = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)
    return query_responses, attention_mask, response_mask, has_eos


def decode_responses(tokenizer: Any, query_responses: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """The response texts the scorers see: valid tokens only, special tokens (EOS) skipped."""
    R = response_mask.shape[1]
    ids = query_responses[:, -R:].tolist() if R else [[] for _ in range(len(query_responses))]
    lengths = response_mask.sum(dim=1).tolist()
    return [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(ids, lengths, strict=True)]


def policy_logits_logprobs(
    model: torch.nn.Module, query_responses: torch.Tensor, attention_mask: torch.Tensor, response_width: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Logits and log-probabilities of the response tokens under ``model`` (whichever role is active).

    Only the last ``R + 1`` positions go through the LM head (``logits_to_keep``): position ``P - 1 + t``
    predicts response token ``t``. Positions come from the mask, so left padding does not shift them.

    Args:
        model: A causal LM (or a ``PeftModel`` over one).
        query_responses: (B, P + R) ids.
        attention_mask: (B, P + R) mask (left pads, response tokens after EOS: 0).
        response_width: R.
        temperature: The sampling temperature (logits are divided by it, as when sampling).

    Returns:
        ``(logits (B, R, V) float32, logprobs (B, R) float32)``.
    """
    from rewardmix.models.heads import position_ids_from_mask

    R = response_width
    output = model(
        input_ids=query_responses,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=R + 1,
        use_cache=False,
    )
    logits = output.logits[:, :-1].float() / temperature  # (B, R, V): the logits that chose each token
    tokens = query_responses[:, -R:]
    logprobs = (
        torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    )  # log pi(a_t|s_t)
    return logits, logprobs


def value_estimates(
    models: Models, query_responses: torch.Tensor, attention_mask: torch.Tensor, R: int
) -> torch.Tensor:
    """V(s_t) before each response token: the value head at positions ``P - 1 ... P + R - 2``; (B, R) float32."""
    P = query_responses.shape[1] - R
    return models.value.token_scores(query_responses, attention_mask)[:, P - 1 : P - 1 + R]


@torch.no_grad()
def rollout_forward(
    models: Models, query_responses: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
    cfg: Config,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Policy and reference log-probabilities, values and the policy's mean entropy, in no-grad chunks.

    Policy and reference run on the same chunks (same shapes), so while the policy adapter is still the
    identity the two are bit-identical and the KL is exactly 0.

    Returns:
        ``(logprobs (B, R), ref_logprobs (B, R), values (B, R), entropy ())``.
    """
    R = response_mask.shape[1]
    temperature = cfg.generation.temperature
    logprobs, ref_logprobs, values, entropies = [], [], [], []
    for rows in chunk(range(query_responses.shape[0]), cfg.ppo.forward_batch_size):
        ids, mask = query_responses[list(rows)], attention_mask[list(rows)]
        with policy_context(models):
            logits, lp = policy_logits_logprobs(models.policy, ids, mask, R, temperature)
        entropies.append(entropy_from_logits(logits))
        del logits
        with reference_context(models):
            _, ref_lp = policy_logits_logprobs(models.shared, ids, mask, R, temperature)
        logprobs.append(lp)
        ref_logprobs.append(ref_lp)
        if cfg.ppo.advantage == "gae":  # critic-free estimators use no values
            values.append(value_estimates(models, ids, mask, R).float())
        else:
            values.append(torch.zeros_like(lp))
    entropy = masked_mean(torch.cat(entropies), response_mask)
    return torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values), entropy


# ---------------------------------------------------------------------------------------------------------
# Optimization


def estimate_advantages(
    p: PPOConfig, rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token advantages and value targets of one rollout batch, as ``p.advantage`` says.

    ``gae``: GAE(gamma, lambda) over the per-token rewards with the value role's estimates. ``rloo`` / ``grpo``:
    each response's sequence reward, the sum of its per-token rewards (score - beta * its KL), against the
    other answers to its prompt (groups of ``samples_per_prompt`` consecutive rows), given to every token;
    the returns are then 0 (no value role trains). Advantages are whitened over the batch when configured.

    Args:
        p: The ``ppo`` config section.
        rewards: (B, R) per-token rewards (:func:`~rewardmix.algos.kl.kl_shaped_rewards`).
        values: (B, R) value estimates (unused by the critic-free estimators).
        response_mask: (B, R) True on valid response tokens.

    Returns:
        ``(advantages (B, R), returns (B, R))``.
    """
    if p.advantage == "gae":
        advantages, returns = compute_gae(rewards, values, response_mask, gamma=p.gamma, lam=p.lam)
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


def make_optimizer(
    cfg: Config, params: Sequence[torch.nn.Parameter], total_optimizer_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the policy and value weights (decay on matrices only) and its warm-up + cosine schedule."""
    p = cfg.ppo
    groups = [
        {"params": [q for q in params if q.ndim >= 2], "weight_decay": p.weight_decay},
        {"params": [q for q in params if q.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=p.learning_rate, betas=p.adam_betas, eps=p.adam_epsilon
    )
    scheduler = cosine_with_warmup(
        optimizer,
        warmup_steps=warmup_steps_for(total_optimizer_steps, p.warmup_ratio),
        total_steps=max(1, total_optimizer_steps),
        min_lr_ratio=p.min_lr_ratio,
    )
    return optimizer, scheduler


def make_kl_controller(kl: KLConfig) -> KLController:
    """Fixed or adaptive KL coefficient (Ziegler et al. 2019 §2.2)."""
    if kl.kind == "fixed":
        return FixedKLController(kl.init_coef)
    return AdaptiveKLController(kl.init_coef, kl.target, kl.horizon)


def ppo_update(
    models: Models,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    trajectory: Trajectory,
    cfg: Config,
    accelerator: Accelerator,
    guard: NonFiniteGuard,
    *,
    step: int,
) -> PPOStats:
    """``ppo_epochs`` passes over the rollout batch in shuffled minibatches, one optimizer step each.

    Each minibatch's loss is the token-level mean over all its response tokens of
    ``policy_loss + vf_coef * value_loss``; a micro-batch contributes its masked mean times
    ``(its tokens / the minibatch's tokens)``, so accumulation gives the update of one large pass.

    With N processes every process holds the whole batch (``trajectory``), a minibatch has
    ``minibatch_size * N`` responses, each process runs its share of them, and the gradients are summed across
    processes before clipping: the update of one process running the whole minibatch.

    Reference: Schulman et al. 2017 (PPO) Eq. 7 and 9 (clipped surrogate, value loss with weight c1).
    """
    p = cfg.ppo
    t = trajectory
    R = t.response_mask.shape[1]
    rank, world = accelerator.process_index, accelerator.num_processes
    models.policy.train()  # dropout is zeroed: training mode only enables gradient checkpointing
    models.value.train()
    totals = dict.fromkeys(PPOStats._fields, 0.0)
    n_optimizer_steps = 0
    for epoch in range(p.ppo_epochs):
        # A seeded order per (step, epoch): the same on every process and after a resume.
        B = t.response_mask.shape[0]
        order = epoch_order(B, seed=cfg.seed, epoch=(step - 1) * p.ppo_epochs + epoch, salt="ppo-minibatches")
        for minibatch in chunk(order, p.minibatch_size * world):
            n_tokens = float(t.response_mask[minibatch].sum())  # the whole minibatch's, on every process
            for micro in chunk(minibatch[rank::world], p.micro_batch_size):
                rows = list(micro)
                mask = t.response_mask[rows]
                weight = float(mask.sum()) / n_tokens  # this micro-batch's share of the minibatch's tokens
                # L = L_clip + c1 * L_V, backpropagated one term at a time: the policy and value roles train
                # disjoint weights, so the gradients are the same, and the policy's activations are freed
                # before the value's forward pass (the peak holds one role's activations, not two).
                with accelerator.autocast(), policy_context(models):
                    _, logprobs = policy_logits_logprobs(
                        models.policy, t.query_responses[rows], t.attention_mask[rows], R,
                        cfg.generation.temperature,
                    )  # fmt: skip
                pg_loss, clipfrac, approx_kl = policy_loss(
                    logprobs, t.logprobs[rows], t.advantages[rows], mask, clip_range=p.clip_range
                )
                accelerator.backward(pg_loss * weight)
                del logprobs
                totals["loss_policy"] += float(pg_loss.detach()) * weight
                totals["clipfrac"] += float(clipfrac) * weight
                totals["approx_kl"] += float(approx_kl) * weight
                if p.advantage != "gae":  # critic-free: no value role to train
                    continue
                with accelerator.autocast():
                    values = value_estimates(models, t.query_responses[rows], t.attention_mask[rows], R)
                vf_loss, vf_clipfrac = value_loss(
                    values.float(), t.values[rows], t.returns[rows], mask, clip_range_value=p.clip_range_value
                )
                accelerator.backward(p.vf_coef * vf_loss * weight)
                totals["loss_value"] += float(vf_loss.detach()) * weight
                totals["value_clipfrac"] += float(vf_clipfrac) * weight
            all_reduce_gradients(accelerator, models.params)  # sum of every process's share of the minibatch
            grad_norm = clip_gradients(models.params, p.max_grad_norm, accelerator=accelerator)
            if guard.step_ok(grad_norm, step, parameters=lambda: named_trainable(models).items()):
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            totals["grad_norm"] += grad_norm if grad_norm is not None else math.nan
            n_optimizer_steps += 1
    models.policy.eval()
    models.value.eval()
    # Token-weighted shares summed over processes; the gradient norm is the same on every process already.
    totals = {k: v if k == "grad_norm" else global_sum(accelerator, v) for k, v in totals.items()}
    return PPOStats(**{key: value / n_optimizer_steps for key, value in totals.items()})


# ---------------------------------------------------------------------------------------------------------
# Logging


def step_metrics(
    t: Trajectory,
    stats: PPOStats,
    reward: CompositeReward,
    *,
    kl_coef: float,
    lr: float,
    with_value: bool = True,
) -> dict[str, float]:
    """The metrics row of one iteration (every key is explained in docs/metrics.md)."""
    mask = t.response_mask
    kl_per_response = t.kl.sum(dim=1)  # sum_t KL_t: the KL of each response
    row: dict[str, float] = {
        "objective/kl": float(kl_per_response.mean()),
        "objective/kl_coef": float(kl_coef),
        "objective/score": float(t.scores.mean()),
        "objective/rlhf_reward": float((t.scores - kl_coef * kl_per_response).mean()),  # E[r - beta * KL]
        **reward.metrics(),
        "policy/entropy": float(t.entropy),
        "policy/clipfrac": stats.clipfrac,
        "policy/approx_kl": stats.approx_kl,
        "loss/policy": stats.loss_policy,
        "response/length_mean": float(mask.sum(dim=1).float().mean()),
        "response/eos_rate": float(t.has_eos.float().mean()),
        "grad_norm": stats.grad_norm,
        "lr": lr,
    }
    if with_value:  # critic-free estimators train no value role
        row |= {
            "loss/value": stats.loss_value,
            "value/clipfrac": stats.value_clipfrac,
            "value/explained_variance": float(explained_variance(t.values, t.returns, mask)),
            "value/mean": float(masked_mean(t.values, mask)),
        }
    return row


def make_label_monitor(cfg: Config, prompts: Sequence[PromptExample]) -> Any:
    """A ``label_correct`` rule (1 right, 0 wrong, -1 unparseable) when every prompt has a categorical gold label.

    It scores nothing the policy optimizes: it tells how often the policy is right, and whether each reward
    component ranks the right answers to a prompt above the wrong ones (:func:`label_metrics`). None when the
    pool has no gold labels (chat prompts) or a scale task.
    """
    from rewardmix.data.tasks import get_task
    from rewardmix.scoring.rules import LabelCorrectConfig, LabelCorrectScorer

    tasks = {p.meta.get("task", cfg.data.task) for p in prompts}
    if not prompts or None in tasks or any("label" not in p.meta for p in prompts):
        return None
    try:
        if any(get_task(str(t)).scale is not None for t in tasks):
            return None
    except KeyError:
        return None
    return LabelCorrectScorer(
        LabelCorrectConfig(task=cfg.data.task, correct=1.0, wrong=0.0, unparseable=-1.0)
    )


def label_metrics(
    monitor: Any, prompts: Sequence[PromptExample], texts: Sequence[str], composite: Any, scores: torch.Tensor,
    group_size: int,
) -> dict[str, float]:  # fmt: skip
    """``policy/label_accuracy`` and ``policy/label_unparseable`` of the batch; with K >= 2 answers per prompt,
    each component's (and the final score's) pair accuracy on the policy's own samples:
    ``reward/<name>/label_pair_accuracy`` and ``objective/label_pair_accuracy`` (right ranked above wrong)."""
    verdict = monitor.score(
        ScoringBatch(prompts=[[m.to_dict() for m in p.messages] for p in prompts], responses=list(texts),
                     meta=[p.meta for p in prompts])
    )  # fmt: skip
    correct = verdict > 0
    row = {
        "policy/label_accuracy": float(correct.float().mean()),
        "policy/label_unparseable": float((verdict < 0).float().mean()),
    }
    if group_size >= 2:
        for name, raw in composite.raw.items():
            row[f"reward/{name}/label_pair_accuracy"] = group_pair_accuracy(raw, correct, group_size)[0]
        row["objective/label_pair_accuracy"] = group_pair_accuracy(scores, correct, group_size)[0]
    return row


def sample_rows(
    prompts: Sequence[PromptExample], texts: Sequence[str], t: Trajectory, composite: Any, tokenizer: Any,
    cfg: Config,
) -> list[dict[str, Any]]:  # fmt: skip
    """The first ``logging.num_samples`` responses of the batch with their scores (every component's)."""
    component_rows = composite.rows()
    kl = t.kl.sum(dim=1).tolist()
    lengths = t.response_mask.sum(dim=1).tolist()
    rows = []
    for i in range(min(cfg.logging.num_samples, len(prompts))):
        rows.append(
            {
                "prompt": tokenizer.decode(prompts[i].input_ids, skip_special_tokens=False),
                "completion": texts[i],
                "score": float(t.scores[i]),
                **component_rows[i],
                "kl": kl[i],
                "length": int(lengths[i]),
                "eos": bool(t.has_eos[i]),
                "meta": prompts[i].meta,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------------
# Prompts


def batch_indices(n: int, step: int, batch_size: int, *, seed: int) -> list[int]:
    """Indices of the prompts of iteration ``step`` (0-based): a seeded permutation per pass over the pool.

    A pure function of its arguments, so a resumed run sees the same prompts without restoring a generator.
    """
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(position, n)
        out.append(epoch_order(n, seed=seed, epoch=epoch, salt="ppo")[index])
    return out


def load_prompts(cfg: Config, tokenizer: Any, *, out: Path | None = None) -> list[PromptExample]:
    """Read, convert and tokenize the prompt pool; counts go to ``<out>/data_report.json``.

    Raises:
        DataError: A malformed row under ``on_bad_row: error`` (file, row and field named), or an empty pool.
    """
    data = cfg.data
    read_report: dict[str, Any] | None = None
    if data.prompts == BUILTIN_TOY:
        from rewardmix.stages.sft import toy_rows

        rows: list[dict[str, Any]] = [{"prompt": r["prompt"]} for r in toy_rows()]
        kind = "prompt"
    elif data.format == "task":
        from rewardmix.data.tasks import load_task_examples

        assert data.task is not None
        examples, report = load_task_examples(data.task, data.prompts, on_bad_row=data.on_bad_row)
        rows = [{"question": e.question, "task": e.task, "label": e.label} for e in examples]
        read_report, kind = report.to_dict(), "nlu"
    else:
        rows, report, kind = read_converted(
            data.prompts,
            data.format,
            detect=lambda row: detect_prompt_format(row, data),
            convert=lambda row, k: row_to_prompt(row, k, data),
            detect_errors=(DataError,),
            on_bad_row=data.on_bad_row,
        )
        read_report = report.to_dict()
    if data.limit is not None:
        rows = rows[: data.limit]
    prompts, truncated = [], 0
    skipped = read_report["n_skipped"] if read_report else 0
    for row in rows:
        messages, meta = row_to_prompt(row, kind, data)
        ids = tokenize_prompt(messages, tokenizer)
        truncated += len(ids) > data.max_prompt_tokens
        prompts.append(PromptExample(messages, truncate_prompt_ids(ids, data.max_prompt_tokens), meta))
    if not prompts:
        raise DataError(f"{data.prompts}: no usable prompt")
    report = {
        "read": read_report,
        "format": kind,
        "prompts": len(prompts),
        "skipped": skipped,
        "truncated": truncated,
    }
    log.info(
        "%s: %d prompts (%s format), %d truncated, %d skipped",
        data.prompts,
        len(prompts),
        kind,
        truncated,
        skipped,
    )
    if out is not None:
        atomic_write_text(out / "data_report.json", json.dumps(report, indent=2, default=str) + "\n")
    return prompts


def detect_prompt_format(row: Mapping[str, Any], data: DataConfig) -> PromptFormat:
    """Tell a row's format from its keys: ``messages``, then ``prompt_key``, then ``question`` (nlu)."""
    if "messages" in row:
        return "messages"
    if data.prompt_key in row:
        return "prompt"
    if "question" in row:
        return "nlu"
    raise DataError(
        f"{data.prompts}: cannot tell the prompt format from the keys {sorted(row)}; set data.format"
    )


def row_to_prompt(
    row: Mapping[str, Any], kind: PromptFormat, data: DataConfig
) -> tuple[list[Message], dict[str, Any]]:
    """One row -> (conversation ending with the user's turn, meta = the row's other fields)."""
    if kind == "messages":
        messages = _messages_field(row["messages"])
        meta = {k: v for k, v in row.items() if k != "messages"}
        if messages and messages[-1].role == "assistant":  # a reference answer, not part of the prompt
            meta["reference"] = messages[-1].content
            messages = messages[:-1]
        if not messages or messages[-1].role != "user":
            raise ChatDataError("field 'messages': the conversation must end with a user turn")
    elif kind in ("prompt", "nlu"):
        key = data.prompt_key if kind == "prompt" else "question"
        text = row.get(key)
        if not isinstance(text, str) or not text.strip():
            raise ChatDataError(f"field {key!r}: expected a non-empty string, got {text!r}")
        messages = [Message("user", text.strip())]
        meta = {k: v for k, v in row.items() if k != key}
    else:
        raise ValueError(f"unknown prompt format {kind!r}")
    if data.task is not None:
        meta.setdefault("task", data.task)
    if data.system_prompt is not None and messages[0].role != "system":
        messages = [Message("system", data.system_prompt), *messages]
    return messages, meta


def _messages_field(raw: Any) -> list[Message]:
    try:
        return as_messages(json.loads(raw) if isinstance(raw, str) else raw)
    except (TypeError, ValueError) as e:
        raise ChatDataError(f"field 'messages': {e}") from None


def prompt_hash(prompts: Sequence[PromptExample]) -> str:
    """A short hash of the tokenized prompts: a resumed run must see the very same pool."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(array("q", prompt.input_ids).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Saving


def save_final_models(cfg: Config, models: Models, out: Path) -> tuple[Path, Path | None, Path]:
    """Write the policy with its tokenizer and the value role; returns ``(model_dir, adapter_dir, value_dir)``.

    LoRA: the policy adapter in ``<out>/model`` (with ``lora.merge_lora``: the merged model there and the
    adapter in ``<out>/adapter``). Full fine-tuning: the full model in ``<out>/model``. The value role (adapter
    and head) always goes to ``<out>/value``.
    """
    from rewardmix.models import loading, lora

    model_dir, adapter_dir, value_dir = out / "model", None, out / "value"
    if models.policy_role is None:
        loading.save_pretrained_atomic(models.policy, model_dir, tokenizer=models.tokenizer)
    else:
        adapter_dir = out / "adapter" if cfg.lora.merge_lora else model_dir
        lora.save_adapter(models.policy, POLICY_ROLE, adapter_dir)
        models.tokenizer.save_pretrained(str(adapter_dir))
        if cfg.lora.merge_lora:
            lora.merge_and_save(models.policy, POLICY_ROLE, model_dir, tokenizer=models.tokenizer)
        else:
            adapter_dir = None
    lora.save_adapter(models.value, VALUE_ROLE, value_dir)
    return model_dir, adapter_dir, value_dir
