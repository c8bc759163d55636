"""Tests for rewardmix.models.heads: pooling indices, padding invariance (CRS §8.2), save/load round trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmix.models.heads import (
    HEAD_CONFIG_NAME,
    HEAD_WEIGHTS_NAME,
    ScalarHeadModel,
    first_token_index,
    last_token_index,
    pool_hidden,
    position_ids_from_mask,
    right_align,
)
from rewardmix.models.lora import LoraSettings, add_adapters
from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_encoder

# peft 0.21 reads a transformers attribute deprecated in 5.x; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

POOLINGS = ("last", "first", "mean")
TOL = 1e-5  # the bound, fp32
TEXTS = [
    "hello world",
    "The movie was great, the acting was terrible.",
    "yes",
    "How many clips did Natalia sell altogether in April and May? #### 72",
]


@pytest.fixture(scope="module")
def backbones(tiny_tokenizer):
    """A tiny Llama (full causal LM: the head must skip its LM head) and a tiny BERT, both fp32, eval mode."""
    return {
        "causal_lm": build_tiny_causal_lm(tiny_tokenizer, seed=1),
        "encoder": build_tiny_encoder(tiny_tokenizer, seed=2),
    }


def _pad(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids, mask = [], []
    for r in rows:
        pads = width - len(r)
        ids.append([pad_id] * pads + r if side == "left" else r + [pad_id] * pads)
        mask.append([0] * pads + [1] * len(r) if side == "left" else [1] * len(r) + [0] * pads)
    return torch.tensor(ids), torch.tensor(mask)


def _scores_alone_and_batched(model, rows, pad_id):
    with torch.no_grad():
        alone = torch.cat([model(*_pad([r], pad_id, "right")) for r in rows])
        right = model(*_pad(rows, pad_id, "right"))
        left = model(*_pad(rows, pad_id, "left"))
    return alone, right, left


# ---------------------------------------------------------------------------------------------- index helpers


def test_last_token_index_hand_cases():
    mask = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # right padding: last real token at 2
            [0, 0, 1, 1, 1],  # left padding: at 4
            [1, 1, 1, 1, 1],  # no padding: at 4
            [0, 0, 0, 0, 1],  # one token, left-padded: at 4
            [1, 0, 0, 0, 0],  # one token, right-padded: at 0
            [0, 1, 1, 0, 0],  # padded on both sides: at 2
        ]
    )
    assert last_token_index(mask).tolist() == [2, 4, 4, 4, 0, 2]
    assert last_token_index(mask.bool()).tolist() == [2, 4, 4, 4, 0, 2]
    assert last_token_index(mask).dtype == torch.long
    assert first_token_index(mask).tolist() == [0, 2, 0, 4, 0, 1]


def test_position_ids_from_mask_start_at_zero_on_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    # cumsum - 1 = [-1,-1,0,1,2] -> clamped [0,0,0,1,2]; right padding: [0,1,2,2,2]
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


def test_right_align_moves_real_tokens_to_the_front_in_order():
    ids = torch.tensor([[9, 9, 5, 6, 7], [5, 6, 9, 9, 9], [9, 5, 6, 9, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0]])
    aligned_ids, aligned_mask, order = right_align(ids, mask)
    assert aligned_ids.tolist() == [[5, 6, 7, 9, 9], [5, 6, 9, 9, 9], [5, 6, 9, 9, 9]]
    assert aligned_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert torch.equal(ids.gather(1, order), aligned_ids)


def test_pool_hidden_hand_cases():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # row0 tokens (0,1),(2,3),(4,5)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right-padded, left-padded
    assert pool_hidden(hidden, mask, "last").tolist() == [[2, 3], [10, 11]]
    assert pool_hidden(hidden, mask, "first").tolist() == [[0, 1], [8, 9]]
    # mean of (0,1),(2,3) = (1,2); of (8,9),(10,11) = (9,10)
    assert pool_hidden(hidden, mask, "mean").tolist() == [[1, 2], [9, 10]]
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden(hidden, mask, "max")


# ------------------------------------------------------------------------------------------ padding invariance


@pytest.mark.parametrize("kind", ["causal_lm", "encoder"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_score_same_alone_left_padded_and_right_padded(backbones, tiny_tokenizer, kind, pooling):
    model = ScalarHeadModel(backbones[kind], pooling=pooling, seed=0)
    rows = [tiny_tokenizer(t)["input_ids"] for t in TEXTS]
    alone, right, left = _scores_alone_and_batched(model, rows, tiny_tokenizer.pad_token_id)
    assert alone.dtype == torch.float32 and alone.shape == (len(TEXTS),)
    torch.testing.assert_close(right, alone, rtol=0, atol=TOL)
    torch.testing.assert_close(left, alone, rtol=0, atol=TOL)
    assert alone.std() > 1e-3  # the texts get different scores: the comparison is not vacuous


@settings(max_examples=12, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(5, 399), min_size=1, max_size=12), min_size=1, max_size=4),
    pad_id=st.sampled_from([0, 1]),  # <pad>, or <eos> as pad (the fallback of load_tokenizer)
)
def test_padding_invariance_random_lengths(backbones, rows, pad_id):
    for kind in ("causal_lm", "encoder"):
        for pooling in POOLINGS:
            model = ScalarHeadModel(backbones[kind], pooling=pooling, seed=0)
            alone, right, left = _scores_alone_and_batched(model, rows, pad_id)
            torch.testing.assert_close(right, alone, rtol=0, atol=TOL)
            torch.testing.assert_close(left, alone, rtol=0, atol=TOL)


def test_raw_encoder_is_not_left_padding_invariant(backbones, tiny_tokenizer):
    # Why right_align exists: BERT's default absolute positions shift with left padding. If this ever stops
    # failing, the invariance test above would lose its power to detect a missing alignment for encoders.
    rows = [tiny_tokenizer(TEXTS[0])["input_ids"], tiny_tokenizer(TEXTS[1])["input_ids"]]
    ids, mask = _pad(rows, tiny_tokenizer.pad_token_id, "left")
    with torch.no_grad():
        raw = backbones["encoder"](input_ids=ids, attention_mask=mask).last_hidden_state
        alone = backbones["encoder"](input_ids=torch.tensor([rows[0]])).last_hidden_state
    assert (raw[0, -1] - alone[0, -1]).abs().max() > 1e-2


def test_token_scores_are_padding_invariant_and_match_last_pooling(backbones, tiny_tokenizer):
    model = ScalarHeadModel(backbones["causal_lm"], pooling="last", seed=0)
    rows = [tiny_tokenizer(t)["input_ids"] for t in TEXTS]
    with torch.no_grad():
        ids_r, mask_r = _pad(rows, 0, "right")
        ids_l, mask_l = _pad(rows, 0, "left")
        right, left = model.token_scores(ids_r, mask_r), model.token_scores(ids_l, mask_l)
        scores = model(ids_r, mask_r)
    for i, r in enumerate(rows):
        n, width = len(r), ids_r.shape[1]
        torch.testing.assert_close(left[i, width - n :], right[i, :n], rtol=0, atol=TOL)
    torch.testing.assert_close(
        right[torch.arange(len(rows)), last_token_index(mask_r)], scores, rtol=0, atol=TOL
    )


def test_rejects_empty_rows_and_holes(backbones):
    model = ScalarHeadModel(backbones["encoder"], pooling="first")
    ids = torch.full((2, 4), 7)
    with pytest.raises(ValueError, match="without any real token"):
        model(ids, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="contiguous"):
        model(ids, torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]]))


def test_scores_float32_for_bf16_backbone(tiny_tokenizer):
    backbone = build_tiny_causal_lm(tiny_tokenizer).to(torch.bfloat16)
    model = ScalarHeadModel(backbone)
    scores = model(*_pad([[5, 6, 7]], 0, "right"))
    assert scores.dtype == torch.float32 and model.head.weight.dtype == torch.float32


# ------------------------------------------------------------------------------------------- head and training


def test_head_init_is_seeded_small_and_leaves_global_rng_alone(backbones):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = ScalarHeadModel(backbones["causal_lm"], seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # seeding the head did not consume the global stream
    b = ScalarHeadModel(backbones["causal_lm"], seed=7)
    c = ScalarHeadModel(backbones["causal_lm"], seed=8)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)
    assert torch.count_nonzero(a.head.bias) == 0
    # std 1/sqrt(H+1) = 1/sqrt(33) ~ 0.174; with 32 weights the sample std lies well inside [0.08, 0.3]
    assert 0.08 < a.head.weight.std().item() < 0.3


def test_gradients_reach_head_and_backbone(tiny_tokenizer):
    model = ScalarHeadModel(build_tiny_causal_lm(tiny_tokenizer), seed=0).train()
    model(*_pad([[5, 6, 7], [8, 9]], 0, "left")).sum().backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    body_grads = [p.grad for p in model.backbone.model.parameters() if p.grad is not None]
    assert body_grads and any(g.abs().sum() > 0 for g in body_grads)
    assert model.backbone.lm_head.weight.grad is None  # the LM head is skipped, not computed


# ------------------------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize("kind", ["causal_lm", "encoder"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_save_load_round_trip_identical_scores_safetensors_only(
    backbones, tiny_tokenizer, tmp_path, kind, pooling
):
    model = ScalarHeadModel(backbones[kind], pooling=pooling, seed=3)
    ids, mask = _pad([tiny_tokenizer(t)["input_ids"] for t in TEXTS], 0, "left")
    architectures = backbones[kind].config.architectures
    out = model.save_pretrained(tmp_path / "rm")
    assert backbones[kind].config.architectures == architectures  # the live model's config is not re-stamped
    torch.manual_seed(11)
    expected_next = torch.rand(2)
    torch.manual_seed(11)
    loaded = ScalarHeadModel.from_pretrained(out)  # kind read from rewardmix_head.json
    assert torch.equal(torch.rand(2), expected_next)  # loading does not consume the caller's RNG stream
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))
    assert loaded.kind == kind and loaded.pooling == pooling and not loaded.training
    names = sorted(p.name for p in out.iterdir())
    assert HEAD_WEIGHTS_NAME in names and HEAD_CONFIG_NAME in names and "model.safetensors" in names
    assert all(n.endswith((".safetensors", ".json")) for n in names), names
    assert [p.name for p in tmp_path.iterdir()] == ["rm"]  # no temporary folder left behind
    if kind == "causal_lm":  # saved as the body: no LM head weights on disk
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert not any("lm_head" in k for k in f.keys())


def test_load_head_rejects_mismatched_head(backbones, tiny_tokenizer, tmp_path):
    ScalarHeadModel(backbones["causal_lm"], pooling="last").save_pretrained(tmp_path / "rm")
    other = ScalarHeadModel(backbones["causal_lm"], pooling="mean")
    with pytest.raises(ValueError, match="does not fit"):
        other.load_head(tmp_path / "rm")


def test_save_pretrained_refuses_lora_backbone(tiny_tokenizer, tmp_path):
    peft_model = add_adapters(build_tiny_causal_lm(tiny_tokenizer), ["rm_label"], LoraSettings(r=2, alpha=4))
    with pytest.raises(TypeError, match="merge_and_save"):
        ScalarHeadModel(peft_model).save_pretrained(tmp_path / "rm")
    assert not (tmp_path / "rm").exists()
