"""Fixtures of the bench tests: the scripts in bench/ imported as modules (they import ``benchlib`` beside them)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def import_bench(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """``import_bench("grpo_vs_trl")``: a fresh import of ``bench/grpo_vs_trl.py`` with ``bench/`` on the path."""
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name: str) -> ModuleType:
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load
