"""Reward-model scorer: a trained scalar-head model over (prompt, response) text, as logit or bounded score.

:class:`RewardModelScorer` is the one loader of a trained reward model, used by PPO (through the composite
reward), ``evaluate`` and ``evaluate-rm``. Its inputs are built by the reward model's contract,
:class:`rewardmix.scoring.rm_inputs.InputEncoder`, exactly as in training (chat-rendered for decoders, a text
pair for encoders, the CRS truncation rule), and scored by :func:`rewardmix.scoring.rm_inputs.score_sequences`.
``max_length``, ``min_prompt_tokens``, the head's meaning and the score transform are read from the run's
``rewardmix_rm.json`` unless given.

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
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rewardmix.algos.combine import bounded_to_logit, logit_to_bounded
from rewardmix.models.tokens import pad_token_id
from rewardmix.scoring.base import Prompt, ScoringBatch
from rewardmix.scoring.rm_inputs import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MIN_PROMPT_TOKENS,
    RM_META_NAME,
    BackboneKind,
    HeadOutput,
    InputEncoder,
    ScoreTransform,
    head_output_of,
    prompt_messages,
    read_rm_meta,
    score_sequences,
)

if TYPE_CHECKING:
    from rewardmix.models.heads import ScalarHeadModel
    from rewardmix.models.hf_classifier import SequenceClassifierScore

__all__ = [
    "HeadOutput",
    "RewardModelParams",
    "RewardModelScorer",
    "ScoreOutput",
    "prompt_messages",
    "rm_output",
]

logger = logging.getLogger(__name__)

ScoreOutput = Literal["logit", "bounded"]


@dataclass
class RewardModelParams:
    """Where a reward model is and how to feed it (the ``reward_model`` section of a component)."""

    path: str
    """Reward-model folder: a scalar-head model (``ScalarHeadModel.save_pretrained`` / ``merge_and_save``); a
    Hugging Face reward model (folder, hub id or ``offline:`` name of an ``AutoModelForSequenceClassification``
    with ``num_labels=1``, e.g. one written by ``rewardmix export-rm``: score ``logits[:, 0]``, input the
    tokenizer's chat template over prompt + response, or the text pair without one); or, with ``role``, a
    LoRA adapter folder (``save_adapter``) loaded onto the shared base of the PPO run."""
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

    @property
    def preflight_paths(self) -> dict[str, str]:
        """Path fields checked before the run starts (``rewardmix.preflight``)."""
        return {"path": "adapter" if self.role is not None else "reward_model"}

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
    """Score (prompt, response) samples with a :class:`~rewardmix.models.heads.ScalarHeadModel` (or a Hugging
    Face classifier, :meth:`from_sequence_classifier`).

    Inputs are built by the reward model's :class:`~rewardmix.scoring.rm_inputs.InputEncoder`, scored in
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
        score_transform: How a raw head value reads as a rating (``sigmoid`` for sigmoid/logistic absolute
            models, read from ``rewardmix_rm.json`` by :meth:`from_pretrained`); it does not change what
            :meth:`score` returns (``evaluate-rm`` uses it).
    """

    def __init__(
        self,
        model: ScalarHeadModel | SequenceClassifierScore,
        tokenizer: Any,
        *,
        name: str = "reward_model",
        role: str | None = None,
        output: ScoreOutput = "logit",
        head_output: HeadOutput = "logit",
        batch_size: int = 16,
        max_length: int = DEFAULT_MAX_LENGTH,
        min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS,
        bucket_by_length: bool = True,
        score_transform: ScoreTransform = "identity",
    ) -> None:
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
        self.score_transform: ScoreTransform = score_transform
        self.kind: BackboneKind = model.kind
        self.encoder = InputEncoder(
            tokenizer, self.kind, max_length=max_length, min_prompt_tokens=min_prompt_tokens
        )
        self._pad_id = pad_token_id(tokenizer)

    @property
    def device(self) -> torch.device:
        """Device of the model's head (where inputs are sent)."""
        head = getattr(self.model, "head", None)
        return head.weight.device if head is not None else self.model.device

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
        if not sequences:
            return torch.empty(0, dtype=torch.float32, device=self.device)
        with self._role_context():
            return score_sequences(
                self.model,
                sequences,
                pad_id=self._pad_id,
                batch_size=self.batch_size,
                order="longest_first" if self.bucket_by_length else "input",
                device=self.device,
                progress=f"score {self.name}",
            )

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

        The score transform comes from ``rewardmix_rm.json`` (``identity`` without one). A folder or hub id
        without ``rewardmix_head.json`` whose ``config.json`` names a ``*ForSequenceClassification`` is loaded
        by :meth:`from_sequence_classifier`.
        """
        from rewardmix.models.heads import HEAD_CONFIG_NAME, ScalarHeadModel
        from rewardmix.models.loading import load_tokenizer

        if not (Path(path) / HEAD_CONFIG_NAME).is_file():
            from rewardmix.models.hf_classifier import is_sequence_classifier

            if is_sequence_classifier(path, trust_remote_code=trust_remote_code):
                return cls.from_sequence_classifier(
                    path,
                    tokenizer_path=tokenizer_path,
                    device=device,
                    dtype=dtype,
                    trust_remote_code=trust_remote_code,
                    head_output=head_output,
                    max_length=max_length,
                    min_prompt_tokens=min_prompt_tokens,
                    **kwargs,
                )
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
    def from_sequence_classifier(
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
        """A scorer over a Hugging Face reward model: an ``AutoModelForSequenceClassification`` with one label.

        The score is ``logits[:, 0]`` (:class:`~rewardmix.models.hf_classifier.SequenceClassifierScore`). Inputs,
        as TRL reward models are trained: with a chat template on the tokenizer, the conversation
        ``[user: prompt, assistant: response]`` rendered by it (a message-list prompt is the thread); without
        one, the tokenizer's text pair ``tokenizer(prompt, response)`` (e.g. OpenAssistant's DeBERTa reward
        models). Both are truncated by the CRS rule to ``max_length``. A folder exported by rewardmix
        (``rewardmix export-rm``) carries ``rewardmix_rm.json``, read as in :meth:`from_pretrained`.

        Args:
            path: Folder, hub id or ``offline:`` name.
            tokenizer_path: Tokenizer folder or hub id; ``None`` -> ``path``.
            device: Where the model runs.
            dtype: Parameter dtype (scores are float32).
            trust_remote_code: Allow the repository's own code.
            head_output: As in :meth:`from_pretrained` (``logit`` unless recorded).
            max_length: Token budget; ``None`` -> ``rewardmix_rm.json``, else 1024.
            min_prompt_tokens: Prompt floor; ``None`` -> ``rewardmix_rm.json``, else 256.
            **kwargs: The scorer's other keyword arguments (``name``, ``output``, ``batch_size``).

        Raises:
            ValueError: If the classifier has more than one label.
        """
        from rewardmix.models.hf_classifier import load_sequence_classifier
        from rewardmix.models.loading import load_tokenizer

        tokenizer = load_tokenizer(
            tokenizer_path if tokenizer_path is not None else path, trust_remote_code=trust_remote_code
        )
        kind: BackboneKind = "causal_lm" if getattr(tokenizer, "chat_template", None) else "encoder"
        model = load_sequence_classifier(
            path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            pad_token_id=pad_token_id(tokenizer),
            kind=kind,
        )
        settings = _trained_settings([Path(path)], head_output, max_length, min_prompt_tokens)
        logger.info(
            "reward model %s: sequence classifier %s (%s input, %s)",
            kwargs.get("name", "reward_model"),
            path,
            "chat" if kind == "causal_lm" else "text-pair",
            settings,
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
    """Input and head settings: the given ones, else the reward-model run's record, else the defaults."""
    meta: dict[str, Any] = {}
    for folder in folders:
        if (folder / RM_META_NAME).is_file():
            meta = read_rm_meta(folder)
            break
    else:
        logger.info("no %s in %s: default input settings", RM_META_NAME, ", ".join(map(str, folders)))
    return {
        "head_output": head_output
        if head_output is not None
        else head_output_of(meta.get("objective"), meta.get("absolute_loss")),
        "max_length": max_length
        if max_length is not None
        else int(meta.get("max_length", DEFAULT_MAX_LENGTH)),
        "min_prompt_tokens": min_prompt_tokens
        if min_prompt_tokens is not None
        else int(meta.get("min_prompt_tokens", DEFAULT_MIN_PROMPT_TOKENS)),
        "score_transform": meta.get("score_transform", "identity"),
    }
