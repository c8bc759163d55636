"""Scalar heads: one score per sequence from a transformer backbone (reward models, value models).

``score = w . h_pool + b`` where ``h_pool`` is the backbone's final hidden state pooled over the sequence:
at the last real token (``"last"``, the default for decoders), at the first one (``"first"``, the CLS token of
an encoder) or averaged over the real tokens (``"mean"``).

Padding invariance. The score of a text must not depend on how it was padded or batched (CRS §8.2 reports a
reward model whose scores changed with the padding side). Two things break it in transformers 5.x:

* position ids: decoders and encoders build ``position_ids = arange(T)`` when none are given, so with left
  padding the first real token gets position ``#pads`` instead of 0. For RoPE decoders (Llama) this only
  perturbs rounding (RoPE is relative), but for learned absolute positions (BERT, MiniLM) the scores change
  completely (measured: hidden states off by ~2.3 on a tiny BERT with two left pads);
* fully masked attention rows (a left pad in a causal model sees no real token): handled by transformers 5
  (SDPA returns zeros, eager a uniform row, no NaN), but fragile across versions and kernels.

:class:`ScalarHeadModel` avoids both for every model family at once: it moves each row's real tokens to the
front (right padding, order kept) before calling the backbone. Then positions start at 0 on the first real
token with the model's own default position ids (including RoBERTa-style ids computed from ``input_ids``), no
query row is fully masked, and the pooled index is simply ``#tokens - 1``. :func:`position_ids_from_mask`
is there for code that must keep left padding (generation, PPO log-probs).

Reference: CRS thesis §8.2 (padding-side bug); head initialisation std ``1/sqrt(H+1)`` from Ziegler et al.
2019, "Fine-Tuning Language Models from Human Preferences" (openai/lm-human-preferences, ``reward_head``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from rewardmix.models.folders import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, DtypeName, save_pretrained_atomic
from rewardmix.models.loading import BackboneKind, infer_backbone_kind, load_backbone
from rewardmix.models.lora import active_role
from rewardmix.rundir import file_mode

__all__ = [
    "HEAD_CONFIG_NAME",
    "HEAD_WEIGHTS_NAME",
    "Pooling",
    "PolicyValueHead",
    "ScalarHeadModel",
    "capture_last_hidden_state",
    "first_token_index",
    "last_token_index",
    "pool_hidden",
    "position_ids_from_mask",
    "right_align",
]

logger = logging.getLogger(__name__)

Pooling = Literal["last", "first", "mean"]
_FORMAT = "rewardmix.scalar_head"
_FORMAT_VERSION = 1


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask = 1) token of each row; correct for left, right or no padding.

    Args:
        attention_mask: (B, T), 1/True for real tokens.

    Returns:
        (B,) LongTensor. Rows without any real token are an error.
    """
    mask = _bool_mask(attention_mask)
    positions = torch.arange(mask.shape[1], device=mask.device)
    # The largest position where the mask is on: positions of pads are zeroed, so they never win.
    return (positions * mask).argmax(dim=1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first real token of each row (the CLS token of a right-padded encoder batch): (B,) long."""
    mask = _bool_mask(attention_mask)
    return mask.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximal index


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token: ``cumsum(mask) - 1``, clamped at 0.

    Pass these as ``position_ids`` when running a decoder on a LEFT-padded batch (generation, PPO log-probs);
    pads get position 0 (their outputs are masked anyway).

    Args:
        attention_mask: (B, T), 1/True for real tokens.

    Returns:
        (B, T) LongTensor.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def right_align(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the front, in order (any padding -> right padding).

    Args:
        input_ids: (B, T) token ids.
        attention_mask: (B, T), 1/True for real tokens; each row must hold one contiguous run of them.

    Returns:
        ``(input_ids, attention_mask, order)``, all (B, T): the re-arranged ids and mask, and the gather index
        (``aligned[b, j] = original[b, order[b, j]]``; scatter with it to go back).
    """
    mask = _bool_mask(attention_mask)
    # A stable sort on "is pad" keeps real tokens (key 0) in their order, ahead of the pads (key 1).
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    return input_ids.gather(1, order), attention_mask.gather(1, order), order


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool token vectors into one vector per sequence, ignoring padding (left or right).

    Args:
        hidden: (B, T, H) hidden states.
        attention_mask: (B, T), 1/True for real tokens.
        pooling: ``"last"`` (last real token), ``"first"`` (first real token) or ``"mean"`` (masked mean,
            computed in float32).

    Returns:
        (B, H), ``"mean"`` in float32, the others in ``hidden.dtype``.
    """
    if pooling == "last" or pooling == "first":
        index = last_token_index(attention_mask) if pooling == "last" else first_token_index(attention_mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, index.to(hidden.device)]
    if pooling == "mean":
        weights = _bool_mask(attention_mask).to(torch.float32).unsqueeze(-1)  # (B, T, 1)
        return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)
    raise ValueError(f"pooling must be 'last', 'first' or 'mean', got {pooling!r}")


class ScalarHeadModel(torch.nn.Module):
    """A backbone and a linear head giving one float32 score per sequence.

    The backbone may be a body (``LlamaModel``, ``BertModel``), a full causal LM (its body is called, the LM
    head is skipped) or a ``PeftModel`` with LoRA roles over either (then ``role`` says which adapter this
    head belongs to, and forward runs with that role active). Scores do not depend on padding side or batch
    composition (see the module docstring).

    Args:
        backbone: The transformer.
        pooling: ``"last"`` (decoders; the reward/value position), ``"first"`` (CLS of encoders) or ``"mean"``.
        kind: ``"causal_lm"`` or ``"encoder"``, recorded when saving; ``None`` -> guessed from the config.
        role: LoRA role of this head when the backbone carries several; ``None`` -> whatever role is active.
        seed: Seed for the head initialisation (the global RNG is left untouched); ``None`` -> global RNG.

    The head is ``Linear(H, 1)`` in float32 with weights ~ N(0, 1/(H+1)) and bias 0, so initial scores are
    O(1) whatever the width (Ziegler et al. 2019).
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        *,
        pooling: Pooling = "last",
        kind: BackboneKind | None = None,
        role: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("last", "first", "mean"):
            raise ValueError(f"pooling must be 'last', 'first' or 'mean', got {pooling!r}")
        self.backbone = backbone
        self.pooling: Pooling = pooling
        self.role = role
        body = _body(backbone)
        self.kind: BackboneKind = kind if kind is not None else infer_backbone_kind(body)
        self.hidden_size = _hidden_size(body)
        # With a seed, the whole head construction runs on a forked RNG: the caller's stream is not consumed.
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.head = torch.nn.Linear(self.hidden_size, 1, dtype=torch.float32)
            torch.nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.hidden_size + 1))
            torch.nn.init.zeros_(self.head.bias)
        self.head.to(body.get_input_embeddings().weight.device)
        # Decoders build a KV cache by default; scoring never reuses it, so turn it off where accepted.
        self._no_cache = "use_cache" in inspect.signature(body.forward).parameters
        self.train(backbone.training)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Score each sequence.

        Args:
            input_ids: (B, T) token ids, padded on either side.
            attention_mask: (B, T), 1 for real tokens; each row one contiguous, non-empty run.

        Returns:
            (B,) float32 scores.
        """
        hidden, mask, _ = self._aligned_hidden(input_ids, attention_mask)
        pooled = pool_hidden(hidden, mask, self.pooling)
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1)

    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Apply the head at every token (e.g. PPO values); same padding invariance as :meth:`forward`.

        Args:
            input_ids: (B, T) token ids, padded on either side.
            attention_mask: (B, T), 1 for real tokens.

        Returns:
            (B, T) float32 scores in the input's layout; entries at padding are meaningless (mask them).
        """
        hidden, _, order = self._aligned_hidden(input_ids, attention_mask)
        aligned = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)  # (B, T)
        # Undo the alignment: original[b, order[b, j]] = aligned[b, j].
        return torch.zeros_like(aligned).scatter(1, order.to(aligned.device), aligned)

    def save_pretrained(self, out_dir: str | os.PathLike[str], *, tokenizer: Any = None) -> Path:
        """Save backbone (``save_pretrained``, safetensors) + ``head.safetensors`` + ``rewardmix_head.json``.

        Atomic (see :func:`~rewardmix.models.folders.save_pretrained_atomic`). A backbone that is a full causal
        LM is saved as its body (no LM head); reload with :meth:`from_pretrained`. A LoRA backbone cannot be
        saved this way: use :func:`~rewardmix.models.lora.merge_and_save` or ``save_adapter``.

        Returns:
            ``out_dir`` as a ``Path``.
        """
        if isinstance(self.backbone, PeftModel):
            raise TypeError(
                "the backbone has LoRA roles: save with rewardmix.models.lora.merge_and_save(model, role, out_dir) "
                "or save_adapter(model, role, out_dir)"
            )
        return save_pretrained_atomic(_HeadModelWriter(self), out_dir, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        kind: BackboneKind | None = None,
        dtype: DtypeName | torch.dtype = "float32",
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
    ) -> ScalarHeadModel:
        """Load a folder written by :meth:`save_pretrained` (eval mode).

        Args:
            path: The folder.
            kind: Backbone kind; ``None`` -> the one recorded in ``rewardmix_head.json``.
            dtype: Backbone dtype (the head stays float32).
            trust_remote_code: Allow the backbone repository's own code; off unless the config says so.
            attn_implementation: ``"eager"``, ``"sdpa"``, ...; ``None`` keeps the transformers default.
        """
        path = Path(path)
        meta = _read_head_config(path)
        backbone = load_backbone(
            path,
            kind=kind or meta["kind"],
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        # seed: the head is overwritten below; seeding keeps the caller's RNG stream untouched.
        model = cls(backbone, pooling=meta["pooling"], kind=kind or meta["kind"], seed=0)
        model.load_head(path)
        return model.eval()

    def save_head(self, folder: str | os.PathLike[str]) -> None:
        """Write ``head.safetensors`` and ``rewardmix_head.json`` into ``folder`` (not atomic by itself)."""
        folder = Path(folder)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(folder / HEAD_WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / HEAD_WEIGHTS_NAME).chmod(file_mode())  # safetensors writes 0600; the umask's mode instead
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "pooling": self.pooling,
            "hidden_size": self.hidden_size,
            "kind": self.kind,
            "backbone_class": type(_body(self.backbone)).__name__,
        }
        (folder / HEAD_CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    def load_head(self, folder: str | os.PathLike[str]) -> None:
        """Load ``head.safetensors`` from ``folder`` into the head (checks pooling and hidden size)."""
        folder = Path(folder)
        meta = _read_head_config(folder)
        if meta["hidden_size"] != self.hidden_size or meta["pooling"] != self.pooling:
            raise ValueError(
                f"head in {folder} (hidden {meta['hidden_size']}, pooling {meta['pooling']}) does not fit this "
                f"model (hidden {self.hidden_size}, pooling {self.pooling})"
            )
        state = load_file(str(folder / HEAD_WEIGHTS_NAME), device=str(self.head.weight.device))
        self.head.load_state_dict(state)

    def with_backbone(self, backbone: torch.nn.Module) -> ScalarHeadModel:
        """A new model over ``backbone`` with a copy of this head (same pooling, kind and role)."""
        other = ScalarHeadModel(backbone, pooling=self.pooling, kind=self.kind, role=self.role, seed=0)
        other.head.load_state_dict(self.head.state_dict())
        return other

    def _aligned_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_mask(attention_mask)
        ids, mask, order = right_align(input_ids, attention_mask)
        if self.role is not None and isinstance(self.backbone, PeftModel):
            with active_role(self.backbone, self.role):
                hidden = self._hidden(ids, mask)
        else:
            hidden = self._hidden(ids, mask)
        return hidden, mask, order

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Right-aligned input: the model's default position ids are already 0..n-1 on the real tokens.
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._no_cache:
            kwargs["use_cache"] = False
        out = _body(self.backbone)(**kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class PolicyValueHead(torch.nn.Module):
    """A scalar head on a causal LM's own final hidden states: ``V = w . h_t + b`` at every token.

    It has no backbone of its own: the hidden states come from the LM's forward pass
    (:func:`capture_last_hidden_state`), so one pass gives both the logits and the values. Initialised as
    :class:`ScalarHeadModel`'s head: ``Linear(H, 1)`` in float32, weights ~ N(0, 1/(H+1)), bias 0.

    Args:
        hidden_size: H, the width of the LM's final hidden states.
        seed: Seed for the initialisation (the global RNG is left untouched).
    """

    def __init__(self, hidden_size: int, *, seed: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        # The same draws, in the same order, as ScalarHeadModel's head with this seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = torch.nn.Linear(hidden_size, 1, dtype=torch.float32)
            torch.nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden_size + 1))
            torch.nn.init.zeros_(self.head.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states -> (...) float32 values."""
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def save_head(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``head.safetensors`` and ``rewardmix_head.json`` (saying it reads the policy's hidden states)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(folder / HEAD_WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / HEAD_WEIGHTS_NAME).chmod(file_mode())  # safetensors writes 0600; the umask's mode instead
        meta = {
            "format": _POLICY_HEAD_FORMAT,
            "format_version": 1,
            "reads": "the policy's final hidden states (its own forward pass), at every token",
            "hidden_size": self.hidden_size,
        }
        (folder / HEAD_CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return folder


_POLICY_HEAD_FORMAT = "rewardmix.policy_value_head"


@contextmanager
def capture_last_hidden_state(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the final hidden states of ``model``'s body while the block runs (a forward hook).

    The body is the transformer under the LM head (a ``PeftModel`` wrapper skipped, LoRA layers in place), so
    the captured (B, T, H) tensor is the ``last_hidden_state`` the LM head reads, in the autograd graph when
    gradients are on.

    Yields:
        A list that gets one (B, T, H) tensor per forward pass of the body.
    """
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = _body(model).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


class _HeadModelWriter:
    """Writes body + head into one folder, for :func:`save_pretrained_atomic`."""

    def __init__(self, model: ScalarHeadModel) -> None:
        self.model = model

    def save_pretrained(self, folder: str) -> None:
        body = _body(self.model.backbone)
        # save_pretrained stamps config.architectures with the body's class; the config object is shared with
        # the full LM around it (e.g. the live SFT policy), so put the old value back afterwards.
        architectures = getattr(body.config, "architectures", None)
        try:
            body.save_pretrained(folder)
        finally:
            body.config.architectures = architectures
        self.model.save_head(folder)


def _body(backbone: torch.nn.Module) -> torch.nn.Module:
    """The transformer body to call: skips a PeftModel wrapper and an LM head (LoRA layers stay in place)."""
    model = backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone
    # transformers' PreTrainedModel.base_model is the body (e.g. LlamaForCausalLM.model), or the model itself.
    return getattr(model, "base_model", model)


def _hidden_size(body: torch.nn.Module) -> int:
    size = getattr(getattr(body, "config", None), "hidden_size", None)
    return int(size) if size is not None else int(body.get_input_embeddings().embedding_dim)


def _bool_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, T), got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()


def _check_mask(attention_mask: torch.Tensor) -> None:
    mask = _bool_mask(attention_mask)
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("attention_mask has a row without any real token; it cannot be scored")
    span = last_token_index(mask) - first_token_index(mask) + 1
    if bool((span != counts).any()):
        raise ValueError(
            "each attention_mask row must hold one contiguous run of real tokens (left/right padding)"
        )


def _read_head_config(folder: Path) -> dict[str, Any]:
    config_path = folder / HEAD_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {HEAD_CONFIG_NAME}; not a scalar-head model folder")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != _FORMAT or meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: unsupported format {meta.get('format')!r} v{meta.get('format_version')}"
        )
    return meta
