"""The SFT stage on a tiny in-memory Llama (fp32, CPU): outcomes and invariants, not "it ran"."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardmix.config import load_config
from rewardmix.data import conversations
from rewardmix.data.chat import Message
from rewardmix.data.toy import BUILTIN_TOY, toy_rows
from rewardmix.models.loading import load_causal_lm
from rewardmix.models.tiny import build_tiny_tokenizer
from rewardmix.rundir import RunDirError, read_jsonl
from rewardmix.stages import sft

REPO = Path(__file__).resolve().parents[2]
METRIC_KEYS = {"loss/train", "loss/eval", "lr", "grad_norm", "tokens/step", "perf/tokens_per_sec"}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> str:
    return write_jsonl(tmp_path_factory.mktemp("data") / "toy.jsonl", toy_rows()[:16])


def tiny_config(out: Path, data: str, *, lora: bool = False, **optim) -> sft.Config:
    """Full fine-tuning or LoRA (dropout 0) of the tiny model; nothing is logged that the test does not need."""
    cfg = sft.Config(output_dir=str(out), seed=0, cpu=True)
    cfg.model.name = "tiny"
    cfg.lora.enabled = lora
    cfg.lora.dropout = 0.0
    cfg.lora.r = 4
    cfg.lora.alpha = 8
    cfg.phases = [sft.PhaseConfig(data=data, epochs=1)]
    cfg.optim.micro_batch_size = 4
    cfg.optim.learning_rate = 1e-3
    cfg.optim.warmup_ratio = 0.0
    for key, value in optim.items():
        setattr(cfg.optim, key, value)
    cfg.logging.eval_every = 0
    cfg.logging.sample_every = 0
    cfg.logging.num_samples = 0
    cfg.logging.checkpoint_every = 1000
    return cfg


@pytest.fixture
def spy_model(monkeypatch):
    """Capture the model object a run trains, and a copy of its weights before training."""
    seen: dict = {}
    original = sft.load_model

    def spy(cfg):
        tokenizer, model = original(cfg)
        seen["model"] = model
        seen["before"] = {k: v.detach().clone() for k, v in model.named_parameters()}
        return tokenizer, model

    monkeypatch.setattr(sft, "load_model", spy)
    return seen


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def last_checkpoint_state(out: Path) -> dict[str, torch.Tensor]:
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    return load_file(str(last / "trainable.safetensors"))


# ---------------------------------------------------------------------------------------------------------
# What changes and what must not


def test_lora_trains_the_adapter_and_leaves_base_weights_bit_identical(tmp_path, toy_file, spy_model):
    cfg = tiny_config(tmp_path / "run", toy_file, lora=True)
    cfg.lora.merge_lora = True
    result = sft.run(cfg)
    before, after = spy_model["before"], weights(spy_model["model"])
    lora_b = [k for k in after if "lora_B" in k]
    base = [k for k in after if "lora_" not in k]
    assert lora_b and base
    # LoRA B starts at 0, so every B matrix that trained is non-zero now
    assert all(not torch.equal(after[k], before[k]) for k in lora_b)
    assert all(torch.equal(after[k], before[k]) for k in base)
    # the adapter and the merged model are saved, and the merged model computes what the trained one does
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert (result.adapter_dir / "tokenizer.json").is_file()
    merged = load_causal_lm(result.model_dir)
    ids = torch.tensor([[3, 50, 60, 70, 4]])
    with torch.no_grad():
        expected = spy_model["model"].eval()(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)


def test_full_fine_tuning_changes_every_weight_and_saves_a_loadable_model(tmp_path, toy_file, spy_model):
    result = sft.run(tiny_config(tmp_path / "run", toy_file))
    before, after = spy_model["before"], weights(spy_model["model"])
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) == len(after)
    assert result.adapter_dir is None and result.global_step == 4  # 16 examples / 4 per step
    loaded = load_causal_lm(result.model_dir)
    for name, value in loaded.named_parameters():
        assert torch.equal(value, after[name]), name
    assert (result.model_dir / "tokenizer.json").is_file()


# ---------------------------------------------------------------------------------------------------------
# Invariants: exact gradient accumulation, resume, answer-only loss


def test_gradient_accumulation_1x8_equals_8x1(tmp_path, toy_file, spy_model):
    """One step of 8 examples as 1 micro-batch of 8 or as 8 micro-batches of 1: the same update."""
    final = {}
    for micro, accum in ((8, 1), (1, 8)):
        cfg = tiny_config(
            tmp_path / f"{micro}x{accum}", toy_file, micro_batch_size=micro, gradient_accumulation_steps=accum
        )
        sft.run(cfg)
        final[micro] = weights(spy_model["model"])
        rows = read_jsonl(tmp_path / f"{micro}x{accum}" / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2]
    moved = max((final[8][k] - spy_model["before"][k]).abs().max().item() for k in final[8])
    assert moved > 1e-4  # the runs did train
    for name in final[8]:
        torch.testing.assert_close(final[1][name], final[8][name], atol=1e-6, rtol=0)


def test_token_level_normalization_is_over_the_whole_step(tmp_path):
    """Answer lengths differ a lot: a per-micro-batch mean would weight the short answer like the long one."""
    rows = [
        {"prompt": "What is two plus three?", "response": "five."},
        {"prompt": "What is one plus one?", "response": "one plus one is two. " * 8},
    ]
    data = write_jsonl(tmp_path / "uneven.jsonl", rows)
    final = []
    for micro, accum in ((2, 1), (1, 2)):
        cfg = tiny_config(
            tmp_path / f"u{micro}", data, micro_batch_size=micro, gradient_accumulation_steps=accum
        )
        sft.run(cfg)
        final.append(last_checkpoint_state(tmp_path / f"u{micro}"))
    for name in final[0]:
        torch.testing.assert_close(final[0][name], final[1][name], atol=1e-6, rtol=0)


def kill_at(step: int):
    def on_step(global_step, row):
        if global_step == step:
            raise KeyboardInterrupt(f"simulated kill after step {step}")

    return on_step


def resume_config(out: Path, data: str) -> sft.Config:
    # LoRA dropout on: the resumed run must also restore the random state to match exactly
    cfg = tiny_config(out, data, lora=True, micro_batch_size=2)
    cfg.lora.dropout = 0.1
    cfg.phases[0].epochs = 2  # 12 train rows / 2 = 6 steps per epoch: 12 steps, across an epoch boundary
    cfg.phases[0].eval_fraction = 0.25
    cfg.logging.checkpoint_every = 2
    cfg.logging.keep_checkpoints = 3
    cfg.logging.eval_every = 3
    return cfg


@pytest.mark.parametrize("corrupt_latest", [False, True])
def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path, toy_file, caplog, corrupt_latest):
    reference = sft.run(resume_config(tmp_path / "straight", toy_file))
    expected = last_checkpoint_state(tmp_path / "straight")

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        sft.run(resume_config(out, toy_file), on_step=kill_at(7))  # checkpoints at 2, 4, 6; step 7 is lost
    if corrupt_latest:
        target = out / "checkpoints" / "step-00000006" / "trainable.safetensors"
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        resumed = sft.run(resume_config(out, toy_file))
    if corrupt_latest:
        assert "step-00000006" in caplog.text and "skipping checkpoint" in caplog.text

    assert resumed.global_step == reference.global_step == 12
    got = last_checkpoint_state(out)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-7, rtol=0)
    # the redone steps are logged once, with the values of the uninterrupted run
    straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    again = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in again] == [r["step"] for r in straight] == list(range(13))
    for a, b in zip(again, straight, strict=True):
        for key in ("loss/train", "loss/eval", "lr"):
            assert (a.get(key) is None) == (b.get(key) is None)
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-6)


def test_rerunning_a_finished_run_trains_no_further(tmp_path, toy_file):
    cfg = tiny_config(tmp_path / "run", toy_file)
    first = sft.run(cfg)
    state = last_checkpoint_state(tmp_path / "run")
    second = sft.run(cfg)
    assert second.global_step == first.global_step
    for name, value in last_checkpoint_state(tmp_path / "run").items():
        assert torch.equal(value, state[name])
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == first.global_step


def test_resuming_on_other_data_is_refused(tmp_path):
    # the same config, the file's content changed: the checkpoint's data/batch plan refuses it
    cfg = tiny_config(tmp_path / "run", write_jsonl(tmp_path / "data.jsonl", toy_rows()[:16]))
    sft.run(cfg)
    write_jsonl(tmp_path / "data.jsonl", toy_rows()[20:36])
    with pytest.raises(ValueError, match="another data/batch plan"):
        sft.run(cfg)


def test_resuming_with_another_data_file_is_refused_by_the_config_check(tmp_path, toy_file):
    cfg = tiny_config(tmp_path / "run", toy_file)
    sft.run(cfg)
    cfg.phases[0].data = write_jsonl(tmp_path / "other.jsonl", toy_rows()[20:36])
    with pytest.raises(RunDirError, match=r"holds a 'sft' run with another config \(phases\[0\]\.data: "):
        sft.run(cfg)


def test_loss_ignores_prompt_token_labels():
    tokenizer = build_tiny_tokenizer()
    cfg = sft.Config()
    model = sft.load_model(tiny_config(Path("unused"), BUILTIN_TOY))[1]
    convs = [conversations.row_to_messages(r, "prompt_response", cfg.examples) for r in toy_rows()[:3]]
    examples, counts = conversations.tokenize_examples(convs, tokenizer, cfg.examples)
    assert counts == {"truncated": 0, "dropped_no_answer_tokens": 0}
    for e in examples:
        assert not any(e.loss_mask[: e.prompt_length]) and all(e.loss_mask[e.prompt_length : -1])
    inputs = sft.collate(examples, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        base = sft.token_loss(model, inputs)
        scrambled = dict(inputs)
        scrambled["labels"] = torch.where(
            inputs["loss_mask"], inputs["labels"], (inputs["labels"] * 7 + 11) % 300
        )
        other = sft.token_loss(model, scrambled)
        answer_changed = dict(inputs)
        answer_changed["labels"] = torch.where(
            inputs["loss_mask"], (inputs["labels"] + 1) % 300, inputs["labels"]
        )
        moved = sft.token_loss(model, answer_changed)
    assert torch.equal(base.loss, other.loss)
    assert int(base.num_tokens) == sum(conversations.answer_tokens(e) for e in examples)
    assert not torch.allclose(base.loss, moved.loss)  # the answer's labels do count


def test_training_loss_decreases_on_a_memorization_task(tmp_path):
    data = write_jsonl(tmp_path / "eight.jsonl", toy_rows()[:8])
    cfg = tiny_config(tmp_path / "run", data, learning_rate=1e-2)
    cfg.phases[0].epochs = 40
    cfg.phases[0].eval_data = data  # memorization: evaluate on the training rows
    cfg.logging.num_samples = 2
    cfg.logging.max_new_tokens = 20
    result = sft.run(cfg)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["step"] == 0
    assert result.eval_loss < 0.1 * rows[0]["loss/eval"]
    train = [r["loss/train"] for r in rows if "loss/train" in r]
    assert sum(train[-4:]) < 0.1 * sum(train[:4])
    # the greedy samples at the end reproduce a memorized answer
    final = [s for s in read_jsonl(tmp_path / "run" / "samples.jsonl") if s["step"] == result.global_step]
    assert any(s["completion"] == s["reference"].strip() for s in final), final


def test_two_phases_equal_phase_one_then_phase_two_from_its_model(tmp_path):
    """Phase 2 starts from phase 1's weights: the two-phase run equals two runs chained through model/."""
    a = write_jsonl(tmp_path / "a.jsonl", toy_rows()[:8])
    b = write_jsonl(tmp_path / "b.jsonl", toy_rows()[30:42])

    two = tiny_config(tmp_path / "two", a)
    two.phases = [
        sft.PhaseConfig(data=a, name="pre_sft"),
        sft.PhaseConfig(data=b, name="sft", learning_rate=5e-4),
    ]
    result = sft.run(two)
    assert result.global_step == 2 + 3

    first = tiny_config(tmp_path / "first", a)
    first.phases = [sft.PhaseConfig(data=a, name="pre_sft")]
    sft.run(first)
    second = tiny_config(tmp_path / "second", b)
    second.model.name = str(tmp_path / "first" / "model")
    second.phases = [sft.PhaseConfig(data=b, name="sft", learning_rate=5e-4)]
    sft.run(second)

    chained, together = load_causal_lm(tmp_path / "second" / "model"), load_causal_lm(result.model_dir)
    phase1 = load_causal_lm(tmp_path / "first" / "model")
    for (name, x), (_, y), (_, p1) in zip(
        chained.named_parameters(), together.named_parameters(), phase1.named_parameters(), strict=True
    ):
        torch.testing.assert_close(y, x, atol=1e-7, rtol=0, msg=name)
        assert not torch.equal(y, p1), name  # phase 2 did train
    rows = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [(r["step"], r["phase"]) for r in rows] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]
    assert rows[2]["lr"] == pytest.approx(5e-4)  # phase 2 has its own schedule, from its own peak


# ---------------------------------------------------------------------------------------------------------
# Logging


def test_metrics_samples_and_run_files(tmp_path, toy_file):
    cfg = tiny_config(tmp_path / "run", toy_file, micro_batch_size=2)
    cfg.phases[0].eval_fraction = 0.25
    cfg.logging.eval_every = 2
    cfg.logging.sample_every = 3
    cfg.logging.num_samples = 2
    cfg.logging.max_new_tokens = 5
    result = sft.run(cfg)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert METRIC_KEYS <= set().union(*rows)
    train_rows = [r for r in rows if r["step"] > 0]
    assert all(METRIC_KEYS - {"loss/eval"} <= set(r) for r in train_rows)
    assert [r["step"] for r in rows if "loss/eval" in r] == [0, 2, 4, 6]  # step 0, every 2, the end
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    # tokens/step counts answer tokens: over one epoch they add up to the training set's answer tokens
    assert sum(r["tokens/step"] for r in train_rows) == report[0]["train"]["answer_tokens"]
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert [s["step"] for s in samples] == [3, 3, 6, 6]
    assert all(s["prompt"].endswith("<|im_start|>assistant\n") and "completion" in s for s in samples)
    assert report[0]["train"]["examples"] == 12 and report[0]["eval"]["examples"] == 4
    assert report[0]["train"]["read"]["rows_in"] == 16
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["global_step"] == result.global_step


def test_a_step_with_a_nan_gradient_is_skipped(tmp_path, toy_file, monkeypatch, caplog, spy_model):
    original, calls = sft.token_loss, {"train": 0}

    def poisoned(model, inputs):
        ce = original(model, inputs)
        if model.training:
            calls["train"] += 1
            if calls["train"] == 2:  # the second optimizer step (one micro-batch per step here)
                return ce._replace(loss=ce.loss * float("nan"))
        return ce

    monkeypatch.setattr(sft, "token_loss", poisoned)
    with caplog.at_level(logging.WARNING, logger="rewardmix.train.loop"):
        result = sft.run(tiny_config(tmp_path / "run", toy_file))
    assert result.global_step == 4
    assert "step 2: gradient norm is nan, skipping the optimizer step" in caplog.text
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[1]["step"] == 2 and rows[1]["grad_norm"] is None and rows[1]["loss/train"] is None
    assert all(torch.isfinite(v).all() for v in weights(spy_model["model"]).values())


def test_missing_tensorboard_is_a_warning_and_metrics_jsonl_is_still_written(tmp_path, toy_file, caplog):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    cfg = tiny_config(tmp_path / "run", toy_file)
    cfg.logging.report_to = ["tensorboard"]
    with caplog.at_level(logging.WARNING, logger="rewardmix.train.loop"):
        sft.run(cfg)
    assert "tensorboard package is not installed" in caplog.text
    assert "pip install 'rewardmix[tensorboard]'" in caplog.text
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 4


# ---------------------------------------------------------------------------------------------------------
# Data formats


def test_row_formats_become_the_expected_conversations():
    ex = conversations.ExamplesConfig()
    cases = {
        "messages": {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        },
        "prompt_response": {"prompt": "hi", "response": "hello"},
        "alpaca": {"instruction": "hi", "input": "", "output": "hello"},
        "dolly": {"instruction": "hi", "context": "c", "response": "hello", "category": "x"},
        "gsm8k": {"question": "hi", "answer": "hello"},
    }
    for kind, row in cases.items():
        assert conversations.detect_format(row, "t") == kind
        assert conversations.row_to_messages(row, kind, ex) == [
            Message("user", "hi"),
            Message("assistant", "hello"),
        ]


@pytest.mark.parametrize(
    ("with_rationale", "answer"),
    [(True, "Great acting.\n\nThe answer is: positive"), (False, "The answer is: positive")],
)
def test_nlu_rows_with_and_without_rationale(with_rationale, answer):
    row = {"question": "Review: great acting. Sentiment?", "rationale": "Great acting.", "label": "positive"}
    ex = conversations.ExamplesConfig(with_rationale=with_rationale, system_prompt="Be brief.")
    assert conversations.detect_format(row, "t") == "nlu"
    assert conversations.row_to_messages(row, "nlu", ex) == [
        Message("system", "Be brief."),
        Message("user", "Review: great acting. Sentiment?"),
        Message("assistant", answer),
    ]


def test_nlu_csv_file_and_bad_rows(tmp_path):
    path = tmp_path / "nlu.csv"
    path.write_text("question,rationale,label\nIs it good?,It is.,1\nIs it bad?,,0\n")
    with pytest.raises(ValueError, match="nlu.csv:3: field 'rationale'"):
        conversations.read_conversations(str(path), "auto", conversations.ExamplesConfig())
    convs, report = conversations.read_conversations(
        str(path), "auto", conversations.ExamplesConfig(on_bad_row="skip")
    )
    assert len(convs) == 1 and convs[0][-1].content == "It is.\n\nThe answer is: 1"
    convs, _ = conversations.read_conversations(
        str(path), "nlu", conversations.ExamplesConfig(with_rationale=False)
    )
    assert [c[-1].content for c in convs] == ["The answer is: 1", "The answer is: 0"]


def test_multi_turn_masks_last_or_every_assistant_turn():
    tokenizer = build_tiny_tokenizer()
    conv = [
        Message("user", "What is one plus one?"),
        Message("assistant", "two"),
        Message("user", "What is two plus two?"),
        Message("assistant", "four"),
    ]
    last, _ = conversations.tokenize_examples(
        [conv], tokenizer, conversations.ExamplesConfig(train_on="last")
    )
    every, _ = conversations.tokenize_examples(
        [conv], tokenizer, conversations.ExamplesConfig(train_on="all_assistant")
    )
    assert last[0].input_ids == every[0].input_ids
    decode = lambda e: tokenizer.decode([t for t, m in zip(e.input_ids, e.loss_mask, strict=True) if m])  # noqa: E731
    assert decode(last[0]) == "four<|im_end|>"
    assert decode(every[0]) == "two<|im_end|>four<|im_end|>"


def test_truncation_is_counted_and_answerless_examples_are_dropped():
    tokenizer = build_tiny_tokenizer()
    conv = [Message("user", "What is two plus three?"), Message("assistant", "two plus three is five.")]
    full, _ = conversations.tokenize_examples([conv], tokenizer, conversations.ExamplesConfig())
    prompt, total = full[0].prompt_length, len(full[0].input_ids)
    cut, counts = conversations.tokenize_examples(
        [conv], tokenizer, conversations.ExamplesConfig(max_length=total - 3)
    )
    assert counts == {"truncated": 1, "dropped_no_answer_tokens": 0}
    assert cut[0].input_ids == full[0].input_ids[: total - 3]  # the answer is cut from its end
    # no room left for the answer once the prompt keeps its floor: the example is dropped, and counted
    none, counts = conversations.tokenize_examples(
        [conv], tokenizer, conversations.ExamplesConfig(max_length=prompt)
    )
    assert none == [] and counts == {"truncated": 1, "dropped_no_answer_tokens": 1}


def test_shipped_config_loads_strictly():
    cfg = load_config(sft.Config, REPO / "configs" / "sft.yaml", stage="sft")
    assert [p.name for p in cfg.phases] == ["pre_sft", "sft"]
    assert cfg.lora.enabled and cfg.lora.merge_lora
    assert cfg.optim.max_grad_norm == 0.3 and cfg.optim.gradient_accumulation_steps == 16


def test_config_checks():
    with pytest.raises(ValueError, match="at least one phase"):
        sft.Config(phases=[])
    with pytest.raises(ValueError, match="eval_fraction"):
        sft.Config(phases=[sft.PhaseConfig(eval_fraction=1.0)])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_and_folders_get_the_users_umask_not_0600(tmp_path, toy_file, umask):
    # Atomic writes go through mkstemp (0600) and mkdtemp (0700); each is widened to what open()/mkdir() give.
    cfg = tiny_config(tmp_path / "run", toy_file, lora=True)
    cfg.logging.checkpoint_every = 2  # a checkpoint folder too
    old = os.umask(umask)
    try:
        sft.run(cfg)
    finally:
        os.umask(old)
    paths = list((tmp_path / "run").rglob("*"))
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in paths}
    files = {p for p, m in modes.items() if (tmp_path / p).is_file()}
    assert {Path("run/config.yaml"), Path("run/summary.json"), Path("run/model/adapter_config.json")} <= files
    assert any("checkpoints" in str(p) for p in files)
    wrong = {str(p): oct(m) for p, m in modes.items() if m != (0o666 if p in files else 0o777) & ~umask}
    assert not wrong
