"""rewardmix.models.dropout.disable_dropout: every dropout probability to 0, counted, on real modules."""

from __future__ import annotations

import torch

from rewardmix.models.dropout import disable_dropout
from rewardmix.models.lora import LoraSettings, add_adapters
from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer


class Config:
    """A model config in the transformers style: fields plus ``to_dict``."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Attention(torch.nn.Module):
    """Reads its probability from float attributes, as Llama's attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_dropout = 0.1
        self.dropout = 0.2
        self.proj = torch.nn.Linear(4, 4)


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = Config(hidden_dropout_prob=0.1, attention_dropout=0.0, vocab_size=10, dropout_kind="x")
        self.drop = torch.nn.Dropout(0.3)
        self.drop2d = torch.nn.Dropout2d(0.4)
        self.alpha = torch.nn.AlphaDropout(0.5)
        self.already_off = torch.nn.Dropout(0.0)
        self.attn = Attention()


def test_every_kind_of_dropout_is_set_to_zero_and_counted():
    model = Toy()
    # 3 modules (the p=0 one is not counted) + 2 float attributes + 1 non-zero float config field
    assert disable_dropout(model) == 6
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd))
    assert model.attn.attention_dropout == 0.0 and model.attn.dropout == 0.0
    assert model.config.hidden_dropout_prob == 0.0
    # what is not a float probability is left alone
    assert model.config.dropout_kind == "x" and model.config.vocab_size == 10
    assert disable_dropout(model) == 0  # nothing left to change


def test_a_model_in_training_mode_then_computes_deterministically():
    model = Toy().train()
    x = torch.ones(2, 4)
    assert not torch.equal(model.drop(x.repeat(50, 1)), model.drop(x.repeat(50, 1)))  # dropout is on
    disable_dropout(model)
    assert model.training
    assert torch.equal(model.drop(x), x) and torch.equal(model.alpha(x), x)


def test_lora_dropout_and_llama_attention_dropout_on_the_tiny_model():
    tokenizer = build_tiny_tokenizer()
    base = build_tiny_causal_lm(tokenizer)
    base.config.attention_dropout = 0.1
    for layer in base.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model = add_adapters(base, ["policy"], LoraSettings(r=4, alpha=8, dropout=0.1))
    changed = disable_dropout(model)
    assert changed >= 2 * len(base.model.layers)  # at least each layer's attention and a LoRA dropout
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p != 0.0]
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in base.model.layers)
    assert base.config.attention_dropout == 0.0
    model.train()
    ids = torch.tensor([[3, 50, 60, 70, 4]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
