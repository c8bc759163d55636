"""bench/gpu_check.sh: the GPU check a maintainer runs in one call, checked end to end on the CPU (--dry-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow  # four fresh Python processes, each imports torch and transformers: ~1 min on 2 busy cores
def test_dry_run_completes_on_the_cpu_and_writes_every_measurement(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["failed"] == {} and report["model"] == "tiny"
    runs = report["runs"]
    assert runs["rm"]["peak_rss_gib"] > 0
    for name in ("policy_alone", "all_roles_hf"):
        assert runs[name]["rollout_tokens_per_s"] > 0 and runs[name]["steps_timed"] == 1, name
    assert runs["all_roles_vllm"] == {"skipped": "dry run"}
    ratio = report["ratios"]["all_roles_vs_policy_alone_peak_memory"]
    assert ratio == pytest.approx(
        runs["all_roles_hf"]["peak_rss_gib"] / runs["policy_alone"]["peak_rss_gib"], abs=1e-3
    )
    assert report["ratios"]["vllm_vs_hf_rollout_tokens_per_s"] is None
    assert report["environment"]["device"] == "cpu"
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_check.json"]  # written atomically, nothing left over


def test_without_a_gpu_and_without_dry_run_it_stops_with_one_clear_message(tmp_path):
    env = {**ENV, "PATH": f"{tmp_path}:/usr/bin:/bin"}  # no nvidia-smi on this PATH
    done = subprocess.run(
        ["bash", str(SCRIPT), "--no-install"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "gpu_check.sh: error: no NVIDIA GPU here (nvidia-smi); use --dry-run on a CPU machine"
    )
    bad = subprocess.run(
        ["bash", str(SCRIPT), "--wheelhouse"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--wheelhouse needs a folder" in bad.stderr
