"""Run directories: what every stage writes besides its artifacts.

Every run directory holds ``config.yaml`` (the resolved config), ``run_info.json`` (command line, package
version, git commit, library versions, start time) and ``metrics.jsonl`` (one JSON object a line, namespaced
keys). Files are written atomically (temporary file in the same folder, fsync, rename) so a kill never leaves
a half-written one.

Files and folders get the modes the user's umask gives (0644 / 0755 under the usual 022), as ``open`` and
``mkdir`` would: a temporary file from ``mkstemp`` (0600) or folder from ``mkdtemp`` (0700) is widened to
:func:`file_mode` / :func:`dir_mode` before it is renamed into place. No file a run writes holds a secret: API
keys are read from the environment and redacted from configs, logs and outputs (``rewardmix.redact``), and the
hub and W&B tokens are kept by their own libraries.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rewardmix import __version__
from rewardmix.config import to_yaml
from rewardmix.redact import redact

__all__ = [
    "MetricsLogger",
    "NoSpaceError",
    "no_space",
    "atomic_write_bytes",
    "atomic_write_text",
    "dir_mode",
    "file_mode",
    "umask_modes",
    "fsync_dir",
    "git_commit",
    "prepare_run_dir",
    "read_jsonl",
    "read_jsonl_repair",
]


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


def prepare_run_dir(output_dir: str | Path, cfg: Any, *, stage: str, argv: list[str] | None = None) -> Path:
    """Create ``output_dir`` and write the resolved config and run provenance into it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
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
