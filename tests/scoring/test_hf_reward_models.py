"""Reward models in the Hugging Face format, both ways: export (``export-rm``, ``export_hf``) and import (a
one-label ``*ForSequenceClassification`` as a ``reward_model`` component). Tiny in-memory models, fp32, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

from rewardmix.cli import main
from rewardmix.data.chat import CHATML_TEMPLATE, Message, chatml, render_chat
from rewardmix.data.pairs import write_pairs
from rewardmix.data.toy import toy_pairs
from rewardmix.models.heads import ScalarHeadModel
from rewardmix.models.hf_classifier import NotExportableError
from rewardmix.models.tiny import (
    TINY_CHAT_TEMPLATE,
    build_tiny_causal_lm,
    build_tiny_encoder,
    build_tiny_tokenizer,
)
from rewardmix.rundir import RunDirError, read_jsonl
from rewardmix.scoring import RewardModelScorer, ScoringBatch
from rewardmix.scoring.rm_export import export_reward_model
from rewardmix.scoring.rm_inputs import collate
from rewardmix.stages import ppo
from rewardmix.stages import reward_model as rm
from tests.stages.test_ppo import reward
from tests.stages.test_ppo import tiny_config as ppo_config
from tests.stages.test_reward_model import tiny_config as rm_config

BATCH = ScoringBatch(
    prompts=["hello there", "what is the answer?", [{"role": "user", "content": "rank this"}]],
    responses=["yes", "the answer is: four, because two and two make four", "a great movie review"],
)
TOL = 1e-5


def direct_scores(folder: Path, sequences: list[list[int]], side: str) -> torch.Tensor:
    """Plain transformers: the classifier from the folder on a batch padded with its config's pad id."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = collate(sequences, model.config.pad_token_id, padding_side=side)
    with torch.no_grad():
        return model(**batch).logits[:, 0]


def save_classifier(folder: Path, tokenizer, *, num_labels: int = 1, seed: int = 0) -> Path:
    """A random tiny LlamaForSequenceClassification (as TRL would train one) saved with its tokenizer."""
    base = build_tiny_causal_lm(tokenizer, seed=seed)
    config = LlamaConfig.from_dict(base.config.to_dict())
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        torch.nn.init.normal_(model.score.weight, std=1.0)  # O(1) scores, so a wrong pooled token shows
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    write_pairs(path, toy_pairs(64, seed=1))
    return str(path)


# ---------------------------------------------------------------------------------------------------------
# Import


def test_chatml_template_renders_what_rewardmix_renders_without_a_template():
    tokenizer = build_tiny_tokenizer(CHATML_TEMPLATE)
    messages = [Message("system", "be brief"), Message("user", "hi\nthere"), Message("assistant", "yo")]
    assert render_chat(messages, tokenizer) == chatml(messages)
    assert render_chat(messages[:2], tokenizer, add_generation_prompt=True) == chatml(
        messages[:2], add_generation_prompt=True
    )


def test_a_sequence_classifier_scores_like_the_model_called_directly(tmp_path):
    tokenizer = build_tiny_tokenizer(TINY_CHAT_TEMPLATE)
    folder = save_classifier(tmp_path / "clf", tokenizer)
    scorer = RewardModelScorer.from_pretrained(folder, batch_size=2)
    sequences = scorer.encode(BATCH)
    # TRL-style input: the tokenizer's chat template over prompt + response, no special tokens added.
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "yes"}], tokenize=False
    )
    assert sequences[0] == tokenizer(text, add_special_tokens=False)["input_ids"]
    scores = scorer.score(BATCH)
    for side in ("left", "right"):
        torch.testing.assert_close(scores, direct_scores(folder, sequences, side), rtol=0, atol=TOL)
    assert scores.std() > 0.1  # distinct O(1) scores: a wrong pooled token would show
    bounded = RewardModelScorer.from_pretrained(folder, output="bounded", batch_size=1).score(BATCH)
    torch.testing.assert_close(bounded, torch.sigmoid(scores), rtol=0, atol=TOL)
    short = RewardModelScorer.from_pretrained(folder, max_length=8)
    assert max(len(s) for s in short.encode(BATCH)) == 8


def test_a_classifier_without_chat_template_reads_the_text_pair(tmp_path):
    tokenizer = build_tiny_tokenizer()
    scorer = RewardModelScorer.from_pretrained(save_classifier(tmp_path / "clf", tokenizer))
    assert scorer.encode_one("hello there", "yes") == tokenizer("hello there", "yes")["input_ids"]


def test_a_classifier_with_several_labels_is_refused(tmp_path):
    folder = save_classifier(tmp_path / "clf", build_tiny_tokenizer(TINY_CHAT_TEMPLATE), num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2; a reward model has one output"):
        RewardModelScorer.from_pretrained(folder)


def test_ppo_trains_with_a_sequence_classifier_reward(tmp_path):
    folder = save_classifier(tmp_path / "clf", build_tiny_tokenizer(TINY_CHAT_TEMPLATE))
    component = {
        "name": "hf_rm",
        "type": "reward_model",
        "reward_model": {"path": str(folder), "batch_size": 3},
    }
    cfg = ppo_config(tmp_path / "ppo", steps=1)
    cfg.reward = reward([component])
    ppo.run(cfg)
    (row,) = read_jsonl(tmp_path / "ppo" / "metrics.jsonl")
    assert row["reward/hf_rm/raw"] != 0.0 and abs(row["reward/hf_rm/raw"]) < 100


# ---------------------------------------------------------------------------------------------------------
# Export and the round trip


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_round_trip_trained_exported_and_loaded_back_scores_the_same(tmp_path, pairs_file, lora):
    cfg = rm_config(tmp_path / "rm", pairs_file, lora=lora, max_steps=2)
    cfg.export_hf = True
    result = rm.run(cfg)
    head = ScalarHeadModel.from_pretrained(result.model_dir).head
    assert head.bias.item() == 0.0  # Bradley-Terry: the bias gradient cancels, the bias stays at its init
    hf = tmp_path / "rm" / "hf"
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    assert config["pad_token_id"] == 0 and config["rewardmix_reward_model"]["score_shift"] == 0.0
    assert "apply_chat_template" in (hf / "README.md").read_text()
    assert AutoTokenizer.from_pretrained(hf).chat_template == CHATML_TEMPLATE  # the ChatML trained with

    original = RewardModelScorer.from_pretrained(result.model_dir)
    sequences = original.encode(BATCH)
    expected = original.score(BATCH)
    for side in ("left", "right"):  # plain transformers on our token ids
        torch.testing.assert_close(direct_scores(hf, sequences, side), expected, rtol=0, atol=TOL)
    loaded = RewardModelScorer.from_pretrained(hf)  # back as a rewardmix component
    assert loaded.encode(BATCH) == sequences and loaded.max_length == original.max_length
    torch.testing.assert_close(loaded.score(BATCH), expected, rtol=0, atol=TOL)


def test_export_rm_command_writes_the_folder(tmp_path, pairs_file):
    rm.run(rm_config(tmp_path / "rm", pairs_file, max_steps=1))
    assert main(["export-rm", f"model={tmp_path / 'rm'}", f"output_dir={tmp_path / 'hf'}"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (
        tmp_path / "hf" / "rewardmix_rm.json"
    ).is_file()


def save_head_model(folder: Path, *, pooling: str = "last", bias: float = 0.0, encoder: bool = False) -> Path:
    tokenizer = build_tiny_tokenizer()
    body = build_tiny_encoder(tokenizer) if encoder else build_tiny_causal_lm(tokenizer).base_model
    model = ScalarHeadModel(body, pooling=pooling, seed=0)
    with torch.no_grad():
        model.head.bias.fill_(bias)
    return model.save_pretrained(folder, tokenizer=tokenizer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder": True, "pooling": "mean"}, "encoder reward models cannot be exported exactly"),
        ({"pooling": "mean"}, "pooling 'mean' cannot be exported exactly"),
        ({"bias": 0.25}, "head's bias is 0.25.*no bias"),
    ],
    ids=["encoder", "mean-pooling", "bias"],
)
def test_what_cannot_be_exact_is_refused_and_nothing_written(tmp_path, kwargs, message):
    folder = save_head_model(tmp_path / "model", **kwargs)
    with pytest.raises(NotExportableError, match=message):
        export_reward_model(folder, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_an_export_into_a_folder_of_other_files_is_refused_and_an_earlier_export_is_replaced(tmp_path):
    folder = save_head_model(tmp_path / "model")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match=r"mine: exists and is not an exported reward model"):
        export_reward_model(folder, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    export_reward_model(folder, tmp_path / "hf")
    export_reward_model(folder, tmp_path / "hf")  # an earlier export is replaced as before
    assert "rewardmix_reward_model" in json.loads((tmp_path / "hf" / "config.json").read_text())


def test_a_bias_is_exported_as_a_stated_shift_when_allowed(tmp_path):
    folder = save_head_model(tmp_path / "model", bias=0.25)
    result = export_reward_model(folder, tmp_path / "hf", allow_score_shift=True)
    assert result.score_shift == -0.25
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rewardmix_reward_model"]["score_shift"] == -0.25
    assert "-0.25 relative to" in (tmp_path / "hf" / "README.md").read_text()
    original = RewardModelScorer.from_pretrained(folder)
    shifted = RewardModelScorer.from_pretrained(tmp_path / "hf").score(BATCH)
    torch.testing.assert_close(shifted, original.score(BATCH) - 0.25, rtol=0, atol=TOL)


@pytest.mark.parametrize("objective", ["absolute", "ranking"])
def test_export_hf_is_refused_at_config_time_where_the_bias_is_trained(tmp_path, objective):
    cfg = rm_config(tmp_path / "rm", "x.jsonl")
    cfg.objective.kind = objective
    with pytest.raises(ValueError, match="export_hf needs a decoder"):
        cfg.export_hf = True
        cfg.__post_init__()
