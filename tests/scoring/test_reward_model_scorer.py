"""RewardModelScorer on tiny models: same input and score as the model, padding/batch invariance, logit vs
bounded, a trained run scored as in its training, LoRA roles on one shared base (= the merged model), and
building from a composite config."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rewardmix.config import from_dict
from rewardmix.data.chat import Message, TemplateNotPrefixStableError, tokenize_chat
from rewardmix.data.pairs import write_pairs
from rewardmix.data.toy import toy_pairs
from rewardmix.models.heads import ScalarHeadModel
from rewardmix.models.lora import (
    LoraSettings,
    add_adapters,
    merge_and_save,
    role_names,
    save_adapter,
)
from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_encoder, build_tiny_tokenizer
from rewardmix.rundir import read_jsonl
from rewardmix.scoring import (
    BuildContext,
    CompositeConfig,
    CompositeReward,
    RewardModelScorer,
    ScoringBatch,
    rm_output,
)
from rewardmix.scoring.rm_inputs import InputEncoder
from rewardmix.stages import reward_model

# peft 0.21 reads a transformers attribute deprecated in 5.x; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

PROMPTS = [
    "hello world",
    "What is the answer? Please give a rationale.",
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "rank"},
    ],
    "the movie review",
    "Natalia sold clips to 48 of her friends in April",
]
RESPONSES = [
    "The movie was great.\n\nThe answer is: positive",
    "no",
    "one two three four five six seven eight nine ten",
    "terrible",
    "Natalia sold 48+24 = 72 clips altogether in April and May. #### 72",
]
BATCH = ScoringBatch(prompts=PROMPTS, responses=RESPONSES)


@pytest.fixture(scope="module")
def causal_rm(tiny_chat_tokenizer):
    return ScalarHeadModel(build_tiny_causal_lm(tiny_chat_tokenizer, seed=1), seed=0)


@pytest.fixture(scope="module")
def encoder_rm(tiny_tokenizer):
    return ScalarHeadModel(build_tiny_encoder(tiny_tokenizer, seed=2), pooling="first", seed=0)


def _single_forward(model: ScalarHeadModel, ids: list[int]) -> float:
    with torch.no_grad():
        x = torch.tensor([ids])
        return model(x, torch.ones_like(x)).item()


# ---------------------------------------------------------------------------------------------------------
# Inputs: the reward-model stage's own


@pytest.mark.parametrize(("max_length", "floor"), [(1024, 256), (12, 4), (8, 0)])
def test_inputs_are_the_reward_model_stage_inputs(
    causal_rm, encoder_rm, tiny_chat_tokenizer, tiny_tokenizer, max_length, floor
):
    for model, tok, kind in (
        (causal_rm, tiny_chat_tokenizer, "causal_lm"),
        (encoder_rm, tiny_tokenizer, "encoder"),
    ):
        scorer = RewardModelScorer(model, tok, max_length=max_length, min_prompt_tokens=floor)
        encoder = InputEncoder(tok, kind, max_length=max_length, min_prompt_tokens=floor)
        assert scorer.encode(BATCH) == [list(encoder(p, r)) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    # Causal: the conversation [user: prompt, assistant: response] in the tokenizer's own template.
    first = RewardModelScorer(causal_rm, tiny_chat_tokenizer).encode_one("hello world", "great")
    assert tiny_chat_tokenizer.decode(first) == "### user:\nhello world<eos>\n### assistant:\ngreat<eos>\n"


def test_conversation_the_chat_tokenizer_refuses_is_scored_with_the_fallback(causal_rm):
    # The generation prompt ("### assistant:\n") is not a prefix of the rendered assistant turn
    # ("### assistant: ..."), so tokenize_chat raises; scoring must go on (a policy sample may do this).
    template = (
        "{% for message in messages %}{{ '### ' + message['role'] + ': ' + message['content'] + '<eos>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}"
    )
    tok = build_tiny_tokenizer(template)
    with pytest.raises(TemplateNotPrefixStableError):
        tokenize_chat([Message("user", "hi"), Message("assistant", "yes")], tok)
    scorer = RewardModelScorer(causal_rm, tok, name="rm")
    ids = scorer.encode(BATCH)
    scores = scorer.score(BATCH)
    full = [
        tok.encode(
            f"### user: {PROMPTS[0]}<eos>\n### assistant: {RESPONSES[0]}<eos>\n", add_special_tokens=False
        )
    ]
    assert ids[0] == full[0]
    assert scores.shape == (len(RESPONSES),) and bool(torch.isfinite(scores).all())
    assert scorer.encoder.unstable >= 1  # the stage's encoder took its fallback path
    # Truncated (CRS rule): a window of the full ids, the prompt cut from its start, the response from its end.
    prompt, response = PROMPTS[4], RESPONSES[4]
    full = tok.encode(f"### user: {prompt}<eos>\n### assistant: {response}<eos>\n", add_special_tokens=False)
    cut = list(InputEncoder(tok, "causal_lm", max_length=16, min_prompt_tokens=4)(prompt, response))
    starts = [i for i in range(len(full) - 15) if full[i : i + 16] == cut]
    assert len(cut) == 16 and len(starts) == 1 and 0 < starts[0] and starts[0] + 16 < len(full)


# ---------------------------------------------------------------------------------------------------------
# Scores


@pytest.mark.parametrize("which", ["causal", "encoder"])
def test_scores_equal_model_forward_and_are_batch_invariant(which, causal_rm, encoder_rm, request):
    tok = request.getfixturevalue("tiny_chat_tokenizer" if which == "causal" else "tiny_tokenizer")
    model = causal_rm if which == "causal" else encoder_rm
    scorer = RewardModelScorer(model, tok, batch_size=8)
    scores = scorer.score(BATCH)
    assert scores.dtype == torch.float32 and scores.shape == (len(RESPONSES),)
    kind = "causal_lm" if which == "causal" else "encoder"
    encoder = InputEncoder(tok, kind, max_length=1024, min_prompt_tokens=256)
    by_hand = [_single_forward(model, list(encoder(p, r))) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    torch.testing.assert_close(scores, torch.tensor(by_hand), rtol=0, atol=1e-5)
    # One at a time, in pairs, and a permuted subset: the same scores (padding and batch composition).
    one = RewardModelScorer(model, tok, batch_size=1).score(BATCH)
    two = RewardModelScorer(model, tok, batch_size=2).score(BATCH)
    torch.testing.assert_close(one, scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(two, scores, rtol=0, atol=1e-5)
    order = [4, 0, 2]
    subset = ScoringBatch(prompts=[PROMPTS[i] for i in order], responses=[RESPONSES[i] for i in order])
    torch.testing.assert_close(scorer.score(subset), scores[order], rtol=0, atol=1e-5)
    assert len(set(scores.tolist())) == len(RESPONSES)  # a real model: different texts, different scores


def test_logit_vs_bounded(causal_rm, tiny_chat_tokenizer):
    logit = RewardModelScorer(causal_rm, tiny_chat_tokenizer, output="logit").score(BATCH)
    bounded = RewardModelScorer(causal_rm, tiny_chat_tokenizer, output="bounded").score(BATCH)
    assert torch.equal(bounded, torch.sigmoid(logit))
    assert bool(((bounded > 0) & (bounded < 1)).all())


def test_rm_output_for_a_probability_head():
    # A regression head (absolute mse_range_penalty) emits [0, 1] predictions, clamped first:
    # bounded = clamp(h, 0, 1) = [0.5, 1, 0, 0.25]; logit = log(p / (1 - p)) with p clamped to [1e-6, 1 - 1e-6].
    head = torch.tensor([0.5, 1.2, -0.1, 0.25])
    bounded = rm_output(head, output="bounded", head_output="probability")
    torch.testing.assert_close(bounded, torch.tensor([0.5, 1.0, 0.0, 0.25]))
    logit = rm_output(head, output="logit", head_output="probability")
    # logit(0.5) = 0, logit(0.25) = log(1/3); the clamped ends give about ±log(1e6) = ±13.8155 (the upper one
    # a little less: 1 - 1e-6 rounds in float32).
    torch.testing.assert_close(logit[[0, 3]], torch.tensor([0.0, -1.0986123]), rtol=0, atol=1e-6)
    assert logit[1].item() == pytest.approx(13.8155, abs=0.02)
    assert logit[2].item() == pytest.approx(-13.8155, abs=1e-3)
    torch.testing.assert_close(torch.sigmoid(logit[[0, 3]]), bounded[[0, 3]])


def test_scoring_restores_training_flags_and_needs_no_grad(causal_rm, tiny_chat_tokenizer):
    model = copy.deepcopy(causal_rm)
    model.train()
    model.backbone.model.layers[0].eval()  # a mixed state, as a shared base might be in
    flags = [m.training for m in model.modules()]
    scores = RewardModelScorer(model, tiny_chat_tokenizer).score(BATCH)
    assert not scores.requires_grad
    assert [m.training for m in model.modules()] == flags


# ---------------------------------------------------------------------------------------------------------
# A saved reward-model run


def _write_rm_meta(folder, **fields):
    meta = {"format": "rewardmix.reward_model", "format_version": 1, "kind": "causal_lm", **fields}
    (folder / "rewardmix_rm.json").write_text(json.dumps(meta))


def test_saved_run_reads_its_recorded_settings(causal_rm, tiny_chat_tokenizer, tmp_path):
    folder = tmp_path / "model"
    causal_rm.save_pretrained(folder, tokenizer=tiny_chat_tokenizer)
    _write_rm_meta(
        folder, objective="absolute", absolute_loss="mse_range_penalty", max_length=12, min_prompt_tokens=4
    )
    scorer = RewardModelScorer.from_pretrained(folder, output="bounded")
    assert (scorer.head_output, scorer.max_length, scorer.min_prompt_tokens) == ("probability", 12, 4)
    head = scorer.head_values(BATCH)
    torch.testing.assert_close(scorer.score(BATCH), head.clamp(0, 1), rtol=0, atol=1e-5)
    # Explicit settings win over the record; a pairwise model's head is a logit.
    _write_rm_meta(folder, objective="pairwise", max_length=64, min_prompt_tokens=8)
    other = RewardModelScorer.from_pretrained(folder, max_length=20)
    assert (other.head_output, other.max_length, other.min_prompt_tokens) == ("logit", 20, 8)


def test_a_trained_run_is_scored_as_during_its_training(tmp_path):
    """The one loader (PPO, evaluate, evaluate-rm) against the training run's own scores of its eval pairs.

    A short ``max_length`` truncates the inputs, so a loader that did not read the run's settings, or built
    its inputs another way, would score other token sequences.
    """
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, toy_pairs(24, seed=5))
    cfg = reward_model.Config(output_dir=str(tmp_path / "rm"), cpu=True)
    cfg.lora.enabled = False
    cfg.model.max_length, cfg.model.min_prompt_tokens = 20, 4
    cfg.data.train = cfg.data.eval = str(pairs)
    cfg.optim.max_steps = 2
    cfg.logging.num_samples = 6
    result = reward_model.run(cfg)
    report = json.loads((tmp_path / "rm" / "data_report.json").read_text())
    assert report["eval"]["truncated_to_max_length"] > 0

    scorer = RewardModelScorer.from_pretrained(result.model_dir)
    assert (scorer.max_length, scorer.min_prompt_tokens, scorer.score_transform) == (20, 4, "identity")
    # samples.jsonl: the trained model's scores of the first eval items at the last step, as training read them
    shown = [
        row for row in read_jsonl(tmp_path / "rm" / "samples.jsonl") if row["step"] == result.global_step
    ]
    assert len(shown) == 6
    prompts = [row["prompt"] for row in shown for _ in row["answers"]]
    answers = [answer for row in shown for answer in row["answers"]]
    during_training = torch.tensor([score for row in shown for score in row["scores"]])
    loaded = scorer.head_values(ScoringBatch(prompts, answers))
    torch.testing.assert_close(loaded, during_training, rtol=0, atol=1e-6)
    assert len(set(loaded.tolist())) == len(answers)  # distinct scores: a permutation would be caught


# ---------------------------------------------------------------------------------------------------------
# LoRA roles on one shared base


@pytest.fixture(scope="module")
def shared(tiny_chat_tokenizer):
    """A causal LM with two reward roles whose LoRA weights differ, and one head per role."""
    base = build_tiny_causal_lm(tiny_chat_tokenizer, seed=3)
    pristine = copy.deepcopy(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        peft = add_adapters(base, ["rm_a", "rm_b", "policy"], LoraSettings(r=4, alpha=8))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:  # B = 0 at init: make each role a different model
                    p.normal_(std=0.5)
    heads = {
        "rm_a": ScalarHeadModel(peft, seed=1),
        "rm_b": ScalarHeadModel(peft, seed=1),  # the same head: only the adapters differ
    }
    return peft, heads, pristine


def test_roles_on_shared_base_score_differently_and_restore_the_active_role(shared, tiny_chat_tokenizer):
    peft, heads, _ = shared
    peft.set_adapter("policy")
    a = RewardModelScorer(heads["rm_a"], tiny_chat_tokenizer, role="rm_a").score(BATCH)
    b = RewardModelScorer(heads["rm_b"], tiny_chat_tokenizer, role="rm_b").score(BATCH)
    assert peft.active_adapter == "policy"
    assert (a - b).abs().min() > 1e-3
    with pytest.raises(KeyError, match="no LoRA role 'rm_c'"):
        RewardModelScorer(heads["rm_a"], tiny_chat_tokenizer, role="rm_c")


def test_role_scores_equal_the_merged_model(shared, tiny_chat_tokenizer, tmp_path):
    _, heads, _ = shared
    scorer = RewardModelScorer(heads["rm_a"], tiny_chat_tokenizer, role="rm_a")
    merge_and_save(heads["rm_a"], "rm_a", tmp_path / "merged", tokenizer=tiny_chat_tokenizer)
    merged = RewardModelScorer.from_pretrained(tmp_path / "merged")
    assert merged.kind == "causal_lm"
    torch.testing.assert_close(merged.score(BATCH), scorer.score(BATCH), rtol=0, atol=1e-5)


def test_adapter_loaded_as_a_new_role_on_another_base(shared, tiny_chat_tokenizer, tmp_path):
    _, heads, pristine = shared
    expected = RewardModelScorer(heads["rm_b"], tiny_chat_tokenizer, role="rm_b").score(BATCH)
    save_adapter(heads["rm_b"], "rm_b", tmp_path / "adapter")
    policy = add_adapters(copy.deepcopy(pristine), ["policy"], LoraSettings(r=4, alpha=8))
    scorer = RewardModelScorer.from_adapter(policy, tiny_chat_tokenizer, tmp_path / "adapter", role="rm_x")
    assert role_names(policy) == ["policy", "rm_x"] and policy.active_adapter == "policy"
    torch.testing.assert_close(scorer.score(BATCH), expected, rtol=0, atol=1e-5)


def test_adapter_trained_on_a_bare_body_is_refused(tiny_chat_tokenizer, tmp_path):
    # LoRA names of a body (LlamaModel) lack the causal LM's "model." level: peft would load nothing.
    body = build_tiny_causal_lm(tiny_chat_tokenizer, seed=3).model
    rm = ScalarHeadModel(add_adapters(body, ["rm_a"], LoraSettings(r=4, alpha=8)), seed=1)
    save_adapter(rm, "rm_a", tmp_path / "adapter")
    policy = add_adapters(
        build_tiny_causal_lm(tiny_chat_tokenizer, seed=3), ["policy"], LoraSettings(r=4, alpha=8)
    )
    with pytest.raises(ValueError, match="does not fit this model"):
        RewardModelScorer.from_adapter(policy, tiny_chat_tokenizer, tmp_path / "adapter", role="rm_x")


# ---------------------------------------------------------------------------------------------------------
# From a composite config


def test_composite_builds_reward_models_from_config(shared, causal_rm, tiny_chat_tokenizer, tmp_path):
    _, heads, pristine = shared
    causal_rm.save_pretrained(tmp_path / "rm", tokenizer=tiny_chat_tokenizer)
    save_adapter(heads["rm_a"], "rm_a", tmp_path / "adapter")
    cfg = from_dict(
        CompositeConfig,
        {
            "components": [
                {
                    "name": "label_rm",
                    "type": "reward_model",
                    "reward_model": {"path": str(tmp_path / "adapter"), "role": "rm_label"},
                },
                {
                    "name": "rat_rm",
                    "type": "reward_model",
                    "reward_model": {"path": str(tmp_path / "rm")},
                    "output": "bounded",
                },
                {"name": "fmt", "type": "format", "format": {}},
            ],
            "combinator": "threshold",
            "combinator_params": {"threshold": 0.0},
        },
    )
    with pytest.raises(ValueError, match="needs a shared base"):
        CompositeReward(cfg)
    policy = add_adapters(copy.deepcopy(pristine), ["policy"], LoraSettings(r=4, alpha=8))
    reward = CompositeReward(cfg, context=BuildContext(shared_backbone=policy, tokenizer=tiny_chat_tokenizer))
    out = reward(BATCH)
    label = RewardModelScorer(heads["rm_a"], tiny_chat_tokenizer, role="rm_a").score(BATCH)
    rat = torch.sigmoid(RewardModelScorer(causal_rm, tiny_chat_tokenizer).score(BATCH))
    fmt = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(out.raw["label_rm"], label, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.raw["rat_rm"], rat, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.scores, label.clamp(max=0.0) + rat + fmt, rtol=0, atol=1e-5)
    # A given scorer whose output disagrees with the config is refused.
    with pytest.raises(ValueError, match="output 'bounded'"):
        CompositeReward(
            cfg,
            scorers={"rat_rm": RewardModelScorer(causal_rm, tiny_chat_tokenizer, output="logit")},
            context=BuildContext(shared_backbone=policy, tokenizer=tiny_chat_tokenizer),
        )
