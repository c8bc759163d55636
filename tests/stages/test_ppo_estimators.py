"""The PPO stage's estimators and reward options on the tiny model: REINFORCE++, ``normalize: group`` (GDPO) and
the ``constrained`` combinator (multipliers logged per step, checkpointed and resumed exactly)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rewardmix.rundir import read_jsonl
from rewardmix.stages import ppo
from rewardmix.stages.ppo.loop import estimate_advantages
from tests.stages.test_ppo import CONTAINS_E, tiny_config
from tests.stages.test_ppo import reward as reward_config

CONTAINS_A = {"name": "a_count", "type": "contains", "contains": {"substring": "a", "mode": "count"}}


def test_reinforce_pp_keeps_the_kl_per_token_and_whitens_over_the_batch():
    p = ppo.PPOConfig(advantage="reinforce_pp", samples_per_prompt=1, whiten_advantages=False)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rewards = torch.tensor([[-0.1, -0.2, 1.0], [-0.3, 2.0, 0.0]])
    advantages, returns = estimate_advantages(p, rewards, torch.full((2, 3), 9.0), mask)
    # returns-to-go [0.7, 0.8, 1.0] and [1.7, 2.0]: whitened over the 5 valid tokens although
    # whiten_advantages is false (global batch normalization is part of REINFORCE++)
    togo = torch.tensor([0.7, 0.8, 1.0, 1.7, 2.0])
    expected = (togo - togo.mean()) / togo.var(correction=1).sqrt()
    assert torch.allclose(advantages[mask], expected, atol=1e-5)
    assert advantages[1, 2] == 0.0 and torch.equal(returns, torch.zeros(2, 3))
    # tokens of one response get different advantages: the KL penalty stays per token
    assert advantages[0, 0] < advantages[0, 1] < advantages[0, 2]


def test_a_reinforce_pp_run_trains_the_policy_with_one_answer_per_prompt(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=2)
    cfg.ppo.advantage = "reinforce_pp"
    result = ppo.run(cfg)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert math.isfinite(result.metrics["loss/policy"]) and result.metrics["policy/approx_kl"] != 0.0
    assert "loss/value" not in result.metrics


def test_group_normalization_needs_several_answers_per_prompt():
    with pytest.raises(ValueError, match=r"normalize: group.*ppo.samples_per_prompt >= 2"):
        ppo.Config(reward=reward_config([{**CONTAINS_E, "normalize": "group"}]))


def test_a_grpo_run_with_group_normalized_components(tmp_path):
    components = [{**CONTAINS_E, "normalize": "group"}, {**CONTAINS_A, "normalize": "group"}]
    cfg = tiny_config(tmp_path / "run", steps=1, components=components)
    cfg.ppo.advantage, cfg.ppo.samples_per_prompt = "grpo", 2
    cfg.logging.num_samples, cfg.logging.sample_every = 4, 1
    ppo.run(cfg)
    samples = [r for r in read_jsonl(tmp_path / "run" / "samples.jsonl") if r["step"] == 1]
    for name in ("e_count", "a_count"):
        z = [r[f"reward/{name}/normalized"] for r in samples]
        # each pair of answers to one prompt: z-scores of two values are +-0.707 or both 0
        for i in (0, 2):
            assert z[i] + z[i + 1] == pytest.approx(0.0, abs=1e-5)
            assert abs(z[i]) == pytest.approx(1 / math.sqrt(2), abs=1e-4) or z[i] == pytest.approx(
                0.0, abs=1e-5
            )


def _constrained_config(out: Path, steps: int) -> ppo.Config:
    components = [{**CONTAINS_E, "target": 0.5}, CONTAINS_A]
    cfg = tiny_config(
        out,
        steps=steps,
        components=components,
        combinator="constrained",
        multiplier_lr=0.5,
        multiplier_kp=0.0,
    )
    cfg.logging.checkpoint_every = 2
    return cfg


def test_constrained_multipliers_are_logged_checkpointed_and_resumed_exactly(tmp_path):
    ppo.run(_constrained_config(tmp_path / "straight", 4))

    def kill(step: int, row: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ppo.run(_constrained_config(tmp_path / "killed", 4), on_step=kill)
    ppo.run(_constrained_config(tmp_path / "killed", 4))  # resumes from step 2's checkpoint
    rows = [read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("straight", "killed")]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    multipliers = [r["reward/e_count/multiplier"] for r in rows[0]]
    assert multipliers[0] == 0.0 and max(multipliers) > 0.0  # starts at initial_multiplier, then moves
    # each step's multiplier is the previous one moved by the dual step on the previous batch's gap
    for before, after in zip(rows[0], rows[0][1:], strict=False):
        expected = max(
            0.0, before["reward/e_count/multiplier"] + 0.5 * before["reward/e_count/constraint_gap"]
        )
        assert after["reward/e_count/multiplier"] == pytest.approx(expected, abs=1e-9)
    for a, b in zip(*rows, strict=True):
        for key in ("reward/e_count/multiplier", "reward/e_count/constraint_gap", "objective/score"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert "reward/a_count/multiplier" not in rows[0][0]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert "`reward/<component>/multiplier`" in doc and "`reward/<component>/constraint_gap`" in doc


# ---------------------------------------------------------------------------------------------------------
# One update per rollout: the update's forward pass gives the rollout's log-probabilities


def _one_update_config(out: Path, **ppo_changes) -> ppo.Config:
    cfg = tiny_config(out, steps=3, components=[CONTAINS_E, CONTAINS_A])
    cfg.ppo.ppo_epochs, cfg.ppo.minibatch_size, cfg.ppo.micro_batch_size = 1, 4, 4
    cfg.logging.checkpoint_every = 3
    for key, value in ppo_changes.items():
        setattr(cfg.ppo, key, value)
    return cfg


@pytest.mark.parametrize(
    "changes",
    [{"advantage": "grpo", "samples_per_prompt": 2}, {"advantage": "gae", "value_model": "policy_head"}],
    ids=["grpo", "gae-policy-head"],
)
def test_one_pass_per_update_equals_the_separate_rollout_pass(tmp_path, monkeypatch, changes):
    from safetensors.torch import load_file

    from rewardmix.stages.ppo import loop, rollout

    assert loop.single_pass(_one_update_config(tmp_path / "x", **changes).ppo, 1)
    calls = {"policy": 0}
    original = rollout.policy_logits_logprobs

    def counted(model, *args, **kwargs):
        calls["policy"] += 1
        return original(model, *args, **kwargs)

    monkeypatch.setattr(rollout, "policy_logits_logprobs", counted)  # the rollout's passes ...
    monkeypatch.setattr(loop, "policy_logits_logprobs", counted)  # ... and the update's
    ppo.run(_one_update_config(tmp_path / "one", **changes))
    one_pass_calls = calls["policy"]
    with monkeypatch.context() as m:
        m.setattr(loop, "single_pass", lambda p, n: False)
        calls["policy"] = 0
        ppo.run(_one_update_config(tmp_path / "two", **changes))
    # per step: reference + update (2) instead of policy + reference + update (3)
    assert (one_pass_calls, calls["policy"]) == (2 * 3, 3 * 3)
    final = "checkpoints/step-00000003/trainable.safetensors"
    a, b = load_file(str(tmp_path / "one" / final)), load_file(str(tmp_path / "two" / final))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    rows = [read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("one", "two")]
    keys = ["objective/score", "objective/kl", "loss/policy", "policy/entropy", "policy/approx_kl"]
    if changes["advantage"] == "gae":
        keys += ["loss/value", "value/mean"]
    for x, y in zip(*rows, strict=True):
        for key in keys:
            assert x[key] == pytest.approx(y[key], abs=1e-5), key
    assert rows[0][1]["objective/kl"] != 0.0  # the policy did move


def test_one_pass_is_taken_only_where_it_is_exact():
    cfg = _one_update_config(Path("unused"), advantage="grpo", samples_per_prompt=2)
    from rewardmix.stages.ppo.loop import single_pass

    assert single_pass(cfg.ppo, 1) and not single_pass(cfg.ppo, 2)
    for changes in ({"ppo_epochs": 2}, {"minibatch_size": 2}, {"micro_batch_size": 2}):
        other = _one_update_config(Path("unused"), advantage="grpo", samples_per_prompt=2, **changes)
        assert not single_pass(other.ppo, 1), changes
    # a value role needs its own forward pass: not held beside the policy's
    assert not single_pass(_one_update_config(Path("unused"), advantage="gae").ppo, 1)


def test_the_readme_grpo_command_trains(tmp_path):
    import shlex

    from rewardmix import cli

    repo = Path(__file__).resolve().parents[2]
    line = next(x for x in (repo / "README.md").read_text().splitlines() if "output_dir=runs/grpo-smoke" in x)
    argv = shlex.split(line.split("   #")[0])[1:]  # drop ".venv/bin/rewardmix"
    argv = [a if not a.startswith("output_dir=") else f"output_dir={tmp_path / 'grpo'}" for a in argv]
    argv[1] = str(repo / argv[1])
    assert cli.main(argv) in (0, None)
    rows = read_jsonl(tmp_path / "grpo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert not (tmp_path / "grpo" / "value").exists()  # critic-free: no value model
    # GDPO: each component z-scored within its prompt's 4 answers, so its batch mean is 0
    assert all(
        abs(r["reward/five/normalized"]) < 1e-5 and abs(r["reward/short/normalized"]) < 1e-5 for r in rows
    )


def test_a_monitor_component_is_logged_but_leaves_training_unchanged(tmp_path):
    from safetensors.torch import load_file

    plain = tiny_config(tmp_path / "plain", steps=2, components=[CONTAINS_E])
    watched = tiny_config(
        tmp_path / "watched", steps=2, components=[CONTAINS_E, {**CONTAINS_A, "monitor": True}]
    )
    for cfg in (plain, watched):
        cfg.logging.checkpoint_every = 2
        ppo.run(cfg)
    final = "checkpoints/step-00000002/trainable.safetensors"
    a, b = load_file(str(tmp_path / "plain" / final)), load_file(str(tmp_path / "watched" / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same updates, bit for bit
    rows = [read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("plain", "watched")]
    assert all("reward/a_count/raw" in r for r in rows[1]) and "reward/a_count/raw" not in rows[0][0]
    assert [r["objective/score"] for r in rows[0]] == [r["objective/score"] for r in rows[1]]
