"""The shipped `accelerate launch` configs (configs/accelerate/) against accelerate's own loader and launcher.

accelerate checks a config file's top-level keys but copies the keys of ``deepspeed_config`` / ``fsdp_config``
onto its launch arguments without looking: a misspelt nested key would be silently ignored. So every nested
key must be a real `accelerate launch` argument, and the launcher must read each file as the backend it names.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

from rewardmix.config import ConfigError
from rewardmix.train.distributed import check_backend

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
# file -> the launch flag accelerate must set from it (multi_gpu = the torchrun launcher, CPU or GPU)
EXPECTED = {
    "cpu-2proc.yaml": "multi_gpu",
    "multi-gpu.yaml": "multi_gpu",
    "deepspeed-zero2.yaml": "use_deepspeed",
    "deepspeed-zero3.yaml": "use_deepspeed",
    "deepspeed-cpu-2proc.yaml": "use_deepspeed",
    "fsdp.yaml": "use_fsdp",
    "fsdp-cpu-2proc.yaml": "use_fsdp",
}


def test_every_shipped_config_is_listed():
    assert sorted(p.name for p in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_launches_as_the_backend_it_names(path):
    text = path.read_text()
    assert text.startswith("# ") and "\n# Run:" in text and "rewardmix.cli" in text  # a usage header
    config = ClusterConfig.from_yaml_file(str(path))  # unknown top-level keys raise here
    known = set(vars(launch_command_parser().parse_args(["train.py"])))
    for key in config.deepspeed_config:
        assert key in known, f"{path.name}: deepspeed_config.{key} is not an accelerate launch argument"
    for key in config.fsdp_config:
        assert key in known, f"{path.name}: fsdp_config.{key} is not an accelerate launch argument"
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, _, _ = _validate_launch_command(args)
    assert getattr(args, EXPECTED[path.name]) is True
    assert args.num_processes == 2 and args.num_machines == 1
    if config.deepspeed_config:
        assert args.zero_stage == config.deepspeed_config["zero_stage"]
    if config.fsdp_config:
        assert str(args.fsdp_version) == "2"


@pytest.mark.parametrize(
    ("kind", "stage", "refusal"),
    [
        (DistributedType.NO, "ppo", None),
        (DistributedType.MULTI_CPU, "sft", None),
        (DistributedType.MULTI_GPU, "ppo", None),
        (DistributedType.FSDP, "sft", None),
        (DistributedType.FSDP, "reward-model", None),
        (DistributedType.FSDP, "ppo", None),
        (DistributedType.DEEPSPEED, "sft", None),
        (DistributedType.DEEPSPEED, "reward-model", None),
        (DistributedType.DEEPSPEED, "ppo", "LoRA adapters switched on ONE shared base"),
        (DistributedType.MEGATRON_LM, "reward-model", "no Megatron-LM model code"),
    ],
)
def test_backends_are_refused_before_any_work_with_the_reason(kind, stage, refusal):
    plugin = SimpleNamespace(fsdp_version=2)
    zero3 = SimpleNamespace(zero_stage=3, deepspeed_config={"zero_optimization": {"stage": 3}})
    state = SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=zero3)
    accelerator = SimpleNamespace(distributed_type=kind, state=state)
    if refusal is None:
        check_backend(accelerator, stage)
    else:
        with pytest.raises(
            ConfigError, match=f"{stage}: accelerate config distributed_type {kind.value} .*{refusal}"
        ):
            check_backend(accelerator, stage)


def test_a_stage_config_that_cannot_be_sharded_is_refused_under_fsdp_only():
    """PPO with full fine-tuning: the stage names why (roles.fsdp_refusal); data-parallel runs it."""
    from rewardmix.stages.ppo.roles import fsdp_refusal

    reason = fsdp_refusal(lora_enabled=False, backend="hf")
    assert fsdp_refusal(lora_enabled=True, backend="hf") is None
    assert "generation.backend: vllm" in fsdp_refusal(lora_enabled=True, backend="vllm")
    plugin = SimpleNamespace(fsdp_version=2)
    for kind in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        accelerator = SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=plugin))
        check_backend(accelerator, "ppo", sharded_refusal=reason)
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin)
    )
    with pytest.raises(
        ConfigError, match="ppo: accelerate config distributed_type FSDP .*lora.enabled: false"
    ):
        check_backend(accelerator, "ppo", sharded_refusal=reason)


def test_fsdp1_is_refused():
    plugin = SimpleNamespace(fsdp_version=1)
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin)
    )
    with pytest.raises(ConfigError, match="FSDP2 .* fsdp_version: 2"):
        check_backend(accelerator, "sft")
