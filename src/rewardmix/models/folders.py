"""Model folders on disk: reading one by rewardmix's rules, writing one atomically, and the files rewardmix adds.

The rules every model read and write follows (:mod:`rewardmix.models.loading` adds names: hub ids and
``offline:`` names; :mod:`rewardmix.models.offline` converts the packaged GGUF with the readers here;
:mod:`rewardmix.models.heads` and :mod:`rewardmix.models.lora` save heads and adapters with the writer):

* ``trust_remote_code`` is off unless the caller (i.e. the config) turns it on;
* weights are read from safetensors only (a folder holding only pickled ``.bin`` weights is refused, never
  ``torch.load``-ed); GGUF files are the one other format, dequantized into a plain dense model;
* a tokenizer always has a pad token (:func:`read_tokenizer`);
* folders are written atomically (:func:`save_pretrained_atomic`): a kill leaves the old folder or the new
  one, never half of one.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rewardmix.rundir import fsync_dir, no_space, umask_modes

__all__ = [
    "HEAD_CONFIG_NAME",
    "HEAD_WEIGHTS_NAME",
    "DtypeName",
    "read_causal_lm",
    "read_model",
    "read_sequence_classifier",
    "read_tokenizer",
    "resolve_dtype",
    "save_pretrained_atomic",
]

logger = logging.getLogger(__name__)

DtypeName = Literal["float32", "bfloat16", "float16", "auto"]

# The files a scalar head adds to a model or adapter folder (written by rewardmix.models.heads).
HEAD_WEIGHTS_NAME = "head.safetensors"
HEAD_CONFIG_NAME = "rewardmix_head.json"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Weight files that are pickles: loading one can run arbitrary code, so we never write or read them.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or a ``torch.dtype``) -> ``torch.dtype``; ``"auto"`` as is."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


def read_tokenizer(
    path: str,
    *,
    trust_remote_code: bool = False,
    padding_side: Literal["left", "right"] = "right",
    gguf_file: str | None = None,
) -> PreTrainedTokenizerBase:
    """Read a tokenizer from a folder or hub id and guarantee it has a pad token.

    Pad-token fallback: a tokenizer without one gets ``pad_token = eos_token`` (logged as a warning), the usual
    choice for decoder LMs. Code must therefore never find padding by ``input_ids == pad_token_id`` (that would
    also hit real EOS tokens): rewardmix always uses the attention mask. A tokenizer with neither pad nor EOS
    token is refused rather than given a new token, which would need the model's embeddings resized.

    Args:
        path: A folder or hub id (names are resolved by :func:`rewardmix.models.loading.load_tokenizer`).
        trust_remote_code: Allow the repository's own Python code.
        padding_side: Side that ``tokenizer(..., padding=True)`` pads on.
        gguf_file: Name of a ``.gguf`` file inside ``path`` to read the tokenizer from.

    Returns:
        The tokenizer, with ``pad_token`` set and ``padding_side`` as asked.

    Raises:
        ValueError: If the tokenizer has neither a pad nor an EOS token.
    """
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {path} has neither a pad token nor an EOS token to pad with")
        logger.warning(
            "tokenizer of %s has no pad token; padding with its EOS token %r", path, tokenizer.eos_token
        )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_causal_lm(
    path: str,
    *,
    gguf_file: str | None = None,
    dtype: DtypeName | torch.dtype = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Read a causal LM (with its LM head) from a folder or hub id: safetensors, or a GGUF file dequantized.

    Args:
        path: A folder or hub id (names are resolved by :func:`rewardmix.models.loading.load_causal_lm`).
        gguf_file: Name of a ``.gguf`` file inside ``path``, dequantized into a dense model of ``dtype``.
        dtype: Parameter dtype, see :func:`resolve_dtype`.
        trust_remote_code: Allow the repository's own Python code.
        attn_implementation: ``"eager"``, ``"sdpa"``, ... ; ``None`` keeps the transformers default.

    Returns:
        The model in eval mode.
    """
    model = AutoModelForCausalLM.from_pretrained(
        path, **_from_pretrained_kwargs(gguf_file, dtype, trust_remote_code, attn_implementation)
    )
    logger.info("loaded causal LM %s (%s, %s)", path, type(model).__name__, model.dtype)
    return model


def read_model(
    path: str,
    *,
    dtype: DtypeName | torch.dtype = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Read the body of a model (``AutoModel``, no LM head) from a folder or hub id, safetensors only.

    Args:
        path: A folder or hub id (names are resolved by :func:`rewardmix.models.loading.load_backbone`).
        dtype: Parameter dtype, see :func:`resolve_dtype`.
        trust_remote_code: Allow the repository's own Python code.
        attn_implementation: ``"eager"``, ``"sdpa"``, ... ; ``None`` keeps the transformers default.

    Returns:
        The model in eval mode.
    """
    return AutoModel.from_pretrained(
        path, **_from_pretrained_kwargs(None, dtype, trust_remote_code, attn_implementation)
    )


def read_sequence_classifier(
    path: str, *, dtype: DtypeName | torch.dtype = "float32", trust_remote_code: bool = False
) -> PreTrainedModel:
    """Read an ``AutoModelForSequenceClassification`` (e.g. a reward model) from a folder or hub id, safetensors
    only; in eval mode."""
    return AutoModelForSequenceClassification.from_pretrained(
        path, **_from_pretrained_kwargs(None, dtype, trust_remote_code, None)
    )


def save_pretrained_atomic(
    model_or_obj_with_save_pretrained: Any,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write a ``save_pretrained`` folder so that ``out_dir`` is either the complete old or the complete new one.

    The object saves into a fresh temporary folder beside ``out_dir`` (same file system, so renames are
    atomic), with safetensors weights (``safe_serialization=True`` where the method still takes it; transformers
    5 always writes safetensors). The files are fsync'ed, checked for pickled weights (``.bin``, ``.pt``, ...:
    refused), and the folder is renamed to ``out_dir``. An existing ``out_dir`` is first renamed aside and
    deleted only after the new folder is in place; on any error the temporary folder is removed and the old
    ``out_dir`` is left as it was. (POSIX cannot rename a folder over a non-empty one, so between the two
    renames there is a moment without ``out_dir``; a crash exactly then leaves the old copy as
    ``.<name>.old-*`` beside it, which the next save of ``out_dir`` puts back or removes, as it removes the
    ``.<name>.tmp-*`` folder of a save killed while writing.)

    Args:
        model_or_obj_with_save_pretrained: Anything with ``save_pretrained(folder)``: a transformers model, a
            PEFT model, a :class:`~rewardmix.models.heads.ScalarHeadModel` writer, a tokenizer.
        out_dir: Destination folder; its parent is created if needed.
        tokenizer: Also saved into the same folder when given.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        NotADirectoryError: If ``out_dir`` exists and is not a folder.
        RuntimeError: If the saved files include pickled weights.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_interrupted_saves(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        _call_save_pretrained(model_or_obj_with_save_pretrained, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        umask_modes(tmp)  # mkdtemp gives 0700 and safetensors 0600; a model folder is like any other
        pickles = [p.name for p in tmp.rglob("*") if p.suffix in _PICKLE_SUFFIXES]
        if pickles:
            raise RuntimeError(f"refusing to save pickled weights {pickles}; only safetensors are allowed")
        _fsync_tree(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = no_space(
            e, out_dir, f"{out_dir} is as it was before" if out_dir.exists() else "nothing was written"
        )
        if full is not None:
            raise full from None
        raise
    logger.debug("saved %s atomically", out_dir)
    return out_dir


def _from_pretrained_kwargs(
    gguf_file: str | None,
    dtype: DtypeName | torch.dtype,
    trust_remote_code: bool,
    attn_implementation: str | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file is not None:
        # dequantize=True: a plain dense model (nn.Linear weights), trainable and serializable. Without it,
        # transformers 5 keeps a GGUF quantizer on the model when the `kernels` package is present, and in
        # every case refuses save_pretrained() on the result.
        kwargs["gguf_file"] = gguf_file
        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    else:
        # Never fall back to pickled .bin weights (torch.load can execute code).
        kwargs["use_safetensors"] = True
    return kwargs


def _call_save_pretrained(obj: Any, folder: Path) -> None:
    save = obj.save_pretrained
    params = inspect.signature(save).parameters
    if "safe_serialization" in params:
        save(str(folder), safe_serialization=True)
    else:
        save(str(folder))


def _fsync_tree(folder: Path) -> None:
    # Data must be on disk before the rename makes the folder visible, or a power cut could expose empty files.
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def _clean_interrupted_saves(out_dir: Path) -> None:
    """Remove what a save of ``out_dir`` killed midway left beside it (one writer per folder: the main process).

    A ``.<name>.tmp-*`` folder is a half-written copy: removed. A ``.<name>.old-*`` folder is the previous
    complete copy, moved aside by a kill between the two renames: put back when ``out_dir`` is missing,
    removed otherwise.
    """
    for tmp in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        logger.info("removing %s, left by an interrupted save", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(out_dir.parent.glob(f".{out_dir.name}.old-*")):
        if out_dir.exists():
            logger.info("removing %s, left by an interrupted save", old)
            shutil.rmtree(old, ignore_errors=True)
        else:
            logger.warning("restoring %s from %s, left by an interrupted save", out_dir, old)
            os.rename(old, out_dir)


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
    else:
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            os.rename(old, out_dir)  # put the old folder back; the caller removes tmp
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out_dir.parent)
