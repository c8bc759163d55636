"""Reward models in the standard Hugging Face format: ``*ForSequenceClassification`` with ``num_labels=1``.

Two directions:

* :func:`to_sequence_classifier` turns a decoder :class:`~rewardmix.models.heads.ScalarHeadModel` (body + scalar
  head, pooling ``last``) into e.g. a ``LlamaForSequenceClassification``: the body's weights are copied, the
  head's weight becomes the ``score`` layer. transformers' decoder classifiers (``GenericForSequenceClassification``)
  read ``score(h)`` at the rightmost token whose id is not ``config.pad_token_id`` and have no bias, so the
  export is exact when (a) the head's bias is 0 (pairwise Bradley-Terry training leaves it at its init 0: its
  gradient cancels exactly between chosen and rejected rows; ranking only up to rounding, which Adam amplifies), (b) the pooling is ``last`` and (c) no input ends with the pad token.
  What cannot be exact is refused (:class:`NotExportableError`): encoders (``BertForSequenceClassification``
  reads the [CLS] vector through its pooler, a dense layer and tanh, which no head copy reproduces), ``mean``
  or ``first`` pooling, and a non-zero bias unless a constant shift is accepted.
* :class:`SequenceClassifierScore` wraps any ``AutoModelForSequenceClassification`` with one label as a
  scalar-score model: ``forward(input_ids, attention_mask) -> logits[:, 0]`` (float32), the model called
  exactly as transformers would call it on a right-padded batch (padding filled with ``config.pad_token_id``).

Reference: transformers ``modeling_layers.GenericForSequenceClassification`` (pooling rule, bias-free score);
TRL ``RewardTrainer`` (reward models as ``AutoModelForSequenceClassification`` with ``num_labels=1``).
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from rewardmix.models.folders import DtypeName, read_sequence_classifier
from rewardmix.models.heads import ScalarHeadModel, right_align
from rewardmix.models.loading import BackboneKind, resolve_model_path

__all__ = [
    "NotExportableError",
    "SequenceClassifierScore",
    "is_sequence_classifier",
    "load_sequence_classifier",
    "to_sequence_classifier",
]

logger = logging.getLogger(__name__)


class NotExportableError(ValueError):
    """The reward model has no exact ``*ForSequenceClassification`` equivalent (the message says why)."""


# ---------------------------------------------------------------------------------------------------------
# Export


def to_sequence_classifier(
    model: ScalarHeadModel, *, pad_token_id: int, allow_score_shift: bool = False
) -> tuple[PreTrainedModel, float]:
    """A ``*ForSequenceClassification`` (``num_labels=1``) that scores like ``model``, in float32 on the CPU.

    Args:
        model: A scalar-head model over a decoder body (no LoRA roles: merge them first).
        pad_token_id: The tokenizer's pad id, written to ``config.pad_token_id`` (transformers pools the
            rightmost token that is not this id).
        allow_score_shift: Accept a non-zero head bias on a bias-free ``score`` layer: the classifier then
            scores every input ``bias`` lower (harmless for Bradley-Terry and ranking models, whose scores
            only matter up to a constant; it changes an absolute model's ratings).

    Returns:
        ``(classifier, shift)``: the classifier in eval mode and the constant it adds to every score
        (``-bias`` when the bias was dropped, else 0.0).

    Raises:
        NotExportableError: Encoder backbones, ``mean``/``first`` pooling, LoRA roles, an architecture without a
            sequence-classification class, or a non-zero bias without ``allow_score_shift``.
    """
    if isinstance(model.backbone, PeftModel):
        raise NotExportableError("the model carries LoRA roles: export its merged folder (merge_and_save)")
    if model.kind != "causal_lm":
        raise NotExportableError(
            "encoder reward models cannot be exported exactly: transformers' encoder classifiers (e.g. "
            "BertForSequenceClassification) read the [CLS] vector through their pooler (dense + tanh) and a "
            f"biased classifier, while this head reads the {model.pooling!r}-pooled last hidden state"
        )
    if model.pooling != "last":
        raise NotExportableError(
            f"pooling {model.pooling!r} cannot be exported exactly: transformers' decoder classifiers score "
            "the last non-pad token only (train with model.pooling: last)"
        )
    body = model.backbone.base_model if hasattr(model.backbone, "base_model") else model.backbone
    config = type(body.config).from_dict(body.config.to_dict())
    config.num_labels = 1
    config.pad_token_id = pad_token_id
    config.architectures = None
    try:
        classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    except ValueError as e:
        raise NotExportableError(
            f"{type(body).__name__} has no sequence-classification class in transformers: {e}"
        ) from None
    score = getattr(classifier, "score", None)
    inner = getattr(classifier, classifier.base_model_prefix, None)
    if not isinstance(score, torch.nn.Linear) or type(inner) is not type(body):
        raise NotExportableError(
            f"{type(classifier).__name__} is not a decoder classifier with a linear 'score' over "
            f"{type(body).__name__}; its scores would differ"
        )
    bias = float(model.head.bias.detach().float().item())
    shift = 0.0
    if score.bias is None and bias != 0.0:
        if not allow_score_shift:
            raise NotExportableError(
                f"the head's bias is {bias:.6g}, and {type(classifier).__name__}'s score layer has no bias: "
                f"every exported score would be {bias:.6g} lower. Bradley-Terry and ranking models only need "
                "score differences: set allow_score_shift: true to export with that constant shift recorded; "
                "an absolute (rating) model would read different ratings"
            )
        shift = -bias
        logger.warning("exporting without the head's bias %.6g: every score shifts by %.6g", bias, shift)
    with torch.no_grad():
        inner.load_state_dict({k: v.float().cpu() for k, v in body.state_dict().items()}, strict=True)
        score.weight.copy_(model.head.weight.detach().float().cpu())
        if score.bias is not None:
            score.bias.copy_(model.head.bias.detach().float().cpu())
    return classifier.eval(), shift


# ---------------------------------------------------------------------------------------------------------
# Import


def is_sequence_classifier(name_or_path: str | os.PathLike[str], *, trust_remote_code: bool = False) -> bool:
    """Whether a folder or hub id holds a ``*ForSequenceClassification`` (its config's ``architectures``).

    Reads only ``config.json`` (a hub id through the usual cache; offline runs find it there or not at all).
    """
    try:
        config = AutoConfig.from_pretrained(
            resolve_model_path(name_or_path), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in config.architectures or [])


def load_sequence_classifier(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: DtypeName | torch.dtype = "float32",
    trust_remote_code: bool = False,
    pad_token_id: int | None = None,
    kind: BackboneKind = "causal_lm",
) -> SequenceClassifierScore:
    """Load an ``AutoModelForSequenceClassification`` with one label (safetensors only), wrapped for scoring.

    Args:
        name_or_path: Folder, hub id or ``offline:`` name.
        dtype: Parameter dtype (the scores are float32).
        trust_remote_code: Allow the repository's own code.
        pad_token_id: Written to ``config.pad_token_id`` when the config has none (the tokenizer's pad id, as
            TRL does): decoder classifiers need it to find the last token of a padded row.
        kind: The input format the scorer builds for it (see :class:`SequenceClassifierScore`).

    Raises:
        ValueError: If the model has more than one label.
    """
    path = resolve_model_path(name_or_path)
    model = read_sequence_classifier(path, dtype=dtype, trust_remote_code=trust_remote_code)
    if model.config.num_labels != 1:
        raise ValueError(
            f"{path} is a classifier with num_labels={model.config.num_labels}; a reward model has one "
            "output (num_labels=1)"
        )
    if model.config.pad_token_id is None:
        if pad_token_id is None:
            raise ValueError(f"{path}: config.json has no pad_token_id; give the tokenizer's")
        model.config.pad_token_id = pad_token_id
    logger.info("loaded sequence classifier %s (%s, %s)", path, type(model).__name__, model.dtype)
    return SequenceClassifierScore(model.eval(), kind=kind)


class SequenceClassifierScore(torch.nn.Module):
    """A one-label ``*ForSequenceClassification`` as a scalar-score model: ``(B, T) ids -> (B,)`` float32.

    Each row's real tokens are moved to the front (right padding, as transformers classifiers expect: positions
    from 0, and for decoders the pooled token is the rightmost one that is not ``config.pad_token_id``) and the
    padding is filled with that id; then the model is called as a user of transformers would call it. Token
    type ids are not passed (all segments 0).

    Args:
        model: The classifier (``config.num_labels == 1`` and ``config.pad_token_id`` set).
        kind: Which input the reward-model scorer builds for it (:class:`rewardmix.scoring.rm_inputs.InputEncoder`):
            ``"causal_lm"``, the chat-rendered conversation, or ``"encoder"``, the tokenizer's text pair.
    """

    def __init__(self, model: PreTrainedModel, *, kind: BackboneKind = "causal_lm") -> None:
        super().__init__()
        self.model = model
        self.kind: BackboneKind = kind
        self.pad_token_id = int(model.config.pad_token_id)
        self._no_cache = "use_cache" in inspect.signature(model.forward).parameters

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask (either padding side) -> (B,) float32 ``logits[:, 0]``."""
        ids, mask, _ = right_align(input_ids, attention_mask)
        ids = ids.masked_fill(~mask.bool(), self.pad_token_id)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self._no_cache:
            kwargs["use_cache"] = False
        return self.model(**kwargs).logits[:, 0].float()
