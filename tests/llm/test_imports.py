"""Only rewardmix.llm.local (through rewardmix.models) may pull in transformers; the rest stays light."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import rewardmix.llm.batch, rewardmix.llm.cache, rewardmix.llm.client, rewardmix.llm.filters
import rewardmix.llm.http, rewardmix.llm.prompts, rewardmix.redact
print(",".join(sorted(m for m in ("transformers", "torch", "peft") if m in sys.modules)))
"""


def test_llm_clients_do_not_import_transformers():
    # A fresh interpreter: this test process may already have imported transformers.
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"rewardmix.llm imported {res.stdout.strip()}"
