"""The reward-model stage on tiny in-memory models (fp32, CPU): outcomes and invariants, not "it ran"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewardmix.config import ConfigError, load_config
from rewardmix.data.pairs import PreferencePair, write_pairs
from rewardmix.data.readers import DataError
from rewardmix.data.rm_items import Item, balance_ratings, build_items, read_data
from rewardmix.data.toy import toy_pairs, toy_rankings, toy_ratings
from rewardmix.models.heads import ScalarHeadModel
from rewardmix.models.tiny import build_tiny_tokenizer
from rewardmix.rundir import RunDirError, read_jsonl
from rewardmix.scoring import RewardModelScorer, ScoringBatch, rm_inputs
from rewardmix.scoring.rm_inputs import RM_META_NAME, InputEncoder, collate, read_rm_meta, score_sequences
from rewardmix.stages import reward_model as rm
from rewardmix.stages.reward_model import loop as rm_loop

REPO = Path(__file__).resolve().parents[2]
TRAIN_KEYS = {"loss/train", "lr", "grad_norm", "epoch", "rm/train/accuracy"}
EVAL_KEYS = {"loss/eval", "rm/accuracy", "rm/margin_mean"}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny_config(out: Path, train: str, *, name: str = "tiny", lora: bool = False, **optim) -> rm.Config:
    """Full fine-tuning (or LoRA) of a tiny model; nothing logged that a test does not ask for."""
    cfg = rm.Config(output_dir=str(out), seed=0, cpu=True)
    cfg.model.name = name
    cfg.lora.enabled = lora
    cfg.lora.r, cfg.lora.alpha = 4, 8
    cfg.data.train = train
    cfg.optim.micro_batch_size = 8
    cfg.optim.learning_rate = 1e-3
    cfg.optim.warmup_ratio = 0.0
    for key, value in optim.items():
        setattr(cfg.optim, key, value)
    cfg.logging.eval_every = 0
    cfg.logging.num_samples = 0
    cfg.logging.checkpoint_every = 1000
    return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_pairs(folder / "train_pairs.jsonl", toy_pairs(128, seed=1))
    write_pairs(folder / "eval_pairs.jsonl", toy_pairs(48, seed=2))
    write_jsonl(folder / "train_rankings.jsonl", toy_rankings(48, seed=1))
    write_jsonl(folder / "eval_rankings.jsonl", toy_rankings(32, seed=2))
    write_jsonl(folder / "train_ratings.jsonl", toy_ratings(64, seed=1))
    write_jsonl(folder / "eval_ratings.jsonl", toy_ratings(48, seed=2))
    return folder


@pytest.fixture
def spy_model(monkeypatch):
    """Capture the model a run trains, and a copy of its weights before training."""
    seen: dict = {}
    original = rm_loop.load_model

    def spy(cfg):
        tokenizer, model, kind = original(cfg)
        seen["model"] = model
        seen["before"] = weights(model)
        return tokenizer, model, kind

    monkeypatch.setattr(rm_loop, "load_model", spy)
    return seen


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------------------------------------------------
# Padding and batch composition never change a score (CRS §8.2)


@pytest.mark.parametrize("name", ["tiny", "tiny-encoder"])
def test_score_does_not_depend_on_padding_side_or_batch_composition(name):
    cfg = rm.Config(cpu=True)
    cfg.model.name = name
    cfg.lora.enabled = False
    tokenizer, model, kind = rm.load_model(cfg)
    encoder = InputEncoder(tokenizer, kind, max_length=64, min_prompt_tokens=8)
    texts = [
        ("Say great about the movie.", "It is great."),
        ("Say terrible about it.", "It is terrible, the review was long and the movie was too."),
        ("hello", "yes"),
        ("Rate the movie.", "great terrible great great."),
    ]
    sequences = [encoder(p, a) for p, a in texts]
    assert len({len(s) for s in sequences}) == len(sequences)  # every batch below really pads
    pad = tokenizer.pad_token_id
    alone = torch.cat([score_sequences(model, [s], pad_id=pad) for s in sequences])
    for side in ("left", "right"):
        for batch_size in (2, 3, 4):
            batched = score_sequences(model, sequences, pad_id=pad, batch_size=batch_size, padding_side=side)
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
        # another composition: each text next to a long one, in reverse order
        mixed = score_sequences(model, [sequences[1], *sequences[::-1]], pad_id=pad, padding_side=side)
        torch.testing.assert_close(mixed[1:], alone.flip(0), atol=1e-5, rtol=0)
    # and the left-padded collate really puts pads first
    batch = collate(sequences, pad, padding_side="left")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1


@pytest.mark.parametrize("name", ["tiny", "tiny-encoder"])
def test_model_disable_dropout_makes_training_mode_scores_deterministic(name):
    """The LoRA adapter's dropout (and the tiny BERT's own, 0.1) draw a new mask every forward pass in training
    mode; with ``model.disable_dropout`` (the default) two passes give the same scores."""
    scores = {}
    for disable in (False, True):
        cfg = rm.Config(cpu=True, seed=0)
        cfg.model.name, cfg.model.disable_dropout = name, disable
        cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = 4, 8, 0.5
        tokenizer, model, kind = rm.load_model(cfg)
        with torch.no_grad():  # lora_B starts at 0, which would hide the adapter's dropout
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
        encoder = InputEncoder(tokenizer, kind, max_length=64, min_prompt_tokens=8)
        batch = collate([encoder("Say great about the movie.", "It is great."), encoder("hi", "yes")], 0)
        model.train()
        torch.manual_seed(0)
        with torch.no_grad():
            scores[disable] = (model(**batch), model(**batch))
        dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts and all(p == 0.0 for p in dropouts) == disable
    assert not torch.equal(*scores[False])  # the check below can fail: dropout does move these scores
    assert torch.equal(*scores[True])


# ---------------------------------------------------------------------------------------------------------
# Inputs


def test_causal_input_is_the_chat_rendered_prompt_and_answer(tiny_tokenizer):
    encoder = InputEncoder(tiny_tokenizer, "causal_lm", max_length=512, min_prompt_tokens=8)
    ids = encoder("What is two plus three?", "five.")
    expected = "<|im_start|>user\nWhat is two plus three?<|im_end|>\n<|im_start|>assistant\nfive.<|im_end|>\n"
    assert tiny_tokenizer.decode(list(ids)) == expected


def test_a_template_that_is_not_prefix_stable_falls_back_to_the_rendered_tokens(tiny_tokenizer, monkeypatch):
    """On prefix-stable inputs the fallback equals tokenize_chat (also truncated); when tokenize_chat refuses
    an input (SmolLM2 merges an answer's leading "\\n\\n" into the header), the fallback is used."""
    from rewardmix.data.chat import Message, TemplateNotPrefixStableError

    encoder = InputEncoder(tiny_tokenizer, "causal_lm", max_length=20, min_prompt_tokens=6)
    long_prompt = "What is two plus three? " * 6
    for prompt, answer in (("hi", "yes"), (long_prompt, "five."), ("hi", "one two three four five six " * 4)):
        messages = [Message("user", prompt), Message("assistant", answer)]
        assert encoder._causal_fallback(messages) == encoder(prompt, answer)
    assert len(encoder(long_prompt, "five.")) == 20 and encoder.unstable == 0

    def refuse(*args, **kwargs):
        raise TemplateNotPrefixStableError("merged")

    expected = encoder(long_prompt, "five.")
    monkeypatch.setattr(rm_inputs, "tokenize_chat", refuse)
    assert encoder(long_prompt, "five.") == expected and encoder.unstable == 1


def test_encoder_input_is_a_text_pair_truncated_from_the_prompt_start():
    from rewardmix.models.loading import load_tokenizer

    tokenizer = load_tokenizer("offline:minilm")
    encoder = InputEncoder(tokenizer, "encoder", max_length=16, min_prompt_tokens=4)
    assert tokenizer.decode(list(encoder("a short question", "the answer is: positive"))) == (
        "[CLS] a short question [SEP] the answer is : positive [SEP]"
    )
    long_prompt = "one two three four five six seven eight nine ten eleven twelve"
    ids = encoder(long_prompt, "the answer is: positive")
    # 16 tokens: [CLS] + the prompt's LAST 8 words + [SEP] + the whole answer (5 tokens) + [SEP]
    assert len(ids) == 16
    assert (
        tokenizer.decode(list(ids))
        == "[CLS] five six seven eight nine ten eleven twelve [SEP] the answer is : positive [SEP]"
    )


def test_an_sft_lora_adapter_folder_is_refused_with_a_clear_message(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="merge_lora"):
        rm.guess_kind(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert rm.guess_kind(str(tmp_path)) == "encoder"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert rm.guess_kind(str(tmp_path)) == "causal_lm"


# ---------------------------------------------------------------------------------------------------------
# Objectives: losses on known scores, then training on learnable toy data


def test_item_losses_match_hand_computation():
    import torch.nn.functional as F

    pair = Item("p", ("a", "b"), ((1,), (2,)), (0.0, 1.0), margin=0.5)
    pairwise = rm.ObjectiveConfig(kind="pairwise")
    scores = torch.tensor([2.0, 1.0, 0.0, 1.0])  # pair 1: 2 vs 1, pair 2: 0 vs 1
    # -log sigmoid(2 - 1 - 0.5) - log sigmoid(0 - 1 - 0.5)
    expected = -(F.logsigmoid(torch.tensor(0.5)) + F.logsigmoid(torch.tensor(-1.5)))
    torch.testing.assert_close(rm.items_loss(pairwise, [pair, pair], scores), expected)

    # a K=3 group with ranks 1 < 2 < 3 (scores 3, 1, 2) and a group of two with a tie: the tie makes no pair,
    # so only the first group counts: mean of its 3 pair losses
    group = Item("p", ("a", "b", "c"), ((1,), (2,), (3,)), (1.0, 2.0, 3.0))
    tied = Item("q", ("a", "b"), ((1,), (2,)), (1.0, 1.0))
    ranking = rm.ObjectiveConfig(kind="ranking")
    s = torch.tensor([3.0, 1.0, 2.0, 5.0, 0.0])
    by_hand = (
        -(
            F.logsigmoid(torch.tensor(2.0))
            + F.logsigmoid(torch.tensor(1.0))
            + F.logsigmoid(torch.tensor(-1.0))
        )
        / 3
    )
    torch.testing.assert_close(rm.items_loss(ranking, [group, tied], s), by_hand)
    better, worse = rm.ordered_pairs([group, tied], s)
    assert sorted(zip(better.tolist(), worse.tolist(), strict=True)) == [(1.0, 2.0), (3.0, 1.0), (3.0, 2.0)]

    rated = [
        Item("p", ("a",), ((1,),), (), target=0.25, weight=2.0),
        Item("p", ("b",), ((2,),), (), target=1.0),
    ]
    absolute = rm.ObjectiveConfig(kind="absolute", absolute_loss="sigmoid_mse")
    z = torch.tensor([0.0, 0.0])  # sigmoid = 0.5: 2 * 0.25^2 + 1 * 0.5^2
    torch.testing.assert_close(rm.items_loss(absolute, rated, z), torch.tensor(2 * 0.0625 + 0.25))


@pytest.mark.slow
def test_pairwise_training_raises_held_out_accuracy_from_chance(tmp_path, data_dir):
    """Toy pairs are learnable only from how the answer relates to the prompt (half ask for each word)."""
    cfg = tiny_config(tmp_path / "run", str(data_dir / "train_pairs.jsonl"), epochs=8, learning_rate=2e-3)
    cfg.data.eval = str(data_dir / "eval_pairs.jsonl")
    cfg.logging.eval_every = 1000
    cfg.logging.num_samples = 2
    result = rm.run(cfg)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["step"] == 0 and set(rows[0]) == EVAL_KEYS | {"step"}
    assert 0.25 <= rows[0]["rm/accuracy"] <= 0.75  # chance at the start
    assert rows[-1]["rm/accuracy"] >= 0.9 and result.eval_metrics["rm/accuracy"] >= 0.9
    assert TRAIN_KEYS | EVAL_KEYS <= set(rows[-1])
    assert rows[-1]["rm/margin_mean"] > rows[0]["rm/margin_mean"] + 1.0
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert {r["step"] for r in samples} == {0, result.global_step} and len(samples[0]["scores"]) == 2


@pytest.mark.slow
def test_ranking_objective_learns_k3_groups(tmp_path, data_dir):
    cfg = tiny_config(tmp_path / "run", str(data_dir / "train_rankings.jsonl"), epochs=10, micro_batch_size=4)
    cfg.objective.kind = "ranking"
    cfg.data.eval = str(data_dir / "eval_rankings.jsonl")
    result = rm.run(cfg)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["format"] == "ranking" and report["train"]["sequences"] == 3 * 48  # K = 3 per item
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["rm/accuracy"] < 0.8
    assert result.eval_metrics["rm/accuracy"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mse_range_penalty", "sigmoid_mse", "logistic"])
def test_each_absolute_objective_reduces_eval_mse(tmp_path, data_dir, loss):
    cfg = tiny_config(tmp_path / "run", str(data_dir / "train_ratings.jsonl"), name="tiny-encoder", epochs=8)
    cfg.objective.kind = "absolute"
    cfg.objective.absolute_loss = loss
    cfg.data.eval = str(data_dir / "eval_ratings.jsonl")
    result = rm.run(cfg)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert {"loss/eval", "rm/mse", "rm/mae"} <= set(rows[0])
    assert result.eval_metrics["rm/mse"] < 0.5 * rows[0]["rm/mse"]
    meta = json.loads((result.model_dir / RM_META_NAME).read_text())
    assert meta["score_transform"] == ("identity" if loss == "mse_range_penalty" else "sigmoid")


# ---------------------------------------------------------------------------------------------------------
# What changes and what must not; saved model


def test_lora_trains_adapter_and_head_and_leaves_the_base_bit_identical(tmp_path, data_dir, spy_model):
    cfg = tiny_config(tmp_path / "run", str(data_dir / "train_pairs.jsonl"), lora=True, max_steps=3)
    result = rm.run(cfg)
    before, after = spy_model["before"], weights(spy_model["model"])
    lora_b = [k for k in after if "lora_B" in k]
    base = [k for k in after if "lora_" not in k and not k.startswith("head.")]
    assert lora_b and base
    assert all(not torch.equal(after[k], before[k]) for k in lora_b)  # B starts at 0: trained ones moved
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert all(torch.equal(after[k], before[k]) for k in base)
    # model/ is the merged backbone + head: it scores what the trained LoRA model scores
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (result.adapter_dir / "head.safetensors").is_file()
    loaded = ScalarHeadModel.from_pretrained(result.model_dir)
    ids = torch.tensor([[3, 50, 60, 70, 4], [0, 0, 3, 80, 4]])
    mask = (torch.arange(5) >= torch.tensor([[0], [2]])).long()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), spy_model["model"].eval()(ids, mask), atol=1e-5, rtol=0)


def test_lora_reward_model_loads_as_a_role_on_the_policy_base(tmp_path, data_dir, spy_model):
    """PPO keeps reward models as LoRA roles on the policy's causal-LM base: the saved adapter must fit it."""
    from rewardmix.models.lora import LoraSettings, active_role, add_adapters, load_adapter
    from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer

    cfg = tiny_config(tmp_path / "run", str(data_dir / "train_pairs.jsonl"), lora=True, max_steps=2)
    result = rm.run(cfg)
    trained = spy_model["model"].eval()
    # The PPO base: the same pretrained weights (same seed), as a causal LM with a policy role.
    base = build_tiny_causal_lm(build_tiny_tokenizer(), seed=cfg.seed)
    shared = ScalarHeadModel(add_adapters(base, ["policy"], LoraSettings(r=4, alpha=8)), kind="causal_lm")
    load_adapter(shared, "rm", result.adapter_dir)  # raises if the tensors do not fit
    ids = torch.tensor([[3, 50, 60, 70, 4], [0, 0, 3, 80, 4]])
    mask = (torch.arange(5) >= torch.tensor([[0], [2]])).long()
    with torch.no_grad(), active_role(shared.backbone, "rm"):
        torch.testing.assert_close(shared.eval()(ids, mask), trained(ids, mask), atol=1e-5, rtol=0)


def test_full_fine_tuning_saves_a_model_the_scorer_loads_and_scores_the_same(tmp_path, data_dir, spy_model):
    cfg = tiny_config(tmp_path / "run", str(data_dir / "train_pairs.jsonl"), max_steps=2)
    result = rm.run(cfg)
    trained = spy_model["model"].eval()
    assert result.adapter_dir is None and result.global_step == 2
    changed = [k for k, v in weights(trained).items() if not torch.equal(v, spy_model["before"][k])]
    assert "head.weight" in changed and any(k.startswith("backbone.") for k in changed)
    scorer = RewardModelScorer.from_pretrained(result.model_dir, batch_size=3)
    meta = read_rm_meta(result.model_dir)
    assert meta["kind"] == "causal_lm" and meta["input"] == "chat" and meta["score_transform"] == "identity"
    pairs = toy_pairs(5, seed=9)
    prompts, answers = [p.prompt for p in pairs], [p.chosen for p in pairs]
    expected = torch.stack(
        [trained(**collate([scorer.encoder(p, a)], 0)) for p, a in zip(prompts, answers, strict=True)]
    )
    torch.testing.assert_close(
        scorer.head_values(ScoringBatch(prompts, answers)), expected.squeeze(1).detach(), atol=1e-5, rtol=0
    )


# ---------------------------------------------------------------------------------------------------------
# Invariants: exact gradient accumulation, resume


def test_gradient_accumulation_1x8_equals_8x1(tmp_path, data_dir, spy_model):
    """Two steps of 8 pairs as 1 micro-batch of 8 or as 8 micro-batches of 1: the same updates.

    Adam divides by sqrt(v) + eps, which turns float noise on a near-zero gradient (an embedding row seen
    once) into a full-size step; a larger eps keeps this comparison about the accumulated gradient (checked
    on its own in the next test), not about Adam's amplification of rounding.
    """
    final = {}
    for micro, accum in ((8, 1), (1, 8)):
        out = tmp_path / f"{micro}x{accum}"
        cfg = tiny_config(
            out,
            str(data_dir / "train_pairs.jsonl"),
            micro_batch_size=micro,
            gradient_accumulation_steps=accum,
            max_steps=2,
            adam_epsilon=1e-4,
        )
        rm.run(cfg)
        final[micro] = weights(spy_model["model"])
        assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    moved = max((final[8][k] - spy_model["before"][k]).abs().max().item() for k in final[8])
    assert moved > 1e-4  # the runs did train
    for name in final[8]:
        torch.testing.assert_close(final[1][name], final[8][name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("objective", ["pairwise", "ranking", "absolute"])
def test_the_accumulated_gradient_does_not_depend_on_the_micro_batch_size(data_dir, objective):
    from accelerate import Accelerator

    train = {
        "pairwise": "train_pairs.jsonl",
        "ranking": "train_rankings.jsonl",
        "absolute": "train_ratings.jsonl",
    }
    cfg = tiny_config(Path("unused"), str(data_dir / train[objective]))
    cfg.objective.kind = objective
    tokenizer, model, kind = rm.load_model(cfg)
    encoder = InputEncoder(tokenizer, kind, max_length=1024, min_prompt_tokens=256)
    items = rm.load_items(cfg, encoder)[0][:8]
    grads = {}
    for micro in (8, 3, 1):
        cfg.optim.micro_batch_size = micro
        model.zero_grad()
        stats = rm.accumulate_gradients(
            model,
            items,
            cfg.objective,
            Accelerator(cpu=True),
            0,
            micro_batch_size=cfg.optim.micro_batch_size,
            filler=items[0],
        )
        grads[micro] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        assert stats["items"] == 8
    assert grads[8].keys() == grads[1].keys() and grads[8]
    for micro in (3, 1):
        for name, grad in grads[8].items():
            torch.testing.assert_close(grads[micro][name], grad, atol=5e-7, rtol=1e-4)


class Killed(Exception):
    pass


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, data_dir, spy_model):
    def config(out: Path) -> rm.Config:
        cfg = tiny_config(out, str(data_dir / "train_pairs.jsonl"), lora=True, max_steps=4, warmup_ratio=0.5)
        cfg.data.eval = str(data_dir / "eval_pairs.jsonl")
        cfg.logging.eval_every = 2
        cfg.logging.checkpoint_every = 2
        return cfg

    rm.run(config(tmp_path / "straight"))
    straight = weights(spy_model["model"])

    def kill_at_3(step, row):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        rm.run(config(tmp_path / "killed"), on_step=kill_at_3)
    resumed = rm.run(config(tmp_path / "killed"))  # same command again: continues from step 2
    assert resumed.global_step == 4
    for name, value in weights(spy_model["model"]).items():
        assert torch.equal(value, straight[name]), name
    rows = {m: read_jsonl(tmp_path / m / "metrics.jsonl") for m in ("straight", "killed")}
    assert [r["step"] for r in rows["killed"]] == [0, 1, 2, 3, 4]  # the redone step 3 is not logged twice
    for key in ("loss/train", "lr", "grad_norm", "loss/eval", "rm/accuracy", "rm/margin_mean"):
        assert rows["killed"][-1][key] == rows["straight"][-1][key], key


def test_resume_refuses_other_data(tmp_path):
    # the same config, the file's content changed: the checkpoint's data/batch plan refuses it
    train = tmp_path / "pairs.jsonl"
    write_pairs(train, toy_pairs(128, seed=1))
    cfg = tiny_config(tmp_path / "run", str(train), max_steps=1)
    rm.run(cfg)
    write_pairs(train, toy_pairs(48, seed=2))
    with pytest.raises(ValueError, match="another data/batch plan"):
        rm.run(cfg)


def test_resume_with_another_data_file_is_refused_by_the_config_check(tmp_path, data_dir):
    cfg = tiny_config(tmp_path / "run", str(data_dir / "train_pairs.jsonl"), max_steps=1)
    rm.run(cfg)
    cfg.data.train = str(data_dir / "eval_pairs.jsonl")
    with pytest.raises(RunDirError, match=r"another config \(data\.train: "):
        rm.run(cfg)


# ---------------------------------------------------------------------------------------------------------
# Data: margins, groups from pairs, formats, imbalance tools


def encoder_for_tests() -> InputEncoder:
    return InputEncoder(build_tiny_tokenizer(), "causal_lm", max_length=256, min_prompt_tokens=8)


def test_margins_come_from_pair_meta_or_the_constant():
    cfg = rm.Config()
    cfg.objective.margin, cfg.objective.margin_key, cfg.objective.margin_scale = 0.25, "margin", 2.0
    pairs = [
        PreferencePair("p", "good answer", "bad answer", "rating", meta={"margin": 0.5}),
        PreferencePair("q", "good answer", "bad answer", "label_sensitive"),
    ]
    items, counts = build_items(pairs, "pairs", cfg.objective, cfg.data, encoder_for_tests())
    assert [it.margin for it in items] == [1.0, 0.25]
    assert counts["pairs_without_margin_key"] == 1


def test_ranking_groups_are_rebuilt_from_ranked_pairs():
    from rewardmix.data.pairs import pairs_from_ranking

    cfg = rm.Config()
    cfg.objective.kind = "ranking"
    ranked = pairs_from_ranking("prompt", ["a one", "b two", "c three"], [2, 1, 3]).pairs
    loose = PreferencePair("other", "yes", "no", "label_sensitive")
    items, counts = build_items([*ranked, loose], "pairs", cfg.objective, cfg.data, encoder_for_tests())
    assert counts["groups_from_pairs"] == 1 and counts["pairs_without_ranks"] == 1
    group = items[0]
    assert dict(zip(group.answers, group.ranks, strict=True)) == {"b two": 1.0, "a one": 2.0, "c three": 3.0}
    assert items[1].ranks == (0.0, 1.0)


def test_pairs_that_truncation_makes_identical_are_dropped():
    cfg = rm.Config()
    encoder = InputEncoder(build_tiny_tokenizer(), "causal_lm", max_length=12, min_prompt_tokens=8)
    pairs = [PreferencePair("p", "same start then great", "same start then terrible", "label_sensitive")]
    items, counts = build_items(pairs, "pairs", cfg.objective, cfg.data, encoder)
    assert items == [] and counts["dropped_identical_after_truncation"] == 1


def test_formats_are_detected_and_checked(tmp_path):
    cfg = rm.Config()
    ratings = write_jsonl(tmp_path / "r.jsonl", [{"response": "x", "score": 0.5}])
    assert read_data(ratings, cfg.data, "absolute", seed=0)[1] == "ratings"
    with pytest.raises(DataError, match="pairwise objective needs pairs or ranking"):
        build_items(
            [{"response": "x", "score": 0.5}], "ratings", cfg.objective, cfg.data, encoder_for_tests()
        )
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match="cannot tell the format"):
        read_data(bad, cfg.data, "absolute", seed=0)
    cfg.objective.kind = "absolute"
    with pytest.raises(DataError, match="outside"):
        build_items(
            [{"response": "x", "score": 1.5}], "ratings", cfg.objective, cfg.data, encoder_for_tests()
        )


def test_imbalance_tools_run_in_order_and_set_loss_weights(tmp_path):
    cfg = rm.Config()
    rows = [{"response": f"r{i}", "score": s} for i, s in enumerate([0.1, 0.2] + [0.5] * 10 + [0.95] * 4)]
    cfg.balance.undersample_range = (0.41, 0.89)
    cfg.balance.undersample_bins, cfg.balance.undersample_total = 1, 4  # keep 4 of the 10 mid ratings
    cfg.balance.oversample_range = (0.0, 0.4)  # the 2 low ones twice
    cfg.balance.weight_strength = 1.0
    cfg.balance.weight_normalize = False
    out, report = balance_ratings(rows, cfg.balance, cfg.augment, cfg.data, seed=cfg.seed)
    assert report == {
        "records_in": 16,
        "after_undersample": 10,
        "after_oversample": 12,
        "pre_augmented": 0,
        "weights": {"min": 1.0, "max": 3.0},
        "records_out": 12,
    }
    # the low end (bin 0) gets N / n_low = 12 / 4 = 3, the rest 1
    assert sorted(r["_weight"] for r in out if r["score"] < 0.4) == [3.0] * 4
    items, _ = build_items(out, "ratings", _absolute(cfg).objective, cfg.data, encoder_for_tests())
    assert sorted(it.weight for it in items) == [1.0] * 8 + [3.0] * 4


def _absolute(cfg: rm.Config) -> rm.Config:
    cfg.objective.kind = "absolute"
    return cfg


def test_paraphrase_augmentation_uses_the_given_paraphrases(tmp_path, monkeypatch):
    from rewardmix.models import encoder as encoder_module

    class FakeSimilarity:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        def similarity(self, a, b):
            return [0.5] * len(a)

    monkeypatch.setattr(encoder_module, "SentenceEncoder", FakeSimilarity)
    cfg = rm.Config()
    cfg.augment.paraphrases = write_jsonl(
        tmp_path / "p.jsonl", [{"text": "bad reply", "paraphrase": "poor reply"}]
    )
    cfg.augment.high, cfg.augment.adjustment = 0.4, 0.8
    rows = [
        {"response": "bad reply", "score": 0.25},
        {"response": "other", "score": 0.3},
        {"response": "ok", "score": 0.7},
    ]
    similarity = rm_loop.load_similarity(cfg.augment)  # the stage's loader, on the fake encoder
    out, report = balance_ratings(
        rows, cfg.balance, cfg.augment, cfg.data, seed=cfg.seed, similarity=similarity
    )
    assert report["augment"] == {
        "candidates": 2,
        "added": 1,
        "skipped": {"empty": 1, "identical": 0, "language": 0},
    }
    assert out[-1]["response"] == "poor reply" and out[-1]["score"] == pytest.approx(0.25 * 0.8 * 0.5)


# ---------------------------------------------------------------------------------------------------------
# Config


def test_shipped_config_loads_strictly_and_unknown_keys_are_errors(tmp_path):
    cfg = load_config(rm.Config, REPO / "configs" / "reward-model.yaml", stage="reward-model")
    assert cfg.objective.kind == "pairwise" and cfg.model.name == "runs/sft/model"
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: reward-model\nobjective:\n  kind: pairwise\n  margn: 1.0\n")
    with pytest.raises(ConfigError, match="margn"):
        load_config(rm.Config, bad, stage="reward-model")
    with pytest.raises(ConfigError, match="kind"):
        load_config(rm.Config, None, ["objective.kind=listwise"], stage="reward-model")
    with pytest.raises(ConfigError, match="oversample_range"):
        load_config(rm.Config, None, ["balance.oversample_range=[0.5, 0.2]"], stage="reward-model")
