"""``ppo.value_model: policy_head`` on the tiny model: a value head on the policy's own hidden states.

What must hold: at initialization it agrees with the value role (both read the base's hidden states through an
identity LoRA, with the same head), it trains, it saves one forward pass per rollout chunk, it resumes exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardmix.data.prompts import load_prompts
from rewardmix.rundir import read_jsonl
from rewardmix.stages import ppo
from rewardmix.stages.ppo import roles
from rewardmix.stages.ppo.rollout import generate_responses, rollout_forward
from tests.stages.test_ppo import rule_reward, spy, tiny_config  # noqa: F401 (spy: a fixture)


def head_config(out: Path, *, steps: int = 2, value_model: str = "policy_head") -> ppo.Config:
    cfg = tiny_config(out, steps=steps)
    cfg.ppo.value_model = value_model
    return cfg


def load(cfg: ppo.Config, value_model: str) -> ppo.Models:
    return roles.load_models(cfg.model, cfg.lora, torch.device("cpu"), seed=cfg.seed, value_model=value_model)


def test_at_initialization_the_head_on_the_policy_agrees_with_the_value_role(tmp_path):
    """Identity LoRA roles: both read the base's hidden states; the heads are drawn alike (seed + 1)."""
    cfg = tiny_config(tmp_path / "x")
    role, head = load(cfg, "role"), load(cfg, "policy_head")
    assert torch.equal(role.value.head.weight, head.policy_value_head.head.weight)
    assert list(head.shared.peft_config) == ["policy"] and head.value is None
    pool = load_prompts(cfg.data, role.tokenizer, out=None)[:4]
    ids, mask, response_mask, _ = generate_responses(role, pool, cfg.generation, seeds=[1, 2, 3, 4])
    outs = [
        rollout_forward(m, ids, mask, response_mask, temperature=1.0, batch_size=16) for m in (role, head)
    ]
    for a, b in zip(outs[0][:2], outs[1][:2], strict=True):
        assert torch.equal(a, b)  # log-probabilities: the same policy pass
    keep = response_mask
    torch.testing.assert_close(outs[1][2][keep], outs[0][2][keep], atol=1e-6, rtol=0)  # values

    # the first minibatch's losses: one minibatch, one epoch, so the logged losses are exactly those
    rows = []
    for value_model in ("role", "policy_head"):
        c = head_config(tmp_path / value_model, steps=1, value_model=value_model)
        c.ppo.ppo_epochs, c.ppo.minibatch_size = 1, 4
        rows.append(ppo.run(c).metrics)
    for key in ("loss/policy", "loss/value", "value/mean", "value/explained_variance", "objective/score"):
        assert rows[1][key] == pytest.approx(rows[0][key], abs=1e-6, rel=0), key


def test_a_policy_head_run_trains_the_head_and_the_policy(tmp_path, spy):  # noqa: F811 (the fixture)
    result = ppo.run(head_config(tmp_path / "run", steps=3))
    models, before = spy["models"], spy["before"]
    assert models.value is None and list(models.shared.peft_config) == ["policy"]
    state = roles.named_trainable(models)
    assert {"policy_value_head.weight", "policy_value_head.bias"} <= set(state)
    assert not any(".value." in k or k.startswith("value_head.") for k in state)
    # the head and the policy's LoRA moved: the value loss reaches both (a shared trunk)
    fresh = load(tiny_config(tmp_path / "x"), "policy_head")
    assert not torch.equal(fresh.policy_value_head.head.weight, models.policy_value_head.head.weight)
    now = {f"shared.{k}": v for k, v in models.shared.named_parameters()}
    assert any(".policy." in k and not torch.equal(now[k], before[k]) for k in before if k in now)
    rows = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert len({r["value/mean"] for r in rows}) == 3 and all(r["loss/value"] > 0 for r in rows)
    assert (result.value_dir / "head.safetensors").is_file()
    assert not (result.value_dir / "adapter_model.safetensors").exists()
    meta = json.loads((result.value_dir / "rewardmix_head.json").read_text())
    assert meta["format"] == "rewardmix.policy_value_head" and "policy" in meta["reads"]
    saved = load_file(str(result.value_dir / "head.safetensors"))
    assert torch.equal(saved["weight"], models.policy_value_head.head.weight.detach())


@pytest.mark.parametrize(("value_model", "per_chunk"), [("role", 3), ("policy_head", 2)])
def test_rollout_forward_passes_per_chunk(tmp_path, value_model, per_chunk):
    cfg = tiny_config(tmp_path / "x")
    models = load(cfg, value_model)
    pool = load_prompts(cfg.data, models.tokenizer, out=None)[:4]
    ids, mask, response_mask, _ = generate_responses(models, pool, cfg.generation, seeds=[1, 2, 3, 4])
    calls = []
    body = models.shared.get_base_model().model  # the transformer every role runs (LlamaModel)
    handle = body.register_forward_hook(lambda *_: calls.append(1))
    try:
        rollout_forward(models, ids, mask, response_mask, temperature=1.0, batch_size=2)  # two chunks
    finally:
        handle.remove()
    assert len(calls) == 2 * per_chunk


def test_resume_of_a_policy_head_run_equals_the_uninterrupted_run(tmp_path):
    def config(out: Path) -> ppo.Config:
        cfg = head_config(out, steps=4)
        cfg.logging.checkpoint_every = 2
        return cfg

    ppo.run(config(tmp_path / "straight"))

    def kill(step: int, row: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ppo.run(config(tmp_path / "killed"), on_step=kill)
    ppo.run(config(tmp_path / "killed"))  # resumes from step 2, redoes 3, does 4
    final = "checkpoints/step-00000004/trainable.safetensors"
    straight, resumed = (
        load_file(str(tmp_path / "straight" / final)),
        load_file(str(tmp_path / "killed" / final)),
    )
    assert straight.keys() == resumed.keys() and "policy_value_head.weight" in straight
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0)
    rows = [read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("straight", "killed")]
    for a, b in zip(*rows, strict=True):
        for key in ("objective/score", "loss/value", "value/mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_policy_head_needs_gae(advantage):
    with pytest.raises(ValueError, match="ppo.value_model"):
        ppo.Config(
            ppo=ppo.PPOConfig(
                batch_size=4, samples_per_prompt=2, advantage=advantage, value_model="policy_head"
            ),
            reward=rule_reward(),
        )
