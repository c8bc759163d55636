"""NaN/inf in rewards, losses and gradients: the step stops, the culprit is named, no weight takes it in.

Three injections, each through the CLI (``rewardmix.cli.main`` in this process, so that a hook can be put on
the model; the exit code and stderr are the CLI's own):

- a rule scorer that returns NaN for sample k from some step on (PPO): the run stops at that step, exit code
  3, the message names the component, the sample and its prompt, no checkpoint after the last good step;
- a loss made NaN by a hook on the LM head (SFT): every step from then on is skipped with a warning naming
  ``loss/train`` and the parameters; after 10 in a row the run stops (exit 3) and every checkpoint on disk
  still holds the last good weights;
- an inf gradient put on one parameter by a tensor hook, once (SFT): that step is skipped with a warning
  naming the parameter, the run goes on and ends normally.

Plus the pieces: the composite reward's check (component, samples, running statistics untouched), the guard's
message and its stop, gradient clipping that leaves a bad gradient visible, and a torn metrics line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rewardmix import cli
from rewardmix.config import from_dict
from rewardmix.rundir import read_jsonl
from rewardmix.scoring import (
    SCORER_TYPES,
    CompositeConfig,
    CompositeReward,
    NonFiniteScoreError,
    ScoringBatch,
    register_scorer_type,
)
from rewardmix.stages import sft
from rewardmix.train.loop import (
    NonFiniteError,
    NonFiniteGuard,
    clip_gradients,
    describe_nonfinite,
    truncate_jsonl_after,
)

NAN_FROM_CALL = 3
NAN_SAMPLE = 2


def run_cli(stage: str, config: dict, path: Path, capsys) -> tuple[int, str]:
    """``rewardmix <stage> <path>`` in this process; returns the exit code and stderr."""
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    code = cli.main([stage, str(path)])
    return code, capsys.readouterr().err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        p.name: load_file(str(p / "trainable.safetensors"))
        for p in sorted((run / "checkpoints").glob("step-*"))
    }


# ---------------------------------------------------------------------------------------------------------
# A reward component returning NaN for sample k (PPO, through the CLI)


@dataclass
class NanFromConfig:
    call: int = NAN_FROM_CALL
    """First scorer call (= PPO step) that returns a NaN."""
    sample: int = NAN_SAMPLE
    """The sample that gets it."""


class NanFromScorer:
    """0 for every sample, except NaN for sample k from call ``call`` on; remembers what it saw then."""

    seen: dict = {}

    def __init__(self, name: str, params: NanFromConfig) -> None:
        self.name, self.params, self.calls = name, params, 0

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        self.calls += 1
        scores = torch.zeros(len(batch))
        if self.calls >= self.params.call:
            scores[self.params.sample] = math.nan
            prompt = batch.prompts[self.params.sample]
            NanFromScorer.seen["prompt"] = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            run = NanFromScorer.seen.get("run")
            if run is not None and "checkpoint_sha" not in NanFromScorer.seen:  # the disk before the bad step
                NanFromScorer.seen["checkpoint_sha"] = {
                    p.name: sha256(p / "trainable.safetensors") for p in (run / "checkpoints").glob("step-*")
                }
        return scores


if "reliability_nan_from" not in SCORER_TYPES:

    @register_scorer_type("reliability_nan_from", NanFromConfig)
    def _build_nan_from(component, params, context):
        return NanFromScorer(component.name, params)


def test_a_nan_reward_for_sample_k_stops_ppo_naming_component_sample_and_prompt(tmp_path, capsys):
    run = tmp_path / "ppo"
    NanFromScorer.seen.clear()
    NanFromScorer.seen["run"] = run
    config = {
        "stage": "ppo",
        "output_dir": str(run),
        "cpu": True,
        "model": {"name": "tiny"},
        "lora": {"r": 4, "alpha": 8},
        "generation": {"max_new_tokens": 4},
        "ppo": {"steps": 5, "batch_size": 4, "minibatch_size": 2, "micro_batch_size": 2, "ppo_epochs": 1},
        "reward": {
            "components": [
                {"name": "e_count", "type": "contains", "contains": {"substring": "e", "mode": "count"}},
                {"name": "flaky", "type": "reliability_nan_from", "params": {}},
            ]
        },
        "logging": {"num_samples": 0, "checkpoint_every": 1, "keep_checkpoints": 5},
    }
    code, err = run_cli("ppo", config, tmp_path / "ppo.yaml", capsys)

    assert code == 3
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("rewardmix: error: step 3: reward component 'flaky'")
    assert f"sample(s) [{NAN_SAMPLE}]" in message
    assert f"sample {NAN_SAMPLE}: prompt {NanFromScorer.seen['prompt'][:200]!r}" in message
    assert "No weight was changed by this step" in message
    # the disk is what it was before step 3: its two checkpoints, byte for byte; no model saved
    after = {p.name: sha256(p / "trainable.safetensors") for p in (run / "checkpoints").glob("step-*")}
    assert after == NanFromScorer.seen["checkpoint_sha"] and sorted(after) == [
        "step-00000001",
        "step-00000002",
    ]
    assert not (run / "model").exists()
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_the_composite_names_component_and_samples_and_keeps_its_statistics_clean():
    NanFromScorer.seen.clear()
    cfg = from_dict(
        CompositeConfig,
        {
            "components": [
                {"name": "fine", "type": "contains", "contains": {"substring": "a", "mode": "count"}},
                {"name": "flaky", "type": "reliability_nan_from", "params": {"call": 2, "sample": 1}},
            ]
        },
    )
    cfg.components[0].normalize = "running"
    reward = CompositeReward(cfg)
    batch = ScoringBatch(prompts=["p0", "what is two plus two", "p2"], responses=["a", "aa b", "aaa"])
    reward(batch)  # call 1: finite, updates the running statistics
    stats = reward.state_dict()["running"]
    with pytest.raises(NonFiniteScoreError) as caught:
        reward(batch)  # call 2: sample 1 is NaN
    assert caught.value.component == "flaky" and caught.value.samples == [1]
    assert "prompt 'what is two plus two', response 'aa b'" in str(caught.value)
    assert isinstance(caught.value, ValueError)  # what a bad scorer output always raised
    assert reward.state_dict()["running"] == stats  # nothing of the bad batch entered the statistics

    # the combined score too: two finite components whose sum overflows float32
    big = from_dict(
        CompositeConfig,
        {"components": [{"name": n, "type": "contains", "contains": {"substring": n}} for n in ("x", "y")]},
    )
    overflow = CompositeReward(big)
    with pytest.raises(NonFiniteScoreError, match=r"combinator sum' gave a non-finite combined score"):
        overflow.combine({"x": torch.tensor([3e38, 0.0]), "y": torch.tensor([3e38, 0.0])})


# ---------------------------------------------------------------------------------------------------------
# A NaN loss (hooked model output) and an inf gradient (tensor hook), SFT through the CLI


def sft_config(run: Path, **logging_overrides) -> dict:
    return {
        "stage": "sft",
        "output_dir": str(run),
        "cpu": True,
        "model": {"name": "tiny"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "phases": [{"data": "builtin:toy", "max_steps": 14}],
        "optim": {"micro_batch_size": 4, "learning_rate": 1.0e-3},
        "logging": {
            "eval_every": 0,
            "sample_every": 0,
            "num_samples": 0,
            "checkpoint_every": 2,
            "keep_checkpoints": 10,
            **logging_overrides,
        },
    }


def hooked_load_model(monkeypatch, install):
    """Make ``sft.load_model`` call ``install(model)`` on the model it builds."""
    original = sft.load_model

    def load(cfg):
        tokenizer, model = original(cfg)
        install(model)
        return tokenizer, model

    monkeypatch.setattr(sft, "load_model", load)


def test_a_nan_loss_skips_steps_names_the_loss_and_stops_with_the_weights_intact(
    tmp_path, monkeypatch, capsys
):
    calls = {"train": 0}

    def install(model):
        calls["trainable"] = sum(1 for p in model.parameters() if p.requires_grad)
        lm_head = next(m for name, m in model.named_modules() if name.endswith("lm_head"))

        def poison(module, args, output):
            if not model.training:
                return output
            calls["train"] += 1
            return output * math.nan if calls["train"] >= 3 else output  # one forward per step: from step 3

        lm_head.register_forward_hook(poison)

    hooked_load_model(monkeypatch, install)
    run = tmp_path / "sft"
    code, err = run_cli("sft", sft_config(run), tmp_path / "sft.yaml", capsys)

    assert code == 3
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(
        "rewardmix: error: 10 optimizer steps in a row had a non-finite loss or gradient"
    )
    n = calls["trainable"]
    assert (
        f"Last one: step 12: gradient norm is nan; loss/train is nan; non-finite gradients in {n} of {n} tensors:"
        in message
    )
    assert "lora_A.policy.weight (nan)" in message
    # every checkpoint on disk (step 2, the last good one, and those saved while skipping) has its weights
    weights = checkpoint_weights(run)
    assert sorted(weights) == [f"step-{s:08d}" for s in (2, 4, 6, 8, 10)]
    good = weights["step-00000002"]
    for name, state in weights.items():
        assert all(torch.equal(state[k], good[k]) for k in good), name
    assert not (run / "model").exists()
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 12))  # step 12 raised before its row
    assert all(r["loss/train"] is None and r["grad_norm"] is None for r in rows[2:])


def test_an_inf_gradient_once_skips_that_step_naming_the_parameter(tmp_path, monkeypatch, capsys, caplog):
    target = {}

    def install(model):
        name, param = next((n, p) for n, p in model.named_parameters() if "layers.1" in n and "lora_B" in n)
        target["name"], target["backwards"] = name, 0
        target["trainable"] = sum(1 for p in model.parameters() if p.requires_grad)

        def to_inf(grad):
            target["backwards"] += 1
            return torch.full_like(grad, math.inf) if target["backwards"] == 3 else grad  # step 3 only

        param.register_hook(to_inf)

    hooked_load_model(monkeypatch, install)
    run = tmp_path / "sft"
    with caplog.at_level(logging.WARNING, logger="rewardmix.train.loop"):
        code, err = run_cli(
            "sft", sft_config(run, checkpoint_every=1, keep_checkpoints=20), tmp_path / "s.yaml", capsys
        )

    assert code == 0, err
    warning = next(r.getMessage() for r in caplog.records if "skipping the optimizer step" in r.getMessage())
    assert warning.startswith("step 3: gradient norm is inf, skipping the optimizer step (weights unchanged)")
    assert f"non-finite gradients in 1 of {target['trainable']} tensors: {target['name']} (inf)" in warning
    weights = checkpoint_weights(run)
    before, skipped, after = weights["step-00000002"], weights["step-00000003"], weights["step-00000004"]
    assert all(torch.equal(skipped[k], before[k]) for k in before)  # the skipped step changed nothing
    assert any(not torch.equal(after[k], before[k]) for k in before)  # the next one trained again
    assert all(torch.isfinite(v).all() for state in weights.values() for v in state.values())
    rows = read_jsonl(run / "metrics.jsonl")
    assert rows[2]["step"] == 3 and rows[2]["grad_norm"] is None and rows[2]["loss/train"] is not None
    assert (run / "model" / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------
# The pieces


def test_the_guard_names_loss_and_parameters_and_stops_after_a_streak():
    good, bad = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    good.grad, bad.grad = torch.ones(2), torch.tensor([1.0, math.inf, 2.0])
    named = [("good.weight", good), ("bad.weight", bad)]
    text = describe_nonfinite(7, math.inf, {"loss/train": math.nan, "loss/eval": 1.0}, named)
    assert text == (
        "step 7: gradient norm is inf; loss/train is nan; non-finite gradients in 1 of 2 tensors: bad.weight (inf)"
    )
    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.step_ok(1.0, 1, losses={"loss/train": 0.5}, parameters=named)
    assert not guard.step_ok(1.0, 2, losses={"loss/train": math.inf})  # a bad loss alone skips the step
    assert guard.last_reason == "step 2: loss/train is inf"
    assert guard.step_ok(1.0, 3) and guard.consecutive == 0  # a good step ends the streak
    assert not guard.step_ok(math.nan, 4, parameters=lambda: named)
    assert not guard.step_ok(math.nan, 5, parameters=lambda: named)
    with pytest.raises(
        NonFiniteError, match=r"3 optimizer steps in a row .* Last one: step 6: gradient norm is nan"
    ):
        guard.step_ok(math.nan, 6, parameters=lambda: named)
    assert guard.skipped == 4


def test_a_step_that_cannot_be_skipped_stops_the_run_at_once_naming_it(caplog):
    """Under DeepSpeed the update is applied inside the backward pass: a non-finite step cannot be skipped, so
    the guard stops at the first one (no 'skipping' warning that would not be true)."""
    bad = torch.nn.Parameter(torch.zeros(2))
    bad.grad = torch.tensor([math.nan, 0.0])
    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.step_ok(1.0, 1, can_skip=False)  # a finite step goes on
    with pytest.raises(
        NonFiniteError, match=r"^step 2: gradient norm is nan; .*bad \(nan\)\. Under DeepSpeed"
    ):
        guard.step_ok(math.nan, 2, parameters=[("bad", bad)], can_skip=False)
    assert "skipping" not in caplog.text


@pytest.mark.parametrize("max_norm", [1.0, None])
def test_clipping_leaves_a_non_finite_gradient_visible_and_the_others_untouched(max_norm):
    good, bad = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    good.grad, bad.grad = torch.tensor([3.0, 4.0]), torch.tensor([math.inf, 0.0])
    assert clip_gradients([good, bad], max_norm) == math.inf
    # scaling by max_norm / inf would have made the bad one NaN and the good one 0 (or both NaN)
    assert good.grad.tolist() == [3.0, 4.0] and bad.grad.tolist() == [math.inf, 0.0]
    bad.grad = torch.zeros(2)
    assert clip_gradients([good, bad], max_norm) == pytest.approx(5.0)
    expected = [0.6, 0.8] if max_norm else [3.0, 4.0]
    assert good.grad.tolist() == pytest.approx(expected, rel=1e-5)


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss/train": 1.0 / s}) for s in (1, 2, 3)]
    path.write_bytes(("\n".join(rows) + "\n").encode() + b'{"step": 4, "loss/tr')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        dropped = truncate_jsonl_after(path, 2)
    assert dropped == 2  # step 3 (redone after the checkpoint of step 2) and the torn line
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    assert "torn last line" in caplog.text
    path.write_text(rows[0] + "\n{oops\n" + rows[1] + "\n")  # damage before the last line is an error
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: invalid JSON"):
        truncate_jsonl_after(path, 5)
