"""A run directory written before issue 14 (the stages restructured onto rewardmix.train.run) resumes after it.

``fixtures/sft_run_before_i14`` is an SFT run of :data:`CONFIG` killed after step 5 by the code at commit
``fbb9141``: its newest checkpoint (step 4, in the second phase: weights, optimizer, schedule, random state,
data position, plan) and the logs it left. ``uninterrupted_*.jsonl`` are what that code logged when it ran
:data:`CONFIG` straight through (timings left out). Rerunning :data:`CONFIG` on the old run directory must
resume from step 4, log every step once, and end where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardmix.config import from_dict
from rewardmix.rundir import read_jsonl
from rewardmix.stages import sft

FIXTURE = Path(__file__).parent / "fixtures" / "sft_run_before_i14"

CONFIG = {
    "seed": 0,
    "cpu": True,
    "model": {"name": "tiny"},
    "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1},
    "phases": [
        {"name": "pre", "data": "builtin:toy", "max_steps": 3, "eval_fraction": 0.1},
        {"name": "main", "data": "builtin:toy", "max_steps": 4, "learning_rate": 5.0e-4},
    ],
    "optim": {
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1.0e-3,
        "warmup_ratio": 0.2,
    },
    "logging": {
        "eval_every": 2,
        "sample_every": 2,
        "num_samples": 1,
        "max_new_tokens": 4,
        "checkpoint_every": 2,
        "keep_checkpoints": 1,
    },
}


def sft_config(out: Path) -> sft.Config:
    return from_dict(sft.Config, {**CONFIG, "output_dir": str(out)})


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


def assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            assert a[key] == pytest.approx(value, abs=1e-6), (a["step"], key)


def test_an_sft_checkpoint_written_before_the_restructuring_resumes_to_the_uninterrupted_result(
    tmp_path, caplog
):
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old, ignore=shutil.ignore_patterns("uninterrupted_*"))
    # the fixture keeps the checkpoints and logs; every run folder also has had its run_info.json since the
    # package skeleton (a folder without one is not taken for a run), its config.yaml is left out
    (old / "run_info.json").write_text(json.dumps({"stage": "sft", "rewardmix_version": "0.1.0"}))
    caplog.set_level("INFO", logger="rewardmix.train.checkpoint")
    resumed = sft.run(sft_config(old))
    assert "resuming from checkpoint" in caplog.text and "step-00000004" in caplog.text
    straight = sft.run(sft_config(tmp_path / "straight"))
    assert resumed.global_step == straight.global_step == 7
    # across machines (the fixture was written on another CPU) the float rounding differs: 1.6e-7 seen
    assert resumed.eval_loss == pytest.approx(straight.eval_loss, abs=1e-6)

    # the same final weights as an uninterrupted run (on the machine that wrote the fixture: bit for bit)
    got = load_file(str(resumed.model_dir / "adapter_model.safetensors"))
    expected = load_file(str(straight.model_dir / "adapter_model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=name)

    # every step logged once, with the values the code before the restructuring logged on a straight run
    uninterrupted = read_jsonl(FIXTURE / "uninterrupted_metrics.jsonl")
    assert_same_rows(without_timings(read_jsonl(old / "metrics.jsonl")), uninterrupted)
    assert_same_rows(without_timings(read_jsonl(tmp_path / "straight" / "metrics.jsonl")), uninterrupted)
    old_samples = read_jsonl(FIXTURE / "uninterrupted_samples.jsonl")
    assert [s["step"] for s in read_jsonl(old / "samples.jsonl")] == [s["step"] for s in old_samples]
