"""Checkpoints: exact round trip, atomic writes, pruning, checksums, and falling back past a damaged one."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rewardmix.train import checkpoint as ckpt
from rewardmix.train.checkpoint import (
    CheckpointError,
    capture_rng,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from rewardmix.train.schedule import cosine_with_warmup


def make_training(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=2, total_steps=10)
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, n: int, offset: int = 0) -> None:
    for i in range(n):
        x = torch.arange(4.0) + offset + i
        loss = (model(x) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def state_of(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_resumes_training_exactly(tmp_path):
    model, optimizer, scheduler = make_training()
    train_steps(model, optimizer, scheduler, 3)
    path = save_checkpoint(
        tmp_path,
        3,
        trainable_state=state_of(model),
        optimizer=optimizer,
        scheduler=scheduler,
        extra={"phase": 1, "note": "x"},
    )
    assert path == tmp_path / "checkpoints" / "step-00000003"
    train_steps(model, optimizer, scheduler, 4, offset=3)
    expected = state_of(model)

    # a fresh process: new objects, everything restored from disk
    model2, optimizer2, scheduler2 = make_training(seed=123)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded.step == 3 and loaded.extra == {"phase": 1, "note": "x"}
    with torch.no_grad():
        for name, param in model2.named_parameters():
            param.copy_(loaded.trainable_state[name])
    optimizer2.load_state_dict(loaded.optimizer_state)
    scheduler2.load_state_dict(loaded.scheduler_state)
    train_steps(model2, optimizer2, scheduler2, 4, offset=3)
    for name, value in state_of(model2).items():
        assert torch.equal(value, expected[name]), name


def test_manifest_has_the_checksum_of_every_file(tmp_path):
    model, optimizer, scheduler = make_training()
    path = save_checkpoint(
        tmp_path, 7, trainable_state=state_of(model), optimizer=optimizer, scheduler=scheduler
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 7
    on_disk = {p.name for p in path.iterdir()} - {"manifest.json"}
    assert (
        set(manifest["files"])
        == on_disk
        == {
            "trainable.safetensors",
            "optimizer.pt",
            "scheduler.pt",
            "rng.pt",
            "extra.json",
        }
    )
    for name, meta in manifest["files"].items():
        assert meta["sha256"] == ckpt._sha256(path / name)
        assert meta["bytes"] == (path / name).stat().st_size


def test_rng_states_are_restored(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    save_checkpoint(tmp_path, 1, trainable_state={"w": torch.zeros(1)})
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    restore_rng(load_latest_checkpoint(tmp_path).rng_state)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_rng_false_saves_none_and_a_given_mapping_is_saved_as_is(tmp_path):
    save_checkpoint(tmp_path, 1, trainable_state={"w": torch.zeros(1)}, rng=False)
    assert load_latest_checkpoint(tmp_path).rng_state is None
    state = capture_rng()
    save_checkpoint(tmp_path, 2, trainable_state={"w": torch.zeros(1)}, rng=state)
    assert torch.equal(load_latest_checkpoint(tmp_path).rng_state["torch_cpu"], state["torch_cpu"])


def test_keeps_only_the_last_checkpoints(tmp_path):
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, step, trainable_state={"w": torch.full((2,), float(step))}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006", "step-00000008"]
    assert load_latest_checkpoint(tmp_path).trainable_state["w"].tolist() == [8.0, 8.0]


def test_corrupt_latest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, trainable_state={"w": torch.full((64,), float(step))}, keep=3)
    latest = tmp_path / "checkpoints" / "step-00000002"
    flip_a_byte(latest / "trainable.safetensors")
    with caplog.at_level(logging.WARNING, logger="rewardmix.train.checkpoint"):
        loaded = load_latest_checkpoint(tmp_path)
    assert loaded.step == 1 and torch.equal(loaded.trainable_state["w"], torch.full((64,), 1.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(latest) in warnings[0] and "sha256" in warnings[0]
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_checkpoint(latest)


@pytest.mark.parametrize("damage", ["no_manifest", "missing_file", "truncated_optimizer"])
def test_incomplete_checkpoints_are_skipped(tmp_path, caplog, damage):
    model, optimizer, scheduler = make_training()
    save_checkpoint(tmp_path, 1, trainable_state=state_of(model), optimizer=optimizer)
    latest = save_checkpoint(tmp_path, 2, trainable_state=state_of(model), optimizer=optimizer)
    if damage == "no_manifest":
        (latest / "manifest.json").unlink()
    elif damage == "missing_file":
        (latest / "extra.json").unlink()
    else:
        opt = latest / "optimizer.pt"
        opt.write_bytes(opt.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING):
        assert load_latest_checkpoint(tmp_path).step == 1
    assert str(latest) in caplog.text


def test_no_valid_checkpoint_gives_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    path = save_checkpoint(tmp_path, 1, trainable_state={"w": torch.zeros(4)})
    flip_a_byte(path / "trainable.safetensors")
    assert load_latest_checkpoint(tmp_path) is None


def test_pickled_code_is_refused_even_with_matching_checksums(tmp_path):
    """optimizer.pt is read with weights_only=True: an arbitrary object is not unpickled."""
    path = save_checkpoint(
        tmp_path,
        1,
        trainable_state={"w": torch.zeros(1)},
        optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
    )
    torch.save({"state": {}, "evil": random.Random(0)}, path / "optimizer.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["optimizer.pt"] = {
        "sha256": ckpt._sha256(path / "optimizer.pt"),
        "bytes": (path / "optimizer.pt").stat().st_size,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)


def test_a_kill_during_save_leaves_the_previous_checkpoint_and_no_partial_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, trainable_state={"w": torch.ones(2)})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process died while writing the optimizer state

    monkeypatch.setattr(ckpt, "_torch_save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(
            tmp_path,
            2,
            trainable_state={"w": torch.zeros(2)},
            optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
        )
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    assert load_latest_checkpoint(tmp_path).step == 1


def test_leftover_temporary_folders_are_removed_by_the_next_save(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step-00000005-abc"
    stale.mkdir(parents=True)
    (stale / "trainable.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, 6, trainable_state={"w": torch.ones(1)})
    assert not stale.exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000006"]


def test_a_kill_between_the_renames_of_a_same_step_save_loses_nothing(tmp_path):
    def killed_while_resaving_step_3() -> Path:
        # What a kill right after `os.replace(final, old)` leaves: step-3 as .old-*, the new copy in .tmp-*
        shutil.rmtree(tmp_path / "checkpoints", ignore_errors=True)
        save_checkpoint(tmp_path, 2, trainable_state={"w": torch.zeros(1)})
        save_checkpoint(tmp_path, 3, trainable_state={"w": torch.ones(1)}, extra={"v": 1})
        root = tmp_path / "checkpoints"
        (root / "step-00000003").rename(root / ".old-step-00000003-4242")
        (root / ".tmp-step-00000003-xyz").mkdir()
        return root

    # the next save of another step puts the complete old step-3 back
    root = killed_while_resaving_step_3()
    save_checkpoint(tmp_path, 4, trainable_state={"w": torch.full((1,), 4.0)}, keep=3)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003", "step-00000004"]
    step3 = [c for c in ckpt.list_checkpoints(tmp_path) if c.name == "step-00000003"]
    assert step3 and not list(root.glob(".*"))
    # saving step 3 again (what the resumed run does) replaces it, and nothing is left over
    root = killed_while_resaving_step_3()
    save_checkpoint(tmp_path, 3, trainable_state={"w": torch.full((1,), 3.0)}, extra={"v": 2})
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003"]
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded.step == 3 and loaded.extra == {"v": 2}


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 3, trainable_state={"w": torch.zeros(2)}, extra={"v": 1})
    save_checkpoint(tmp_path, 3, trainable_state={"w": torch.ones(2)}, extra={"v": 2})
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded.extra == {"v": 2} and loaded.trainable_state["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]


def test_bad_arguments_fail_before_writing(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, trainable_state={"w": torch.zeros(1)}, extra={"x": object()})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, -1, trainable_state={"w": torch.zeros(1)})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, 1, trainable_state={"w": [1.0]})
    assert list_checkpoints(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# FSDP checkpoints: shards written by every process, moved in by the main one


def write_shards(tmp_path, step: int, token: str = "t0"):
    """What two FSDP processes leave for the main one: a folder of shard files (nested, one dotfile)."""
    shards = ckpt.shards_path(tmp_path, step, token)
    for rank in range(2):
        (shards / "pytorch_model_fsdp_0").mkdir(parents=True, exist_ok=True)
        (shards / "pytorch_model_fsdp_0" / f"__{rank}_0.distcp").write_bytes(bytes([rank]) * 100)
    (shards / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"index")
    return shards


def test_shards_are_moved_in_and_every_shard_file_is_checksummed(tmp_path):
    shards = write_shards(tmp_path, 3)
    path = save_checkpoint(tmp_path, 3, trainable_state={"w": torch.ones(2)}, shards=shards)
    files = json.loads((path / "manifest.json").read_text())["files"]
    names = {"shards/pytorch_model_fsdp_0/__0_0.distcp", "shards/pytorch_model_fsdp_0/__1_0.distcp"}
    assert names | {"shards/pytorch_model_fsdp_0/.metadata"} <= set(files)
    assert files["shards/pytorch_model_fsdp_0/__1_0.distcp"]["bytes"] == 100
    assert not shards.exists()  # moved, not copied
    loaded = load_checkpoint(path)
    assert (
        loaded.shards == path / "shards" and (loaded.shards / "pytorch_model_fsdp_0" / ".metadata").is_file()
    )
    # a data-parallel checkpoint has none
    assert load_checkpoint(save_checkpoint(tmp_path, 4, trainable_state={"w": torch.ones(2)})).shards is None


def test_a_damaged_shard_makes_the_checkpoint_skipped(tmp_path, caplog):
    save_checkpoint(
        tmp_path, 1, trainable_state={"w": torch.ones(2)}, shards=write_shards(tmp_path, 1), keep=3
    )
    latest = save_checkpoint(
        tmp_path, 2, trainable_state={"w": torch.ones(2)}, shards=write_shards(tmp_path, 2), keep=3
    )
    flip_a_byte(latest / "shards" / "pytorch_model_fsdp_0" / "__1_0.distcp")
    with caplog.at_level(logging.WARNING):
        assert load_latest_checkpoint(tmp_path).step == 1
    assert "__1_0.distcp does not match its sha256" in caplog.text


def test_shards_left_by_a_killed_save_are_removed_but_not_the_ones_being_saved(tmp_path):
    stale = write_shards(tmp_path, 5, token="killed")
    current = write_shards(tmp_path, 6, token="now")
    path = save_checkpoint(tmp_path, 6, trainable_state={"w": torch.ones(1)}, shards=current)
    assert not stale.exists() and (path / "shards" / "pytorch_model_fsdp_0" / "__0_0.distcp").is_file()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000006"]
