"""Reward models saved by the code before issue 14's restructuring are read and scored as the old code did.

``old_checkpoints/reward_model_final/<variant>/`` holds the folders the ``reward-model`` stage of the old code
(commit ``fbb9141``) saved at the end of a run: ``model/`` (scalar-head model, tokenizer, head weights,
``rewardmix_head.json``, ``rewardmix_rm.json``) and, for the LoRA variant, ``adapter/``. Three variants, so that
each field of the metadata that changes a score is exercised: ``lora_pairwise`` (tiny Llama, LoRA: merged
model and adapter), ``full_absolute_logistic`` (tiny Llama, full fine-tuning, ``score_transform: sigmoid``) and
``encoder_absolute_mse`` (tiny BERT, text-pair input, mean pooling, a head that emits a probability); all
trained with ``max_length`` 32 and ``min_prompt_tokens`` 8, which the longer inputs need. ``scores.json`` holds
the scored inputs and what the old code gave for them through both of its loaders
(``stages.reward_model.RewardScorer``: ``stage_scorer``; ``scoring.reward_model.RewardModelScorer``:
``scorer``, ``scorer_role``) and through the public ways below (``old_checkpoints/make_rm_fixtures.py`` says
how they were made, and checks there that all of them agree).

The tests point at these folders the way a user points at a trained reward model, through entries that the
restructuring keeps (stage registry, YAML/dict configs, ``rewardmix.scoring``), never through a loader class:

- the ``evaluate-rm`` stage, ``model: <variant>/model``: the ``score`` of each row of its ``scores.jsonl``
  equals the old ``RewardScorer``'s (the loader old ``evaluate-rm`` used), and its ``prediction`` what the old
  stage wrote (it applies the model's recorded ``score_transform``);
- reward components of a composite reward as PPO and ``evaluate`` build them, from a config dict:
  ``{type: reward_model, reward_model: {path: <variant>/model}}`` with ``output: logit`` and ``bounded``
  equals what the old composite gave (the old ``RewardModelScorer``'s head values, turned by the head's
  meaning read from ``rewardmix_rm.json``: a logit head's ``output: logit`` is the head value itself); and ``{path: <variant>/adapter, role: rm}`` on a shared base
  (as PPO loads a LoRA reward model onto its policy's base) what the old ``RewardModelScorer.from_adapter``
  gave.

Tolerance (``rtol=1e-5, atol=1e-6``): the old loaders themselves differ in the last bits (they batch inputs in
other orders and sizes, and a shorter batch pads less), and another CPU (CI) may sum in another order; the
scores are of order 0.01-10, so this is a few float32 ulps. A loader that ignored the recorded ``max_length``
or ``min_prompt_tokens``, the adapter, the pooling or the head's meaning moves scores by more than 1e-3
(``make_rm_fixtures.py`` checks the first two and the adapter).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rewardmix.config import from_dict, load_config
from rewardmix.scoring import BuildContext, CompositeConfig, CompositeReward, ScoringBatch
from rewardmix.stages import get_stage

# peft 0.21 reads a transformers attribute deprecated in 5.x; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

FIXTURES = Path(__file__).parent / "old_checkpoints" / "reward_model_final"
RECORD = json.loads((FIXTURES / "scores.json").read_text(encoding="utf-8"))
INPUTS: list[dict[str, Any]] = RECORD["inputs"]
VARIANTS = sorted(RECORD["models"])
LORA_VARIANTS = [v for v in VARIANTS if (FIXTURES / v / "adapter").is_dir()]


def assert_scores(got: Any, want: list[float], what: str) -> None:
    # See the module docstring for the tolerance: float32 rounding of differently batched forward passes.
    torch.testing.assert_close(
        torch.as_tensor(got, dtype=torch.float64),
        torch.tensor(want, dtype=torch.float64),
        rtol=1e-5,
        atol=1e-6,
        msg=what,
    )


def install(variant: str, tmp_path: Path) -> Path:
    """A copy of the variant's saved folders (nothing may write into the fixtures)."""
    return Path(shutil.copytree(FIXTURES / variant, tmp_path / variant))


def batch() -> ScoringBatch:
    return ScoringBatch([x["prompt"] for x in INPUTS], [x["response"] for x in INPUTS])


def test_the_fixture_is_intact():
    assert VARIANTS == ["encoder_absolute_mse", "full_absolute_logistic", "lora_pairwise"]
    assert LORA_VARIANTS == ["lora_pairwise"]
    for variant in VARIANTS:
        scores = RECORD["models"][variant]
        assert all(len(scores[k]) == len(INPUTS) for k in ("stage_scorer", "scorer"))
        meta = json.loads((FIXTURES / variant / "model" / "rewardmix_rm.json").read_text(encoding="utf-8"))
        assert (meta["format"], meta["max_length"], meta["min_prompt_tokens"]) == (
            "rewardmix.reward_model",
            32,
            8,
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_evaluate_rm_scores_an_old_reward_model_as_the_old_code_did(variant, tmp_path):
    folder = install(variant, tmp_path)
    texts = RECORD["evaluate_rm_inputs"]  # evaluate-rm reads text prompts (the conversation is left out)
    assert texts == [i for i, x in enumerate(INPUTS) if isinstance(x["prompt"], str)]
    ratings = tmp_path / "ratings.jsonl"
    lines = [json.dumps({**INPUTS[i], "score": 0.5}, ensure_ascii=False) + "\n" for i in texts]
    ratings.write_text("".join(lines), encoding="utf-8")
    config = {
        "stage": "evaluate-rm",
        "output_dir": str(tmp_path / "evaluate-rm"),
        "model": str(folder / "model"),
        "ratings": str(ratings),
        "probes": None,
        "cpu": True,
    }
    path = tmp_path / "evaluate-rm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    module = get_stage("evaluate-rm").load()
    module.run(load_config(module.Config, path, stage="evaluate-rm"))

    text = (tmp_path / "evaluate-rm" / "scores.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert [r["source"] for r in rows] == ["ratings"] * len(texts)
    old = RECORD["models"][variant]
    assert_scores([r["score"] for r in rows], [old["stage_scorer"][i] for i in texts], f"{variant}: score")
    assert_scores([r["prediction"] for r in rows], old["evaluate_rm"]["prediction"], f"{variant}: prediction")


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_reward_component_scores_an_old_reward_model_as_the_old_code_did(variant, tmp_path):
    folder = install(variant, tmp_path)
    components = [
        {
            "name": output,
            "type": "reward_model",
            "reward_model": {"path": str(folder / "model")},
            "output": output,
        }
        for output in ("logit", "bounded")
    ]
    reward = CompositeReward(from_dict(CompositeConfig, {"components": components, "combinator": "sum"}))

    out = reward(batch())

    old = RECORD["models"][variant]
    for output in ("logit", "bounded"):
        assert_scores(out.raw[output], old["composite"][output], f"{variant}: output {output}")
    if variant != "encoder_absolute_mse":  # a logit head: output logit is the head value itself
        assert_scores(out.raw["logit"], old["scorer"], f"{variant}: head values")


@pytest.mark.parametrize("variant", LORA_VARIANTS)
def test_an_old_lora_reward_model_loads_as_a_role_on_a_shared_base_and_scores_as_it_did(variant, tmp_path):
    from rewardmix.models.lora import LoraSettings, add_adapters
    from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer

    folder = install(variant, tmp_path)
    # The base the reward model was trained on (input.yaml: model tiny, seed 0), with a policy role, as the
    # PPO stage builds it for `model: {name: tiny}, seed: 0`.
    trained = yaml.safe_load((folder / "input.yaml").read_text(encoding="utf-8"))
    assert (trained["model"]["name"], trained["seed"]) == ("tiny", 0)
    tokenizer = build_tiny_tokenizer()
    base = add_adapters(build_tiny_causal_lm(tokenizer, seed=0), ["policy"], LoraSettings(r=4, alpha=8))
    component = {
        "name": "rm",
        "type": "reward_model",
        "reward_model": {"path": str(folder / "adapter"), "role": RECORD["role"]},
    }
    cfg = from_dict(CompositeConfig, {"components": [component], "combinator": "sum"})
    reward = CompositeReward(cfg, context=BuildContext(shared_backbone=base, tokenizer=tokenizer))

    out = reward(batch())

    assert_scores(
        out.raw["rm"], RECORD["models"][variant]["scorer_role"], f"{variant}: role {RECORD['role']}"
    )
