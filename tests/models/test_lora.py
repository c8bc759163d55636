"""Tests for rewardmix.models.lora: roles on one base, what training changes and what it must not, merging."""

from __future__ import annotations

import copy

import pytest
import torch

from rewardmix.models.heads import ScalarHeadModel
from rewardmix.models.loading import load_causal_lm
from rewardmix.models.lora import (
    LoraSettings,
    active_role,
    adapters_disabled,
    add_adapters,
    load_adapter,
    merge_and_save,
    role_names,
    save_adapter,
    set_active_role,
    trainable_parameters,
)
from rewardmix.models.tiny import build_tiny_causal_lm

# peft 0.21 reads a transformers attribute deprecated in 5.x; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

SETTINGS = LoraSettings(r=4, alpha=8)
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _train(model, params, steps=3, lr=0.5):
    """A few SGD steps on a toy loss (next-token CE or mean score) through the active role."""
    opt = torch.optim.SGD(params, lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        out = model(input_ids=IDS, attention_mask=MASK)
        if isinstance(out, torch.Tensor):  # scalar head: push scores up
            loss = -out.mean()
        else:
            logits = out.logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), IDS[:, 1:].reshape(-1)
            )
        loss.backward()
        opt.step()
    model.eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def _names(model, role):
    ids = {id(p) for p in trainable_parameters(model, role)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _changed(before, after, names):
    return {n for n in names if not torch.equal(before[n], after[n])}


@pytest.fixture
def two_roles(tiny_tokenizer):
    base = build_tiny_causal_lm(tiny_tokenizer, seed=4)
    pristine = copy.deepcopy(base)
    return add_adapters(base, ["policy", "value"], SETTINGS), pristine


def test_add_adapters_freezes_base_and_separates_roles(two_roles):
    model, _ = two_roles
    assert role_names(model) == ["policy", "value"] and model.active_adapter == "policy"
    policy, value = _names(model, "policy"), _names(model, "value")
    assert policy and value and not policy & value
    assert all(".policy." in n for n in policy) and all(".value." in n for n in value)
    assert _names(model, None) == policy  # None -> the active role
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == policy | value  # base frozen, both roles trainable
    # all-linear: every attention/MLP projection of both layers, not the LM head
    assert sum(".lora_A.policy." in n for n in policy) == 2 * 7
    assert not any("lm_head" in n for n in policy)


def test_training_one_role_changes_only_that_role(two_roles):
    model, _ = two_roles
    before = _snapshot(model)
    set_active_role(model, "value")
    _train(model, trainable_parameters(model, "value"))
    after = _snapshot(model)
    value = _names(model, "value")
    changed = _changed(before, after, before)
    assert changed and changed <= value  # something trained, and only value-adapter weights
    assert {n for n in value if ".lora_B." in n} <= changed  # every B moved off zero
    assert {n for n in value if ".lora_A." in n} <= changed  # A moves from the second step on


def test_scalar_head_bound_to_role_trains_its_adapter_and_head_only(two_roles):
    model, _ = two_roles
    value_model = ScalarHeadModel(model, role="value", seed=0)
    head_before = value_model.head.weight.detach().clone()
    before = _snapshot(model)
    params = trainable_parameters(value_model, "value")
    assert {id(p) for p in value_model.head.parameters()} <= {id(p) for p in params}
    assert not {id(p) for p in value_model.head.parameters()} & {
        id(p) for p in trainable_parameters(value_model, "policy")
    }
    _train(value_model, params)
    changed = _changed(before, _snapshot(model), before)
    assert changed and changed <= _names(model, "value")
    assert not torch.equal(value_model.head.weight, head_before)
    assert model.active_adapter == "policy"  # the bound forward restored the active role


def test_switching_roles_keeps_trainable_flags(two_roles):
    model, _ = two_roles
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    set_active_role(model, "value")
    assert model.active_adapter == "value"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with pytest.raises(RuntimeError), active_role(model, "policy"):
        assert model.active_adapter == "policy"
        raise RuntimeError("boom")
    assert model.active_adapter == "value"  # restored even on error
    with pytest.raises(KeyError):
        set_active_role(model, "nope")


def test_adapters_disabled_equals_pristine_base_exactly(two_roles):
    model, pristine = two_roles
    _train(model, trainable_parameters(model, "policy"))
    expected = _logits(pristine)
    assert not torch.allclose(_logits(model), expected)  # the trained adapter does change the output
    with adapters_disabled(model):
        assert torch.equal(_logits(model), expected)
    assert not torch.allclose(_logits(model), expected)  # and it is back on afterwards


def test_adapters_disabled_keeps_every_roles_trainable_flags(two_roles):
    # peft's enable_adapter_layers freezes every adapter but the active one; PPO trains policy AND value.
    model, _ = two_roles
    for p in trainable_parameters(model, "value"):
        p.requires_grad_(True)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert any(flags[n] for n in _names(model, "value"))
    with adapters_disabled(model):
        pass
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_merge_and_save_matches_adapter_model_and_leaves_live_model_alone(
    two_roles, tiny_tokenizer, tmp_path
):
    model, _ = two_roles
    _train(model, trainable_parameters(model, "policy"))
    set_active_role(model, "value")
    _train(model, trainable_parameters(model, "value"))
    before = _snapshot(model)
    out = merge_and_save(model, "policy", tmp_path / "merged", tokenizer=tiny_tokenizer)
    assert _snapshot(model).keys() == before.keys()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # nothing merged in place
    assert model.active_adapter == "value" and role_names(model) == ["policy", "value"]
    merged = load_causal_lm(out)
    with active_role(model, "policy"):
        torch.testing.assert_close(_logits(merged), _logits(model), rtol=0, atol=1e-5)
    with active_role(model, "value"):
        assert not torch.allclose(_logits(merged), _logits(model), atol=1e-3)  # it is the policy role's merge
    assert all(p.name.endswith((".safetensors", ".json")) for p in out.iterdir())


def test_merge_and_save_scalar_head_model(two_roles, tmp_path):
    model, _ = two_roles
    rm = ScalarHeadModel(model, role="value", seed=1)
    _train(rm, trainable_parameters(rm, "value"))
    out = merge_and_save(rm, "value", tmp_path / "rm")
    loaded = ScalarHeadModel.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS, MASK), rm(IDS, MASK), rtol=0, atol=1e-5)


def test_save_adapter_and_load_into_a_fresh_base(two_roles, tiny_tokenizer, tmp_path):
    model, _ = two_roles
    rm = ScalarHeadModel(model, role="value", seed=1)
    _train(rm, trainable_parameters(rm, "value"))
    out = save_adapter(rm, "value", tmp_path / "adapter")
    names = sorted(p.name for p in out.iterdir())
    assert "adapter_model.safetensors" in names and "head.safetensors" in names
    assert not any(p.is_dir() for p in out.iterdir())  # no peft sub-folder
    assert not any(n.endswith((".bin", ".pt")) for n in names)

    fresh = add_adapters(build_tiny_causal_lm(tiny_tokenizer, seed=4), ["policy"], SETTINGS)
    fresh_rm = ScalarHeadModel(fresh, role="rm", seed=99)
    load_adapter(fresh_rm, "rm", out)
    with torch.no_grad():
        assert torch.equal(fresh_rm(IDS, MASK), rm(IDS, MASK))
    assert all(not p.requires_grad for p in trainable_parameters(fresh, "rm"))  # loaded frozen by default


def test_role_name_and_bias_validation(tiny_tokenizer):
    base = build_tiny_causal_lm(tiny_tokenizer)
    with pytest.raises(ValueError, match="duplicate"):
        add_adapters(base, ["policy", "policy"], SETTINGS)
    with pytest.raises(ValueError, match="invalid role"):
        add_adapters(base, ["my.role"], SETTINGS)
    with pytest.raises(ValueError, match="bias"):
        add_adapters(base, ["a", "b"], LoraSettings(bias="all"))
    with pytest.raises(TypeError, match="backbone"):
        add_adapters(ScalarHeadModel(base), ["rm"], SETTINGS)


def test_add_roles_to_existing_model_keeps_active_role(two_roles):
    model, _ = two_roles
    set_active_role(model, "value")
    same = add_adapters(model, ["rm_label"], SETTINGS)
    assert same is model and role_names(model) == ["policy", "value", "rm_label"]
    assert model.active_adapter == "value"
    assert all(p.requires_grad for p in trainable_parameters(model, "rm_label"))
    with pytest.raises(ValueError, match="duplicate"):
        add_adapters(model, ["value"], SETTINGS)


def test_trainable_parameters_without_adapters_is_full_finetuning(tiny_tokenizer):
    model = build_tiny_causal_lm(tiny_tokenizer)
    assert len(trainable_parameters(model)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="no LoRA roles"):
        trainable_parameters(model, "policy")


def test_load_adapter_refuses_an_adapter_of_a_differently_wrapped_base(tiny_tokenizer, tmp_path):
    # Trained on the bare body (LlamaModel): module names lack the causal LM's "model." level.
    body_rm = ScalarHeadModel(
        add_adapters(build_tiny_causal_lm(tiny_tokenizer, seed=4).model, ["rm"], SETTINGS), role="rm"
    )
    out = save_adapter(body_rm, "rm", tmp_path / "adapter")
    shared = add_adapters(build_tiny_causal_lm(tiny_tokenizer, seed=4), ["policy"], SETTINGS)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter(ScalarHeadModel(shared, role="rm"), "rm", out)
    assert role_names(shared) == ["policy"]  # the half-loaded role was removed again
