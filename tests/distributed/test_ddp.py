"""Data parallelism for real: `accelerate launch` with 2 CPU processes (gloo) vs 1 process with twice the batch.

Each test runs a stage on the tiny model twice: launched exactly as docs/distributed.md says (2 processes,
per-process batch b), and in this process (1 process, batch 2b). Both runs must log the same metrics at every
step and end with the same trainable weights. Float32 throughout; what may differ is float rounding only (other
matrix shapes per process, sums in another order), hence the tolerances: metrics within 1e-5 relative (+1e-6
absolute), weights within 1e-5 absolute (values are ~0.01-1). Every launch writes one row per step: a stage
whose processes each ran alone would write its rows twice (and train on half the data).

AdamW runs with ``epsilon = 1e-4`` here: with the default 1e-8 an entry whose gradient is ~0 (below 1e-8) moves
by ``lr * g / (|g| + eps)``, where the float rounding of g decides the sign of an O(lr) step; that is Adam
amplifying rounding, not a difference between the runs (the loss and gradient norm still agree to 1e-7).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rewardmix.config import from_dict
from rewardmix.rundir import read_jsonl
from rewardmix.stages import ppo, reward_model, sft

pytestmark = pytest.mark.slow  # each launch starts 2 Python processes: ~15 s on 2 busy cores

REPO = Path(__file__).resolve().parents[2]
CPU_2PROC = REPO / "configs/accelerate/cpu-2proc.yaml"
METRIC_RTOL, METRIC_ATOL, WEIGHT_ATOL = 1e-5, 1e-6, 1e-5


def launch(tmp_path: Path, stage: str, config: dict[str, Any], *, config_file: bool = True) -> Path:
    """Run ``stage`` with 2 processes through `accelerate launch` (the documented command); its output dir."""
    out, done = launch_process(tmp_path, stage, config, config_file=config_file)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def launch_process(
    tmp_path: Path, stage: str, config: dict[str, Any], *, config_file: bool = True
) -> tuple[Path, subprocess.CompletedProcess]:
    """:func:`launch` without the check: the output dir and the finished launch."""
    out = tmp_path / "two"
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump({"stage": stage, **config, "output_dir": str(out)}))
    if config_file:
        how = ["--config_file", str(CPU_2PROC)]
    else:  # the same without a file, as docs/distributed.md spells it
        how = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
        how += ["--dynamo_backend", "no", "--main_process_port", "0"]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *how,
        "-m",
        "rewardmix.cli",
        stage,
        str(path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return out, done


def run_here(tmp_path: Path, module: Any, config: dict[str, Any]) -> Path:
    """Run the stage in this process (one process); its output dir."""
    out = tmp_path / "one"
    module.run(from_dict(module.Config, {**config, "output_dir": str(out)}))
    return out


def assert_same_metrics(two: Path, one: Path, *, skip: tuple[str, ...] = ("perf/",)) -> list[dict]:
    rows_two, rows_one = read_jsonl(two / "metrics.jsonl"), read_jsonl(one / "metrics.jsonl")
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]  # one row per step, none twice
    for a, b in zip(rows_two, rows_one, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key.startswith(skip) or a[key] is None:
                continue
            assert a[key] == pytest.approx(b[key], rel=METRIC_RTOL, abs=METRIC_ATOL), (a["step"], key)
    return rows_two


def assert_same_weights(two: Path, one: Path) -> None:
    last = sorted((one / "checkpoints").glob("step-*"))[-1].name
    a = load_file(str(two / "checkpoints" / last / "trainable.safetensors"))
    b = load_file(str(one / "checkpoints" / last / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=WEIGHT_ATOL, rtol=0, msg=key)
    initial = {k: v for k, v in a.items() if "lora_B" in k}
    assert initial and any(v.abs().max() > 10 * WEIGHT_ATOL for v in initial.values())  # training moved them


def test_sft_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    config = {
        "cpu": True,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},  # dropout masks would differ between the runs
        "phases": [{"data": "builtin:toy", "max_steps": 4, "eval_fraction": 0.1}],
        "optim": {
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-2,
            "adam_epsilon": 1e-4,  # see the module docstring
        },
        "logging": {"num_samples": 0, "eval_every": 2, "checkpoint_every": 100},
    }
    two = launch(tmp_path, "sft", config, config_file=False)
    one = run_here(tmp_path, sft, {**config, "optim": {**config["optim"], "micro_batch_size": 4}})
    rows = assert_same_metrics(two, one)
    assert rows[0]["step"] == 0 and rows[1]["tokens/step"] > 0 and "loss/eval" in rows[-1]
    assert_same_weights(two, one)
    assert (two / "model" / "adapter_model.safetensors").is_file()


def test_reward_model_two_processes_equal_one_process_and_evaluate_every_pair_once(tmp_path):
    config = {
        "cpu": True,
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": "builtin:toy", "eval_fraction": 0.2},
        "optim": {"micro_batch_size": 4, "max_steps": 4, "learning_rate": 1e-2, "adam_epsilon": 1e-4},
        "logging": {"num_samples": 2, "eval_every": 2, "checkpoint_every": 100},
    }
    two = launch(tmp_path, "reward-model", config)
    one = run_here(tmp_path, reward_model, {**config, "optim": {**config["optim"], "micro_batch_size": 8}})
    rows = assert_same_metrics(two, one)
    # The eval set is split unevenly over the 2 processes; a pair dropped or counted twice would change the
    # accuracy (k / n -> k' / (n +- 1)), which must be strictly between 0 and 1 to tell.
    assert yaml.safe_load((one / "data_report.json").read_text())["eval"]["items"] % 2 == 1
    accuracies = [r["rm/accuracy"] for r in rows if "rm/accuracy" in r]
    assert len(accuracies) == 3 and any(0 < a < 1 for a in accuracies)
    assert rows[0]["step"] == 0 and all("rm/train/accuracy" in r for r in rows[1:])
    assert_same_weights(two, one)
    assert len(read_jsonl(two / "samples.jsonl")) == len(read_jsonl(one / "samples.jsonl")) > 0


def test_ppo_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    """Per-sample seeds: the same responses; then the same rewards, running statistics, adaptive KL, update."""
    contains_e = {"name": "e_count", "type": "contains", "contains": {"substring": "e", "mode": "count"}}
    config = {  # no `cpu: true`: without CUDA a multi-process launch must run on the CPU by itself
        "lora": {"r": 4, "alpha": 8},
        "generation": {"max_new_tokens": 8, "batch_size": 1},  # generation batch size changes nothing
        "ppo": {
            "steps": 3,
            "batch_size": 3,
            "minibatch_size": 2,  # 3 / 2: the last minibatch is short, the split over processes uneven
            "micro_batch_size": 1,
            "ppo_epochs": 2,
            "learning_rate": 1e-3,
            "adam_epsilon": 1e-4,  # see the module docstring
            # The controller's error kl / target - 1 is ~100x the float rounding of the KL (a sum of differences
            # of log-probabilities ~ -6); horizon 100 keeps its step (x n / horizon) near the rounding.
            "kl": {"kind": "adaptive", "target": 0.01, "horizon": 100},
        },
        "reward": {"components": [{**contains_e, "normalize": "running"}]},
        "logging": {"num_samples": 6, "sample_every": 1, "checkpoint_every": 100},
    }
    two = launch(tmp_path, "ppo", config)
    one_config = {**config, "generation": {"max_new_tokens": 8, "batch_size": 4}}
    one_config["ppo"] = {**config["ppo"], "batch_size": 6, "minibatch_size": 4, "micro_batch_size": 2}
    one = run_here(tmp_path, ppo, one_config)
    rows = assert_same_metrics(two, one)
    assert rows[-1]["objective/kl_coef"] != rows[0]["objective/kl_coef"]  # the controller saw the global KL
    assert rows[-1]["reward/e_count/running_std"] > 0
    samples = [read_jsonl(folder / "samples.jsonl") for folder in (two, one)]
    assert [s["completion"] for s in samples[0]] == [s["completion"] for s in samples[1]]
    assert len({s["completion"] for s in samples[0]}) > 1
    assert_same_weights(two, one)


def test_a_refused_run_directory_stops_every_process_with_the_main_ones_message(tmp_path):
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "notes.txt").write_text("mine")  # a folder of the user's: refused by the main process
    config = {"cpu": True, "lora": {"enabled": False}, "phases": [{"data": "builtin:toy", "max_steps": 1}]}
    out, done = launch_process(tmp_path, "sft", config)
    assert done.returncode != 0
    # both processes stop (the launch ends: no wait for the main one forever) with the same clean message; the
    # launcher may stop the second process before it prints, so 1 or 2 copies
    assert 1 <= done.stderr.count("holds no rewardmix run (no run_info.json); refusing to write into it") <= 2
    assert "Traceback" not in done.stderr.split("holds no rewardmix run")[0]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
