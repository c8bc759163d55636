"""The vLLM rollout backend without vLLM: import-free CPU path, a clear config error, merged weights, and the
adapter driven by a fake ``vllm`` module (weights synced every update, outputs shaped like the HF path).

vLLM itself needs a CUDA GPU and its own environment; none of these tests import the real package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from rewardmix.config import ConfigError, from_dict, load_config
from rewardmix.data.prompts import load_prompts
from rewardmix.models import vllm_rollout
from rewardmix.models.lora import LoraSettings, adapters_disabled, add_adapters, set_active_role
from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer
from rewardmix.models.vllm_rollout import VllmRollout, merged_policy_weights
from rewardmix.stages import ppo
from rewardmix.stages.ppo import roles
from rewardmix.stages.ppo.rollout import generate_responses, stop_token_ids
from tests.stages.test_ppo import CONTAINS_E, rule_reward

# peft 0.21 reads a transformers attribute deprecated in 5.x; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------
# A fake vllm: records what the adapter asks of it


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeEngineModel:
    """Stands for the engine's model: ``load_weights`` records a copy of every call's tensors."""

    def __init__(self) -> None:
        self.loads: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights: Any) -> None:
        self.loads.append({name: tensor.detach().clone() for name, tensor in weights})


class FakeLLM:
    """Generates ``seed % (max_tokens + 1)`` tokens ``7, 8, ...``; shorter responses end on a stop token."""

    instances: list[FakeLLM] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.model = FakeEngineModel()
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
            )
        )
        self.calls: list[tuple[list[dict[str, Any]], list[FakeSamplingParams]]] = []
        self.prefix_resets = 0
        FakeLLM.instances.append(self)

    def reset_prefix_cache(self) -> None:
        self.prefix_resets += 1

    def generate(
        self, prompts: list[dict[str, Any]], params: list[FakeSamplingParams], use_tqdm: bool
    ) -> list:
        assert use_tqdm is False
        self.calls.append((prompts, params))
        outputs = []
        for p in params:
            k = p.kwargs["seed"] % (p.kwargs["max_tokens"] + 1)
            ids = [7 + j for j in range(k)]
            if k < p.kwargs["max_tokens"]:
                # vLLM keeps the stop token in token_ids; every third response here leaves it out (stop_reason
                # names it), which the adapter must repair.
                stop = p.kwargs["stop_token_ids"][0]
                if p.kwargs["seed"] % 3:
                    ids.append(stop)
                completion = SimpleNamespace(token_ids=ids, finish_reason="stop", stop_reason=stop)
            else:
                completion = SimpleNamespace(token_ids=ids, finish_reason="length", stop_reason=None)
            outputs.append(SimpleNamespace(outputs=[completion]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    module = ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vllm_rollout, "vllm_available", lambda: True)
    FakeLLM.instances = []
    return FakeLLM


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved as a folder (vLLM loads a base from a folder; the PPO stage then loads it too)."""
    tokenizer = build_tiny_tokenizer()
    folder = tmp_path_factory.mktemp("tiny_base")
    build_tiny_causal_lm(tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _vllm_config(folder: Path, out: Path, **ppo_overrides: Any) -> ppo.Config:
    return from_dict(
        ppo.Config,
        {
            "output_dir": str(out),
            "cpu": True,
            "model": {"name": str(folder)},
            "generation": {"backend": "vllm", "max_new_tokens": 6, "batch_size": 4},
            "ppo": {"steps": 2, "batch_size": 4, "minibatch_size": 2, "micro_batch_size": 2, "ppo_epochs": 1}
            | ppo_overrides,
            "logging": {"sample_every": 0, "num_samples": 0},
            "reward": {"components": [CONTAINS_E]},
        },
    )


def _with_engine(cfg: ppo.Config, models: roles.Models) -> roles.Models:
    """The stage's ``with_rollout_engine`` step for ``cfg``."""
    return roles.with_rollout_engine(
        models, cfg.model, cfg.generation, seed=cfg.seed, max_prompt_tokens=cfg.data.max_prompt_tokens
    )


# ---------------------------------------------------------------------------------------------------------
# The CPU path never needs vllm; asking for it without vllm is a clear config error


class _LoudLoader(importlib.abc.Loader):
    """Stands for an installed vLLM: findable, but executing it (an import) is recorded and fails."""

    def __init__(self) -> None:
        self.imported = False

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        self.imported = True
        raise RuntimeError("vllm was imported")


class _VllmFinder(importlib.abc.MetaPathFinder):
    def __init__(self, loader: _LoudLoader) -> None:
        self.loader = loader

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec("vllm", self.loader) if name == "vllm" else None


def test_the_hf_path_never_imports_vllm_even_when_it_is_installed(monkeypatch):
    loader = _LoudLoader()
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_VllmFinder(loader), *sys.meta_path])
    assert vllm_rollout.vllm_available()  # findable: the config check would accept backend vllm
    cfg = ppo.Config(reward=rule_reward())
    cfg.generation.max_new_tokens = 3
    models = roles.load_models(cfg.model, cfg.lora, torch.device("cpu"), seed=cfg.seed)
    assert _with_engine(cfg, models) is models
    prompts = load_prompts(cfg.data, models.tokenizer)[:2]
    _, _, response_mask, _ = generate_responses(models, prompts, cfg.generation, seeds=[1, 2])
    assert response_mask.shape[0] == 2
    assert not loader.imported and "vllm" not in sys.modules


def test_importing_the_adapter_imports_neither_vllm_nor_transformers():
    script = (
        "import sys; import rewardmix.models.vllm_rollout; "
        "print(sorted(m for m in ('vllm', 'transformers', 'peft') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_backend_vllm_without_vllm_is_a_config_error_naming_file_line_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_rollout, "vllm_available", lambda: False)
    path = tmp_path / "ppo.yaml"
    path.write_text("model:\n  name: offline:smollm2\ngeneration:\n  backend: vllm\n")
    with pytest.raises(ConfigError) as info:
        load_config(ppo.Config, path)
    message = str(info.value)
    assert str(path) in message and "generation" in message
    assert "vllm package is not installed" in message
    assert "rewardmix[vllm]" in message and "backend: hf" in message
    # The default backend needs nothing.
    assert ppo.GenerationConfig().backend == "hf"


def test_backend_vllm_refuses_the_in_memory_tiny_model(fake_vllm):
    with pytest.raises(ConfigError, match="tiny is built in memory"):
        from_dict(
            ppo.Config,
            {
                "model": {"name": "tiny"},
                "generation": {"backend": "vllm"},
                "reward": {"components": [CONTAINS_E]},
            },
        )


# ---------------------------------------------------------------------------------------------------------
# Merged weights: what the engine receives


def test_merged_weights_reproduce_the_policy_and_leave_the_base_untouched():
    tokenizer = build_tiny_tokenizer()
    base = build_tiny_causal_lm(tokenizer, seed=0)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = add_adapters(base, ["policy", "value"], LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking policy role (B != 0) and a different value role
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    ids = torch.tensor([[5, 9, 30, 41, 7, 12]])
    set_active_role(peft_model, "policy")
    with torch.no_grad():
        policy_logits = peft_model(input_ids=ids).logits
        with adapters_disabled(peft_model):
            base_logits = peft_model(input_ids=ids).logits
    weights = dict(merged_policy_weights(peft_model, "policy"))
    assert set(weights) == set(original)  # the base model's own names, adapters not included
    fresh = build_tiny_causal_lm(tokenizer, seed=0)
    fresh.load_state_dict(weights, strict=True)
    with torch.no_grad():
        merged_logits = fresh(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, policy_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # the role really changes the model
    # The reference (base with adapters off) is exactly the original model: nothing was merged in place.
    with torch.no_grad():
        reference = build_tiny_causal_lm(tokenizer, seed=0)(input_ids=ids).logits
    assert torch.equal(base_logits, reference)
    with pytest.raises(KeyError, match="no LoRA role"):
        next(merged_policy_weights(peft_model, "nope"))


# ---------------------------------------------------------------------------------------------------------
# The adapter in the stage, with the fake vllm


def test_rollouts_come_from_the_engine_shaped_like_the_hf_path(fake_vllm, tiny_folder, tmp_path):
    cfg = _vllm_config(tiny_folder, tmp_path / "run")
    models = _with_engine(cfg, roles.load_models(cfg.model, cfg.lora, torch.device("cpu"), seed=cfg.seed))
    engine = models.rollout
    assert isinstance(engine, VllmRollout) and len(fake_vllm.instances) == 1
    llm = fake_vllm.instances[0]
    assert llm.kwargs["model"] == str(tiny_folder) and llm.kwargs["gpu_memory_utilization"] == 0.3
    assert len(llm.model.loads) == 1 and llm.prefix_resets == 1  # the initial policy, synced at once
    prompts = load_prompts(cfg.data, models.tokenizer)[:6]
    seeds = [
        6,
        3,
        4,
        5,
        12,
        13,
    ]  # 6 and 13: full length (no stop); the others stop (3 and 12 without the token)
    query_responses, attention_mask, response_mask, has_eos = generate_responses(
        models, prompts, cfg.generation, seeds=seeds
    )
    # What the engine was asked: one request per prompt, the prompt's own ids, sampling as configured.
    requests, params = llm.calls[-1]
    assert [r["prompt_token_ids"] for r in requests] == [p.input_ids for p in prompts]
    stops = stop_token_ids(models.tokenizer)
    for p, seed in zip(params, seeds, strict=True):
        assert p.kwargs | {"seed": seed} == {
            "n": 1, "temperature": 1.0, "top_k": -1, "top_p": 1.0, "repetition_penalty": 1.0, "max_tokens": 6,
            "stop_token_ids": stops, "seed": seed, "detokenize": False,
        }  # fmt: skip
    # The HF path's structure: prompts left-padded to P, responses right-padded to R = the longest.
    B, R = len(prompts), 6
    P = max(len(p.input_ids) for p in prompts)
    assert query_responses.shape == (B, P + R) and attention_mask.shape == (B, P + R)
    assert response_mask.shape == (B, R) and response_mask.dtype == torch.bool and has_eos.dtype == torch.bool
    lengths = [s % 7 for s in seeds]
    assert has_eos.tolist() == [n < 6 for n in lengths]
    assert response_mask.sum(dim=1).tolist() == [n + 1 if n < 6 else 6 for n in lengths]  # stop token kept
    for i, n in enumerate(lengths):
        expected = [7 + j for j in range(n)] + ([stops[0]] if n < 6 else [])
        assert query_responses[i, P : P + len(expected)].tolist() == expected
        assert query_responses[i, :P][attention_mask[i, :P].bool()].tolist() == prompts[i].input_ids
    # The same prompts through the HF path give tensors of the same layout.
    hf = generate_responses(models._replace(rollout=None), prompts, cfg.generation, seeds=seeds)
    assert hf[0].shape[0] == B and hf[0].shape[1] - hf[2].shape[1] == P
    assert [t.dtype for t in hf] == [
        query_responses.dtype,
        attention_mask.dtype,
        response_mask.dtype,
        has_eos.dtype,
    ]


def test_ppo_syncs_the_engine_after_every_update_with_the_trained_policy(fake_vllm, tiny_folder, tmp_path):
    from peft import PeftModel

    from rewardmix.models.loading import load_causal_lm

    cfg = _vllm_config(tiny_folder, tmp_path / "run", steps=3)
    result = ppo.run(cfg)
    llm = fake_vllm.instances[0]
    assert len(llm.model.loads) == 1 + 3  # the initial policy, then one sync after each of the 3 updates
    assert llm.prefix_resets == 4
    assert len(llm.calls) == 3  # every rollout batch came from the engine
    first, last = llm.model.loads[0], llm.model.loads[-1]
    changed = [n for n in first if not torch.equal(first[n], last[n])]
    assert changed and all(n.endswith(".weight") for n in changed)  # the updates reached the engine
    # The last sync holds the final policy: the saved adapter merged into the base, tensor for tensor.
    final = PeftModel.from_pretrained(load_causal_lm(tiny_folder), result.model_dir, adapter_name="policy")
    expected = final.merge_and_unload().state_dict()
    assert set(last) == set(expected)
    for name, tensor in last.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)
