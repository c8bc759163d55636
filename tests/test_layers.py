"""The layering of ``src/rewardmix`` (issue 14, "Done when"), checked on the source text: no module is imported.

- Only the top (``cli.py``, ``docgen.py``) and the stages themselves import ``rewardmix.stages``; every lower
  layer (``algos``, ``data``, ``models``, ``train``, ``scoring``, ``evaluation``, ``llm``, ``human`` and the
  top-level helper modules) stays below it, function-level (lazy) imports included.
- No stage imports another stage: a stage module may import the stage registry (``rewardmix.stages``) and
  the modules of its own stage package (``stages/ppo/*``), nothing else under ``stages/``. Only the recipe
  runner (``stages/run.py``) and the registry (``stages/__init__.py``) drive other stages, plus the exceptions
  listed in :data:`ALLOWED_STAGE_IMPORTS`, each with its reason.
- No file under ``stages/`` is longer than :data:`MAX_STAGE_LINES` lines.
- ``class ModelConfig`` is defined once.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rewardmix"
STAGES = PACKAGE / "stages"
MAX_STAGE_LINES = 700

# The top of the tree: they dispatch to the stages.
TOP = {"rewardmix.cli", "rewardmix.docgen"}
# Stage modules that drive other stages by design: the recipe runner and the registry.
STAGE_DRIVERS = {"rewardmix.stages", "rewardmix.stages.run"}
ALLOWED_STAGE_IMPORTS: dict[tuple[str, str], str] = {
    ("demo", "run"): "demo runs the embedded recipe through the recipe runner and summarizes its state file",
    ("sweep", "ppo"): "sweep runs the ppo stage once per value, through ppo.Config and ppo.run only",
}
"""(importing stage, imported stage) -> why the import is legitimate."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every ``rewardmix`` module ``name`` imports, anywhere in the file (lazy imports and
    ``importlib.import_module("...")`` with a literal name included), as the longest known module name."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    out = set()
    for target in found:
        while target and target not in MODULES:  # `from m import function` -> m
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def _stage_of(name: str) -> str | None:
    """``rewardmix.stages.ppo.rollout`` -> ``ppo``; the registry ``rewardmix.stages`` -> None."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["rewardmix", "stages"] else None


def _is_stage(name: str) -> bool:
    return name == "rewardmix.stages" or _stage_of(name) is not None


def test_the_module_scan_sees_the_tree():
    # guards the tests below against passing on an empty scan
    assert {"rewardmix.cli", "rewardmix.stages", "rewardmix.scoring.composite"} <= set(MODULES)
    assert "rewardmix.stages" in _imports("rewardmix.cli")
    assert _stage_of("rewardmix.stages.ppo.rollout") == "ppo" and _stage_of("rewardmix.stages") is None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not _is_stage(n) and n not in TOP))
def test_lower_layers_do_not_import_the_stages(name):
    stages = sorted(t for t in _imports(name) if _is_stage(t))
    assert not stages, f"{MODULES[name]} imports {stages}: the stages sit above it"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _is_stage(n) and n not in STAGE_DRIVERS))
def test_no_stage_imports_another_stage(name):
    own = _stage_of(name)
    others = sorted(
        target
        for target in _imports(name)
        if _stage_of(target) not in (None, own) and (own, _stage_of(target)) not in ALLOWED_STAGE_IMPORTS
    )
    assert not others, (
        f"{MODULES[name]} imports the stage module(s) {others}; move what it needs below the stages "
        "(data/, scoring/, models/, train/) or, for an orchestrating stage, list it in ALLOWED_STAGE_IMPORTS"
    )


def test_the_allowed_stage_imports_are_still_needed():
    # an exception nobody uses any more should go, so the list keeps saying what is true
    used = {
        (_stage_of(name), _stage_of(target))
        for name in MODULES
        if _stage_of(name) is not None
        for target in _imports(name)
    }
    assert set(ALLOWED_STAGE_IMPORTS) <= used, set(ALLOWED_STAGE_IMPORTS) - used


@pytest.mark.parametrize("path", sorted(STAGES.rglob("*.py")), ids=lambda p: str(p.relative_to(STAGES)))
def test_stage_files_are_short_enough_to_read_in_one_sitting(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_STAGE_LINES, f"{path} has {lines} lines (at most {MAX_STAGE_LINES})"


def test_model_config_is_defined_once():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.name == "ModelConfig"
    ]
    assert len(found) == 1, f"class ModelConfig is defined {len(found)} times: {found}"
