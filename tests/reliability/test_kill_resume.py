"""SIGKILL real CLI runs at random points, rerun the same command, compare with an uninterrupted run.

The harness (``tests/reliability/harness.py``) does the work; these tests assert on its findings:

- slow, one per stage (sft, reward-model, ppo, rationales), 6 kill trials each (24 in all): every kill leaves
  no half-written checkpoint file and a newest checkpoint that verifies; a corrupted newest checkpoint is
  reported and the previous one used; the finished run equals the reference: tensors bitwise
  (``harness.WEIGHT_ATOL`` = 0), every metrics step once with the same values, the same sample rows, the same
  teacher outputs and rationale records, and LLM calls paid twice only for calls in flight at a kill;
- fast: the corrupted-newest-checkpoint path through the CLI in this process, and the harness's own
  checkers (a torn checkpoint file and a torn progress line are seen).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from rewardmix import cli
from rewardmix.train.checkpoint import save_checkpoint
from tests.reliability import harness

KILLS_PER_STAGE = 6


@pytest.mark.slow
@pytest.mark.parametrize("stage", harness.STAGE_NAMES)
def test_sigkill_at_random_points_then_rerun_equals_the_uninterrupted_run(stage, tmp_path):
    report = harness.run_stage(stage, tmp_path, kills=KILLS_PER_STAGE, seed=0)
    summary = report.summary()
    assert summary["trials"] >= KILLS_PER_STAGE, summary
    assert report.problems == []
    assert summary["resumed_ok"] == summary["trials"]
    if stage == "rationales":
        assert summary["outputs_duplicated"] == summary["outputs_missing"] == 0
        # each chain asked every teacher request of the task (2 per example), and no other
        assert [c["requests_unique"] for c in report.chains] == [report.total] * len(report.chains)
        paid_twice = summary["requests_paid_twice"]
        assert paid_twice <= summary["requests_in_flight_at_kills"]
        assert summary["requests_in_flight_at_kills"] <= harness.RATIONALE_CONCURRENCY * summary["trials"]
    else:
        assert summary["max_weight_diff"] is not None and summary["max_weight_diff"] <= harness.WEIGHT_ATOL
        assert summary["max_metric_diff"] == 0.0
        assert summary["metrics_rows_duplicated"] == summary["metrics_rows_missing"] == 0
        assert summary["samples_duplicated"] == 0
        assert summary["half_written_checkpoint_files"] == 0
        assert summary["corrupted_checkpoints_detected"] == 1


# ---------------------------------------------------------------------------------------------------------
# Fast: a corrupted newest checkpoint through the CLI; the harness's checkers


def metrics_without_timings(path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning_and_the_rerun_matches(
    tmp_path, capsys, caplog
):
    config = harness.sft_config(tmp_path / "run", tmp_path, None)
    config["phases"] = [{"data": "builtin:toy", "max_steps": 6}]
    config["logging"].update(
        {"sample_every": 0, "num_samples": 0, "checkpoint_every": 2, "keep_checkpoints": 3}
    )
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert cli.main(["sft", str(path)]) == 0
    final = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    rows = metrics_without_timings(tmp_path / "run" / "metrics.jsonl")

    assert harness.corrupt_newest_checkpoint(tmp_path / "run") == "step-00000006"
    (tmp_path / "run" / "model").rename(tmp_path / "model-before")
    with caplog.at_level(logging.INFO):
        assert cli.main(["sft", str(path)]) == 0  # the same command again
    warning = next(r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage())
    assert "step-00000006" in warning and "does not match its sha256" in warning
    assert "resuming from checkpoint" in caplog.text and "step-00000004" in caplog.text
    again = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
    assert (
        metrics_without_timings(tmp_path / "run" / "metrics.jsonl") == rows
    )  # steps 5-6 redone, logged once
    assert harness.scan_checkpoints(tmp_path / "run").newest_valid == 6  # step 6 written anew, valid


def test_the_checkpoint_scan_tells_torn_files_from_pruning_leftovers(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, trainable_state={"w": torch.full((4,), float(step))}, keep=3)
    scan = harness.scan_checkpoints(tmp_path)
    assert (scan.steps, scan.newest_valid, scan.torn_files, scan.pruning_leftovers) == ([1, 2, 3], 3, [], [])
    (tmp_path / "checkpoints" / "step-00000001" / "trainable.safetensors").unlink()  # a deletion cut short
    weights = tmp_path / "checkpoints" / "step-00000003" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # a half-written file
    scan = harness.scan_checkpoints(tmp_path)
    assert scan.pruning_leftovers == [1]
    assert scan.torn_files == ["checkpoints/step-00000003/trainable.safetensors"]
    assert scan.newest_valid == 2  # what the loader would resume from


def test_progress_counts_only_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"".join(json.dumps({"step": s}).encode() + b"\n" for s in (0, 1, 2)) + b'{"step": 3')
    assert harness.read_progress(path, training=True) == 2
    assert harness.read_progress(path, training=False) == 3
    assert harness.read_progress(tmp_path / "absent.jsonl", training=True) == 0


def test_the_comparison_sees_a_changed_weight_and_a_duplicated_row(tmp_path):
    for name in ("a", "b"):
        run = tmp_path / name
        (run / "model").mkdir(parents=True)
        save_file({"w": torch.zeros(3)}, str(run / "model" / "m.safetensors"))
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2))
        )
        (run / "summary.json").write_text(json.dumps({"global_step": 2}))
    assert harness.compare_training_runs(tmp_path / "a", tmp_path / "b")["problems"] == []
    save_file({"w": torch.tensor([0.0, 1e-7, 0.0])}, str(tmp_path / "b" / "model" / "m.safetensors"))
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 2, "loss": 1.0}) + "\n")
    result = harness.compare_training_runs(tmp_path / "a", tmp_path / "b")
    assert result["max_weight_diff"] == pytest.approx(1e-7) and result["metrics_duplicated"] == 1
    assert len(result["problems"]) == 2
