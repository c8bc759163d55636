"""Reward-model scorer: a scalar-head model over (prompt, response) text, as logit or bounded score.

The input a reward model scores must be built exactly as in its training, or its scores mean nothing. The
scorer therefore uses the reward-model stage's own encoder,
:class:`rewardmix.stages.reward_model.InputEncoder`:

* causal backbones (the SFT model, RLLR/CRS default): the chat rendering of the prompt as user turn(s) and
  the response as the assistant turn (the tokenizer's chat template, else ChatML), as
  :func:`rewardmix.data.chat.tokenize_chat` tokenizes it. The score is read at the last token.
* encoders (MiniLM, BERT): the text pair ``(prompt, response)`` with the tokenizer's own special tokens
  (``[CLS] prompt [SEP] response [SEP]``).

Both truncate to ``max_length`` by the CRS rule (:func:`rewardmix.data.chat.truncated_lengths`): the prompt
loses tokens from its start but keeps at least ``min_prompt_tokens``, the response is cut from its end.
``max_length``, ``min_prompt_tokens`` and the head's meaning are read from the run's ``rewardmix_rm.json``
unless given.

Generated text may merge with the assistant header into one token (SmolLM2's tokenizer does this for a
response starting with ``"\n\n"``), which ``tokenize_chat`` refuses; ``InputEncoder`` then encodes the
conversation as rendered, truncated by the same rule, so a PPO run never stops on such a sample.

**logit vs bounded** (CRS §5.4). ``head_output`` says what the trained head emits; ``output`` what the scorer
returns:

====================================  ================  ==========================  ========================
objective the RM was trained with     ``head_output``   ``output: logit``           ``output: bounded``
====================================  ================  ==========================  ========================
Bradley-Terry / K-way ranking          ``logit``         the head value              ``sigmoid(head)``
absolute ``sigmoid_mse`` / ``logistic``  ``logit``       the head value (CRS's       ``sigmoid(head)``: the
                                                          ``abs_rlfh_logits``)        rating in (0, 1)
absolute ``mse_range_penalty``         ``probability``   ``logit(clamp(head, 0, 1))``  ``clamp(head, 0, 1)``
====================================  ================  ==========================  ========================

CRS trained ``abs_rlfh`` with both and kept the logits: bounded scores squeeze near-equal responses together
and the policy's responses shrank (Figure 21, Table 28). ``bounded = sigmoid(logit)`` holds in every row.

Importing this module does not import ``transformers``: the model classes are loaded when a scorer is built.

Reference: CRS §5.3-5.4 (reward input, truncation, logits vs bounded scores); RLLR §3.2 (reward models on
the SFT backbone); SPEC §5-6.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm.auto import tqdm

from rewardmix.algos.combine import bounded_to_logit, logit_to_bounded
from rewardmix.data.chat import (
    Message,
    as_messages,
)
from rewardmix.scoring.base import Prompt, ScoringBatch
from rewardmix.train.loop import pad_sequences

if TYPE_CHECKING:
    from rewardmix.models.heads import ScalarHeadModel

__all__ = [
    "HeadOutput",
    "RewardModelParams",
    "RewardModelScorer",
    "ScoreOutput",
    "prompt_messages",
    "rm_output",
]

logger = logging.getLogger(__name__)

BackboneKind = Literal["causal_lm", "encoder"]
ScoreOutput = Literal["logit", "bounded"]
HeadOutput = Literal["logit", "probability"]

# Show a progress bar only when scoring takes many model calls (PPO scores every step: keep logs quiet).
_PROGRESS_MIN_CHUNKS = 8


@dataclass
class RewardModelParams:
    """Where a reward model is and how to feed it (the ``reward_model`` section of a component)."""

    path: str
    """Reward-model folder: a scalar-head model (``ScalarHeadModel.save_pretrained`` / ``merge_and_save``), or,
    with ``role``, a LoRA adapter folder (``save_adapter``) loaded onto the shared base of the PPO run."""
    role: str | None = None
    """LoRA role name for an adapter on the shared base (PPO keeps every reward model on one base);
    ``null`` -> ``path`` is a standalone model."""
    tokenizer: str | None = None
    """Tokenizer folder or hub id; ``null`` -> ``path`` (standalone) or the shared base's tokenizer (role)."""
    head_output: HeadOutput | None = None
    """What the head emits: ``logit`` (Bradley-Terry, ranking, absolute sigmoid_mse/logistic) or
    ``probability`` (absolute mse_range_penalty: a prediction in [0, 1]); ``null`` -> from the run's
    ``rewardmix_rm.json`` (``logit`` without one)."""
    batch_size: int = 16
    """Sequences per forward pass when scoring."""
    max_length: int | None = None
    """Token budget of prompt + response; ``null`` -> the one the model was trained with
    (``rewardmix_rm.json``; 1024 without one)."""
    min_prompt_tokens: int | None = None
    """Prompt tokens kept at least under truncation (CRS §5.3); ``null`` -> as trained (256 without a record)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Backbone dtype of a standalone model (the head and the scores stay float32)."""
    trust_remote_code: bool = False
    """Allow the model repository's own code (standalone models only)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("'path' must not be empty")
        if self.role is not None and not self.role:
            raise ValueError("'role' must be a role name or null")
        if self.batch_size < 1:
            raise ValueError(f"'batch_size' must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"'max_length' must be >= 1 or null, got {self.max_length}")
        if self.min_prompt_tokens is not None and self.min_prompt_tokens < 0:
            raise ValueError(f"'min_prompt_tokens' must be >= 0, got {self.min_prompt_tokens}")


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def prompt_messages(prompt: Prompt) -> list[Message]:
    """A prompt as chat messages, as the reward-model stage reads it: a string is one user turn (an empty
    string none); a conversation is taken as is."""
    if isinstance(prompt, str):
        return [Message(role="user", content=prompt)] if prompt else []
    return as_messages(prompt)


def _head_output_of(meta: Mapping[str, Any]) -> HeadOutput:
    # Only the regression loss trains the head to emit the [0, 1] rating itself; every other objective
    # (pairwise, ranking, sigmoid_mse, logistic) trains a logit.
    if meta.get("objective") == "absolute" and meta.get("absolute_loss") == "mse_range_penalty":
        return "probability"
    return "logit"


# ---------------------------------------------------------------------------------------------------------
# Output: logit or bounded
# ---------------------------------------------------------------------------------------------------------


def rm_output(head: torch.Tensor, *, output: ScoreOutput, head_output: HeadOutput = "logit") -> torch.Tensor:
    """Turn head values into the score a component uses (see the table in the module docstring).

    Args:
        head: (B,) head values.
        output: ``"logit"`` (unbounded) or ``"bounded"`` (in [0, 1]).
        head_output: ``"logit"`` if the head emits logits, ``"probability"`` if it emits [0, 1] predictions
            (those are clamped into [0, 1] first: a regression head may overshoot slightly).

    Returns:
        (B,) float32 scores.

    Reference: CRS §5.4 ("abs_rlfh_bound" vs "abs_rlfh_logits").
    """
    head = head.to(torch.float32)
    if head_output == "logit":
        return head if output == "logit" else logit_to_bounded(head)  # bounded = sigmoid(logit)
    if head_output == "probability":
        bounded = head.clamp(0.0, 1.0)
        return bounded if output == "bounded" else bounded_to_logit(bounded)  # logit = log p - log(1 - p)
    raise ValueError(f"head_output must be 'logit' or 'probability', got {head_output!r}")


# ---------------------------------------------------------------------------------------------------------
# The scorer
# ---------------------------------------------------------------------------------------------------------


class RewardModelScorer:
    """Score (prompt, response) samples with a :class:`~rewardmix.models.heads.ScalarHeadModel`.

    Inputs are built by the reward-model stage's :class:`~rewardmix.stages.reward_model.InputEncoder`, scored in
    batches of ``batch_size`` under ``torch.no_grad()`` with the model in eval mode (restored afterwards,
    since a shared base may be training). Batches are formed from sequences of similar length; the scalar
    head's padding invariance makes the result independent of that grouping (to float rounding).

    With ``role``, the model's backbone carries LoRA roles and scoring runs with ``role`` active
    (:func:`rewardmix.models.lora.active_role`), so several reward models, the policy and the value model
    can share one base (SPEC §7); the role active before is restored.

    Args:
        model: The reward model (backbone + scalar head).
        tokenizer: Its tokenizer.
        name: Component name.
        role: LoRA role to score with, or ``None``.
        output: ``"logit"`` or ``"bounded"`` (CRS §5.4).
        head_output: ``"logit"`` or ``"probability"`` (see :func:`rm_output`).
        batch_size: Sequences per forward pass.
        max_length: Token budget, as in training (the stage's default is 1024).
        min_prompt_tokens: Prompt floor under truncation, as in training.
        bucket_by_length: Form batches of sequences of similar length (sorted, longest first), so a batch
            pads to the length of its own longest sequence rather than to that of a random one; scores come
            back in the input order either way. ``False`` batches in input order (for comparison:
            ``bench/rollout.py`` measures both).
    """

    def __init__(
        self,
        model: ScalarHeadModel,
        tokenizer: Any,
        *,
        name: str = "reward_model",
        role: str | None = None,
        output: ScoreOutput = "logit",
        head_output: HeadOutput = "logit",
        batch_size: int = 16,
        max_length: int = 1024,
        min_prompt_tokens: int = 256,
        bucket_by_length: bool = True,
    ) -> None:
        from rewardmix.stages.reward_model import InputEncoder  # the training definition of the input

        if output not in ("logit", "bounded"):
            raise ValueError(f"output must be 'logit' or 'bounded', got {output!r}")
        if head_output not in ("logit", "probability"):
            raise ValueError(f"head_output must be 'logit' or 'probability', got {head_output!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if role is not None:
            from rewardmix.models.lora import role_names  # transformers/peft only once a model is there

            if role not in role_names(model):
                raise KeyError(f"no LoRA role {role!r} on the reward model; roles: {role_names(model)}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.role = role
        self.output: ScoreOutput = output
        self.head_output: HeadOutput = head_output
        self.batch_size = batch_size
        self.bucket_by_length = bucket_by_length
        self.max_length = max_length
        self.min_prompt_tokens = min_prompt_tokens
        self.kind: BackboneKind = model.kind
        self.encoder = InputEncoder(
            tokenizer, self.kind, max_length=max_length, min_prompt_tokens=min_prompt_tokens
        )
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        # Padding positions are masked out (and moved behind the real tokens by the head model): any id works.
        self._pad_id = int(pad) if pad is not None else 0

    @property
    def device(self) -> torch.device:
        """Device of the model's head (where inputs are sent)."""
        return self.model.head.weight.device

    def encode(self, batch: ScoringBatch) -> list[list[int]]:
        """Token ids of every sample, as the reward model was trained on them (see the module docstring)."""
        return [self.encode_one(p, r) for p, r in zip(batch.prompts, batch.responses, strict=True)]

    def encode_one(self, prompt: Prompt, response: str) -> list[int]:
        """Token ids of one (prompt, response) sample (templates that are not prefix-stable included)."""
        return list(self.encoder(prompt, response))

    def head_values(self, batch: ScoringBatch) -> torch.Tensor:
        """The model's raw head values: (B,) float32 on the model's device."""
        return self.head_values_from_ids(self.encode(batch))

    def head_values_from_ids(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Raw head values of pre-tokenized inputs: (B,) float32 on the model's device."""
        if any(len(s) == 0 for s in sequences):
            raise ValueError(f"scorer {self.name!r}: an input has no tokens")
        out = torch.empty(len(sequences), dtype=torch.float32, device=self.device)
        if not sequences:
            return out
        # Bucketing: longest first, so similar lengths share a batch (less padding) and an out-of-memory error
        # shows early; the scores are written back at each sequence's own index.
        order = list(range(len(sequences)))
        if self.bucket_by_length:
            order.sort(key=lambda i: -len(sequences[i]))
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Dropout off (a score must not be random); each module's own flag is restored afterwards, since a
        # shared base may hold a policy in training mode.
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad(), self._role_context():
                for idx in tqdm(
                    chunks,
                    desc=f"score {self.name}",
                    leave=False,
                    disable=len(chunks) < _PROGRESS_MIN_CHUNKS,
                ):
                    rows = [sequences[i] for i in idx]
                    ids = pad_sequences(rows, pad_value=self._pad_id).to(self.device)
                    mask = pad_sequences([[1] * len(r) for r in rows], pad_value=0).to(self.device)
                    out[torch.tensor(idx, device=self.device)] = self.model(ids, mask).to(torch.float32)
        finally:
            for module, training in modes:
                module.training = training
        return out

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        """Score every sample: (B,) float32 logits or bounded scores, on the model's device."""
        return rm_output(self.head_values(batch), output=self.output, head_output=self.head_output)

    def _role_context(self) -> Any:
        if self.role is None:
            return nullcontext()
        from rewardmix.models.lora import active_role

        return active_role(self.model, self.role)

    # -----------------------------------------------------------------------------------------------------
    # Construction from saved folders

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        tokenizer_path: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        trust_remote_code: bool = False,
        head_output: HeadOutput | None = None,
        max_length: int | None = None,
        min_prompt_tokens: int | None = None,
        **kwargs: Any,
    ) -> RewardModelScorer:
        """A scorer over a standalone scalar-head model folder (``<reward-model run>/model``).

        Args:
            path: The model folder.
            tokenizer_path: Tokenizer folder or hub id; ``None`` -> ``path``.
            device: Where the model runs.
            dtype: Backbone dtype.
            trust_remote_code: Allow the repository's own code.
            head_output: What the head emits; ``None`` -> from ``rewardmix_rm.json`` (``logit`` without one).
            max_length: Token budget; ``None`` -> as trained (``rewardmix_rm.json``; 1024 without one).
            min_prompt_tokens: Prompt floor; ``None`` -> as trained (256 without a record).
            **kwargs: The scorer's other keyword arguments (``name``, ``output``, ``batch_size``, ``role``).
        """
        from rewardmix.models.heads import ScalarHeadModel
        from rewardmix.models.loading import load_tokenizer

        model = ScalarHeadModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(
            tokenizer_path if tokenizer_path is not None else path, trust_remote_code=trust_remote_code
        )
        settings = _trained_settings([Path(path)], head_output, max_length, min_prompt_tokens)
        logger.info(
            "reward model %s from %s (%s, %s)", kwargs.get("name", "reward_model"), path, model.kind, settings
        )
        return cls(model.to(device), tokenizer, **settings, **kwargs)

    @classmethod
    def from_adapter(
        cls,
        backbone: torch.nn.Module,
        tokenizer: Any,
        path: str | os.PathLike[str],
        *,
        role: str,
        head_output: HeadOutput | None = None,
        max_length: int | None = None,
        min_prompt_tokens: int | None = None,
        **kwargs: Any,
    ) -> RewardModelScorer:
        """A scorer for a LoRA reward model loaded as a new role onto a shared base.

        The adapter folder (``rewardmix.models.lora.save_adapter`` of a scalar-head model, e.g.
        ``<reward-model run>/adapter``) holds the LoRA weights and the head; the adapter must have been
        trained on this base, wrapped the same way (a causal LM with roles, as the PPO policy is; a mismatch is
        refused). The base gains the role (frozen); its other roles and its active role are untouched. The
        training settings are read from ``rewardmix_rm.json`` in the folder or, for the reward-model stage's
        layout, in its sibling ``model`` folder.

        Args:
            backbone: The shared ``PeftModel`` (e.g. the PPO policy with its roles).
            tokenizer: The base's tokenizer.
            path: The adapter folder.
            role: Name of the new role.
            head_output: As in :meth:`from_pretrained`.
            max_length: As in :meth:`from_pretrained`.
            min_prompt_tokens: As in :meth:`from_pretrained`.
            **kwargs: The scorer's other keyword arguments (``name``, ``output``, ``batch_size``).
        """
        from rewardmix.models.heads import HEAD_CONFIG_NAME, ScalarHeadModel
        from rewardmix.models.lora import load_adapter

        path = Path(path)
        meta_path = path / HEAD_CONFIG_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} has no {HEAD_CONFIG_NAME}: not a reward-model adapter folder")
        meta = json.loads(meta_path.read_text())
        # seed: the head is overwritten by the saved one; do not consume the caller's random stream.
        model = ScalarHeadModel(backbone, pooling=meta["pooling"], kind=meta["kind"], role=role, seed=0)
        load_adapter(model, role, path)  # refuses an adapter whose tensors do not fit this base
        settings = _trained_settings(
            [path, path.parent / "model"], head_output, max_length, min_prompt_tokens
        )
        logger.info(
            "reward model %s: LoRA role %r from %s (%s)",
            kwargs.get("name", "reward_model"),
            role,
            path,
            settings,
        )
        return cls(model, tokenizer, role=role, **settings, **kwargs)


def _trained_settings(
    folders: Sequence[Path],
    head_output: HeadOutput | None,
    max_length: int | None,
    min_prompt_tokens: int | None,
) -> dict[str, Any]:
    """Input and head settings: the given ones, else the reward-model run's record, else the stage defaults."""
    from rewardmix.stages.reward_model import RM_META_NAME, read_rm_meta

    meta: dict[str, Any] = {}
    for folder in folders:
        if (folder / RM_META_NAME).is_file():
            meta = read_rm_meta(folder)
            break
    else:
        logger.info("no %s in %s: default input settings", RM_META_NAME, ", ".join(map(str, folders)))
    return {
        "head_output": head_output if head_output is not None else _head_output_of(meta),
        "max_length": max_length if max_length is not None else int(meta.get("max_length", 1024)),
        "min_prompt_tokens": min_prompt_tokens
        if min_prompt_tokens is not None
        else int(meta.get("min_prompt_tokens", 256)),
    }
