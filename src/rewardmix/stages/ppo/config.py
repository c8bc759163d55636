"""The PPO stage's config: every section of ``rewardmix ppo``'s YAML, documented field by field.

``model``, ``lora`` and ``logging`` extend the sections every training stage shares
(:mod:`rewardmix.train.config`) only where PPO differs; ``data`` is the prompt pool's own section
(:mod:`rewardmix.data.prompts`) and ``reward`` the composite reward's (:mod:`rewardmix.scoring`).

This module imports no model code (``transformers`` stays out), so the CLI and ``rewardmix.docgen`` can read the
config without loading a model library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rewardmix.config import check_ranges
from rewardmix.data.prompts import DataConfig
from rewardmix.scoring import CompositeConfig
from rewardmix.train.config import HubConfig, LoggingConfig, LoraConfig, ModelConfig
from rewardmix.train.hub import check_push

__all__ = [
    "Config",
    "DataConfig",
    "GenerationConfig",
    "KLConfig",
    "PPOConfig",
    "PPOLoggingConfig",
    "PPOLoraConfig",
    "PolicyModelConfig",
    "needs_value",
]


@dataclass
class PolicyModelConfig(ModelConfig):
    """The shared model section; here the base every role shares, the policy's starting point."""

    name: str = "tiny"
    """The base the policy starts from (the SFT model): a folder, a hub id, ``offline:smollm2`` or ``tiny`` (a
    random 2-layer Llama built in memory, for tests and smoke runs)."""


@dataclass
class PPOLoraConfig(LoraConfig):
    """The shared LoRA section for the policy and value roles (their LoRA dropout is always 0), plus the merge."""

    enabled: bool = True
    """Policy = LoRA role ``policy`` on the frozen base (true), or every weight trains (false: full fine-tuning;
    the reference is then a frozen copy of the base, which also carries the value role when there is one)."""
    merge_lora: bool = False
    """At the end also merge the policy adapter into the base: ``<output_dir>/model`` is then a plain model and
    the adapter goes to ``<output_dir>/adapter``."""


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

    def __post_init__(self) -> None:
        check_ranges(self, at_least_0=("init_coef",), positive=("target",), at_least_1=("horizon",))


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
    """Normalize advantages to mean 0, std 1 over the batch's response tokens (``reinforce_pp`` always does:
    it is that method's global batch normalization)."""
    advantage: Literal["gae", "rloo", "grpo", "reinforce_pp"] = "gae"
    """How advantages are estimated. ``gae``: per-token GAE with the value role (PPO as in RLLR / CRS).
    ``rloo``: critic-free, each response's sequence reward (score - beta * its KL) minus the mean of the other
    answers to the same prompt (Ahmadian et al. 2024). ``grpo``: the same reward minus its group's mean, divided
    by the group's std when ``scale_by_std`` (Shao et al. 2024; Dr. GRPO without it). ``reinforce_pp``:
    REINFORCE++ (Hu 2025), per-token returns-to-go of the KL-shaped rewards normalized over the whole batch,
    with the group's mean reward as baseline when ``samples_per_prompt >= 2``. ``rloo`` and ``grpo`` need
    ``samples_per_prompt >= 2``; no critic-free estimator loads a value model (no ``value`` role, no head) or
    runs its forward passes."""
    value_model: Literal["role", "policy_head"] = "role"
    """``advantage: gae``: where V(s_t) comes from. ``role``: a scalar head on its own LoRA role ``value`` of the
    shared base (a separate forward pass; the value loss trains only that role and head). ``policy_head``: a
    scalar head on the policy's own final hidden states, computed in the policy's forward pass (one forward
    fewer at rollout, one forward-and-backward per micro-batch); a shared-trunk actor-critic: the value loss
    also trains the policy's weights (LoRA or full)."""
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

    def __post_init__(self) -> None:
        check_ranges(
            self,
            positive=("learning_rate", "adam_epsilon", "max_grad_norm", "clip_range", "clip_range_value"),
            at_least_0=("weight_decay", "vf_coef", "reference_samples"),
            fraction=("warmup_ratio", "min_lr_ratio", "gamma", "lam"),
        )


def needs_value(p: PPOConfig) -> bool:
    """Whether the advantage estimator needs value estimates (GAE); every other estimator is critic-free."""
    return p.advantage == "gae"


@dataclass
class PPOLoggingConfig(LoggingConfig):
    """The shared logging section, with PPO's checkpoint cadence and its sample-table cadence."""

    checkpoint_every: int = 50
    """Save a checkpoint every N steps (and always at the end)."""
    sample_every: int = 10
    """Write a sample table (prompt, response, every component's score) every N steps (0: only at the end)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least_0=("sample_every",))


@dataclass
class Config:
    output_dir: str = "runs/ppo"
    """Run directory: config, metrics.jsonl, samples.jsonl, checkpoints/, model/, value/ (rerun to resume)."""
    seed: int = 0
    """Seed of the prompt order, LoRA initialization, value head and sampling."""
    cpu: bool = False
    """Run on the CPU even when a GPU is present."""
    model: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    lora: PPOLoraConfig = field(default_factory=PPOLoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward: CompositeConfig = field(default_factory=CompositeConfig)
    """The composite reward: components (reward models, rules) and a combinator (see rewardmix.scoring).
    Required: there is no default reward, so a config without ``reward.components`` is an error."""
    logging: PPOLoggingConfig = field(default_factory=PPOLoggingConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    """Push the final policy (``<output_dir>/model`` or ``adapter``) to the hub with a model card listing the
    reward components and the final metrics; off by default."""

    def __post_init__(self) -> None:
        if self.hub.repo_id is not None:
            lora = self.lora.enabled
            check_push(self.hub.push, lora=lora, merged=not lora or self.lora.merge_lora)
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
        if p.advantage in ("rloo", "grpo") and p.samples_per_prompt < 2:
            raise ValueError(
                f"ppo.advantage: {p.advantage} needs ppo.samples_per_prompt >= 2 (its group baseline)"
            )
        if p.value_model == "policy_head" and not needs_value(p):
            raise ValueError(
                f"ppo.value_model: policy_head needs ppo.advantage: gae (ppo.advantage: {p.advantage} is critic-free)"
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
            raise ValueError(
                "reward.components: PPO needs at least one reward component and there is no default; add a "
                "`reward:` section, e.g. `reward: {components: [{name: rm, type: reward_model, reward_model: "
                "{path: runs/rm/model}}]}` (docs/reference.md, section reward)"
            )
        grouped = [c.name for c in self.reward.components if c.normalize == "group"]
        if grouped and p.samples_per_prompt < 2:
            raise ValueError(
                f"reward.components {grouped}: normalize: group z-scores each component within a prompt's answers "
                f"and needs ppo.samples_per_prompt >= 2, got {p.samples_per_prompt}"
            )
        if g.backend == "vllm" and self.model.name == "tiny":
            raise ValueError("generation.backend: vllm loads the base from a folder; tiny is built in memory")
