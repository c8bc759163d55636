"""bench/memory_estimate.py against what was measured: the models rewardmix builds, and SmolLM2-135M's numbers
recorded by bench/ppo_memory.py (bench/results/ppo_memory.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rewardmix.models import lora, tiny

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@pytest.fixture
def memory_estimate(import_bench):
    return import_bench("memory_estimate")


def test_counts_equal_the_tiny_model_and_its_lora_roles_tensor_by_tensor(memory_estimate):
    tokenizer = tiny.build_tiny_tokenizer()
    model = tiny.build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=3, num_heads=4)
    base = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    config = model.config.to_dict()
    model = lora.add_adapters(model, ["policy", "value"], lora.LoraSettings(r=4, alpha=8))
    per_role = sum(p.numel() for name, p in model.named_parameters() if ".policy." in name)
    counts = memory_estimate.count_parameters(config, lora_rank=4)
    assert (counts.total, counts.per_layer, counts.lora_per_role) == (base, layer, per_role)
    assert counts.head == 32 + 1


def test_smollm2_matches_the_sizes_measured_by_ppo_memory(memory_estimate):
    """ppo_memory.md: 'One float32 copy of the model weighs ~513 MiB' and 'Each LoRA role (r=16, every linear
    layer) holds 4,884,480 parameters', measured on the loaded model."""
    text = (RESULTS / "ppo_memory.md").read_text()
    measured_mib = int(re.search(r"weighs ~(\d+) MiB", text).group(1))
    measured_role = int(re.search(r"holds ([\d,]+) parameters", text).group(1).replace(",", ""))
    counts = memory_estimate.count_parameters(memory_estimate.PRESETS["smollm2-135m"], lora_rank=16)
    assert counts.lora_per_role == measured_role
    assert round(counts.total * 4 / 2**20) == measured_mib


def test_sharding_divides_what_it_shards(memory_estimate):
    counts = memory_estimate.count_parameters(memory_estimate.PRESETS["qwen2.5-7b"])
    kwargs = {"trained_roles": 2, "frozen_roles": 2, "heads": 3}
    ddp = memory_estimate.estimate(counts, engine="ddp", processes=8, **kwargs)
    zero2 = memory_estimate.estimate(counts, engine="zero2", processes=8, **kwargs)
    fsdp = memory_estimate.estimate(counts, engine="fsdp", processes=8, **kwargs)
    assert ddp["base weights"] == zero2["base weights"] == pytest.approx(8 * fsdp["base weights"])
    assert zero2["optimizer"] == pytest.approx(ddp["optimizer"] / 8) == pytest.approx(fsdp["optimizer"])
    assert ddp["gathered layer"] == 0 < fsdp["gathered layer"] < fsdp["base weights"]
    one = memory_estimate.estimate(counts, engine="fsdp", processes=1, **kwargs)
    assert one["total"] == pytest.approx(ddp["total"])  # FSDP over one process shards nothing
    # bf16 weights of a 7.6 B model: ~14.2 GiB whole
    assert 14.0 < ddp["base weights"] < 14.4


def test_a_config_that_is_not_a_decoder_is_one_clear_error(memory_estimate, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 8}))
    assert memory_estimate.main(["--config", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"memory_estimate: error: {path}: no vocab_size") and "Traceback" not in err
    assert memory_estimate.main(["--preset", "smollm2-135m", "--markdown", "--processes", "2"]) == 0
    assert "| PPO: + 2 reward-model roles |" in capsys.readouterr().out
