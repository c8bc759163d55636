"""Rankings made in other tools: Argilla (1.x and 2.x record JSON), Label Studio (Ranker, Pairwise) and CSV,
imported and aggregated to hand-computed Borda points; gaps accepted; bad records named; the tie count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardmix.cli import main
from rewardmix.config import ConfigError, from_dict
from rewardmix.data.readers import DataError
from rewardmix.human.export import export_tasks
from rewardmix.human.formats import import_tool_rankings
from rewardmix.rundir import prepare_run_dir
from rewardmix.stages import human_eval

MODELS = ["m1", "m2", "m3"]


def points(summary: dict) -> dict[str, float]:
    return {m: p["mean"] for m, p in summary["points"].items()}


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc, indent=1))
    return path


# ---------------------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------------------

# One annotator per prompt, response ids = model names (no key, no model column).
# p1: m1 first, m2 and m3 tied (ranks 1, 3, 3: a gap, read as 1, 2, 2)
#     -> m1 1, m2 and m3 share positions 2 and 3: (2/3 + 1/3) / 2 = 1/2 each
# p2: m2 > m1 > m3 -> m2 1, m1 2/3, m3 1/3
# mean over prompts: m1 (1 + 2/3) / 2 = 5/6, m2 (1/2 + 1) / 2 = 3/4, m3 (1/2 + 1/3) / 2 = 5/12
CSV_TEXT = """prompt_id,annotator,response_id,rank
p1,ann1,m1,1
p1,ann1,m2,3
p1,ann1,m3,3
p2,ann1,m1,2
p2,ann1,m2,1
p2,ann1,m3,3
"""


def test_csv_import_gaps_are_orders_and_points_are_hand_computed(tmp_path):
    path = tmp_path / "rankings.csv"
    path.write_text(CSV_TEXT)
    res = import_tool_rankings(tmp_path / "he", path, "csv")
    assert points(res.summary) == pytest.approx({"m1": 5 / 6, "m2": 3 / 4, "m3": 5 / 12}, abs=1e-12)
    assert res.summary["ties"] == {"merged_rankings": 2, "with_tie": 1}
    assert res.summary["read"]["mapped_by"] == "file"
    by_model = [json.loads(line) for line in res.by_model_path.read_text().splitlines()]
    assert by_model[0]["ranks"] == {"m1": 1, "m2": 2, "m3": 2}  # the gap closed, the tie kept
    md = res.md_path.read_text()
    assert "1 of 2 merged ranking(s) end in a tie" in md
    assert "no edge" in md and "split the Borda points" in md


def test_csv_model_column_maps_response_ids(tmp_path):
    # the same rankings by response letters, with the model column naming who wrote each
    text = "prompt_id,annotator,response_id,rank,model\n" + "".join(
        f"{p},{a},{'xyz'[int(m[1]) - 1]},{r},{m}\n"
        for p, a, m, r in (line.split(",") for line in CSV_TEXT.splitlines()[1:])
    )
    path = tmp_path / "rankings.csv"
    path.write_text(text)
    res = import_tool_rankings(tmp_path / "he", path, "csv")
    assert points(res.summary) == pytest.approx({"m1": 5 / 6, "m2": 3 / 4, "m3": 5 / 12}, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Argilla
# ---------------------------------------------------------------------------------------------------------

# p1: responses r1, r2, r3 by m1, m2, m3; three annotators: u1 m1>m2>m3, u2 m2>m1>m3, u3 m1>m3>m2
#     Tideman: m1>m2 2-1, m1>m3 3-0, m2>m3 2-1 -> m1, m2, m3 -> 1, 2/3, 1/3
# p2: the responses shuffled: r1 = m3, r2 = m1, r3 = m2; u1 ranks r1 and r2 first (tie), r3 second
#     -> m3 and m1 share positions 1, 2: 5/6 each; m2 1/3. u2's draft and u3's discarded answer are left out
# mean: m1 (1 + 5/6) / 2 = 11/12, m2 (2/3 + 1/3) / 2 = 1/2, m3 (1/3 + 5/6) / 2 = 7/12
ARGILLA_EXPECTED = {"m1": 11 / 12, "m2": 1 / 2, "m3": 7 / 12}
P1_MODELS = {"r1": "m1", "r2": "m2", "r3": "m3"}
P2_MODELS = {"r1": "m3", "r2": "m1", "r3": "m2"}
P1_ORDERS = {"u1": ["r1", "r2", "r3"], "u2": ["r2", "r1", "r3"], "u3": ["r1", "r3", "r2"]}
P2_TIE = (("r1", 1), ("r2", 1), ("r3", 2))


def tie() -> list[dict]:
    return [{"value": rid, "rank": r} for rid, r in P2_TIE]


def ranked(order: list[str]) -> list[dict]:
    return [{"value": rid, "rank": i} for i, rid in enumerate(order, start=1)]


def argilla_v1() -> list[dict]:
    def resp(user, value, status="submitted"):
        return {
            "user_id": user,
            "status": status,
            "values": {"ranking": {"value": value}, "note": {"value": "ok"}},
        }

    fields = {"prompt": "q", "r1": "a", "r2": "b", "r3": "c"}
    return [
        {
            "fields": fields,
            "external_id": "p1",
            "metadata": {"models": P1_MODELS},
            "responses": [resp(u, ranked(o)) for u, o in P1_ORDERS.items()],
            "suggestions": [],
        },
        {
            "fields": fields,
            "external_id": "p2",
            "metadata": {"models": P2_MODELS},
            "responses": [
                resp("u1", tie()),
                resp("u2", ranked(["r3", "r2", "r1"]), "draft"),
                resp("u3", ranked(["r3", "r2", "r1"]), "discarded"),
            ],
            "suggestions": [],
        },
    ]


def argilla_v2() -> dict:
    def resp(user, value, status="submitted"):
        return {"user_id": user, "status": status, "value": value}

    fields = {"prompt": "q", "r1": "a", "r2": "b", "r3": "c"}
    return {
        "records": [
            {
                "id": "p1",
                "status": "completed",
                "fields": fields,
                "metadata": {"models": P1_MODELS},
                "responses": {
                    "ranking": [resp(u, o) for u, o in P1_ORDERS.items()],  # 2.x: ids best first
                    "comment": [resp("u1", "fine")],
                },
                "suggestions": {},
                "vectors": {},
            },
            {
                "id": "p2",
                "status": "completed",
                "fields": fields,
                "metadata": {"models": P2_MODELS},
                "responses": {
                    "ranking": [resp("u1", tie()), resp("u2", ["r3", "r2", "r1"], "draft")],
                },
            },
            {"id": "p3", "status": "pending", "fields": fields, "metadata": {}, "responses": {}},
        ]
    }


@pytest.mark.parametrize("shape", [argilla_v1, argilla_v2])
def test_argilla_1x_and_2x_exports_give_the_hand_computed_points(tmp_path, shape):
    path = write_json(tmp_path / "argilla.json", shape())
    res = import_tool_rankings(tmp_path / "he", path, "argilla")
    assert points(res.summary) == pytest.approx(ARGILLA_EXPECTED, abs=1e-12)
    assert res.summary["ties"] == {"merged_rankings": 2, "with_tie": 1}
    assert res.summary["read"]["rankings_used"] == 4


def test_argilla_json_lines_and_named_question(tmp_path):
    path = tmp_path / "argilla.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in argilla_v1()))
    res = import_tool_rankings(tmp_path / "he", path, "argilla", question="ranking")
    assert points(res.summary) == pytest.approx(ARGILLA_EXPECTED, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Label Studio, onto a rewardmix export (ids = slots)
# ---------------------------------------------------------------------------------------------------------


def exported(tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """Export m1..m3 on p1, p2; return the directory and, per prompt, model -> slot."""
    folder = tmp_path / "gen"
    folder.mkdir()
    gens = {}
    for m in MODELS:
        gens[m] = folder / f"{m}.jsonl"
        gens[m].write_text(
            "".join(json.dumps({"id": p, "prompt": "q", "response": m}) + "\n" for p in ("p1", "p2"))
        )
    # as `human-eval action=export` does: the folder becomes a human-eval run, then the tasks are written
    prepare_run_dir(tmp_path / "he", human_eval.Config(dir=str(tmp_path / "he")), stage="human-eval")
    res = export_tasks(tmp_path / "he", generations=gens, seed=3)
    key = [json.loads(line) for line in res.key_path.read_text().splitlines()]
    return tmp_path / "he", {row["prompt_id"]: {m: s for s, m in row["slots"].items()} for row in key}


def ls_tasks(slot: dict[str, dict[str, str]]) -> list[dict]:
    def ranker(user, order, cancelled=False):
        ids = [slot["p1"][m] for m in order]
        result = [
            {
                "from_name": "rank",
                "to_name": "answers",
                "type": "ranker",
                "value": {"ranker": {"answers": ids}},
            }
        ]
        return {"completed_by": user, "was_cancelled": cancelled, "result": result}

    def pair(task_id, left, right, selected):
        return {
            "id": task_id,
            "data": {"prompt_id": "p2", "left_id": slot["p2"][left], "right_id": slot["p2"][right]},
            "annotations": [
                {
                    "completed_by": {"id": 1, "email": "ann1@example.org"},
                    "result": [
                        {
                            "from_name": "pw",
                            "to_name": "left,right",
                            "type": "pairwise",
                            "value": {"selected": selected},
                        }
                    ],
                }
            ],
        }

    return [
        {
            "id": 11,
            "data": {"prompt_id": "p1", "items": [{"id": s, "body": m} for m, s in slot["p1"].items()]},
            "annotations": [
                ranker(1, ["m1", "m2", "m3"]),
                ranker(2, ["m2", "m1", "m3"]),
                ranker(3, ["m3", "m2", "m1"], cancelled=True),
            ],
        },
        pair(12, "m1", "m2", "left"),  # m1 > m2
        pair(13, "m2", "m3", "left"),  # m2 > m3
        pair(14, "m1", "m3", "right"),  # m3 > m1: a cycle of three 1-0 majorities
    ]


def test_labelstudio_ranker_and_pairwise_onto_an_export(tmp_path):
    # p1: annotator 1 m1>m2>m3, annotator 2 m2>m1>m3 (annotator 3 cancelled): m1-m2 1-1, no edge;
    #     both beat m3 2-0 -> m1, m2 rank 1 (5/6 each), m3 rank 2 (1/3)
    # p2: three pairwise ballots m1>m2, m2>m3, m3>m1, equally strong: none is locked (no name decides),
    #     all level -> 2/3 each
    # mean: m1 = m2 = (5/6 + 2/3) / 2 = 3/4, m3 = (1/3 + 2/3) / 2 = 1/2
    directory, slot = exported(tmp_path)
    path = write_json(tmp_path / "ls.json", ls_tasks(slot))
    res = import_tool_rankings(directory, path, "labelstudio")
    assert points(res.summary) == pytest.approx({"m1": 3 / 4, "m2": 3 / 4, "m3": 1 / 2}, abs=1e-12)
    assert res.summary["ties"] == {"merged_rankings": 2, "with_tie": 2}
    assert res.summary["read"]["mapped_by"] == "key"
    assert {p["prompt_id"]: p["merged"] for p in res.summary["prompts"]}["p2"] == {"m1": 1, "m2": 1, "m3": 1}


def test_stage_imports_a_tool_file_into_an_export_or_a_fresh_directory(tmp_path):
    directory, slot = exported(tmp_path)
    ls = write_json(tmp_path / "ls.json", ls_tasks(slot))
    cfg = {"action": "import", "dir": str(directory), "import_format": "labelstudio", "import_path": str(ls)}
    res = human_eval.run(from_dict(human_eval.Config, cfg))
    assert res.outputs["report"].exists() and res.stats["read"]["format"] == "labelstudio"
    csv_path = tmp_path / "r.csv"
    csv_path.write_text(CSV_TEXT)
    fresh = {
        "action": "import",
        "dir": str(tmp_path / "fresh"),
        "import_format": "csv",
        "import_path": str(csv_path),
    }
    res = human_eval.run(from_dict(human_eval.Config, fresh))
    assert points(res.stats) == pytest.approx({"m1": 5 / 6, "m2": 3 / 4, "m3": 5 / 12}, abs=1e-12)


def test_stage_config_and_missing_export_advice(tmp_path):
    with pytest.raises(ConfigError, match="needs import_path"):
        from_dict(human_eval.Config, {"action": "import", "import_format": "argilla"})
    with pytest.raises(ConfigError, match="import_path is for rankings made in another tool"):
        from_dict(human_eval.Config, {"action": "import", "import_path": "x.json"})
    cfg = from_dict(human_eval.Config, {"action": "import", "dir": str(tmp_path / "empty")})
    with pytest.raises(FileNotFoundError, match="set import_format .*and import_path"):
        human_eval.run(cfg)


# ---------------------------------------------------------------------------------------------------------
# Bad records: one message naming file, line or record, and field
# ---------------------------------------------------------------------------------------------------------

BAD_CSV = [
    (
        "prompt_id,annotator,response,rank\np1,a,m1,1\n",
        "rankings.csv:1: header: missing column(s) ['response_id']",
    ),
    (CSV_TEXT.replace("p1,ann1,m2,3", "p1,ann1,m2,x"), "rankings.csv:3: field 'rank': expected an integer"),
    (CSV_TEXT.replace("p1,ann1,m2,3", "p1,ann1,m2,0"), "rankings.csv:3: field 'rank': expected an integer"),
    (
        CSV_TEXT.replace("p2,ann1,m3,3", "p2,ann1,m1,3"),
        "rankings.csv:7: field 'response_id': response 'm1' ranked twice",
    ),
    (CSV_TEXT.replace("p2,ann1,m3,3", "p2,,m3,3"), "rankings.csv:7: field 'annotator'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CSV)
def test_bad_csv_rows_are_named(tmp_path, text, message):
    path = tmp_path / "rankings.csv"
    path.write_text(text)
    with pytest.raises(DataError) as exc:
        import_tool_rankings(tmp_path / "he", path, "csv")
    assert str(exc.value).startswith(str(tmp_path / message.split(":")[0])) and message in str(exc.value)


def test_bad_argilla_and_labelstudio_records_are_named(tmp_path):
    records = argilla_v1()
    del records[1]["responses"][0]["values"]["ranking"]["value"][1]["rank"]
    path = write_json(tmp_path / "argilla.json", records)
    with pytest.raises(
        DataError, match=r"argilla.json: record 2: field 'responses\[0\].values.ranking.value\[1\].rank'"
    ):
        import_tool_rankings(tmp_path / "he", path, "argilla")

    records = argilla_v2()
    records["records"][0]["responses"]["ranking"][1]["value"] = ["r1", "r1", "r2"]
    path = write_json(tmp_path / "argilla2.json", records)
    with pytest.raises(
        DataError, match=r"record 1: field 'responses.ranking\[1\].value\[1\]': response 'r1' is ranked"
    ):
        import_tool_rankings(tmp_path / "he", path, "argilla")

    directory, slot = exported(tmp_path)
    tasks = ls_tasks(slot)
    tasks[2]["annotations"][0]["result"][0]["value"]["selected"] = "middle"
    path = write_json(tmp_path / "ls.json", tasks)
    with pytest.raises(
        DataError, match=r"ls.json: task 3: field 'annotations\[0\].result\[0\].value.selected'"
    ):
        import_tool_rankings(directory, path, "labelstudio")

    tasks = ls_tasks(slot)
    tasks[0]["annotations"][0]["result"][0]["value"]["ranker"]["answers"][0] = "Q"
    path = write_json(tmp_path / "ls.json", tasks)
    with pytest.raises(
        DataError, match=r"task 1: field 'annotations\[0\].result\[0\].value.ranker.answers': unknown"
    ):
        import_tool_rankings(directory, path, "labelstudio")

    tasks = ls_tasks(slot)
    tasks[1]["data"]["prompt_id"] = "elsewhere"
    path = write_json(tmp_path / "ls.json", tasks)
    with pytest.raises(
        DataError, match="task 2: field 'prompt_id'.*import it into a directory without key.jsonl"
    ):
        import_tool_rankings(directory, path, "labelstudio")


def test_skip_counts_bad_records_and_cli_prints_no_traceback(tmp_path, capsys):
    records = argilla_v1()
    records[0]["responses"][2]["user_id"] = None  # u3 on p1: skipped; p1 merges u1, u2 only
    path = write_json(tmp_path / "argilla.json", records)
    res = import_tool_rankings(tmp_path / "he", path, "argilla", on_bad_row="skip")
    assert res.summary["read"]["skipped"] == 1 and res.summary["read"]["skipped_lines"] == [1]

    rc = main(
        [
            "human-eval",
            "action=import",
            "import_format=argilla",
            f"import_path={path}",
            f"dir={tmp_path / 'x'}",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0
    assert "argilla.json: record 1: field 'responses[2].user_id'" in err
    assert "Traceback" not in err


def test_readme_csv_example_imports(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Importing rankings from Argilla, Label Studio or CSV", 1)[1]
    text = section.split("```csv\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "rankings.csv"
    path.write_text(text)
    # no export here: the ids are the model names; A first, B and C tied (1, 3, 3) -> 1, 1/2, 1/2
    res = import_tool_rankings(tmp_path / "he", path, "csv")
    assert points(res.summary) == pytest.approx({"A": 1.0, "B": 0.5, "C": 0.5}, abs=1e-12)
