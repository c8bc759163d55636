"""FSDP2 for real: `accelerate launch` with configs/accelerate/fsdp-cpu-2proc.yaml (2 CPU processes, gloo).

Each test runs a stage with its weights, gradients and optimizer states sharded over 2 processes and checks it
against the same stage data-parallel (DDP, 2 processes) and in this process (1 process, twice the per-process
batch): every metric at every step and the final trainable weights agree within the tolerances of
test_ddp.py (float rounding: the shards reduce in another order). The SFT run is killed (SIGKILL, the whole
process group) after its first sharded checkpoint and launched again: it must resume from that checkpoint and
end where the uninterrupted runs end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rewardmix.rundir import read_jsonl
from rewardmix.stages import ppo, reward_model, sft
from tests.distributed.test_ddp import assert_same_metrics, assert_same_weights, run_here
from tests.stages.test_ppo import save_rm_adapter

pytestmark = pytest.mark.slow  # each launch starts 2 Python processes: ~15 s on 2 busy cores

REPO = Path(__file__).resolve().parents[2]
FSDP_CPU = REPO / "configs/accelerate/fsdp-cpu-2proc.yaml"
DDP_CPU = REPO / "configs/accelerate/cpu-2proc.yaml"
CONTAINS_E = {"name": "e_count", "type": "contains", "contains": {"substring": "e", "mode": "count"}}


def command(
    tmp_path: Path, stage: str, config: dict[str, Any], out: Path, accelerate_config: Path
) -> list[str]:
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({"stage": stage, **config, "output_dir": str(out)}))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
    return [*launcher, "-m", "rewardmix.cli", stage, str(path)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def assert_sharded(out: Path, step: int) -> None:
    """Checkpoint ``step`` holds each process's shards, every file checksummed in the manifest; no
    optimizer.pt (a run that fell back to data parallelism would write that instead)."""
    files = json.loads((out / "checkpoints" / f"step-{step:08d}" / "manifest.json").read_text())["files"]
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert {
            f"shards/{part}/__0_0.distcp",
            f"shards/{part}/__1_0.distcp",
            f"shards/{part}/.metadata",
        } <= set(files)
    assert "optimizer.pt" not in files and not list((out / "checkpoints").glob(".shards-*"))


def launch(tmp_path: Path, stage: str, config: dict[str, Any], name: str, accelerate_config: Path) -> str:
    """Run ``stage`` to the end with 2 processes; its stderr."""
    out = tmp_path / name
    done = subprocess.run(
        command(tmp_path, stage, config, out, accelerate_config),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def lose_the_end(out: Path, step: int) -> None:
    """Delete checkpoint ``step`` (the last) and what the run wrote at its end, so that a rerun resumes."""
    shutil.rmtree(out / "checkpoints" / f"step-{step:08d}")
    for name in ("summary.json", "model", "adapter"):
        shutil.rmtree(out / name, ignore_errors=True) if (out / name).is_dir() else (out / name).unlink()


def launch_and_kill(
    tmp_path: Path,
    stage: str,
    config: dict[str, Any],
    name: str,
    *,
    after: int,
    accelerate_config: Path = FSDP_CPU,
) -> None:
    """Start ``stage`` (FSDP unless told otherwise) and SIGKILL every process of the launch once checkpoint
    ``after`` is complete."""
    import psutil

    out = tmp_path / name
    manifest = out / "checkpoints" / f"step-{after:08d}" / "manifest.json"
    process = subprocess.Popen(
        command(tmp_path, stage, config, out, accelerate_config),
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not manifest.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        # torchrun starts its workers in sessions of their own: kill the launcher and every process under it.
        workers = []
        with contextlib.suppress(psutil.NoSuchProcess):  # a launch that failed is gone already
            workers = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        for each in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                each.send_signal(signal.SIGKILL)
        process.wait()
        psutil.wait_procs(workers, timeout=30)
    assert manifest.is_file(), f"no checkpoint {after} before the kill (exit code {process.returncode})"
    assert not (out / "summary.json").exists(), "the run ended before the kill"


def test_sft_fsdp_equals_ddp_equals_one_process_through_a_kill_and_resume(tmp_path):
    config = {
        "cpu": True,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},  # dropout masks would differ between the runs
        "phases": [{"data": "builtin:toy", "max_steps": 6, "eval_fraction": 0.1}],
        "optim": {
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-2,
            "adam_epsilon": 1e-4,  # see test_ddp.py's docstring
        },
        # 6 eval items over 2 processes, micro-batches of 2: the eval passes are even; the training share of
        # each step (4 per process) too. Samples: greedy generation under FSDP needs every process.
        "logging": {"num_samples": 2, "eval_every": 2, "sample_every": 3, "checkpoint_every": 2},
    }
    launch_and_kill(tmp_path, "sft", config, "fsdp", after=2)
    stderr = launch(tmp_path, "sft", config, "fsdp", FSDP_CPU)
    assert re.search(r"resuming from checkpoint \S+/step-0000000[24] \(step [24]\)", stderr)
    fsdp = tmp_path / "fsdp"
    launch(tmp_path, "sft", config, "ddp", DDP_CPU)
    one = run_here(tmp_path, sft, {**config, "optim": {**config["optim"], "micro_batch_size": 4}})

    rows = assert_same_metrics(fsdp, tmp_path / "ddp")
    assert_same_metrics(fsdp, one)
    assert [r["step"] for r in rows] == list(range(7)) and "loss/eval" in rows[-1]
    assert_same_weights(fsdp, tmp_path / "ddp")
    assert_same_weights(fsdp, one)
    # The checkpoint holds each process's shards, every file checksummed in the manifest; no optimizer.pt.
    last = fsdp / "checkpoints" / "step-00000006"
    files = json.loads((last / "manifest.json").read_text())["files"]
    assert {"shards/pytorch_model_fsdp_0/__0_0.distcp", "shards/pytorch_model_fsdp_0/__1_0.distcp"} <= set(
        files
    )
    assert {"shards/optimizer_0/__0_0.distcp", "shards/optimizer_0/__1_0.distcp"} <= set(files)
    assert "optimizer.pt" not in files and not list((fsdp / "checkpoints").glob(".shards-*"))
    assert (fsdp / "model" / "adapter_model.safetensors").is_file()  # gathered and saved as in one process
    steps = [r["step"] for r in read_jsonl(fsdp / "samples.jsonl")]
    assert steps == [3, 3, 6, 6]  # every sample row once, though the run was killed after step 2


def test_reward_model_fsdp_equals_one_process_and_resumes_from_its_shards(tmp_path):
    config = {
        "cpu": True,
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": "builtin:toy", "eval_fraction": 0.2},  # an odd eval set: uneven shares, padded
        "optim": {"micro_batch_size": 4, "max_steps": 4, "learning_rate": 1e-2, "adam_epsilon": 1e-4},
        "logging": {"num_samples": 2, "eval_every": 2, "checkpoint_every": 2},
    }
    stderr = launch(tmp_path, "reward-model", config, "fsdp", FSDP_CPU)
    assert "FSDP2 on CPU processes (gloo)" in stderr
    fsdp = tmp_path / "fsdp"
    assert_sharded(fsdp, 2)
    assert_sharded(fsdp, 4)
    one = run_here(tmp_path, reward_model, {**config, "optim": {**config["optim"], "micro_batch_size": 8}})
    rows = assert_same_metrics(fsdp, one)
    assert sum("rm/accuracy" in r for r in rows) == 3
    assert_same_weights(fsdp, one)
    assert (fsdp / "model" / "rewardmix_rm.json").is_file()
    first = json.loads((fsdp / "summary.json").read_text())

    # Lose the last checkpoint and the end of the run: the rerun resumes from step 2's shards.
    lose_the_end(fsdp, 4)
    stderr = launch(tmp_path, "reward-model", config, "fsdp", FSDP_CPU)
    assert "step-00000002 (step 2)" in stderr
    assert_same_metrics(fsdp, one)
    assert_same_weights(fsdp, one)
    assert json.loads((fsdp / "summary.json").read_text())["eval_metrics"] == pytest.approx(
        first["eval_metrics"], rel=1e-5, abs=1e-6
    )


def test_ppo_fsdp_equals_ddp_equals_one_process_through_a_kill_and_resume(tmp_path):
    """Every role on one sharded base: policy, value role + head, reference, a reward-model role + head."""
    rm = {"path": str(save_rm_adapter(tmp_path / "rm", 1)), "role": "rm"}
    config = {
        "cpu": True,
        "lora": {"r": 4, "alpha": 8},
        "generation": {"max_new_tokens": 8, "batch_size": 2},  # 3 / 2: uneven generate calls, rows end early
        "ppo": {
            "steps": 4,
            "batch_size": 3,
            "minibatch_size": 2,  # the last minibatch is short: 1 micro-batch on one process, a padding pass
            "micro_batch_size": 1,
            "ppo_epochs": 2,
            "learning_rate": 1e-3,
            "adam_epsilon": 1e-4,  # see test_ddp.py's docstring
            "kl": {"kind": "adaptive", "target": 0.01, "horizon": 100},  # as in test_ddp.py
        },
        "reward": {
            "components": [
                {**CONTAINS_E, "normalize": "running"},
                {"name": "rm", "type": "reward_model", "reward_model": rm},
            ]
        },
        "logging": {"num_samples": 6, "sample_every": 1, "checkpoint_every": 2},
    }
    launch_and_kill(tmp_path, "ppo", config, "fsdp", after=2)
    stderr = launch(tmp_path, "ppo", config, "fsdp", FSDP_CPU)
    assert "resuming from checkpoint" in stderr and "step-00000002 (step 2)" in stderr
    fsdp = tmp_path / "fsdp"
    assert_sharded(fsdp, 2)
    assert_sharded(fsdp, 4)
    launch(tmp_path, "ppo", config, "ddp", DDP_CPU)
    one_config = {**config, "generation": {"max_new_tokens": 8, "batch_size": 4}}
    one_config["ppo"] = {**config["ppo"], "batch_size": 6, "minibatch_size": 4, "micro_batch_size": 2}
    one = run_here(tmp_path, ppo, one_config)

    # value/clipfrac counts the tokens whose clipped value loss is larger: at the first minibatch V == V_old up to
    # rounding, so it counts ulp-level ties that other batch shapes round the other way (~1 token in 128).
    skip = ("perf/", "value/clipfrac")
    rows = assert_same_metrics(fsdp, tmp_path / "ddp", skip=skip)
    assert_same_metrics(fsdp, one, skip=skip)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["objective/kl_coef"] != rows[0][
        "objective/kl_coef"
    ]
    assert len({r["reward/rm/raw"] for r in rows}) == 4  # the reward-model role scored every batch
    assert_same_weights(fsdp, tmp_path / "ddp")
    assert_same_weights(fsdp, one)
    trained = load_file(str(fsdp / "checkpoints" / "step-00000004" / "trainable.safetensors"))
    assert any(k.startswith("value_head.") for k in trained) and any(".lora_A.value." in k for k in trained)
    samples = [read_jsonl(folder / "samples.jsonl") for folder in (fsdp, one)]
    assert [s["completion"] for s in samples[0]] == [s["completion"] for s in samples[1]]
    assert [s["step"] for s in samples[0]] == [s for s in range(1, 5) for _ in range(6)]  # each row once
    # The final policy and value role, gathered and saved as in one process: the weights of the last step.
    final = load_file(str(fsdp / "model" / "adapter_model.safetensors"))
    ddp_final = load_file(str(tmp_path / "ddp" / "model" / "adapter_model.safetensors"))
    assert final.keys() == ddp_final.keys() and final
    for key in final:
        torch.testing.assert_close(final[key], ddp_final[key], atol=1e-5, rtol=0, msg=key)
    assert (fsdp / "value" / "head.safetensors").is_file()
    # Its sharded checkpoints are refused by a data-parallel launch (they hold no optimizer.pt), without a traceback.
    done = subprocess.run(
        command(tmp_path, "ppo", config, fsdp, DDP_CPU),
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "step-00000004 was written by a FSDP run and this launch is data-parallel" in done.stderr
    assert (
        "rewardmix/train" not in done.stderr and "rewardmix/stages" not in done.stderr
    )  # no stage traceback


def test_ppo_full_fine_tuning_under_fsdp_stops_before_any_work_naming_the_reason(tmp_path):
    """Only LoRA roles on one base are sharded; a second, full copy of the base (lora.enabled: false) is not.
    (generation.backend: vllm is refused too, but without vLLM installed the config check refuses it first.)"""
    out = tmp_path / "ppo"
    config = {"ppo": {"steps": 1}, "reward": {"components": [CONTAINS_E]}, "lora": {"enabled": False}}
    done = subprocess.run(
        command(tmp_path, "ppo", config, out, FSDP_CPU),
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("rewardmix: error:")]
    # one per process that got to print it (the launcher may stop the other first), each the config error
    assert 1 <= len(lines) <= 2 and len(set(lines)) == 1
    assert lines[0].startswith(
        "rewardmix: error: ppo: accelerate config distributed_type FSDP is not supported"
    )
    assert "lora.enabled: false trains a second, full copy of the base" in lines[0]
    assert "run data-parallel" in lines[0]
    assert "rewardmix/train" not in done.stderr and "rewardmix/stages" not in done.stderr
    assert not out.exists()  # refused before the run directory was made
