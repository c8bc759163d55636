"""Small pieces shared by rewardmix's own training loops (SFT, reward models).

None of these owns the loop: a stage reads top to bottom and calls them where it needs them.

- Data order: :func:`epoch_order` (a seeded permutation per epoch, a pure function of its arguments, so a
  resumed run sees the same order without restoring any generator) and :func:`chunk`.
- Exact gradient accumulation: :func:`sync_gradients_if` (skip the DDP all-reduce on all but the last
  micro-batch) and :func:`global_sum` (the normalizer of a token-level loss over every process).
- :func:`pad_sequences` for ragged token lists.
- :func:`clip_gradients` and :class:`NonFiniteGuard` (skip an optimizer step whose gradient is NaN/inf and
  stop after too many in a row).
- :func:`trainable_state` / :func:`load_trainable_state`: the tensors a checkpoint holds.
- :class:`TrainLogger` (``metrics.jsonl`` plus TensorBoard / W&B when installed and asked for) and
  :class:`SampleTable` (``samples.jsonl``: prompt -> completion every N steps), and
  :func:`truncate_jsonl_after` so a resumed run does not log the steps it redoes twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from rewardmix.algos.sequences import epoch_order
from rewardmix.rundir import MetricsLogger, atomic_write_bytes
from rewardmix.train.sharded import is_deepspeed

__all__ = [
    "NonFiniteError",
    "NonFiniteGuard",
    "SampleTable",
    "TrainLogger",
    "chunk",
    "clip_gradients",
    "describe_nonfinite",
    "epoch_order",
    "global_sum",
    "load_trainable_state",
    "nonfinite_gradients",
    "pad_sequences",
    "set_seed",
    "sync_gradients_if",
    "trainable_state",
    "truncate_jsonl_after",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
NamedParameters = Iterable[tuple[str, torch.nn.Parameter]]
ReportTo = Literal["tensorboard", "wandb"]


# ---------------------------------------------------------------------------------------------------------
# Seeds and data order


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def chunk(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """Consecutive slices of ``size`` items; the last one may be shorter (nothing is dropped)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------------------------------------
# Batches and gradient accumulation


def pad_sequences(
    sequences: Sequence[Sequence[int | bool]],
    *,
    pad_value: int | bool,
    side: Literal["right", "left"] = "right",
    dtype: torch.dtype = torch.long,
) -> torch.Tensor:
    """Stack ragged sequences into a (B, T_max) tensor, padding on ``side`` with ``pad_value``."""
    if not sequences:
        raise ValueError("pad_sequences needs at least one sequence")
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), pad_value, dtype=dtype)
    for i, seq in enumerate(sequences):
        if len(seq):
            values = torch.as_tensor(list(seq), dtype=dtype)
            if side == "right":
                out[i, : len(seq)] = values
            else:
                out[i, width - len(seq) :] = values
    return out


def sync_gradients_if(
    accelerator: Any, model: torch.nn.Module, sync: bool
) -> contextlib.AbstractContextManager:
    """``accelerator.no_sync(model)`` unless ``sync``: accumulate locally, all-reduce on the last micro-batch.

    With one process it is a no-op either way; with DDP it saves one all-reduce per extra micro-batch. Under
    DeepSpeed it tells the engine whether this micro-batch's backward pass ends the optimizer step: the engine
    reduces the gradients and applies the update (clip, step, zero) inside that backward pass.
    """
    if is_deepspeed(accelerator):
        return _deepspeed_boundary(accelerator, sync)
    return contextlib.nullcontext() if sync or accelerator is None else accelerator.no_sync(model)


@contextlib.contextmanager
def _deepspeed_boundary(accelerator: Any, last: bool) -> Iterator[None]:
    """Accelerate's ``sync_gradients`` flag set to ``last`` for one backward pass (it is the engine's boundary)."""
    state = accelerator.gradient_state
    before = state.sync_gradients
    state._set_sync_gradients(last)
    try:
        yield
    finally:
        state._set_sync_gradients(before)


def global_sum(accelerator: Any, value: float | int) -> float:
    """``value`` summed over every process (the value itself with one process or no accelerator).

    Used for the normalizer of a token-level loss: each process divides its summed loss by the number of
    answer tokens of the whole optimizer step, on all processes and micro-batches.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum").item())


def clip_gradients(
    parameters: Sequence[torch.nn.Parameter] | Iterator[torch.nn.Parameter],
    max_norm: float | None,
    *,
    accelerator: Any = None,
) -> float | None:
    """Clip the global L2 norm of the gradients to ``max_norm`` (None or <= 0: measure only).

    With an ``accelerator``, fp16 gradients are unscaled first, and FSDP / DeepSpeed / XLA go through
    ``accelerator.clip_grad_norm_`` (they know their sharded norm). A non-finite norm leaves the gradients as
    they are, so that :class:`NonFiniteGuard` can name the parameters whose gradient is NaN or inf.

    Returns:
        The total gradient norm before clipping (``inf``/``nan`` when a gradient is not finite), or ``None``
        when the backend does not report it (DeepSpeed clips inside its own step).
    """
    params = [p for p in parameters if p.grad is not None]
    limit = max_norm if max_norm is not None and max_norm > 0 else math.inf
    if accelerator is not None and getattr(accelerator, "distributed_type", None) in _SHARDED_BACKENDS:
        norm = accelerator.clip_grad_norm_(params, limit)  # only the backend knows a sharded norm
        return None if norm is None else float(norm)
    if accelerator is not None:
        accelerator.unscale_gradients()  # fp16 loss scaling: measure and clip the true gradients
    if not params:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # Scale only by a finite norm: max_norm / inf would turn the bad gradient into NaN and every other one into
    # 0, hiding which one was bad (the guard skips the step anyway). Same ops as clip_grad_norm_ otherwise.
    if limit < math.inf and bool(torch.isfinite(norm)):
        torch.nn.utils.clip_grads_with_norm_(params, limit, norm)
    return float(norm)


_SHARDED_BACKENDS = ("FSDP", "DEEPSPEED", "XLA")  # accelerate's DistributedType values (a str enum)


class NonFiniteError(FloatingPointError):
    """Training stopped on NaN/inf; the message names the step, the loss and the parameters concerned."""


def nonfinite_gradients(
    parameters: Iterable[tuple[str, torch.nn.Parameter]],
) -> tuple[list[str], int]:
    """The parameters whose gradient holds a NaN or an inf, as ``"name (nan)"`` / ``"name (inf)"``.

    Args:
        parameters: ``(name, parameter)`` pairs, e.g. ``model.named_parameters()``.

    Returns:
        ``(culprits, checked)``: the culprits in the given order, and how many gradients were looked at.
    """
    culprits, checked = [], 0
    for name, param in parameters:
        grad = param.grad
        if grad is None:
            continue
        checked += 1
        if not bool(torch.isfinite(grad).all()):
            culprits.append(f"{name} ({'nan' if bool(torch.isnan(grad).any()) else 'inf'})")
    return culprits, checked


def describe_nonfinite(
    step: int,
    grad_norm: float | None,
    losses: Mapping[str, float] | None = None,
    parameters: Iterable[tuple[str, torch.nn.Parameter]] | None = None,
    *,
    max_names: int = 5,
) -> str:
    """One line naming what is not finite at ``step``: the gradient norm, the losses, the parameters.

    Example: ``step 7: gradient norm is nan; loss/train is nan; non-finite gradients in 2 of 16 tensors:
    model.layers.0.q_proj.lora_A.weight (nan), ...``.
    """
    return f"step {step}: " + "; ".join(_nonfinite_parts(grad_norm, losses, parameters, max_names=max_names))


def _nonfinite_parts(
    grad_norm: float | None,
    losses: Mapping[str, float] | None,
    parameters: Iterable[tuple[str, torch.nn.Parameter]] | None,
    *,
    max_names: int = 5,
) -> list[str]:
    parts = []
    if grad_norm is not None and not math.isfinite(grad_norm):
        parts.append(f"gradient norm is {grad_norm}")
    parts += [f"{key} is {value}" for key, value in (losses or {}).items() if not math.isfinite(value)]
    if parameters is not None:
        culprits, checked = nonfinite_gradients(parameters)
        if culprits:
            more = f" (+{len(culprits) - max_names} more)" if len(culprits) > max_names else ""
            names = ", ".join(culprits[:max_names])
            parts.append(f"non-finite gradients in {len(culprits)} of {checked} tensors: {names}{more}")
        elif grad_norm is not None and not math.isfinite(grad_norm):
            parts.append("every single gradient is finite: their norm overflowed")
    return parts or ["every value is finite"]


class NonFiniteGuard:
    """Skip optimizer steps whose gradient norm or loss is NaN or inf; stop after ``max_consecutive`` in a row.

    One bad batch (an overflow, a degenerate example) should not poison the weights: its optimizer step is not
    taken, and a warning names the step, the non-finite losses and every parameter whose gradient is NaN/inf.
    A run whose every step is bad stops with :class:`NonFiniteError` (the CLI prints it and exits non-zero)
    rather than silently train nothing; no weight was changed by the skipped steps, so every checkpoint on disk
    holds finite weights (one saved during the streak holds the last good ones).

    Pass values that are the same on every process (the gradient norm after the all-reduce, globally summed
    losses), so that all processes skip the same steps.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0
        self.last_reason: str | None = None  # what the last skipped step had (as describe_nonfinite)

    def step_ok(
        self,
        grad_norm: float | None,
        step: int,
        *,
        losses: Mapping[str, float] | None = None,
        parameters: NamedParameters | Callable[[], NamedParameters] | None = None,
        can_skip: bool = True,
    ) -> bool:
        """True when the step may be taken; on False the caller zeroes the gradients and skips it.

        Args:
            grad_norm: The total gradient norm (``None``: not reported by the backend; then only the losses
                are checked).
            step: The optimizer step, for the messages.
            losses: Metric key -> the step's loss value (e.g. ``{"loss/train": 2.3}``); a non-finite one also
                skips the step.
            parameters: ``(name, parameter)`` pairs to name the culprits with, or a function returning them
                (called only on a bad step).
            can_skip: False when the update was already applied (DeepSpeed applies it inside the backward
                pass): a bad step then stops the run at once.

        Raises:
            NonFiniteError: ``max_consecutive`` bad steps in a row, or one that could not be skipped.
        """
        grad_ok = grad_norm is None or math.isfinite(grad_norm)
        loss_ok = all(math.isfinite(v) for v in (losses or {}).values())
        if grad_ok and loss_ok:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        parts = _nonfinite_parts(grad_norm, losses, parameters() if callable(parameters) else parameters)
        self.last_reason = f"step {step}: " + "; ".join(parts)
        if not can_skip:
            raise NonFiniteError(
                f"{self.last_reason}. Under DeepSpeed the engine applies the update inside the backward pass, "
                "so this step could not be skipped: stopping. The checkpoints on disk hold the finite weights "
                "from before it; lower the learning rate, check the data, or use bf16 instead of fp16"
            )
        # "step 7: gradient norm is nan, skipping ...: loss/train is nan; non-finite gradients in ..."
        detail = "; ".join(parts[1:])
        logger.warning(
            "step %d: %s, skipping the optimizer step (weights unchanged)%s",
            step,
            parts[0],
            f": {detail}" if detail else "",
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient, none of them "
                f"changed the weights; stopping. Last one: {self.last_reason}. Lower the learning rate, check the "
                "data, or use bf16 instead of fp16; the checkpoints on disk hold finite weights"
            )
        return False


# ---------------------------------------------------------------------------------------------------------
# What a checkpoint holds


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """name -> tensor (detached, same storage) of every parameter with ``requires_grad``.

    Pass an unwrapped model (``accelerator.unwrap_model``) so that names carry no ``module.`` prefix.
    """
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the trainable parameters of ``model`` in place; the names must match exactly.

    Raises:
        KeyError: A trainable parameter has no tensor in ``state`` or ``state`` has a tensor for none.
        ValueError: A shape differs.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not match the model's trainable parameters: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (was it written with another model or LoRA setting?)"
        )
    with torch.no_grad():
        for name, param in params.items():
            if param.shape != state[name].shape:
                raise ValueError(
                    f"{name}: checkpoint shape {tuple(state[name].shape)} != {tuple(param.shape)}"
                )
            param.copy_(state[name])


# ---------------------------------------------------------------------------------------------------------
# Logging: metrics, sample tables


def truncate_jsonl_after(path: str | Path, step: int) -> int:
    """Drop rows whose ``step`` is greater than ``step`` (rewritten atomically); returns how many went.

    A run resumed from the checkpoint of step ``k`` redoes the steps after ``k``; without this their rows
    would appear twice in ``metrics.jsonl``/``samples.jsonl``. A torn last line (the process was killed while
    appending it) is dropped too, with a warning, instead of being appended to.

    Raises:
        ValueError: ``path:line: invalid JSON`` for a malformed line before the last one.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline; otherwise a line cut short by a kill
    kept, dropped, torn = [], 0, bool(tail.strip())
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if lineno == len(lines) and not torn:  # a last line that is whole but garbled: torn as well
                torn = True
                continue
            raise ValueError(f"{path}:{lineno}: invalid JSON") from None
        if isinstance(row, dict) and row.get("step", -1) <= step:
            kept.append(line)
        else:
            dropped += 1
    if torn:
        logger.warning("%s: dropping a torn last line (the previous run was killed while writing it)", path)
    if dropped or torn or tail:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
    return dropped + int(torn)


class TrainLogger:
    """Metrics to ``<run_dir>/metrics.jsonl``, and to TensorBoard / W&B when asked for and installed.

    A sink that is asked for but not installed is reported once with a warning and left out (the JSONL file
    is always written, so nothing is lost). Only the main process should log: pass ``enabled=False`` on the
    others.

    Args:
        run_dir: The run directory.
        report_to: Extra sinks: ``"tensorboard"`` (events under ``<run_dir>/tensorboard``) and/or ``"wandb"``.
        resume: Append to an existing ``metrics.jsonl`` instead of starting it afresh.
        config: The resolved config as a plain dict, for W&B's run config.
        run_name: The W&B run name (default: the run directory's name).
        enabled: False turns every sink off (non-main processes).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        report_to: Sequence[ReportTo] = (),
        resume: bool = False,
        config: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics = MetricsLogger(self.run_dir / "metrics.jsonl", resume=resume) if enabled else None
        self._tensorboard: Any = None
        self._wandb: Any = None
        if not enabled:
            return
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning(
                    "report_to has 'tensorboard' but the tensorboard package is not installed; skipped "
                    "(metrics.jsonl has every metric). Install it with: pip install 'rewardmix[tensorboard]'"
                )
            else:
                self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                logger.warning(
                    "report_to has 'wandb' but the wandb package is not installed; skipped (metrics.jsonl has "
                    "every metric). Install it with: pip install 'rewardmix[wandb]'"
                )
            else:
                self._wandb = wandb.init(
                    name=run_name or self.run_dir.name,
                    dir=str(self.run_dir),
                    config=dict(config or {}),
                    resume="allow",
                )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one row of metrics for ``step`` to every sink."""
        if not self.enabled:
            return
        assert self.metrics is not None
        self.metrics.log(step, dict(metrics))
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def close(self) -> None:
        """Flush and close the optional sinks."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class SampleTable:
    """Rows ``{"step", "prompt", "completion", ...}`` appended to a JSONL file (``samples.jsonl``).

    A sample table shows what the model writes as training goes on, which a loss curve does not.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not resume:
                self.path.write_text("", encoding="utf-8")

    def log(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append one line per row, each tagged with ``step``."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
