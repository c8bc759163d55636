"""Step 1 of a PPO iteration: the rollout, from prompts to a complete :class:`Trajectory`.

:func:`rollout` owns everything that happens before the first formula: sampling (one seed per response),
decoding, every reward component's score, the no-grad forward passes of the policy, the reference and the value
role, and, with several processes, the gathers that give every process the whole batch. What it returns is
built by keyword and holds no per-token reward yet: those come from :mod:`rewardmix.algos` in the loop.

With N processes each one generates, scores and evaluates its contiguous share of the batch; gathering in
process order restores the batch order, and every real token keeps the position it has in a one-process run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from rewardmix.algos.combine import clip_scores_symmetric
from rewardmix.algos.masked import masked_mean
from rewardmix.algos.ppo import entropy_from_logits
from rewardmix.algos.sequences import epoch_order, response_mask_from_ids, rollout_seeds
from rewardmix.data.prompts import PromptExample
from rewardmix.models.tokens import pad_token_id, stop_token_ids
from rewardmix.scoring import CompositeReward, CompositeScores, NonFiniteScoreError, ScoringBatch
from rewardmix.stages.ppo import roles
from rewardmix.stages.ppo.config import GenerationConfig, PPOConfig, needs_value
from rewardmix.stages.ppo.metrics import PhaseTimes
from rewardmix.stages.ppo.roles import Models
from rewardmix.train.distributed import any_process, gather_objects, gather_rows
from rewardmix.train.loop import chunk, global_sum, pad_sequences


@dataclass(frozen=True, kw_only=True)
class Trajectory:
    """One rollout batch of B responses, the same on every process; response tensors are (B, R), right-padded."""

    prompts: list[PromptExample]
    """The B prompts, K consecutive copies of each with ``ppo.samples_per_prompt`` K."""
    texts: list[str]
    """The B response texts the scorers saw (valid tokens, special tokens skipped)."""
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
    """(B, R) V(s_t) before each response token, at rollout time (zeros with a critic-free estimator)."""
    entropy: torch.Tensor
    """() mean entropy of the policy over the response tokens."""
    composite: CompositeScores
    """Every component's raw and normalized (B,) scores and their combination."""
    scores: torch.Tensor
    """(B,) final score: composite, minus the missing-EOS penalty, clipped."""
    score_clipfrac: float
    """Fraction of the scores the score clip changed."""


def rollout(
    models: Models,
    reward: CompositeReward,
    prompts: Sequence[PromptExample],
    *,
    seeds: Sequence[int],
    generation: GenerationConfig,
    ppo: PPOConfig,
    accelerator: Accelerator,
    step: int,
    timer: PhaseTimes,
    policy_pass: bool = True,
) -> Trajectory:
    """Generate, score and evaluate one rollout batch; every process returns the whole batch.

    Args:
        models: The roles (:mod:`~rewardmix.stages.ppo.roles`).
        reward: The composite reward; its running statistics see the whole batch.
        prompts: The B prompts of the batch (every process's); this process answers its contiguous share.
        seeds: One sampling seed per prompt (:func:`~rewardmix.algos.sequences.rollout_seeds`).
        generation: The ``generation`` section (sampling, missing-EOS penalty).
        ppo: The ``ppo`` section (``forward_batch_size``, ``advantage``, ``score_clip``).
        accelerator: The stage's accelerator.
        step: The iteration, 1-based (named in errors).
        timer: Collects ``generate``, ``reward`` and ``forward`` seconds.
        policy_pass: Run the policy's no-grad forward pass here (False: one update per rollout, whose own
            forward pass fills in the log-probabilities, values and entropy: :func:`~rewardmix.stages.ppo.loop.
            single_pass`).

    Raises:
        NonFiniteScoreError: A reward component returned NaN or inf on any process (no weight changed yet).
    """
    b = len(prompts) // accelerator.num_processes
    share = slice(accelerator.process_index * b, (accelerator.process_index + 1) * b)
    mine = prompts[share]
    models.policy.eval()  # rollouts: no dropout (it is zeroed anyway), no autograd
    with timer("generate"):
        query_responses, attention_mask, response_mask, has_eos = generate_responses(
            models, mine, generation, seeds=seeds[share]
        )
    texts = decode_responses(models.tokenizer, query_responses, response_mask)
    with timer("reward"):
        raw = score_responses(reward, mine, texts, query_responses, response_mask, accelerator, step=step)
    with timer("forward"), accelerator.autocast():
        logprobs, ref_logprobs, values, entropy = rollout_forward(
            models,
            query_responses,
            attention_mask,
            response_mask,
            temperature=generation.temperature,
            batch_size=ppo.forward_batch_size,
            with_values=needs_value(ppo) and policy_pass,
            with_policy=policy_pass,
        )
    entropy = gather_mean(accelerator, entropy, response_mask.sum())
    texts = gather_objects(accelerator, texts)
    tensors = gather_rollout(
        accelerator,
        pad_token_id(models.tokenizer),
        query_responses=query_responses,
        attention_mask=attention_mask,
        response_mask=response_mask,
        has_eos=has_eos,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
    )
    # the composite over the whole batch: running statistics of all processes
    composite = reward.combine({name: gather_rows(accelerator, x) for name, x in raw.items()})
    scores, score_clipfrac = final_scores(
        composite.scores,
        tensors["has_eos"],
        missing_eos_penalty=generation.missing_eos_penalty,
        score_clip=ppo.score_clip,
    )
    return Trajectory(
        prompts=list(prompts),
        texts=texts,
        entropy=entropy,
        composite=composite,
        scores=scores,
        score_clipfrac=score_clipfrac,
        **tensors,
    )


# ---------------------------------------------------------------------------------------------------------
# Generation


@torch.no_grad()
def generate_responses(
    models: Models,
    prompts: Sequence[PromptExample],
    generation: GenerationConfig,
    *,
    seeds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one response per prompt with the policy, response ``i`` from its own seed ``seeds[i]``.

    Prompts are left-padded to the batch's longest (so every response starts at column P); responses of all
    ``generate`` calls are right-padded to the longest, R. Sampling is an inverse-transform draw inside greedy
    decoding (:class:`rewardmix.models.sampling.SeededSampling`): a draw from the same temperature / top-k /
    top-p distribution as ``do_sample=True``, but each row from its own generator.

    Args:
        models: The roles (the policy samples, or the vLLM engine when there is one).
        prompts: The prompts to answer.
        generation: The ``generation`` section.
        seeds: One per prompt (see :func:`~rewardmix.algos.sequences.rollout_seeds`); None draws them from
            the global torch generator.

    Returns:
        ``(query_responses (B, P + R), attention_mask (B, P + R), response_mask (B, R), has_eos (B,))``.
    """
    from rewardmix.models.sampling import seeded_sampling

    if seeds is None:
        seeds = torch.randint(0, 2**63 - 1, (len(prompts),)).tolist()
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    tokenizer, gen = models.tokenizer, generation
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
            [p.input_ids for p in prompts],
            seeds=seeds,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_k=gen.top_k,
            top_p=gen.top_p,
            stop_ids=stops,
        )
        pieces = [torch.tensor(r, dtype=prompt_ids.dtype, device=device).reshape(1, -1) for r in responses]
    else:
        sharded = roles.is_sharded(models)
        for rows in chunk(range(len(prompts)), gen.batch_size):
            rows = list(rows)
            with roles.policy_context(models):
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
                    # FSDP: every decoding step is a collective; a process whose rows all ended keeps stepping
                    synced_gpus=sharded,
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


# ---------------------------------------------------------------------------------------------------------
# Scores


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


def final_scores(
    scores: torch.Tensor,
    has_eos: torch.Tensor,
    *,
    missing_eos_penalty: float | None,
    score_clip: float | None,
) -> tuple[torch.Tensor, float]:
    """The score the policy optimizes: composite, minus the missing-EOS penalty, clipped.

    Args:
        scores: (B,) combined scores of the composite reward.
        has_eos: (B,) whether each response emitted EOS.
        missing_eos_penalty: ``generation.missing_eos_penalty`` (None: no penalty).
        score_clip: ``ppo.score_clip`` (None: no clip).

    Returns:
        ``(scores (B,), fraction of scores the clip changed)``.

    Reference: CRS Table 8 ("score clip 4"); TRL ``missing_eos_penalty``.
    """
    scores = scores.to(torch.float32)
    if missing_eos_penalty is not None:
        penalty = missing_eos_penalty * (~has_eos).to(scores.dtype)
        scores = scores - penalty.to(scores.device)  # s <- s - penalty on responses without EOS
    clipfrac = 0.0
    if score_clip is not None:
        clipfrac = float((scores.abs() > score_clip).float().mean())
        scores = clip_scores_symmetric(scores, clip=score_clip)  # s <- clip(s, -c, c)
    return scores, clipfrac


@torch.no_grad()
def calibrate_reward(
    models: Models,
    reward: CompositeReward,
    prompts: Sequence[PromptExample],
    generation: GenerationConfig,
    *,
    samples: int,
    seed: int,
) -> None:
    """Give ``normalize: reference`` components the statistics of the initial policy's (= SFT) responses.

    With several processes each one generates and scores all of them (seeded per sample, so every process
    computes the same statistics without communicating; it runs once per run).

    Args:
        models: The roles, before any update.
        reward: The composite reward to calibrate.
        prompts: The prompt pool; ``samples`` of them are answered, in a seeded order.
        generation: The ``generation`` section.
        samples: ``ppo.reference_samples``.
        seed: The run seed.

    Reference: Ziegler et al. 2019 §2.2 (reward normalized on samples of the initial policy).
    """
    n = min(len(prompts), samples)
    picked = [prompts[i] for i in epoch_order(len(prompts), seed=seed, epoch=0, salt="reference")[:n]]
    models.policy.eval()
    seeds = rollout_seeds(seed, "reference", range(n))
    query_responses, _, response_mask, _ = generate_responses(models, picked, generation, seeds=seeds)
    texts = decode_responses(models.tokenizer, query_responses, response_mask)
    reward.calibrate_reference(scoring_batch(picked, texts, query_responses, response_mask))


# ---------------------------------------------------------------------------------------------------------
# No-grad forward passes


def policy_logits_logprobs(
    model: torch.nn.Module,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    response_width: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
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


def policy_logits_logprobs_values(
    models: Models,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    response_width: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ppo.value_model: policy_head``: the policy's logits, log-probabilities and values from ONE forward pass.

    The value head reads the policy's final hidden states (captured by a hook on its body) at the positions
    whose logits chose each response token, ``P - 1 ... P + R - 2`` (as :func:`value_estimates`): V(s_t).
    Run it with the policy active (:func:`~rewardmix.stages.ppo.roles.policy_context`).

    Args:
        models: The roles (``models.policy_value_head`` set).
        query_responses: (B, P + R) ids.
        attention_mask: (B, P + R) mask.
        response_width: R.
        temperature: The sampling temperature.

    Returns:
        ``(logits (B, R, V) float32, logprobs (B, R) float32, values (B, R) float32)``.
    """
    from rewardmix.models.heads import capture_last_hidden_state

    R = response_width
    P = query_responses.shape[1] - R
    with capture_last_hidden_state(models.policy) as hidden:
        logits, logprobs = policy_logits_logprobs(
            models.policy, query_responses, attention_mask, R, temperature
        )
    values = models.policy_value_head(hidden[-1][:, P - 1 : P - 1 + R])  # V(s_t) = w . h_{P-1+t} + b
    return logits, logprobs, values


@torch.no_grad()
def rollout_forward(
    models: Models,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float,
    batch_size: int,
    with_values: bool = True,
    with_policy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy and reference log-probabilities, values and the policy's mean entropy, in no-grad chunks.

    Policy and reference run on the same chunks (same shapes), so while the policy adapter is still the
    identity the two are bit-identical and the KL is exactly 0. Per chunk: the policy, the reference and the
    value role, three forward passes; with a value head on the policy (``ppo.value_model: policy_head``) the
    values come out of the policy's pass, two.

    Args:
        models: The roles.
        query_responses: (B, P + R) ids.
        attention_mask: (B, P + R) mask.
        response_mask: (B, R) True on valid response tokens.
        temperature: ``generation.temperature``.
        batch_size: Responses per forward pass (``ppo.forward_batch_size``).
        with_values: Run the value role (False: critic-free estimators; the values are zeros).
        with_policy: Run the policy (False: the update's own forward pass gives its log-probabilities, values
            and entropy, see :func:`~rewardmix.stages.ppo.loop.single_pass`; they are zeros / NaN here).

    Returns:
        ``(logprobs (B, R), ref_logprobs (B, R), values (B, R), entropy ())``.
    """
    R = response_mask.shape[1]
    logprobs, ref_logprobs, values, entropies = [], [], [], []
    head_values = with_values and models.policy_value_head is not None
    for rows in chunk(range(query_responses.shape[0]), batch_size):
        ids, mask = query_responses[list(rows)], attention_mask[list(rows)]
        v = None
        if with_policy:
            with roles.policy_context(models):
                if head_values:  # one pass: the logits and the head on the policy's hidden states
                    logits, lp, v = policy_logits_logprobs_values(models, ids, mask, R, temperature)
                else:
                    logits, lp = policy_logits_logprobs(models.policy, ids, mask, R, temperature)
            entropies.append(entropy_from_logits(logits))
            del logits
        with roles.reference_context(models):
            _, ref_lp = policy_logits_logprobs(models.shared, ids, mask, R, temperature)
        if not with_policy:
            lp = torch.zeros_like(ref_lp)  # filled in by the update's own pass
        logprobs.append(lp)
        ref_logprobs.append(ref_lp)
        if v is not None:
            values.append(v.float())
        elif with_values:
            values.append(value_estimates(models, ids, mask, R).float())
        else:
            values.append(torch.zeros_like(lp))
    entropy = masked_mean(torch.cat(entropies), response_mask) if entropies else torch.tensor(math.nan)
    return torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values), entropy


# ---------------------------------------------------------------------------------------------------------
# Gathers (several processes)


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
    *,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    has_eos: torch.Tensor,
    **per_token: torch.Tensor,
) -> dict[str, torch.Tensor]:
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
        per_token: (B_p, R_p) tensors by name (log-probabilities, values), padded with 0.

    Returns:
        Every tensor given, by the same name, of the B = sum B_p responses.
    """
    tensors = {
        "query_responses": query_responses,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "has_eos": has_eos,
        **per_token,
    }
    if accelerator.num_processes == 1:
        return tensors
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
    return {
        "query_responses": ids,
        "attention_mask": mask,
        "response_mask": gather_rows(accelerator, response_mask, pad_value=False),
        "has_eos": gather_rows(accelerator, has_eos),
        **{name: gather_rows(accelerator, x, pad_value=0.0) for name, x in per_token.items()},
    }
