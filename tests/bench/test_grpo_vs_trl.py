"""bench/grpo_vs_trl.py: the configs it builds, and its rewardmix side end to end on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rewardmix.algos.combine import get_combinator
from rewardmix.config import from_dict
from rewardmix.stages import ppo


@pytest.fixture
def bench(import_bench):
    return import_bench("grpo_vs_trl")


def _args(bench, tmp_path: Path):
    return bench.argparse.Namespace(model="tiny", batch=8, max_new_tokens=8, steps=4, workdir=str(tmp_path))


def test_configs_are_the_crs_setting(bench, tmp_path: Path) -> None:
    args = _args(bench, tmp_path)
    grpo = from_dict(ppo.Config, bench.rewardmix_config(args, "rewardmix_grpo", tmp_path / "out"))
    gae = from_dict(ppo.Config, bench.rewardmix_config(args, "rewardmix_ppo", tmp_path / "out"))
    assert (grpo.ppo.advantage, grpo.ppo.samples_per_prompt, grpo.ppo.whiten_advantages) == ("grpo", 4, False)
    assert (gae.ppo.advantage, gae.ppo.samples_per_prompt) == ("gae", 1)
    for cfg in (grpo, gae):
        assert cfg.ppo.batch_size == cfg.ppo.minibatch_size == cfg.ppo.micro_batch_size == 8
        assert cfg.ppo.ppo_epochs == 1 and cfg.ppo.kl.kind == "fixed" and cfg.ppo.kl.init_coef == 0.05
    # pref = 1, abs = 2, rule = 1: 0.25 * 1 + 0.75 * 2 + 1 = 2.75 (a weighted sum, not an average)
    combine = get_combinator(grpo.reward.combinator)
    score = combine(torch.tensor([[1.0, 2.0, 1.0]]), **grpo.reward.combinator_kwargs())
    assert score.item() == pytest.approx(2.75)
    # the shared value head is asked for only by its own system
    head = bench.rewardmix_config(args, "rewardmix_ppo_head", tmp_path / "out")
    assert head["ppo"]["value_model"] == "policy_head"
    assert "value_model" not in bench.rewardmix_config(args, "rewardmix_ppo", tmp_path / "out")["ppo"]


def test_group_sizes(bench) -> None:
    assert bench.group_sizes(["a", "a", "a", "a", "b", "b", "b", "b"]) == [4, 4]
    assert bench.group_sizes(["a", "b", "a"]) == [1, 1, 1]


@pytest.mark.slow
def test_rewardmix_side_tiny(bench, tmp_path: Path) -> None:
    """The tiny quick mode of the rewardmix systems (no TRL needed): result structure, and GRPO really sampled
    4 responses per prompt (2 prompts x 4 in a batch of 8) while PPO sampled 1 per prompt."""
    results = tmp_path / "results"
    record = bench.main(
        [
            "--models",
            "tiny",
            "--quick",
            "--systems",
            "rewardmix_grpo,rewardmix_ppo",
            "--max-new-tokens",
            "8",
            "--workdir",
            str(tmp_path / "work"),
            "--results-dir",
            str(results),
        ]
    )
    assert (results / "grpo_vs_trl.json").is_file() and (results / "grpo_vs_trl.md").is_file()
    for key in ("ratios", "settings", "machine", "date", "models"):
        assert key in record
    assert record["ratios"] is None  # TRL GRPO was not run
    result = record["models"]["tiny"]
    assert set(result["summary"]) == {"rewardmix_grpo", "rewardmix_ppo"}
    grpo, gae = result["summary"]["rewardmix_grpo"], result["summary"]["rewardmix_ppo"]
    assert grpo["group_sizes"] == [[4, 4]]
    assert gae["group_sizes"] == [[1] * 8]
    assert result["runs"]["rewardmix_grpo"][0]["rollout_shape"][0] == 8
    for summary in (grpo, gae):
        assert summary["samples_per_s"] > 0 and summary["peak_rss_mb_median"] > 0
        assert set(summary["phases_s_median"]) == {"generate", "reward", "rollout_forward", "ppo_update"}
        assert math.isfinite(summary["overhead_ratio"]) and summary["overhead_ratio"] > 0
        assert summary["completion_length_mean"] == [
            8.0
        ]  # stop tokens suppressed: every response full length
