"""Training checkpoints: written atomically, verified by checksum, resumed from the latest valid one.

Layout of one checkpoint, ``<run_dir>/checkpoints/step-{N:08d}/``:

- ``trainable.safetensors``: the trainable tensors (LoRA adapter weights, or every weight for full
  fine-tuning, or a reward head...); whatever ``trainable_state`` held.
- ``optimizer.pt`` / ``scheduler.pt``: ``state_dict()`` of each, written with ``torch.save`` and read back with
  ``torch.load(..., weights_only=True)`` (tensors and plain containers only, no code runs on load).
- ``rng.pt``: the Python, NumPy and torch (CPU and every CUDA device) random states, same format.
- ``extra.json``: the caller's own JSON state (phase, data position, ...).
- ``shards/`` (FSDP runs only, :mod:`rewardmix.train.sharded`): each process's shards of the model and the
  optimizer (``pytorch_model_fsdp_0/`` and ``optimizer_0/``, ``torch.distributed.checkpoint`` format), written
  by every process into a temporary folder that the main process moves in before the manifest. The weights are
  also in ``trainable.safetensors``, gathered, and no ``optimizer.pt`` is written.
- ``manifest.json``: written last; the step and the sha256 and size of every other file (paths relative to
  the checkpoint folder, ``shards/...`` included).

A checkpoint is built in a temporary folder next to the final one (each file fsync'd, the folder fsync'd)
and renamed into place, so ``step-N/`` is either complete or absent; a kill during a save leaves only a
``.tmp-*`` folder that the next save removes (or, when the same step was being saved again, the replaced
checkpoint as ``.old-*``, which the next save puts back in place). On load the checksums are verified: a checkpoint whose files
were damaged afterwards (disk, copy, a user's edit) is skipped with a warning naming it, and the one before
it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from rewardmix.rundir import fsync_dir, no_space, umask_modes

__all__ = [
    "CHECKPOINTS_DIR",
    "Checkpoint",
    "CheckpointError",
    "capture_rng",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "shards_path",
]

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"
EXTRA = "extra.json"
SHARDS = "shards"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing manifest or file, checksum mismatch, unreadable content."""


class _HasStateDict(Protocol):
    def state_dict(self) -> dict[str, Any]: ...


@dataclass
class Checkpoint:
    """A verified checkpoint, loaded into memory.

    Attributes:
        path: The ``step-N`` folder.
        step: The optimizer step it was taken after.
        trainable_state: name -> tensor, as given to :func:`save_checkpoint` (on ``map_location``).
        optimizer_state: ``optimizer.state_dict()`` or ``None`` when none was saved.
        scheduler_state: ``scheduler.state_dict()`` or ``None``.
        rng_state: What :func:`capture_rng` returned, for :func:`restore_rng`; ``None`` when not saved.
        extra: The caller's JSON state.
        shards: The ``shards/`` folder of an FSDP checkpoint, or ``None``.
    """

    path: Path
    step: int
    trainable_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    shards: Path | None = None


# ---------------------------------------------------------------------------------------------------------
# Random states


def capture_rng() -> dict[str, Any]:
    """The random states of Python's ``random``, NumPy's global generator and torch (CPU + each CUDA device).

    The result holds only tensors, ints, floats, tuples and lists, so it round-trips through
    ``torch.save`` / ``torch.load(weights_only=True)``.
    """
    state: dict[str, Any] = {"python": random.getstate(), "torch_cpu": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:  # numpy is a dependency, but the checkpoint code does not need it
        pass
    else:
        kind, keys, pos, has_gauss, cached = np.random.get_state()  # legacy tuple form
        state["numpy"] = (str(kind), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), cached)
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the random states captured by :func:`capture_rng` (keys that are absent are left alone).

    A CUDA state saved on a machine with a different number of devices is restored for the devices both
    have, with a warning.
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch_cpu" in state:
        torch.set_rng_state(state["torch_cpu"].cpu())
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "torch_cuda" in state and torch.cuda.is_available():
        saved = list(state["torch_cuda"])
        count = torch.cuda.device_count()
        if len(saved) != count:
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d", len(saved), count
            )
        for device, rng_state in enumerate(saved[:count]):
            torch.cuda.set_rng_state(rng_state.cpu(), device)


# ---------------------------------------------------------------------------------------------------------
# Saving


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``<run_dir>/checkpoints/step-{step:08d}``."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    trainable_state: Mapping[str, torch.Tensor],
    optimizer: _HasStateDict | None = None,
    scheduler: _HasStateDict | None = None,
    rng: bool | Mapping[str, Any] = True,
    extra: Mapping[str, Any] | None = None,
    keep: int = 2,
    shards: Path | None = None,
) -> Path:
    """Write ``checkpoints/step-{step:08d}/`` atomically and keep only the last ``keep`` checkpoints.

    Call it from one process (the main one); the caller gathers whatever state other processes hold.

    Args:
        run_dir: The run directory.
        step: Optimizer steps done so far (>= 0); names the folder. An existing checkpoint of the same step is
            replaced (atomically: the new one is complete before the old one goes).
        trainable_state: name -> tensor of everything that trains (moved to CPU, made contiguous).
        optimizer: Anything with ``state_dict()`` (a torch optimizer, an Accelerate-wrapped one), or None.
        scheduler: Same, for the learning-rate scheduler.
        rng: True captures this process's random states now (:func:`capture_rng`); a mapping is saved as
            given (e.g. states gathered from several processes); False saves none.
        extra: JSON-serializable caller state, returned as ``Checkpoint.extra``.
        keep: How many checkpoints to keep (>= 1), newest by step; older ones are deleted.
        shards: A folder every process has written its shards into (FSDP,
            :func:`rewardmix.train.sharded.save_shards`); it is moved into the checkpoint as ``shards/`` and
            every file in it goes into the manifest. It must be on the same filesystem (see :func:`shards_path`).

    Returns:
        The checkpoint folder.

    Raises:
        ValueError: ``step < 0``, ``keep < 1`` or a non-tensor in ``trainable_state``.
        TypeError: ``extra`` is not JSON-serializable.
        NoSpaceError: The disk filled up (ENOSPC/EDQUOT) during the save; the previous checkpoint is intact.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    for name, tensor in trainable_state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"trainable_state[{name!r}] is a {type(tensor).__name__}, not a tensor")
    extra_text = json.dumps(dict(extra or {}), indent=2, sort_keys=True)  # fails before anything is written

    root = Path(run_dir) / CHECKPOINTS_DIR
    final = checkpoint_path(run_dir, step)
    try:
        path = _write_checkpoint(
            root, final, step, trainable_state, optimizer, scheduler, rng, extra_text, shards
        )
    except OSError as e:
        # a disk that fills up mid-save: one message, not a traceback out of safetensors or torch.save
        full = no_space(e, final, "the previous checkpoint is intact")
        if full is None:
            raise
        raise full from None
    # step 3. prune: the newest `keep` by step stay
    prune_checkpoints(run_dir, keep=keep, up_to=step)
    logger.info("saved checkpoint %s", path)
    return path


def _write_checkpoint(
    root: Path,
    final: Path,
    step: int,
    trainable_state: Mapping[str, torch.Tensor],
    optimizer: _HasStateDict | None,
    scheduler: _HasStateDict | None,
    rng: bool | Mapping[str, Any],
    extra_text: str,
    shards: Path | None,
) -> Path:
    """Steps 1-2 of :func:`save_checkpoint`: build ``final`` in a temporary folder and rename it into place."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root, keep_path=shards)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        # step 1. every file, each fsync'd; the manifest last, so its presence means "complete"
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in trainable_state.items()}
        save_file(tensors, str(tmp / TRAINABLE), metadata={"step": str(step)})
        _fsync_file(tmp / TRAINABLE)
        if optimizer is not None:
            _torch_save(optimizer.state_dict(), tmp / OPTIMIZER)
        if scheduler is not None:
            _torch_save(scheduler.state_dict(), tmp / SCHEDULER)
        if rng is not False:
            _torch_save(capture_rng() if rng is True else dict(rng), tmp / RNG)
        _write_text(tmp / EXTRA, extra_text + "\n")
        if shards is not None:
            os.replace(shards, tmp / SHARDS)
            for folder in sorted(p for p in (tmp / SHARDS).rglob("*") if p.is_dir()):
                fsync_dir(folder)
            fsync_dir(tmp / SHARDS)
        files = {
            p.relative_to(tmp).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
        _write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        umask_modes(tmp)  # mkdtemp gives 0700 and safetensors 0600; a checkpoint is like any other folder
        fsync_dir(tmp)
        # step 2. rename into place (an old checkpoint of the same step goes only after the new one is in)
        old = None
        if final.exists():
            old = root / f".old-{final.name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def shards_path(run_dir: str | Path, step: int, token: str) -> Path:
    """Where every process writes its shards for the checkpoint of ``step`` before the main process moves them
    in (``<run_dir>/checkpoints/.shards-step-N-<token>``; ``token`` is the same on every process)."""
    return Path(run_dir) / CHECKPOINTS_DIR / f".shards-{checkpoint_path(run_dir, step).name}-{token}"


def prune_checkpoints(run_dir: str | Path, *, keep: int, up_to: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of steps ``<= up_to``; newer ones are left alone.

    ``save_checkpoint`` calls it after each save; a resumed run calls it for the checkpoint it resumes from,
    since a kill between a save and its pruning leaves older checkpoints that no later save would remove when
    the run was already at its last step.
    """
    candidates = [p for p in list_checkpoints(run_dir) if int(_STEP_RE.match(p.name).group(1)) <= up_to]
    for path in candidates[:-keep]:
        logger.debug("removing old checkpoint %s", path)
        shutil.rmtree(path, ignore_errors=True)


def _torch_save(obj: Any, path: Path) -> None:
    with path.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _remove_stale_temporaries(root: Path, *, keep_path: Path | None = None) -> None:
    stale = [*root.glob(".tmp-step-*"), *root.glob(".shards-step-*")]
    for path in stale:
        if keep_path is not None and path.resolve() == Path(keep_path).resolve():
            continue  # the shards of the checkpoint being saved now
        logger.info("removing %s, left by an interrupted save", path)
        shutil.rmtree(path, ignore_errors=True)
    # A kill between the two renames of a same-step save leaves the replaced checkpoint as .old-step-N-<pid>
    # and no step-N: put it back (it was complete; loading verifies it). Beside a step-N, it is stale.
    for path in root.glob(".old-step-*"):
        final = root / path.name.removeprefix(".old-").rsplit("-", 1)[0]
        if final.exists():
            logger.info("removing %s, left by an interrupted save", path)
            shutil.rmtree(path, ignore_errors=True)
        else:
            logger.warning(
                "restoring %s from %s, left by a save interrupted between its renames", final, path
            )
            os.replace(path, final)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Loading


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``step-N`` folders under ``<run_dir>/checkpoints``, oldest first (not verified)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _verify(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (an incomplete checkpoint)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        step = int(manifest["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable {MANIFEST}: {e}") from None
    if TRAINABLE not in files:
        raise CheckpointError(f"{path}: {MANIFEST} lists no {TRAINABLE}")
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if file.stat().st_size != meta.get("bytes"):
            raise CheckpointError(
                f"{path}: {name} has {file.stat().st_size} bytes, manifest says {meta.get('bytes')}"
            )
        if _sha256(file) != meta.get("sha256"):
            raise CheckpointError(f"{path}: {name} does not match its sha256 in {MANIFEST}")
    manifest["step"] = step
    return manifest


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Verify one checkpoint folder's checksums and load it.

    Raises:
        CheckpointError: The folder is incomplete, a file is missing or damaged, or a file cannot be read.
    """
    path = Path(path)
    manifest = _verify(path)
    files = manifest["files"]

    def torch_file(name: str) -> Any:
        if name not in files:
            return None
        return torch.load(path / name, map_location=map_location, weights_only=True)

    try:
        return Checkpoint(
            path=path,
            step=manifest["step"],
            trainable_state=load_file(str(path / TRAINABLE), device=str(map_location)),
            optimizer_state=torch_file(OPTIMIZER),
            scheduler_state=torch_file(SCHEDULER),
            rng_state=torch_file(RNG),
            extra=json.loads((path / EXTRA).read_text(encoding="utf-8")) if EXTRA in files else {},
            shards=path / SHARDS if any(name.startswith(SHARDS + "/") for name in files) else None,
        )
    except CheckpointError:
        raise
    except Exception as e:  # checksums matched but the content does not parse: still unusable
        raise CheckpointError(f"{path}: cannot read: {type(e).__name__}: {e}") from e


def load_latest_checkpoint(
    run_dir: str | Path, *, map_location: str | torch.device = "cpu"
) -> Checkpoint | None:
    """The newest checkpoint under ``run_dir`` that verifies, or ``None`` when there is none.

    A checkpoint that fails verification is skipped with a warning naming it and the reason, and the one
    before it is tried.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            checkpoint = load_checkpoint(path, map_location=map_location)
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s; trying the previous one", path, e)
            continue
        logger.info("resuming from checkpoint %s (step %d)", path, checkpoint.step)
        return checkpoint
    return None
