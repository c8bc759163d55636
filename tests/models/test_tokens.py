"""rewardmix.models.tokens: the one padding id and the one set of stop ids, on hand-built tokenizers.

Each case is also checked against the copies these functions replaced (SFT's ``_pad_id``/``_stop_ids``, PPO's
``pad_token_id``/``stop_token_ids``, the reward model's ``_pad_id`` and the local chat model's
``_end_token_ids``), written out below as they were: for every tokenizer in use they must agree.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from rewardmix.models.tiny import build_tiny_tokenizer
from rewardmix.models.tokens import pad_token_id, stop_token_ids

# ---------------------------------------------------------------------------------------------------------
# The copies before issue 14 (stages/sft.py, stages/ppo.py, stages/reward_model.py, models/chat_model.py)


def old_pad_id(tokenizer: Any) -> int:  # identical in sft, ppo and reward_model
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def old_stop_ids(tokenizer: Any) -> list[int]:  # identical in sft and ppo
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def old_chat_model_end_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    ids = []
    eos = tokenizer.eos_token_id
    if eos is not None:
        ids.extend(eos if isinstance(eos, list) else [eos])
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if gen_eos is not None:
        ids.extend(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.append(im_end)
    return sorted(set(ids))


# ---------------------------------------------------------------------------------------------------------
# Hand-built tokenizers


def word_level(vocab: list[str], **special: str) -> PreTrainedTokenizerFast:
    """A real fast tokenizer over ``vocab`` (ids in order), with the given special tokens."""
    unk = special.get("unk_token")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=unk))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def fake(*, pad=None, eos=None, unk=None, vocab: dict[str, int] | None = None) -> SimpleNamespace:
    """Duck-typed tokenizer; ``convert_tokens_to_ids`` falls back to ``unk`` as transformers does."""
    vocab = vocab or {}
    return SimpleNamespace(
        pad_token_id=pad,
        eos_token_id=eos,
        unk_token_id=unk,
        convert_tokens_to_ids=lambda token: vocab.get(token, unk),
    )


TOKENIZERS = {
    # the tiny test tokenizer: <pad>=0, <eos>=1, <unk>=2, <|im_start|>=3, <|im_end|>=4
    "tiny": build_tiny_tokenizer,
    # SmolLM2-Instruct's layout: <|endoftext|>=0 is unk, EOS and pad are <|im_end|>=2
    "smollm2_like": lambda: word_level(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "hi"],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    ),
    # no <|im_end|> in the vocabulary, an unknown token to fall back on; no pad token (-> EOS)
    "no_im_end": lambda: word_level(["<unk>", "</s>", "hi"], unk_token="<unk>", eos_token="</s>"),
    # no <|im_end|> and no unknown token: the lookup gives None
    "no_unk": lambda: word_level(["</s>", "hi"], eos_token="</s>"),
    # neither pad nor EOS: pad falls back to 0, no stop id at all
    "bare": lambda: word_level(["hi", "there"]),
    # <|im_end|> besides a distinct EOS, pad id 0 (a falsy id that must be kept)
    "im_end_not_eos": lambda: word_level(
        ["<pad>", "<eos>", "<|im_end|>"], pad_token="<pad>", eos_token="<eos>"
    ),
}

EXPECTED = {  # (pad_token_id, stop_token_ids), worked out from the layouts above
    "tiny": (0, [1, 4]),
    "smollm2_like": (2, [2]),
    "no_im_end": (1, [1]),
    "no_unk": (0, [0]),
    "bare": (0, []),
    "im_end_not_eos": (0, [1, 2]),
}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_hand_built_tokenizers_give_the_expected_ids_and_agree_with_the_old_copies(name):
    tokenizer = TOKENIZERS[name]()
    assert (pad_token_id(tokenizer), stop_token_ids(tokenizer)) == EXPECTED[name]
    assert pad_token_id(tokenizer) == old_pad_id(tokenizer)
    assert stop_token_ids(tokenizer) == old_stop_ids(tokenizer)
    assert stop_token_ids(tokenizer, generation_config=None) == old_chat_model_end_ids(tokenizer, None)


def test_pad_falls_back_to_eos_then_to_zero():
    assert pad_token_id(fake(pad=7, eos=3)) == 7
    assert pad_token_id(fake(pad=0, eos=3)) == 0  # a pad id of 0 is a pad id, not "missing"
    assert pad_token_id(fake(eos=3)) == 3
    assert pad_token_id(fake()) == 0


def test_im_end_counts_only_when_it_is_a_real_token():
    assert stop_token_ids(fake(eos=1, unk=9, vocab={"<|im_end|>": 5})) == [1, 5]
    assert stop_token_ids(fake(eos=1, unk=9)) == [1]  # the lookup fell back to <unk>
    assert stop_token_ids(fake(eos=1)) == [1]  # the lookup gave None
    assert stop_token_ids(fake(eos=5, vocab={"<|im_end|>": 5})) == [5]  # EOS is <|im_end|>: listed once


@pytest.mark.parametrize(
    ("gen_eos", "expected"),
    [(None, [1, 4]), (1, [1, 4]), (7, [1, 4, 7]), ([7, 3, 7], [1, 3, 4, 7])],
)
def test_a_generation_config_adds_its_eos_ids_as_the_chat_model_did(gen_eos, expected):
    tokenizer = build_tiny_tokenizer()
    generation_config = SimpleNamespace(eos_token_id=gen_eos)
    got = stop_token_ids(tokenizer, generation_config=generation_config)
    assert got == expected == old_chat_model_end_ids(tokenizer, generation_config)


def test_a_list_of_eos_ids_on_the_tokenizer_is_accepted():
    tokenizer = fake(eos=[3, 1], vocab={"<|im_end|>": 2})
    assert stop_token_ids(tokenizer) == [1, 2, 3]
    assert stop_token_ids(tokenizer, generation_config=SimpleNamespace()) == [1, 2, 3]
