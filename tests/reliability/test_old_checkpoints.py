"""Runs killed under the code before issue 14's restructuring resume under the current code, and end the same.

``old_checkpoints/<stage>/`` holds, for ``sft``, ``reward-model`` and ``ppo``, a run directory that the old
code (commit ``fbb9141``) wrote and was stopped one step past a checkpoint, the config it ran with, and how
the old code's own resume of it ended (``old_checkpoints/make_fixtures.py`` says how they were made). Each
test copies the run directory, reruns the stage with the same config through its public entry
(``rewardmix.stages`` registry -> ``Config``, ``run``) and asserts that

- it resumed from the checkpoint: the steps it ran start right after it, and the metrics rows up to the
  checkpoint are the killed run's own rows, timings included (a run from scratch would log them anew);
- it ended where the old code ended: the same steps, checkpoints and sample rows, every tensor of the saved
  model folders equal, and the same metrics rows (the same keys, close values; ``perf/*`` timings aside).

A second, fast test loads the resolved ``config.yaml`` the old code saved in each run directory: rerunning
that file is another way to resume, so it must still load, strictly, to the same config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rewardmix.config import load_config, to_dict
from rewardmix.stages import get_stage

FIXTURES = Path(__file__).parent / "old_checkpoints"
PLACEHOLDER = "__RUN_DIR__"
"""Stands for the run directory's absolute path in the fixtures' text files."""
STAGES = ("sft", "reward-model", "ppo")
MODEL_FOLDERS = ("model", "adapter", "value")


def install_run(stage: str, out: Path) -> Path:
    """Copy the killed run directory to ``out`` and write its config beside it; returns the config's path."""
    fixture = FIXTURES / stage
    shutil.copytree(fixture / "run", out)
    for path in out.rglob("*"):
        # checkpoints hold no path (and their manifest checksums every file): left byte for byte
        if path.is_file() and path.suffix in (".yaml", ".json", ".jsonl") and "checkpoints" not in path.parts:
            path.write_text(path.read_text(encoding="utf-8").replace(PLACEHOLDER, str(out)), encoding="utf-8")
    config = out.parent / f"{out.name}.yaml"
    text = (fixture / "input.yaml").read_text(encoding="utf-8")
    config.write_text(text.replace(PLACEHOLDER, str(out)), encoding="utf-8")
    return config


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


def sample_rows(run: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows(run / "samples.jsonl"):
        counts[str(row["step"])] = counts.get(str(row["step"]), 0) + 1
    return counts


def model_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the saved model folders, named ``<file relative to run>::<tensor>`` (as recorded)."""
    tensors = {}
    for folder in MODEL_FOLDERS:
        for path in sorted((run / folder).rglob("*.safetensors")):
            for name, tensor in load_file(str(path)).items():
                tensors[f"{path.relative_to(run).as_posix()}::{name}"] = tensor
    return tensors


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_run_killed_before_the_restructuring_resumes_and_ends_as_it_did(stage, tmp_path):
    meta = json.loads((FIXTURES / stage / "fixture.json").read_text(encoding="utf-8"))
    k, last = meta["checkpoint_step"], meta["final_step"]
    out = tmp_path / "run"
    config = install_run(stage, out)
    killed_rows = rows(out / "metrics.jsonl")
    assert [r["step"] for r in killed_rows] == meta["metrics_steps_at_kill"]  # the fixture is intact
    assert checkpoint_steps(out) == meta["checkpoints_at_kill"] and k < meta["killed_after_step"]

    module = get_stage(stage).load()
    steps: list[int] = []
    module.run(load_config(module.Config, config, stage=stage), on_step=lambda step, row: steps.append(step))

    # 1. resumed from the checkpoint at step k, not from scratch: it ran steps k+1..last, and the rows up to
    # k are the killed run's own (their perf/* timings too, which a rerun of those steps would measure anew)
    assert steps == list(range(k + 1, last + 1))
    final_rows = rows(out / "metrics.jsonl")
    assert [r for r in final_rows if r["step"] <= k] == [r for r in killed_rows if r["step"] <= k]
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["global_step"] == last

    # 2. it ended as the old code's resume ended: each step logged once (the killed run's row k+1 was
    # dropped and redone), the same checkpoints kept, the same sample rows, none twice
    expected_rows = rows(FIXTURES / stage / "expected" / "metrics.jsonl")
    final_steps = [r["step"] for r in final_rows]
    assert final_steps == [r["step"] for r in expected_rows] == meta["final_metrics_steps"]
    assert checkpoint_steps(out) == meta["final_checkpoints"]
    assert sample_rows(out) == meta["final_sample_rows"]

    # 3. the same weights. On the machine that wrote the fixtures they are bitwise equal (make_fixtures.py
    # checked its resume against an uninterrupted run; the kill/resume harness asserts bitwise resumes); on
    # another CPU (CI) other SIMD kernels may change the last bits of a sum, hence a tolerance, still orders
    # of magnitude below what a state the resume failed to restore (optimizer moments, schedule, RNG) makes.
    expected = load_file(str(FIXTURES / stage / "expected" / "tensors.safetensors"))
    got = model_tensors(out)
    assert sorted(got) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)

    # 4. the same metrics: the same keys and close values (same tolerance, same reason). perf/* timings are
    # left out: their values are wall-clock, and issue 14 lets stages log more of them (bench reads them).
    for got_row, want_row in zip(final_rows, expected_rows, strict=True):
        where = f"metrics row of step {want_row['step']}"
        keys = {key for key in want_row if not key.startswith("perf/")}
        assert {key for key in got_row if not key.startswith("perf/")} == keys, where
        for key in sorted(keys):
            want = want_row[key]
            if isinstance(want, float):
                want = pytest.approx(want, rel=1e-5, abs=1e-6)
            assert got_row[key] == want, f"{where}: {key}"


@pytest.mark.parametrize("stage", STAGES)
def test_the_config_yaml_an_old_run_saved_still_loads_to_the_same_config(stage, tmp_path):
    out = tmp_path / "run"
    config = install_run(stage, out)
    module = get_stage(stage).load()
    saved = load_config(module.Config, out / "config.yaml", stage=stage)  # strict: an unknown key fails
    assert yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["stage"] == stage
    assert to_dict(saved) == to_dict(load_config(module.Config, config, stage=stage))
