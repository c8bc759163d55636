"""The task registry: shipped declarations (``rewardmix/data/task_specs/*.yaml``, registered on import) and
the user's own (:func:`register_task`, :func:`load_task_specs`)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from rewardmix.config import ConfigError, from_dict, load_yaml
from rewardmix.data.tasks.spec import TaskSpec, TaskSpecError

__all__ = ["get_task", "load_task_specs", "register_task", "task_names", "unregister_task"]

_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to the registry; a name already registered is an error."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"expected a TaskSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY:
        raise TaskSpecError(f"task {spec.name!r} is already registered", "name")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_task(name: str) -> TaskSpec:
    """Remove and return a registered task (tests, or replacing a shipped declaration)."""
    try:
        return _REGISTRY.pop(name)
    except KeyError:
        raise KeyError(f"unknown task {name!r}") from None


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The registered task ``name`` (a TaskSpec is returned as is)."""
    if isinstance(name, TaskSpec):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered: {', '.join(task_names())}") from None


def task_names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def load_task_specs(path: str | Path, *, register: bool = True) -> list[TaskSpec]:
    """Load task declarations from a YAML file or a folder of ``*.yaml``/``*.yml`` files (one task each).

    All files are checked before any is registered, so a bad file registers nothing.

    Args:
        path: a YAML file or a folder.
        register: add the tasks to the registry (a name already there, or twice in ``path``, is an error).

    Returns:
        The tasks, in file-name order.

    Raises:
        ConfigError: a bad declaration; the message names the file, line and key.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise ConfigError(f"{path}: no *.yaml task declarations in this folder")
    else:
        files = [path]
    specs: list[tuple[Path, int, TaskSpec]] = []
    for file in files:
        spec, name_line = _load_spec_file(file)
        specs.append((file, name_line, spec))
    if register:
        seen: dict[str, Path] = {}
        for file, line, spec in specs:
            if spec.name in _REGISTRY or spec.name in seen:
                other = f" (also declared in {seen[spec.name]})" if spec.name in seen else ""
                raise ConfigError(f"{file}:{line}: task {spec.name!r} is already registered{other}")
            seen[spec.name] = file
        for _file, _line, spec in specs:
            register_task(spec)
    return [spec for _file, _line, spec in specs]


def _load_spec_file(path: Path) -> tuple[TaskSpec, int]:
    data = load_yaml(path)
    try:
        spec = from_dict(TaskSpec, data, source=str(path))
    except ConfigError as e:
        # from_dict reports __post_init__ errors against the whole file; put the key's line back in.
        cause = e.__context__
        if isinstance(cause, TaskSpecError) and cause.key:
            raise ConfigError(f"{path}:{_line_of(data, cause.key)}: {cause.key}: {cause}") from None
        raise
    return spec, _line_of(data, "name")


def _line_of(data: Any, dotted: str) -> int:
    """1-based line of the deepest existing key on the ``a.b.c`` path (1 when unknown)."""
    line, node = 1, data
    for part in dotted.split("."):
        lines = getattr(node, "lines", None) or {}
        if part not in lines:
            break
        line = lines[part]
        node = node.get(part) if isinstance(node, dict) else None
    return line


def _load_shipped() -> None:
    folder = importlib.resources.files("rewardmix.data") / "task_specs"
    with importlib.resources.as_file(folder) as path:
        load_task_specs(path)


_load_shipped()
