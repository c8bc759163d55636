"""The PPO stage and the sweep on a tiny in-memory Llama (fp32, CPU): invariants and outcomes, not "it ran".

Every run here uses ``model.name: tiny`` (a random 2-layer Llama, hidden 32, with the tiny byte-level BPE
tokenizer), so responses are random byte soup; the tests check what must hold whatever the text is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardmix.config import ConfigError, from_dict, load_config, load_yaml, to_dict
from rewardmix.data.chat import Message, tokenize_prompt
from rewardmix.data.prompts import PromptExample, load_prompts
from rewardmix.data.readers import DataError
from rewardmix.models.dropout import disable_dropout
from rewardmix.models.heads import ScalarHeadModel
from rewardmix.models.lora import LoraSettings, add_adapters, save_adapter
from rewardmix.models.lora import trainable_parameters as lora_trainable_parameters
from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer
from rewardmix.rundir import RunDirError, read_jsonl
from rewardmix.scoring import (
    SCORER_TYPES,
    CompositeConfig,
    NonFiniteScoreError,
    ScoringBatch,
    register_scorer_type,
)
from rewardmix.stages import ppo, sweep
from rewardmix.stages.ppo import roles
from rewardmix.stages.ppo.loop import estimate_advantages
from rewardmix.stages.ppo.metrics import label_metrics, make_label_monitor
from rewardmix.stages.ppo.rollout import final_scores

REPO = Path(__file__).resolve().parents[2]
PPO_CONFIGS = [
    "configs/ppo.yaml",
    "configs/ppo-rllr-mixed.yaml",
    "configs/ppo-crs.yaml",
    "configs/grpo-crs.yaml",
]


def reward(components: list[dict], combinator: str = "sum", **params: float) -> CompositeConfig:
    return from_dict(
        CompositeConfig, {"components": components, "combinator": combinator, "combinator_params": params}
    )


CONTAINS_E = {"name": "e_count", "type": "contains", "contains": {"substring": "e", "mode": "count"}}


def rule_reward() -> CompositeConfig:
    """A one-rule reward (count of "e"): PPO has no default reward, so every config names one."""
    return reward([CONTAINS_E])


def tiny_config(out: Path, *, steps: int = 2, lora: bool = True, **reward_kwargs) -> ppo.Config:
    """A few seconds of PPO on the tiny model; nothing logged that a test does not ask for."""
    cfg = ppo.Config(output_dir=str(out), seed=0, cpu=True, reward=rule_reward())
    cfg.lora.enabled = lora
    cfg.lora.r, cfg.lora.alpha = 4, 8
    cfg.ppo.steps = steps
    cfg.ppo.batch_size = 4
    cfg.ppo.minibatch_size = 2
    cfg.ppo.micro_batch_size = 2
    cfg.ppo.ppo_epochs = 2
    cfg.ppo.learning_rate = 1e-3
    cfg.generation.max_new_tokens = 6
    cfg.logging.num_samples = 0
    cfg.logging.checkpoint_every = 1000
    cfg.reward = reward(**reward_kwargs) if reward_kwargs else reward([CONTAINS_E])
    return cfg


@pytest.fixture
def spy(monkeypatch):
    """Capture the models and the composite reward a run builds, and a copy of every weight before training."""
    seen: dict = {}
    original = roles.build_reward

    def build(cfg, models, device, **kwargs):
        result = original(cfg, models, device, **kwargs)  # reward-model roles are on the base from here on
        seen["models"], seen["reward"] = models, result
        seen["before"] = all_weights(models, result)
        return result

    monkeypatch.setattr(roles, "build_reward", build)
    return seen


def all_weights(models: ppo.Models, composite) -> dict[str, torch.Tensor]:
    """Every tensor of every role: shared base (+ LoRA roles), policy, value head, reward-model heads."""
    weights = {f"shared.{k}": v.detach().clone() for k, v in models.shared.named_parameters()}
    weights |= {f"policy.{k}": v.detach().clone() for k, v in models.policy.named_parameters()}
    if models.value is not None:
        weights |= {f"value_head.{k}": v.detach().clone() for k, v in models.value.head.named_parameters()}
    for name, scorer in composite.scorers.items():
        model = getattr(scorer, "model", None)
        if model is not None:
            weights |= {f"rm.{name}.head.{k}": v.detach().clone() for k, v in model.head.named_parameters()}
    return weights


def save_rm_adapter(folder: Path, seed: int) -> Path:
    """A reward model as a LoRA role + head trained on the tiny base (here: random, non-identity weights)."""
    tokenizer = build_tiny_tokenizer()
    base = build_tiny_causal_lm(tokenizer, seed=0)  # the base tiny_config's model is built from (seed 0)
    rm = ScalarHeadModel(add_adapters(base, ["rm"], LoraSettings(r=4, alpha=8)), role="rm", seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in rm.named_parameters():
            if "lora_B" in name:  # B = 0 would make the role the identity, indistinguishable from the base
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return save_adapter(rm, "rm", folder)


# ---------------------------------------------------------------------------------------------------------
# Invariants of a step


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_kl_is_exactly_zero_at_the_first_step(tmp_path, lora):
    cfg = tiny_config(tmp_path / "run", steps=2, lora=lora)
    result = ppo.run(cfg)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # Policy == reference before the first update (LoRA B = 0, or an untouched copy): bit-identical log-probs.
    assert rows[0]["objective/kl"] == 0.0
    assert rows[0]["objective/rlhf_reward"] == rows[0]["objective/score"]
    assert rows[1]["objective/kl"] != 0.0  # the first update moved the policy away from the reference
    assert result.global_step == 2 and [r["step"] for r in rows] == [1, 2]
    assert (result.value_dir / "adapter_model.safetensors").is_file()
    assert (result.value_dir / "head.safetensors").is_file()
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (result.model_dir / weights).is_file()


def test_gradients_reach_only_the_policy_and_value_roles(tmp_path, spy):
    cfg = tiny_config(
        tmp_path / "run",
        steps=1,
        components=[
            {"name": "rm_a", "type": "reward_model", "reward_model": {"path": str(save_rm_adapter(tmp_path / "a", 1)), "role": "rm_a"}},
            {"name": "rm_b", "type": "reward_model", "reward_model": {"path": str(save_rm_adapter(tmp_path / "b", 2)), "role": "rm_b"}},
            CONTAINS_E,
        ],
    )  # fmt: skip
    ppo.run(cfg)
    models, composite, before = spy["models"], spy["reward"], spy["before"]
    after = all_weights(models, composite)
    assert set(after) == set(before)
    trained = {id(p) for p in models.params}
    named = {f"shared.{k}": p for k, p in models.shared.named_parameters()}
    named |= {f"policy.{k}": p for k, p in models.policy.named_parameters()}
    named |= {f"value_head.{k}": p for k, p in models.value.head.named_parameters()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Every changed tensor is a trained one (policy or value role, value head) ...
    assert all(k in named and id(named[k]) in trained for k in changed), sorted(changed - set(named))[:5]
    # ... the base, both reward-model roles and their heads are bit-identical ...
    frozen = [k for k in before if ".rm_a." in k or ".rm_b." in k or k.startswith("rm.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any("base_layer" in k for k in before) and not any("base_layer" in k for k in changed)
    # ... and each trained group did move.
    for role in (".policy.", ".value."):
        assert any(role in k for k in changed), role
    assert any(k.startswith("value_head.") for k in changed)
    # The two reward-model roles score the same responses differently (they are different models).
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert row["reward/rm_a/raw"] != row["reward/rm_b/raw"]
    assert all(math.isfinite(row[f"reward/{n}/raw"]) for n in ("rm_a", "rm_b", "e_count"))


FORMAT_A = {
    "name": "has_a",
    "type": "format",
    "format": {"pattern": "a", "match_score": 2.0, "miss_score": -1.0},
}
LENGTH = {
    "name": "length",
    "type": "length_penalty",
    "length_penalty": {"target": 3, "unit": "chars", "slope": 0.1},
}


def hand_components(text: str) -> list[float]:
    # contains count of "e"; format "a" -> 2 / -1; length penalty -0.1 * max(0, chars - 3)
    return [float(text.count("e")), 2.0 if "a" in text else -1.0, -0.1 * max(0, len(text) - 3)]


HAND_COMBINED = {
    "sum": lambda r: r[0] + r[1] + r[2],
    "weighted": lambda r: (1 * r[0] + 2 * r[1] + 3 * r[2]) / 6,  # weights 1, 2, 3 normalized by their sum
    "threshold": lambda r: min(r[0], 1.5) + r[1] + r[2],  # RLLR Eq. 4: min(r1, λ) + r2 (+ r3)
    "min": lambda r: min(r),
}


@pytest.mark.parametrize("combinator", sorted(HAND_COMBINED))
def test_the_optimized_score_equals_the_hand_computed_composite(tmp_path, combinator):
    components = [{**CONTAINS_E, "weight": 1.0}, {**FORMAT_A, "weight": 2.0}, {**LENGTH, "weight": 3.0}]
    params = {"threshold": 1.5} if combinator == "threshold" else {}
    cfg = tiny_config(tmp_path / "run", steps=1, components=components, combinator=combinator, **params)
    cfg.ppo.batch_size, cfg.generation.max_new_tokens = 8, 12
    cfg.logging.num_samples, cfg.logging.sample_every = 8, 1
    ppo.run(cfg)
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert len(samples) == 8
    for sample in samples:
        raw = hand_components(sample["completion"])
        for name, value in zip(("e_count", "has_a", "length"), raw, strict=True):
            assert sample[f"reward/{name}/raw"] == pytest.approx(value, abs=1e-6)
        assert sample["score"] == pytest.approx(HAND_COMBINED[combinator](raw), abs=1e-5)
        assert sample["reward/combined"] == sample["score"]  # no penalty and no clip configured
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert row["objective/score"] == pytest.approx(sum(s["score"] for s in samples) / 8, abs=1e-5)
    assert len({s["completion"] for s in samples}) > 1  # the batch is not degenerate


def test_gradient_accumulation_gives_the_same_update(tmp_path):
    """A minibatch of 4 in one pass or in four micro-batches of 1: the same weights after a step."""
    states = []
    for micro in (4, 1):
        cfg = tiny_config(tmp_path / f"micro{micro}", steps=1)
        cfg.ppo.minibatch_size, cfg.ppo.micro_batch_size = 4, micro
        ppo.run(cfg)
        states.append(
            load_file(str(tmp_path / f"micro{micro}/checkpoints/step-00000001/trainable.safetensors"))
        )
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], atol=1e-6, rtol=0)


def test_reference_normalization_is_calibrated_on_the_initial_policy(tmp_path):
    """``normalize: reference`` components get the mean/std of the SFT (= initial) policy's responses first."""
    length = {
        "name": "length",
        "type": "length_penalty",
        "length_penalty": {"target": 0, "unit": "chars", "slope": 1.0},
    }
    cfg = tiny_config(tmp_path / "run", steps=1, components=[{**length, "normalize": "reference"}])
    cfg.ppo.reference_samples = 8
    cfg.logging.num_samples, cfg.logging.sample_every = 4, 1
    ppo.run(cfg)
    extra = json.loads((tmp_path / "run/checkpoints/step-00000001/extra.json").read_text())
    stats = extra["reward"]["reference"]["length"]
    assert stats["count"] == 8 and stats["m2"] > 0
    std = math.sqrt(stats["m2"] / stats["count"])
    for sample in read_jsonl(tmp_path / "run/samples.jsonl"):
        assert sample["reward/length/raw"] == -len(sample["completion"])
        expected = (sample["reward/length/raw"] - stats["mean"]) / std  # z = (x - mu_ref) / sigma_ref
        assert sample["reward/length/normalized"] == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Resume


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    """State that must survive: weights, optimizer, schedule, adaptive KL, running reward statistics, RNG."""

    def config(out: Path) -> ppo.Config:
        cfg = tiny_config(out, steps=4, components=[{**CONTAINS_E, "normalize": "running"}])
        cfg.ppo.kl.kind, cfg.ppo.kl.target, cfg.ppo.kl.horizon = "adaptive", 0.01, 10
        cfg.logging.checkpoint_every = 2
        cfg.logging.num_samples = 2
        return cfg

    ppo.run(config(tmp_path / "straight"))

    def kill(step: int, row: dict) -> None:
        if step == 3:  # after step 3's update and log, before any checkpoint of it
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ppo.run(config(tmp_path / "killed"), on_step=kill)
    assert [r["step"] for r in read_jsonl(tmp_path / "killed/metrics.jsonl")] == [1, 2, 3]
    ppo.run(config(tmp_path / "killed"))  # resumes from step 2, redoes 3, does 4

    final = "checkpoints/step-00000004/trainable.safetensors"
    straight, resumed = (
        load_file(str(tmp_path / "straight" / final)),
        load_file(str(tmp_path / "killed" / final)),
    )
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0)
    rows = [read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("straight", "killed")]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4]  # the redone step is not logged twice
    for a, b in zip(*rows, strict=True):
        for key in ("objective/score", "objective/kl", "objective/kl_coef", "reward/e_count/running_mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert rows[0][-1]["objective/kl_coef"] != rows[0][0]["objective/kl_coef"]  # the controller did move


def test_resume_refuses_a_changed_config(tmp_path):
    # (the checkpoint's plan behind it, for a data file changed in place: tests/train/test_run.py)
    ppo.run(tiny_config(tmp_path / "run", steps=1))
    cfg = tiny_config(tmp_path / "run", steps=1)
    cfg.ppo.batch_size = 2
    with pytest.raises(RunDirError, match=r"another config \(ppo\.batch_size: 4 -> 2\)"):
        ppo.run(cfg)


def test_checkpoints_keep_the_layout_that_earlier_versions_wrote(tmp_path):
    """A run checkpointed by an earlier version resumes: the plan's keys and the trained tensors' names are fixed.

    The names below are those of a checkpoint written before the stage became a package (LoRA r 4 on every
    linear layer of the 2-layer tiny Llama: the policy and value roles, then the value head).
    """
    ppo.run(tiny_config(tmp_path / "run", steps=1))
    folder = tmp_path / "run/checkpoints/step-00000001"
    extra = json.loads((folder / "extra.json").read_text())
    assert sorted(extra) == ["kl", "plan", "reward"]
    assert sorted(extra["plan"]) == ["batch_size", "components", "prompts", "steps"]
    modules = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    modules += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    expected = {
        f"policy.base_model.model.model.layers.{layer}.{module}.lora_{ab}.{role}.weight"
        for layer in (0, 1)
        for module in modules
        for ab in "AB"
        for role in ("policy", "value")
    } | {"value_head.weight", "value_head.bias"}
    assert set(load_file(str(folder / "trainable.safetensors"))) == expected


# ---------------------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
def test_policy_learns_to_say_the_target_token_while_kl_stays_bounded(tmp_path):
    """Reward 1 when a response contains one target token: the known optimum says it every time.

    Start: the random tiny model is close to uniform over its 400 tokens (entropy ~ln 400), so a 16-token
    response contains the target with probability about 1 - (1 - 1/400)^16 = 4%; we require < 0.3 over the first
    5 steps. End: > 0.6 over the last 10 steps (15x the start; one step's mean over 32 responses has a standard
    deviation <= 0.09, a 10-step mean ~0.03). KL: for a reward in [0, 1] the KL-regularized optimum has
    KL <= 1 / beta = 20 nats; PPO may overshoot on the way, so the run must stay under 2 / beta = 40 and end
    (last 10 steps) under 1 / beta. (lr 5e-3 measured: ~0.75 and ~10 nats at the end; lr 1e-2 diverged to
    ~95 nats, which this test catches.)
    """
    tokenizer = build_tiny_tokenizer()
    target = tokenizer.encode(" five")[0]
    cfg = tiny_config(
        tmp_path / "run",
        steps=50,
        components=[{"name": "target", "type": "contains", "contains": {"token_id": target}}],
    )
    # On this random model RMSNorm bounds the final hidden state, so LoRA on the inner layers alone cannot raise
    # one logit by more than ~0.6; an adapter on the LM head can (real models need no such help).
    cfg.lora.r, cfg.lora.alpha = 8, 16
    cfg.lora.target_modules = ["q_proj", "v_proj", "up_proj", "down_proj", "lm_head"]
    cfg.ppo.batch_size, cfg.ppo.minibatch_size, cfg.ppo.micro_batch_size = 32, 16, 16
    cfg.ppo.forward_batch_size, cfg.generation.batch_size = 32, 32
    cfg.ppo.ppo_epochs, cfg.ppo.learning_rate, cfg.ppo.min_lr_ratio = 4, 5e-3, 1.0
    cfg.ppo.kl.kind, cfg.ppo.kl.init_coef = "fixed", 0.05
    cfg.generation.max_new_tokens = 16
    ppo.run(cfg)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    scores = [r["objective/score"] for r in rows]
    kls = [r["objective/kl"] for r in rows]
    start, end = sum(scores[:5]) / 5, sum(scores[-10:]) / 10
    assert start < 0.3, scores
    assert end > 0.6, scores
    assert max(kls) < 2 / 0.05 and sum(kls[-10:]) / 10 < 1 / 0.05, kls


# ---------------------------------------------------------------------------------------------------------
# Failures


@dataclass
class NanAtConfig:
    call: int = 2
    """The scorer call that returns a NaN."""
    sample: int = 1
    """The sample that gets it."""


if "test_nan_at" not in SCORER_TYPES:

    @register_scorer_type("test_nan_at", NanAtConfig)
    def _build_nan_at(component, params, context):
        return NanAtScorer(component.name, params)


class NanAtScorer:
    def __init__(self, name: str, params: NanAtConfig) -> None:
        self.name, self.params, self.calls = name, params, 0

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        self.calls += 1
        scores = torch.zeros(len(batch))
        if self.calls == self.params.call:
            scores[self.params.sample] = math.nan
        return scores


def test_a_nan_score_stops_the_run_naming_component_and_sample_and_keeps_the_weights(tmp_path, spy):
    cfg = tiny_config(
        tmp_path / "run",
        steps=3,
        components=[CONTAINS_E, {"name": "flaky", "type": "test_nan_at", "params": {}}],
    )
    cfg.logging.checkpoint_every = 1
    after_step_1: dict = {}

    def remember(step: int, row: dict) -> None:
        after_step_1.update({k: v.detach().clone() for k, v in roles.named_trainable(spy["models"]).items()})

    with pytest.raises(NonFiniteScoreError, match=r"step 2: reward component 'flaky' .* sample\(s\) \[1\]"):
        ppo.run(cfg, on_step=remember)
    now = roles.named_trainable(spy["models"])
    assert now.keys() == after_step_1.keys()
    assert all(torch.equal(now[k], after_step_1[k]) for k in now)  # the failed step changed nothing
    assert [r["step"] for r in read_jsonl(tmp_path / "run/metrics.jsonl")] == [1]
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == ["step-00000001"]


# ---------------------------------------------------------------------------------------------------------
# Pieces: EOS handling, scores, dropout, prompts


def test_missing_eos_penalty_then_score_clip():
    cfg = ppo.Config(reward=rule_reward())
    cfg.generation.missing_eos_penalty = 1.0
    cfg.ppo.score_clip = 4.0
    scores, clipfrac = final_scores(
        torch.tensor([0.5, 0.5, 9.0, -3.5]),
        torch.tensor([True, False, True, False]),
        missing_eos_penalty=cfg.generation.missing_eos_penalty,
        score_clip=cfg.ppo.score_clip,
    )
    assert scores.tolist() == [0.5, -0.5, 4.0, -4.0]  # -1 without EOS, then clipped to [-4, 4]
    assert clipfrac == 0.5


def test_dropout_is_off_in_training_mode_too():
    tokenizer = build_tiny_tokenizer()
    model = add_adapters(build_tiny_causal_lm(tokenizer), ["policy"], LoraSettings(r=4, alpha=8, dropout=0.5))
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
        if "lora_B" in type(module).__name__ or hasattr(module, "lora_B"):
            for b in module.lora_B.values():
                torch.nn.init.normal_(b.weight)  # make the adapter (and its dropout) matter
    ids = torch.tensor([tokenizer.encode("the movie was great and the acting was terrible")])
    model.train()
    torch.manual_seed(0)
    noisy = [model(input_ids=ids).logits for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])  # dropout is active: the test can fail
    assert disable_dropout(model) > 0
    train_logits = model(input_ids=ids).logits
    model.eval()
    assert torch.equal(train_logits, model(input_ids=ids).logits)


def test_prompts_from_files_keep_meta_and_are_cut_from_the_start(tmp_path, tiny_tokenizer):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": "Is the movie good?", "label": "positive", "id": 7}) + "\n"
        + json.dumps({"prompt": "the " * 200, "label": "negative", "id": 8}) + "\n"
    )  # fmt: skip
    cfg = ppo.Config(reward=rule_reward())
    cfg.data.prompts, cfg.data.task, cfg.data.max_prompt_tokens = str(jsonl), "sst2", 32
    cfg.data.system_prompt = "Be brief."
    prompts = load_prompts(cfg.data, tiny_tokenizer)
    assert [p.meta for p in prompts] == [
        {"label": "positive", "id": 7, "task": "sst2"},
        {"label": "negative", "id": 8, "task": "sst2"},
    ]
    assert [m.role for m in prompts[0].messages] == ["system", "user"]
    full = tokenize_prompt(prompts[1].messages, tiny_tokenizer)
    assert len(full) > 32 and prompts[1].input_ids == full[-32:]  # the start goes, the assistant header stays

    csv = tmp_path / "m.csv"
    thread = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    csv.write_text("messages,topic\n" + '"' + json.dumps(thread).replace('"', '""') + '",greeting\n')
    cfg.data.prompts, cfg.data.task, cfg.data.system_prompt = str(csv), None, None
    (prompt,) = load_prompts(cfg.data, tiny_tokenizer)
    assert [m.role for m in prompt.messages] == ["user"]
    assert prompt.meta == {"topic": "greeting", "reference": "hello"}

    tsv = tmp_path / "sst2.tsv"
    tsv.write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n")
    cfg.data.prompts, cfg.data.format, cfg.data.task = str(tsv), "task", "sst2"
    prompts = load_prompts(cfg.data, tiny_tokenizer)
    assert [p.meta["label"] for p in prompts] == ["positive", "negative"]
    assert prompts[0].messages[-1].content.startswith("Movie review: a fine film")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    cfg.data.prompts, cfg.data.format, cfg.data.task = str(bad), "auto", None
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'prompt'"):
        load_prompts(cfg.data, tiny_tokenizer)


# ---------------------------------------------------------------------------------------------------------
# Critic-free estimators and the label monitor


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_critic_free_estimators_train_the_policy_only_and_answer_each_prompt_k_times(
    tmp_path, spy, advantage
):
    cfg = tiny_config(tmp_path / "run", steps=2)
    cfg.ppo.advantage, cfg.ppo.samples_per_prompt = advantage, 2
    cfg.logging.num_samples, cfg.logging.sample_every = 4, 1
    result = ppo.run(cfg)
    models, before = spy["models"], spy["before"]
    after = all_weights(models, spy["reward"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".policy." in k for k in changed)
    # no value loss: the value role and its head keep their initial weights
    assert not any(".value." in k or k.startswith("value_head.") for k in changed), sorted(changed)[:5]
    # no value model at all: no value adapter on the shared base, no head, the policy's LoRA is all that trains
    assert models.value is None and list(models.shared.peft_config) == ["policy"]
    assert not any(".value." in k or k.startswith("value_head.") for k in before)
    policy_lora = lora_trainable_parameters(models.shared, "policy")
    assert sum(p.numel() for p in models.params) == sum(p.numel() for p in policy_lora)
    assert {id(p) for p in models.params} == {id(p) for p in policy_lora}
    assert result.value_dir is None and not (tmp_path / "run" / "value").exists()
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert "value/explained_variance" not in row and "loss/value" not in row
    assert math.isfinite(row["loss/policy"]) and row["policy/approx_kl"] != 0.0
    # consecutive pairs of rows answer the same prompt, each with its own sample
    prompts = [r["prompt"] for r in read_jsonl(tmp_path / "run" / "samples.jsonl") if r["step"] == 1]
    assert prompts[0] == prompts[1] and prompts[2] == prompts[3] and prompts[0] != prompts[2]


def test_a_critic_free_run_checkpointed_with_an_idle_value_role_resumes(tmp_path, monkeypatch, caplog):
    """Critic-free runs of earlier versions still held an (untrained) value role: their checkpoints resume.

    The old layout is made by loading the value role anyway; its idle LoRA and head are in the checkpoint and
    in the optimizer's state, and are dropped on resume: the run then ends as a run that never held them.
    """

    def config(out: Path) -> ppo.Config:
        cfg = tiny_config(out, steps=4)
        cfg.ppo.advantage, cfg.ppo.samples_per_prompt = "rloo", 2
        cfg.logging.checkpoint_every = 2
        return cfg

    ppo.run(config(tmp_path / "straight"))
    new_load = roles.load_models

    def old_load(*args, value_model=None, **kwargs):
        return new_load(
            *args, value_model="role", **kwargs
        )  # earlier versions: a value role whatever the estimator

    def kill(step: int, row: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(roles, "load_models", old_load)
    with pytest.raises(KeyboardInterrupt):
        ppo.run(config(tmp_path / "old"), on_step=kill)
    monkeypatch.setattr(roles, "load_models", new_load)
    old = load_file(str(tmp_path / "old/checkpoints/step-00000002/trainable.safetensors"))
    assert "value_head.weight" in old and any(".lora_A.value." in k for k in old)

    with caplog.at_level("INFO", logger="rewardmix.stages.ppo.roles"):
        ppo.run(config(tmp_path / "old"))  # resumes from step 2 without the value role, redoes 3, does 4
    assert "dropping its" in caplog.text
    final = "checkpoints/step-00000004/trainable.safetensors"
    straight, resumed = (
        load_file(str(tmp_path / "straight" / final)),
        load_file(str(tmp_path / "old" / final)),
    )
    assert straight.keys() == resumed.keys() and not any(".value." in k for k in resumed)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0)


def test_resume_still_refuses_other_mismatched_tensors(tmp_path):
    """Only the idle value role's tensors are dropped: any other unknown tensor still stops the resume."""
    cfg = tiny_config(tmp_path / "run", steps=1)
    cfg.ppo.advantage, cfg.ppo.samples_per_prompt = "rloo", 2
    models = roles.load_models(cfg.model, cfg.lora, torch.device("cpu"), seed=0, value_model=None)
    state = {name: p.detach().clone() for name, p in roles.named_trainable(models).items()}
    state["value_head.weight"] = torch.zeros(1, 32)
    kept, _, _ = roles.drop_stale_value_state(models, state, {"state": {}, "param_groups": []}, {})
    roles.load_named_state(models, kept)  # the value head alone is dropped
    state["policy.something.else"] = torch.zeros(1)
    kept, _, _ = roles.drop_stale_value_state(models, state, {"state": {}, "param_groups": []}, {})
    with pytest.raises(KeyError, match="something.else"):
        roles.load_named_state(models, kept)


def test_full_fine_tuning_without_a_value_model_keeps_a_plain_reference(tmp_path, spy):
    cfg = tiny_config(tmp_path / "run", steps=2, lora=False)
    cfg.ppo.advantage, cfg.ppo.samples_per_prompt = "grpo", 2
    result = ppo.run(cfg)
    models = spy["models"]
    assert models.value is None and not hasattr(models.shared, "peft_config")
    assert not any(p.requires_grad for p in models.shared.parameters())
    assert sum(p.numel() for p in models.params) == sum(p.numel() for p in models.policy.parameters())
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["objective/kl"] == 0.0 and rows[1]["objective/kl"] != 0.0
    assert result.value_dir is None and (result.model_dir / "model.safetensors").is_file()


def test_full_fine_tuning_without_a_value_model_still_loads_reward_model_roles(tmp_path, spy):
    rm = {"name": "rm_a", "type": "reward_model", "reward_model": {"path": str(save_rm_adapter(tmp_path / "a", 1)), "role": "rm_a"}}  # fmt: skip
    cfg = tiny_config(tmp_path / "run", steps=1, lora=False, components=[rm])
    cfg.ppo.advantage, cfg.ppo.samples_per_prompt = "grpo", 2
    ppo.run(cfg)
    models = spy["models"]
    # the frozen copy carries the reward model's role beside one inert container role, no value role or head
    assert models.value is None and set(models.shared.peft_config) == {roles.CONTAINER_ROLE, "rm_a"}
    assert not any(p.requires_grad for p in models.shared.parameters())
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(row["reward/rm_a/raw"]) and row["objective/kl"] == 0.0


def test_critic_free_advantages_rank_answers_within_their_group():
    p = ppo.PPOConfig(advantage="rloo", samples_per_prompt=2, whiten_advantages=False)
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True], [True, True, True]])
    rewards = torch.zeros(4, 3)
    rewards[0, 1], rewards[1, 0], rewards[2, 2], rewards[3, 2] = (
        1.0,
        0.0,
        -0.5,
        0.5,
    )  # score on the last token
    rewards[2, 0] = -0.1  # a KL penalty counts in the sequence reward: r_2 = -0.6
    advantages, returns = estimate_advantages(p, rewards, torch.full((4, 3), 9.0), mask)
    # RLOO, K = 2: A = r_i - r_other: [1 - 0, 0 - 1, -0.6 - 0.5, 0.5 + 0.6] on every valid token, 0 elsewhere
    expected = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [-1.1, -1.1, -1.1], [1.1, 1.1, 1.1]])
    assert torch.allclose(advantages, expected) and torch.equal(returns, torch.zeros(4, 3))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"advantage": "rloo"}, "samples_per_prompt >= 2"),
        ({"samples_per_prompt": 3}, "divide ppo.batch_size"),
    ],
)
def test_group_settings_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        ppo.Config(ppo=ppo.PPOConfig(batch_size=4, **changes), reward=rule_reward())


@pytest.mark.parametrize(
    ("text", "overrides", "where"),
    [
        ("seed: 1\n", [], "ppo.yaml: "),  # no reward section: the file, no line to point at
        ("seed: 1\nreward:\n  combinator: sum\n", [], "ppo.yaml:2: "),  # the line of `reward:`
        ("seed: 1\n", ["reward.components=[]"], "override 'reward.components=[]': "),
    ],
)
def test_a_config_without_reward_components_is_an_error_naming_the_key(tmp_path, text, overrides, where):
    # There is no hidden default reward: PPO on nothing would train on whatever the default happened to be.
    path = tmp_path / "ppo.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(ppo.Config, path, overrides, stage="ppo")
    message = str(info.value)
    assert message.startswith(str(tmp_path / where)) or message.startswith(where), message
    assert "reward.components" in message and "no default" in message and "reward:" in message
    with pytest.raises(ValueError, match="reward.components"):
        ppo.Config()


def test_label_metrics_on_the_policys_own_samples(tiny_tokenizer):
    cfg = ppo.Config(reward=rule_reward())
    cfg.data.task = "sst2"
    rows = [("good", "positive"), ("bad", "negative")]
    prompts = [PromptExample([Message("user", q)], [1], {"label": y}) for q, y in rows for _ in range(2)]
    monitor = make_label_monitor(cfg.data, prompts)
    texts = ["The answer is: positive", "The answer is: negative", "no idea", "The answer is: negative"]
    # prompt 1: right (0) vs wrong (1), the RM prefers the right one; prompt 2: unparseable (2) vs right (3),
    # the RM prefers the unparseable one. The final score ranks both pairs right.
    composite = type("C", (), {"raw": {"rm": torch.tensor([2.0, 1.0, 5.0, 0.0])}})()
    row = label_metrics(monitor, prompts, texts, composite, torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    assert row["policy/label_accuracy"] == 0.5 and row["policy/label_unparseable"] == 0.25
    assert row["reward/rm/label_pair_accuracy"] == 0.5 and row["objective/label_pair_accuracy"] == 1.0
    prompts_without_labels = [p._replace(meta={}) for p in prompts]
    assert make_label_monitor(cfg.data, prompts_without_labels) is None


# ---------------------------------------------------------------------------------------------------------
# Configs and docs


def _header_commands(path: Path) -> list[list[str]]:
    """The ``rewardmix ppo|sweep <config> key=value ...`` lines of a config's header comment."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.search(r"rewardmix (ppo|sweep) (\S+\.yaml)(.*)$", line)
        if match:
            commands.append([match.group(1), match.group(2), *shlex.split(match.group(3))])
    return commands


@pytest.mark.parametrize("name", PPO_CONFIGS + ["configs/sweep-crs.yaml"])
def test_shipped_configs_and_their_header_overrides_load_strictly(name):
    path = REPO / name
    stage, module = ("sweep", sweep) if "sweep" in name else ("ppo", ppo)
    cfg = load_config(module.Config, path, stage=stage)
    assert to_dict(cfg)
    commands = _header_commands(path)
    assert commands, f"{name} documents no command line"
    for command in commands:
        stage_name, config, *overrides = command
        loaded = load_config(
            sweep.Config if stage_name == "sweep" else ppo.Config, REPO / config, overrides, stage=stage_name
        )
        if stage_name == "sweep":  # every run of the sweep must be a valid PPO config too
            base = load_yaml(loaded.base)  # builtin:ppo-crs, builtin:ppo-rllr-mixed
            base.pop("stage")
            for value in loaded.values:
                sweep.build_run_config(loaded, base, value, Path("runs/x"))
    wrong = "ppo.stpes=3" if stage == "ppo" else "stpes=3"
    with pytest.raises(ConfigError, match=f"unknown key '{wrong[:-2]}'"):
        load_config(module.Config, path, [wrong], stage=stage)


def test_every_logged_metric_is_documented(tmp_path):
    cfg = tiny_config(
        tmp_path / "run", steps=1, components=[{**CONTAINS_E, "normalize": "running", "clip": 2.0}]
    )
    cfg.ppo.score_clip = 3.0
    ppo.run(cfg)
    doc = (REPO / "docs" / "metrics.md").read_text()
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    required = {
        "objective/kl", "objective/kl_coef", "objective/score", "objective/rlhf_reward", "reward/e_count/raw",
        "reward/e_count/normalized", "reward/combined", "policy/clipfrac", "policy/approx_kl", "policy/entropy",
        "loss/policy", "loss/value", "value/clipfrac", "value/explained_variance", "response/length_mean",
        "response/eos_rate", "perf/tokens_per_sec", "perf/step_time", "lr",
    }  # fmt: skip
    assert required <= set(row)
    for key in row:
        documented = key.replace("/e_count/", "/<component>/")
        assert f"`{documented}`" in doc, f"{documented} is logged but not explained in docs/metrics.md"


# ---------------------------------------------------------------------------------------------------------
# Sweep


def test_sweep_runs_each_weight_and_summarizes(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "stage: ppo\n"
        "cpu: true\n"
        "model: {name: tiny}\n"
        "lora: {r: 4, alpha: 8}\n"
        "generation: {max_new_tokens: 6}\n"
        "ppo: {steps: 2, batch_size: 4, minibatch_size: 2, micro_batch_size: 2, ppo_epochs: 1}\n"
        "logging: {num_samples: 0}\n"
        "reward:\n"
        "  combinator: weighted\n"
        "  components:\n"
        "    - {name: pref, type: contains, contains: {substring: e, mode: count}}\n"
        "    - {name: abs, type: length_penalty, length_penalty: {target: 2, unit: chars}}\n"
    )
    cfg = sweep.Config(
        base=str(base),
        output_dir=str(tmp_path / "sweep"),
        values=[0.25, 0.75],
        overrides=["ppo.learning_rate=1e-3"],
    )
    result = sweep.run(cfg)
    assert [r.name for r in result.runs] == ["weight_0.25", "weight_0.75"]
    for run, w in zip(result.runs, (0.25, 0.75), strict=True):
        resolved = load_config(ppo.Config, run.output_dir / "config.yaml", stage="ppo")
        assert [c.weight for c in resolved.reward.components] == [w, 1 - w]
        assert resolved.ppo.learning_rate == 1e-3
        rows = read_jsonl(run.output_dir / "metrics.jsonl")
        assert run.summary["final/objective/score"] == rows[-1]["objective/score"]
        assert run.summary["mean/reward/pref/raw"] == pytest.approx(
            sum(r["reward/pref/raw"] for r in rows) / 2
        )
    summary = json.loads(result.summary_path.read_text())
    assert [s["reward.components[0].weight"] for s in summary] == [0.25, 0.75]
    table = (tmp_path / "sweep" / "summary.md").read_text()
    assert "| weight_0.25 | 0.25 | 2 |" in table and "mean/reward/abs/raw" in table
    # Rerunning keeps finished runs as they are.
    metrics = result.runs[0].output_dir / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    sweep.run(cfg)
    assert metrics.stat().st_mtime_ns == stamp
    # A finished run of another config (the shared overrides edited) is not kept as if it were this one's.
    edited = dataclasses.replace(cfg, overrides=["ppo.learning_rate=2e-3"])
    with pytest.raises(ConfigError, match=r"another config \(ppo.learning_rate: 0.001 -> 0.002\)"):
        sweep.run(edited)
    assert metrics.stat().st_mtime_ns == stamp


def test_sweep_keys_address_list_items_and_fail_clearly():
    data = {"reward": {"components": [{"weight": 1.0}, {"weight": 1.0}], "combinator_params": {}}}
    sweep.set_key(data, "reward.components[1].weight", 0.3)
    sweep.set_key(data, "reward.combinator_params.threshold", 5.0)
    assert data["reward"] == {
        "components": [{"weight": 1.0}, {"weight": 0.3}],
        "combinator_params": {"threshold": 5.0},
    }
    with pytest.raises(ConfigError, match=r"no item \[2\]"):
        sweep.set_key(data, "reward.components[2].weight", 0.1)
    with pytest.raises(ConfigError, match="sweep key 'reward..weight': empty key component"):
        sweep.Config(key="reward..weight")
