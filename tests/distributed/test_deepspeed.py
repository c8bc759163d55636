"""DeepSpeed ZeRO-2 and ZeRO-3 for real: `accelerate launch` with configs/accelerate/deepspeed-cpu-2proc.yaml
(2 CPU processes, gloo).

Each test runs a stage under a DeepSpeed engine (ZeRO-3: weights, gradients and optimizer states partitioned
over 2 processes; ZeRO-2: gradients and optimizer states) and checks it against the same stage data-parallel
(DDP, 2 processes) and in this process (1 process, twice the per-process batch): every metric at every step and
the final trainable weights agree within the tolerances of test_ddp.py. The engine applies each update inside
the backward pass of the step's last micro-batch, so these tests also check that the stages tell it where a
step ends and that it neither rescales nor clips differently. The ZeRO-3 SFT run is killed (SIGKILL, the whole
process group) after its first checkpoint and launched again: it must resume from the engine's partitions and
end where the uninterrupted runs end.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from rewardmix.rundir import read_jsonl
from rewardmix.stages import reward_model, sft
from tests.distributed.test_ddp import assert_same_metrics, assert_same_weights, run_here
from tests.distributed.test_fsdp import (
    CONTAINS_E,
    DDP_CPU,
    ENV,
    REPO,
    command,
    launch,
    launch_and_kill,
    lose_the_end,
)

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'rewardmix[deepspeed]')")
pytestmark = pytest.mark.slow  # each launch starts 2 Python processes and a DeepSpeed engine: ~25 s

ZERO3_CPU = REPO / "configs/accelerate/deepspeed-cpu-2proc.yaml"


def zero2_config(tmp_path: Path) -> Path:
    """The same launch with zero_stage 2."""
    config = yaml.safe_load(ZERO3_CPU.read_text())
    config["deepspeed_config"]["zero_stage"] = 2
    path = tmp_path / "accelerate-zero2.yaml"  # not <run name>.yaml: command() writes the stage config there
    path.write_text(yaml.safe_dump(config))
    return path


def assert_engine_checkpoint(out: Path, step: int) -> None:
    """Checkpoint ``step`` holds the engine's files of both processes, every one checksummed in the manifest;
    no optimizer.pt (a run that fell back to data parallelism would write that instead)."""
    files = json.loads((out / "checkpoints" / f"step-{step:08d}" / "manifest.json").read_text())["files"]
    for rank in (0, 1):
        assert f"shards/engine/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files
    assert "optimizer.pt" not in files and "trainable.safetensors" in files
    assert not list((out / "checkpoints").glob(".shards-*"))


SFT = {
    "cpu": True,
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},  # dropout masks would differ between the runs
    "optim": {
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,  # 2 micro-batches per process and step: the engine's boundary
        "learning_rate": 1e-2,
        "adam_epsilon": 1e-4,  # see test_ddp.py's docstring
        "max_grad_norm": 0.05,  # small enough to clip: the engine must clip to the stage's value
    },
    "logging": {"num_samples": 2, "eval_every": 2, "sample_every": 3, "checkpoint_every": 2},
}


def test_sft_zero3_equals_ddp_equals_one_process_through_a_kill_and_resume(tmp_path):
    config = {**SFT, "phases": [{"data": "builtin:toy", "max_steps": 6, "eval_fraction": 0.1}]}
    launch_and_kill(tmp_path, "sft", config, "zero3", after=2, accelerate_config=ZERO3_CPU)
    stderr = launch(tmp_path, "sft", config, "zero3", ZERO3_CPU)
    assert "DeepSpeed ZeRO-3 on CPU processes (gloo)" in stderr
    assert "resuming from checkpoint" in stderr
    zero3 = tmp_path / "zero3"
    launch(tmp_path, "sft", config, "ddp", DDP_CPU)
    one = run_here(tmp_path, sft, {**config, "optim": {**config["optim"], "micro_batch_size": 4}})

    rows = assert_same_metrics(zero3, tmp_path / "ddp")
    assert_same_metrics(zero3, one)
    assert [r["step"] for r in rows] == list(range(7)) and "loss/eval" in rows[-1]
    # every step was clipped, to the stage's max_grad_norm (the launch config says 1.0)
    assert all(r["grad_norm"] > 0.05 for r in rows[1:])
    assert_same_weights(zero3, tmp_path / "ddp")
    assert_same_weights(zero3, one)
    assert_engine_checkpoint(zero3, 6)
    assert (zero3 / "model" / "adapter_model.safetensors").is_file()  # gathered and saved as in one process
    steps = [r["step"] for r in read_jsonl(zero3 / "samples.jsonl")]
    assert steps == [3, 3, 6, 6]  # every sample row once, though the run was killed after step 2
    completions = [r["completion"] for r in read_jsonl(zero3 / "samples.jsonl")]
    assert completions == [r["completion"] for r in read_jsonl(one / "samples.jsonl")]


def test_sft_zero2_two_phases_each_start_a_fresh_optimizer_as_in_one_process(tmp_path):
    """One engine binds one optimizer: each phase clears its moments and sets its own peak rate and schedule,
    which must train exactly like the fresh AdamW per phase of a data-parallel run."""
    config = {
        **SFT,
        "phases": [
            {"name": "a", "data": "builtin:toy", "max_steps": 2, "eval_fraction": 0.1},
            {"name": "b", "data": "builtin:toy", "max_steps": 2, "eval_fraction": 0.1, "learning_rate": 3e-3},
        ],
        "logging": {**SFT["logging"], "checkpoint_every": 10, "num_samples": 0},
    }
    stderr = launch(tmp_path, "sft", config, "zero2", zero2_config(tmp_path))
    assert "DeepSpeed ZeRO-2 on CPU processes (gloo)" in stderr
    zero2 = tmp_path / "zero2"
    one = run_here(tmp_path, sft, {**config, "optim": {**config["optim"], "micro_batch_size": 4}})
    rows = assert_same_metrics(zero2, one)
    assert [r.get("phase") for r in rows[1:]] == [0, 0, 1, 1]
    assert rows[3]["lr"] == pytest.approx(3e-3)  # phase b's first step runs at its own peak rate
    assert_same_weights(zero2, one)


def test_reward_model_zero2_equals_one_process_and_resumes_from_its_engine_checkpoint(tmp_path):
    config = {
        "cpu": True,
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": "builtin:toy", "eval_fraction": 0.2},  # an odd eval set: uneven shares, padded
        "optim": {"micro_batch_size": 4, "max_steps": 4, "learning_rate": 1e-2, "adam_epsilon": 1e-4},
        "logging": {"num_samples": 2, "eval_every": 2, "checkpoint_every": 2},
    }
    accelerate_config = zero2_config(tmp_path)
    launch(tmp_path, "reward-model", config, "zero2", accelerate_config)
    zero2 = tmp_path / "zero2"
    assert_engine_checkpoint(zero2, 2)
    one = run_here(tmp_path, reward_model, {**config, "optim": {**config["optim"], "micro_batch_size": 8}})
    rows = assert_same_metrics(zero2, one)
    assert sum("rm/accuracy" in r for r in rows) == 3
    assert_same_weights(zero2, one)
    assert (zero2 / "model" / "rewardmix_rm.json").is_file()

    # Lose the last checkpoint and the end of the run: the rerun resumes from step 2's engine checkpoint.
    lose_the_end(zero2, 4)
    stderr = launch(tmp_path, "reward-model", config, "zero2", accelerate_config)
    assert "step-00000002 (step 2)" in stderr
    assert_same_metrics(zero2, one)
    assert_same_weights(zero2, one)

    # A data-parallel launch refuses its checkpoints (they hold no optimizer.pt), without a traceback.
    done = subprocess.run(
        command(tmp_path, "reward-model", config, zero2, DDP_CPU),
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "was written by a DeepSpeed run and this launch is data-parallel" in done.stderr
    assert "rewardmix/train" not in done.stderr and "rewardmix/stages" not in done.stderr


def test_ppo_under_deepspeed_stops_before_any_work_naming_the_reason(tmp_path):
    out = tmp_path / "ppo"
    config = {"ppo": {"steps": 1}, "reward": {"components": [CONTAINS_E]}}
    done = subprocess.run(
        command(tmp_path, "ppo", config, out, ZERO3_CPU),
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0  # the launcher's own exit code (the processes exit with 2)
    lines = [line for line in done.stderr.splitlines() if line.startswith("rewardmix: error:")]
    assert 1 <= len(lines) <= 2 and len(set(lines)) == 1  # the launcher may stop the second process first
    assert lines[0].startswith(
        "rewardmix: error: ppo: accelerate config distributed_type DEEPSPEED is not supported"
    )
    assert "LoRA adapters switched on ONE shared base" in lines[0] and "use FSDP" in lines[0]
    assert not out.exists()  # refused before the run directory was made


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"zero_stage": 1}, "zero_stage 1: rewardmix runs ZeRO stage 2 or 3"),
        ({"offload_optimizer_device": "cpu"}, "offload_optimizer to the CPU needs DeepSpeed's own CPU Adam"),
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps 4: set it to 1 (or auto)"),
    ],
)
def test_untested_deepspeed_settings_are_refused_naming_the_key(tmp_path, change, expected):
    config = yaml.safe_load(ZERO3_CPU.read_text())
    config["deepspeed_config"].update(change)
    accelerate_config = tmp_path / "accelerate-ds.yaml"
    accelerate_config.write_text(yaml.safe_dump(config))
    out = tmp_path / "rm"
    rm = {"cpu": True, "data": {"train": "builtin:toy"}, "optim": {"max_steps": 1}}
    done = subprocess.run(
        command(tmp_path, "reward-model", rm, out, accelerate_config),
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0  # the launcher's own exit code (the processes exit with 2)
    assert (
        f"reward-model: accelerate config distributed_type DEEPSPEED is not supported for this stage: {expected}"
        in done.stderr
    )
    assert "rewardmix/train" not in done.stderr  # no stage traceback
    assert not out.exists()
