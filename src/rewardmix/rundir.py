"""Run directories: what every stage writes besides its artifacts.

Every run directory holds ``config.yaml`` (the resolved config), ``run_info.json`` (command line, package
version, git commit, library versions, start time) and ``metrics.jsonl`` (one JSON object a line, namespaced
keys). Files are written atomically (temporary file in the same folder, fsync, rename) so a kill never leaves
a half-written one.

Which folders a run writes into (:func:`prepare_run_dir`, the same rule for every stage):

- an absent or empty folder, or a run folder of the same stage (its ``config.yaml`` / ``run_info.json`` name
  the stage); anything else (a folder of other files, another stage's run) is refused with a
  :class:`RunDirError` (CLI exit code 2) and left exactly as it was;
- a training stage (``resumable``: sft, reward-model, ppo) resumes its run only with the same resolved config,
  apart from :data:`RESUMABLE_KEYS` (logging cadences and sinks, hub push, ``cpu``, gradient checkpointing: they
  do not change what is trained). A run holding training state (checkpoints, a model, ``summary.json``) and
  another config is refused, naming the keys that differ; ``rewardmix <stage> --restart`` (:func:`restarting`)
  moves it to ``<dir>.old-<UTC time>`` and starts afresh. Nothing is ever deleted;
- one run at a time: ``.rewardmix.lock`` in the run folder holds the owner's pid and host (:class:`RunLock`). A
  second run is refused while the owner lives; a lock whose pid is gone on this host (a killed run) is taken
  over with a warning. It is released when the run ends (:func:`run_dir_scope`) or its process exits. Under
  ``accelerate launch`` the main process alone prepares the folder and holds the lock.

Files and folders get the modes the user's umask gives (0644 / 0755 under the usual 022), as ``open`` and
``mkdir`` would: a temporary file from ``mkstemp`` (0600) or folder from ``mkdtemp`` (0700) is widened to
:func:`file_mode` / :func:`dir_mode` before it is renamed into place. No file a run writes holds a secret: API
keys are read from the environment and redacted from configs, logs and outputs (``rewardmix.redact``), and the
hub and W&B tokens are kept by their own libraries.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime as _dt
import errno
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from rewardmix import __version__
from rewardmix.config import ConfigError, expand_path, to_yaml
from rewardmix.redact import redact

try:  # POSIX: the kernel releases the lock when its process dies, however it dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid in the lock file alone
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "RESUMABLE_KEYS",
    "MetricsLogger",
    "NoSpaceError",
    "RunDirError",
    "RunLock",
    "no_space",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_run_dir",
    "config_changes",
    "dir_mode",
    "file_mode",
    "umask_modes",
    "fsync_dir",
    "git_commit",
    "holds_training_state",
    "move_aside",
    "prepare_run_dir",
    "read_jsonl",
    "read_jsonl_repair",
    "restarting",
    "run_dir_scope",
    "run_dir_stage",
    "set_aside",
]

log = logging.getLogger(__name__)


class NoSpaceError(OSError):
    """The disk filled up while saving something; the message names it and what is still intact."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def no_space(error: BaseException, path: str | Path, kept: str) -> NoSpaceError | None:
    """A :class:`NoSpaceError` for ``error`` when it is "no space left on device" (ENOSPC, or EDQUOT: a disk
    quota), else None; ``raise no_space(...) from None`` replaces a library's traceback with one line.

    Args:
        error: What the write raised.
        path: What was being saved.
        kept: What is intact, e.g. ``"the previous checkpoint is intact"``.
    """
    if isinstance(error, NoSpaceError):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"no space left on device while saving {path}; {kept}")
    return None


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets as it reads, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open``: ``0o666`` less the umask (``mkstemp`` would give ``0o600``)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a new folder gets from ``mkdir``: ``0o777`` less the umask (``mkdtemp`` would give ``0o700``)."""
    return 0o777 & ~_umask()


def umask_modes(folder: str | Path) -> None:
    """Give ``folder`` and everything under it the umask's modes (mkdtemp and safetensors write 0700 / 0600)."""
    folder = Path(folder)
    files, dirs = file_mode(), dir_mode()
    folder.chmod(dirs)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(dirs if path.is_dir() else files)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one.

    The file gets the umask's mode (:func:`file_mode`), as ``open`` would give it, not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (new files, a rename into it) durable; a no-op where the OS cannot.

    Args:
        path: The folder. Windows cannot open folders; the rename is still atomic there.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def git_commit(start: str | Path | None = None) -> str:
    """The commit of the checkout holding ``start`` (default: this package), with ``-dirty`` if modified."""
    cwd = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


LOCK_NAME = ".rewardmix.lock"
"""The lock file in a run folder: JSON with the owner's ``pid``, ``host``, ``stage`` and ``started_at``."""

RESUMABLE_KEYS = ("output_dir", "cpu", "logging", "hub", "model.gradient_checkpointing")
"""Config keys (and sections) that may differ when a training run resumes: where the folder is spelled, the
device, logging cadences, sinks and checkpoint keeping, the hub push, activation recomputation. None of them
changes the weights a run trains. Anything else (data, model, LoRA, optimizer, batch, step counts, seed,
reward...) makes another run: the step count too, as the learning-rate schedule spans the planned steps."""

TRAINING_STATE = ("checkpoints", "model", "summary.json")
"""What a run folder holds once it has trained something worth keeping."""

_OWN_TEMP_PREFIXES = (".config.yaml.", ".run_info.json.")


class RunDirError(ConfigError):
    """An output folder a run may not write into, or one another run is using (CLI exit code 2)."""


def _entries(folder: Path) -> list[str]:
    """The folder's entries other than the lock and the temporary files a kill inside :func:`prepare_run_dir`
    may leave."""
    return [
        name
        for name in os.listdir(folder)
        if name != LOCK_NAME and not (name.startswith(_OWN_TEMP_PREFIXES) and name.endswith(".tmp"))
    ]


def run_dir_stage(folder: str | Path) -> str | None:
    """The stage whose run ``folder`` holds, or None when it holds no run of any stage.

    A run folder has the ``run_info.json`` that :func:`prepare_run_dir` writes (its ``stage`` and
    ``rewardmix_version``); a folder holding only ``config.yaml`` (``stage: <name>`` first) is one that a kill
    stopped between the two files. A user's own ``config.yaml`` among other files does not make a run folder.
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and isinstance(info.get("stage"), str) and "rewardmix_version" in info:
        return info["stage"]
    try:
        if _entries(folder) != ["config.yaml"]:
            return None
        with (folder / "config.yaml").open(encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return None
    return first[len("stage: ") :].strip() or None if first.startswith("stage: ") else None


def check_run_dir(out: Path, stage: str) -> str | None:
    """Refuse a folder a ``stage`` run may not write into; reads only, so a refused folder is left as it was.

    Returns:
        ``stage`` when the folder holds a run of it; None when it is absent or empty.

    Raises:
        RunDirError: The path is a file, another stage's run, or a non-empty folder that is no run.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise RunDirError(f"output_dir {out}: exists and is not a folder; nothing was written")
    if not _entries(out):
        return None
    found = run_dir_stage(out)
    if found == stage:
        return found
    if found is not None:
        raise RunDirError(
            f"output_dir {out}: holds a {found!r} run, not a {stage!r} one; refusing to write into it (nothing "
            "was changed): give this stage its own output_dir"
        )
    raise RunDirError(
        f"output_dir {out}: is not empty and holds no rewardmix run (no run_info.json); refusing to write into "
        "it (nothing was changed): use a new or empty folder"
    )


def holds_training_state(out: Path) -> bool:
    """Whether a run folder holds a checkpoint, a saved model or a summary (:data:`TRAINING_STATE`)."""
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        return True
    return (out / "model").exists() or (out / "summary.json").exists()


def config_changes(out: Path, cfg: Any, stage: str) -> list[str]:
    """What differs between the run's ``config.yaml`` and ``cfg``, apart from :data:`RESUMABLE_KEYS`.

    Both sides are compared as written (resolved, redacted YAML). A key on one side only comes from another
    rewardmix version's schema (a field added or removed), not from the user, and does not count.

    Returns:
        ``key: old -> new`` per differing value, in key order; empty when the configs agree; one entry naming
        ``config.yaml`` when it cannot be read.
    """
    try:
        old = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        old = None
    if not isinstance(old, dict):
        return [f"{out / 'config.yaml'}: missing or unreadable"]
    new = yaml.safe_load(redact(f"stage: {stage}\n" + to_yaml(cfg)))
    return _diff(old, new, "")


def _diff(old: Any, new: Any, key: str) -> list[str]:
    if any(key == k or key.startswith(f"{k}.") or key.startswith(f"{k}[") for k in RESUMABLE_KEYS):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[str] = []
        for k in sorted(set(old) & set(new), key=str):
            changes += _diff(old[k], new[k], f"{key}.{k}" if key else str(k))
        return changes
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new, strict=True)) for c in _diff(a, b, f"{key}[{i}]")]
    return [] if old == new else [f"{key}: {_short(old)} -> {_short(new)}"]


def _short(value: Any, width: int = 60) -> str:
    """``value`` as JSON; a long one keeps its start and its end (where paths differ)."""
    text = json.dumps(value, default=str)
    half = (width - 3) // 2
    return text if len(text) <= width else f"{text[:half]}...{text[-half:]}"


def set_aside(folder: str | Path, tag: str = "old") -> Path:
    """Rename ``folder`` to ``<name>.<tag>-<UTC time>`` beside it (nothing is deleted); the new path."""
    folder = Path(folder)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = folder.with_name(f"{folder.name}.{tag}-{stamp}")
    folder.rename(target)
    return target


# ---------------------------------------------------------------------------------------------------------
# One run per folder


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


class RunLock:
    """``<folder>/.rewardmix.lock``: which process (pid, host) is writing a run folder.

    On POSIX the file is also ``flock``-ed while held, so two runs starting at the same moment cannot both take
    it; the pid and host are what the refusal names and what tells a stale lock (its process gone) from a live
    one. Release removes the file.
    """

    def __init__(self, folder: Path, stage: str) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.stage = stage
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or take over a stale one with a warning.

        Raises:
            RunDirError: A live process holds it (on this host), or a process on another host does.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise RunDirError(self._in_use(_read_lock(fd))) from None
                    if os.fstat(fd).st_ino != _inode(self.path):  # released and removed meanwhile: again
                        os.close(fd)
                        continue
                self._take_over(_read_lock(fd))
                info = {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "stage": self.stage,
                    "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return

    def release(self) -> None:
        """Remove the lock file (when it is still this lock's) and let go of it."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_ino == _inode(self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def _take_over(self, owner: dict[str, Any] | None) -> None:
        """Refuse a lock another process still holds; warn when taking over one whose process is gone."""
        if owner is None:
            return
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and pid == os.getpid():
            return  # this process's own, left by a run that raised
        if host != socket.gethostname():
            raise RunDirError(
                f"{self._in_use(owner)}. This host cannot tell whether that run still goes on; if it does not, "
                f"delete {self.path}"
            )
        if isinstance(pid, int) and _pid_alive(pid):
            raise RunDirError(self._in_use(owner))
        log.warning(
            "%s: taking over the lock of %s run pid %s on %s (started %s), which is no longer running",
            self.folder,
            owner.get("stage", "a"),
            pid,
            host,
            owner.get("started_at", "?"),
        )

    def _in_use(self, owner: dict[str, Any] | None) -> str:
        who = (
            f"a rewardmix {owner.get('stage', '?')} run (pid {owner.get('pid')} on {owner.get('host')}, since "
            f"{owner.get('started_at', '?')})"
            if owner
            else "another rewardmix run"
        )
        return (
            f"output_dir {self.folder}: in use by {who}; two runs in one folder would resume each other's "
            "checkpoints and log every step twice: wait for it to end, or give this run another output_dir"
        )


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _read_lock(fd: int) -> dict[str, Any] | None:
    """The owner recorded in an open lock file; None when empty or torn (a kill while it was written)."""
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


_HELD: dict[Path, RunLock] = {}
"""The run-folder locks this process holds, by resolved folder."""

_RESTART: contextvars.ContextVar[set[Path] | None] = contextvars.ContextVar("rewardmix_restart", default=None)


def _lock(out: Path, stage: str) -> tuple[RunLock, bool]:
    """The folder's lock, taken now (True) or already held by this process (False)."""
    key = out.resolve()
    held = _HELD.get(key)
    if held is not None:
        return held, False
    lock = RunLock(out, stage)
    lock.acquire()
    _HELD[key] = lock
    return lock, True


def _unlock(out: Path) -> None:
    lock = _HELD.pop(out.resolve(), None)
    if lock is not None:
        lock.release()


def move_aside(folder: str | Path, *, stage: str, tag: str = "old") -> Path:
    """Rename a run folder to ``<name>.<tag>-<UTC time>`` under its lock: refused while another run uses it.

    Raises:
        RunDirError: Another live process holds the folder's lock (see :class:`RunLock`).
    """
    folder = Path(folder)
    key = folder.resolve()
    lock, _ = _lock(folder, stage)
    try:
        target = set_aside(folder, tag)
    finally:
        _HELD.pop(key, None)
        lock.release()
    (target / LOCK_NAME).unlink(missing_ok=True)  # the lock moved with the folder; nobody holds it now
    return target


@contextlib.contextmanager
def run_dir_scope() -> Iterator[None]:
    """Release the run-folder locks taken inside the block when it ends, however it ends.

    The CLI wraps each stage in one, a recipe each step; locks taken outside any block (a stage's ``run``
    called from Python) are held until the process exits, and taken again freely by the same process.
    """
    before = set(_HELD)
    try:
        yield
    finally:
        for key in [k for k in _HELD if k not in before]:
            _HELD.pop(key).release()


@atexit.register
def _release_all() -> None:
    while _HELD:
        _HELD.popitem()[1].release()


@contextlib.contextmanager
def restarting(enabled: bool = True) -> Iterator[None]:
    """Inside the block, a folder holding a run of its stage is moved to ``<dir>.old-<UTC time>`` (never
    deleted) when a run first prepares it, and the run starts afresh (``rewardmix <stage> --restart``).

    Args:
        enabled: False: an ordinary block (no folder is moved).
    """
    token = _RESTART.set(set() if enabled else None)
    try:
        yield
    finally:
        _RESTART.reset(token)


def prepare_run_dir(
    output_dir: str | Path, cfg: Any, *, stage: str, argv: list[str] | None = None, resumable: bool = False
) -> Path:
    """Check the folder, lock it, and write the resolved config and the run's provenance into it.

    In order: the folder must be absent, empty or a ``stage`` run (:func:`check_run_dir`, before anything is
    written); its lock is taken (:class:`RunLock`) and the check repeated under it; inside :func:`restarting`
    an existing run is moved aside; a ``resumable`` run holding training state must have the same config
    (:func:`config_changes`); then ``config.yaml`` and ``run_info.json`` are written.

    Args:
        output_dir: The run folder (``~`` and ``$VAR`` expanded).
        cfg: The stage config, saved whole.
        stage: The stage name, saved in both files.
        argv: The command line to record (default ``sys.argv``).
        resumable: The stage resumes from the folder's checkpoints (sft, reward-model, ppo): refuse a run there
            with other settings (apart from :data:`RESUMABLE_KEYS`), rather than continue it.

    Returns:
        The run folder.

    Raises:
        RunDirError: Naming the folder and what is wrong; the folder is left as it was.
    """
    out = Path(expand_path(str(output_dir)))
    check_run_dir(out, stage)
    out.mkdir(parents=True, exist_ok=True)
    lock, taken = _lock(out, stage)
    try:
        found = check_run_dir(out, stage)
        restart = _RESTART.get()
        if restart is not None and out.resolve() not in restart:
            restart.add(out.resolve())
            if found is not None:
                target = move_aside(out, stage=stage)
                log.warning("restart: moved the %s run in %s to %s; starting afresh", stage, out, target)
                out.mkdir(parents=True)
                lock, taken = _lock(out, stage)
                found = None
        if resumable and found is not None and not (out / "config.yaml").exists():
            log.warning(
                "%s: the %s run there has no config.yaml to compare with; resuming it as configured",
                out,
                stage,
            )
        elif resumable and found is not None:
            changes = config_changes(out, cfg, stage)
            if changes and holds_training_state(out):
                listed = "; ".join(changes[:6]) + (
                    f"; and {len(changes) - 6} more" if len(changes) > 6 else ""
                )
                raise RunDirError(
                    f"output_dir {out}: holds a {stage!r} run with another config ({listed}); resuming it would "
                    f"keep what it trained with the old one. Rerun with --restart to move it to "
                    f"{out.name}.old-<time> and start afresh (nothing is deleted), or use another output_dir"
                )
            if changes:
                log.info(
                    "%s: the %s run there saved no checkpoint yet; starting it with this config", out, stage
                )
    except BaseException:
        if taken:
            _unlock(out)
        raise
    # redact: an API key pasted into a free-text field (or the command line) is not saved with the run
    atomic_write_text(out / "config.yaml", redact(f"stage: {stage}\n" + to_yaml(cfg)))
    info = {
        "stage": stage,
        "command": list(sys.argv if argv is None else argv),
        "rewardmix_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version_of("torch"),
        "transformers": _version_of("transformers"),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(out / "run_info.json", redact(json.dumps(info, indent=2) + "\n"))
    return out


def _version_of(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


class MetricsLogger:
    """Appends one JSON object per step to ``metrics.jsonl``; non-finite floats are written as null."""

    def __init__(self, path: str | Path, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.path.write_text("")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _finite_or_none(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _finite_or_none(v: Any) -> Any:
    v = float(v) if hasattr(v, "__float__") and not isinstance(v, bool | int) else v
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_jsonl(
    path: str | Path,
    *,
    check: Callable[[int, Any], None] | None = None,
    error: type[ValueError] = ValueError,
) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line is an error naming the file and line.

    Args:
        path: The JSONL file; blank lines are skipped.
        check: Called as ``check(lineno, row)`` on each row in file order; it raises to reject the row.
        error: The ``ValueError`` subclass raised for a malformed line (e.g. ``DataError``).

    Returns:
        The rows, in file order.

    Raises:
        ValueError: ``path:line: invalid JSON: ...`` (as ``error``) for a malformed line.
    """
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if check is not None:
                check(lineno, row)
            rows.append(row)
    return rows


def read_jsonl_repair(
    path: str | Path,
    check: Callable[[int, Any], None],
    *,
    repair: bool = True,
    invalid_json: str = "invalid JSON",
) -> int:
    """Read a JSONL file written line by line, cutting off a torn last line.

    A last line without its newline, or one that is not valid JSON, is what a kill mid-write leaves: with
    ``repair`` the file is truncated to end before it. A bad line anywhere else means the file was edited or
    corrupted otherwise, and is an error naming the line.

    Args:
        path: The JSONL file; a missing file reads as empty.
        check: Called as ``check(lineno, row)`` on each row in file order (blank lines skipped); it keeps the
            row or raises to reject it, before any later line is read and before any repair.
        repair: Truncate a torn last line away (otherwise it is only skipped).
        invalid_json: Start of the error message for a malformed line, after ``path:line: ``.

    Returns:
        The length in bytes of the torn last line (0 when the file was whole), for the caller to report.

    Raises:
        ValueError: ``path:line: <invalid_json>: ...`` for a malformed line before the last.
    """
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    # data ending in b"\n" gives a final empty element; anything else there is a torn line.
    torn_tail = lines.pop()
    good_end = len(data) - len(torn_tail)
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            if lineno == len(lines) and not torn_tail:
                # The last complete-looking line is garbage: treat it as torn too.
                good_end -= len(raw) + 1
                torn_tail = raw
                break
            raise ValueError(f"{path}:{lineno}: {invalid_json}: {e.msg}") from None
        check(lineno, row)
    if torn_tail and repair:
        with path.open("r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return len(torn_tail)
