"""Human evaluation without a browser: export (seeded slots, separate key), the JSON API and its validation,
import (last wins, bad lines), Tideman per prompt and Borda points per model (CRS §5.5.2, Tables 9, 17)."""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rewardmix.config import ConfigError, from_dict
from rewardmix.data.readers import DataError
from rewardmix.human.aggregate import import_rankings
from rewardmix.human.export import check_ranks, export_tasks, slot_order
from rewardmix.human.server import ApiError, TaskStore, load_page, serving
from rewardmix.stages import human_eval

# CRS Table 9's responses 1, 2, 3 belong to these models (the names are what annotators must never see).
R1, R2, R3 = "preference_rlhf", "abs_rlhf", "crs_rlhf"


def write_generations(
    folder: Path, models: list[str], prompts: dict[str, str], extra=None
) -> dict[str, Path]:
    """One JSONL per model: ``{"id", "prompt", "response"}``; response text names model and prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for m in models:
        rows = [
            {"id": pid, "prompt": text, "response": f"answer of {m} to {pid}"}
            for pid, text in prompts.items()
        ]
        rows += (extra or {}).get(m, [])
        paths[m] = folder / f"{m}.jsonl"
        paths[m].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def slot_of(directory: Path, group: str, prompt_id: str) -> dict[str, str]:
    """model -> slot, from key.jsonl."""
    for row in read_lines(directory / "key.jsonl"):
        if (row["group"], row["prompt_id"]) == (group, prompt_id):
            return {m: s for s, m in row["slots"].items()}
    raise KeyError(prompt_id)


def by_slot(directory: Path, group: str, prompt_id: str, ranks_by_model: dict[str, int]) -> dict[str, int]:
    slots = slot_of(directory, group, prompt_id)
    return {slots[m]: r for m, r in ranks_by_model.items()}


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------

PROMPTS = {f"p{i}": f"question number {i}?" for i in range(12)}


def test_export_shuffles_slots_and_keeps_the_key_apart(tmp_path):
    gens = write_generations(tmp_path / "gen", [R1, R2, R3], PROMPTS)
    res = export_tasks(tmp_path / "he", generations=gens, seed=7)
    tasks = read_lines(res.tasks_path)
    key = {row["prompt_id"]: row["slots"] for row in read_lines(res.key_path)}
    assert [t["prompt_id"] for t in tasks] == list(PROMPTS)  # input order
    for t in tasks:
        assert [r["slot"] for r in t["responses"]] == ["A", "B", "C"]
        # each slot's text is the response of the model the key names for it
        for r in t["responses"]:
            assert r["text"] == f"answer of {key[t['prompt_id']][r['slot']]} to {t['prompt_id']}"
    # annotators never see model names: not in the task file (the texts above only name them in this test,
    # so check the task file's keys and the non-text fields)
    assert all(set(t) == {"group", "prompt_id", "prompt", "responses", "task_hash"} for t in tasks)
    # the order varies over prompts (12 prompts all in one order: probability 6^-11) and is the seeded one
    orders = {tuple(slots.values()) for slots in key.values()}
    assert len(orders) > 1
    assert list(key["p3"].values()) == slot_order([R3, R1, R2], seed=7, group="all", prompt_id="p3")
    # manifest: slot counts sum to the prompts per model
    assert res.manifest["k"] == 3 and res.manifest["open_annotators"] is True
    assert all(sum(c.values()) == 12 for c in res.manifest["slot_counts"].values())


def test_export_is_reproducible_and_independent_of_input_order(tmp_path):
    gens = write_generations(tmp_path / "gen", [R1, R2, R3], PROMPTS)
    a = export_tasks(tmp_path / "a", generations=gens, seed=1)
    b = export_tasks(tmp_path / "b", generations=dict(reversed(gens.items())), seed=1)
    c = export_tasks(tmp_path / "c", generations=gens, seed=2)
    assert a.key_path.read_text() == b.key_path.read_text()
    assert a.key_path.read_text() != c.key_path.read_text()


def test_export_from_one_file_with_a_model_field_equals_one_file_per_model(tmp_path):
    gens = write_generations(tmp_path / "gen", [R1, R2, R3], PROMPTS)
    one = tmp_path / "all.jsonl"
    one.write_text(
        "".join(json.dumps({**row, "model": m}) + "\n" for m, p in gens.items() for row in read_lines(p))
    )
    a = export_tasks(tmp_path / "a", generations=gens)
    b = export_tasks(tmp_path / "b", generations_file=one)
    assert a.tasks_path.read_text() == b.tasks_path.read_text()
    assert a.key_path.read_text() == b.key_path.read_text()


def test_groups_get_their_own_responses(tmp_path):
    # model x answers p0 differently for g1 and g2; y shares one answer; g2 has no line of its own for y
    gens = write_generations(tmp_path / "gen", ["y"], {"p0": "hi"})
    gens["x"] = tmp_path / "gen" / "x.jsonl"
    gens["x"].write_text(
        json.dumps({"id": "p0", "prompt": "hi", "response": "x for g1", "group": "g1"})
        + "\n"
        + json.dumps({"id": "p0", "prompt": "hi", "response": "x for g2", "group": "g2"})
        + "\n"
    )
    res = export_tasks(tmp_path / "he", generations=gens, groups={"g1": ["ann1"], "g2": ["ann2"]})
    texts = {t["group"]: {r["text"] for r in t["responses"]} for t in read_lines(res.tasks_path)}
    assert texts == {"g1": {"x for g1", "answer of y to p0"}, "g2": {"x for g2", "answer of y to p0"}}
    assert res.manifest["groups"] == {"g1": ["ann1"], "g2": ["ann2"]}
    # a group nobody declared is an error naming the file and field
    with pytest.raises(DataError, match=r"x\.jsonl: field 'group': 'g1' is not a declared group"):
        export_tasks(tmp_path / "he2", generations=gens, groups={"other": ["a"]})


def test_export_errors_name_file_line_and_field(tmp_path):
    gens = write_generations(tmp_path / "gen", ["x", "y"], {"p0": "hi", "p1": "there"})
    # a line without a response: read_records names file:line:field
    gens["y"].write_text(gens["y"].read_text() + json.dumps({"id": "p2", "prompt": "more"}) + "\n")
    with pytest.raises(DataError, match=r"y\.jsonl:3: field 'response': missing"):
        export_tasks(tmp_path / "he", generations=gens)
    # p2 of x exists, y has none -> incomplete prompt: error, or dropped and counted under skip
    gens = write_generations(
        tmp_path / "gen2",
        ["x", "y"],
        {"p0": "hi"},
        extra={"x": [{"id": "p2", "prompt": "more", "response": "r"}]},
    )
    with pytest.raises(DataError, match=r"prompt id 'p2' .* no response from model\(s\) \['y'\]"):
        export_tasks(tmp_path / "he", generations=gens)
    res = export_tasks(tmp_path / "he", generations=gens, on_bad_row="skip")
    assert [t["prompt_id"] for t in read_lines(res.tasks_path)] == ["p0"]
    assert res.manifest["read"]["dropped"]["incomplete_prompts"] == 1
    # the same id twice for one model
    gens = write_generations(
        tmp_path / "gen3",
        ["x", "y"],
        {"p0": "hi"},
        extra={"y": [{"id": "p0", "prompt": "hi", "response": "again"}]},
    )
    with pytest.raises(DataError, match=r"y\.jsonl: field 'id': 'p0' appears twice"):
        export_tasks(tmp_path / "he3", generations=gens)
    # one model is not a comparison
    with pytest.raises(DataError, match="needs 2 to 26 models"):
        export_tasks(tmp_path / "he4", generations={"x": gens["x"]})


def test_re_export_refuses_to_change_the_key_under_existing_rankings(tmp_path):
    gens = write_generations(tmp_path / "gen", [R1, R2, R3], PROMPTS)
    export_tasks(tmp_path / "he", generations=gens, seed=0)
    (tmp_path / "he" / "rankings.jsonl").write_text('{"annotator": "a"}\n')
    export_tasks(tmp_path / "he", generations=gens, seed=0)  # same key: allowed (e.g. to add annotators)
    with pytest.raises(FileExistsError, match="already holds rankings"):
        export_tasks(tmp_path / "he", generations=gens, seed=1)


# ---------------------------------------------------------------------------------------------------------
# Rank validation
# ---------------------------------------------------------------------------------------------------------


def test_check_ranks():
    slots = ["A", "B", "C"]
    assert check_ranks({"A": 2, "B": 1, "C": 2}, slots) == {"A": 2, "B": 1, "C": 2}  # tie at rank 2
    assert check_ranks({"C": 1, "A": 1, "B": 1}, slots) == {"A": 1, "B": 1, "C": 1}  # all tied
    bad = [
        ({"A": 1, "B": 1, "C": 3}, "no response has rank 2"),  # gap
        ({"A": 2, "B": 2, "C": 3}, "no response has rank 1"),  # not from 1
        ({"A": 1, "B": 2}, "response C has no rank"),
        ({"A": 1, "B": 2, "C": None}, "response C has no rank"),
        ({"A": 1, "B": 2, "C": 3, "D": 4}, "there is no response 'D'"),
        ({"A": 1, "B": 2, "C": 4}, "from 1 to 3"),
        ({"A": 0, "B": 1, "C": 2}, "from 1 to 3"),
        ({"A": True, "B": 1, "C": 2}, "from 1 to 3"),
        ({"A": "1", "B": 2, "C": 3}, "from 1 to 3"),
        ({"A": 1.5, "B": 2, "C": 3}, "from 1 to 3"),
        ([1, 2, 3], "must be an object"),
    ]
    for ranks, message in bad:
        with pytest.raises(ValueError, match=message):
            check_ranks(ranks, slots)


# ---------------------------------------------------------------------------------------------------------
# CRS Table 9 through the whole path: export -> key -> rankings by slot -> import -> merged by model
# ---------------------------------------------------------------------------------------------------------


def test_crs_table_9_through_the_key(tmp_path):
    gens = write_generations(tmp_path / "gen", [R1, R2, R3], {"q": "a prompt"})
    he = tmp_path / "he"
    export_tasks(he, generations=gens, seed=3)
    store = TaskStore(he)
    table_9 = {  # CRS Table 9, by response (= model)
        "annotator1": {R1: 2, R2: 1, R3: 3},
        "annotator2": {R1: 2, R2: 3, R3: 1},
        "annotator3": {R1: 2, R2: 3, R3: 1},
    }
    for name, ranks in table_9.items():  # the annotators see slots only
        h = store.by_id[("all", "q")]["task_hash"]
        store.submit(
            {"annotator": name, "prompt_id": "q", "task_hash": h, "ranks": by_slot(he, "all", "q", ranks)}
        )
    # the stored lines are by slot, never by model
    assert all(set(row["ranks"]) == {"A", "B", "C"} for row in read_lines(he / "rankings.jsonl"))

    summary = import_rankings(he).summary
    # Tideman: r1 beats r2 2-1 (annotators 2, 3), r3 beats r1 2-1 and r2 2-1: locked r3 > r1 > r2
    assert summary["prompts"] == [
        {"group": "all", "prompt_id": "q", "annotators": 3, "merged": {R1: 2, R2: 3, R3: 1}}
    ]
    # normalized Borda of the merged ranking, K = 3: 1, 2/3, 1/3 (one prompt, one group: std 0)
    points = {m: p["mean"] for m, p in summary["points"].items()}
    assert points == pytest.approx({R3: 1.0, R1: 2 / 3, R2: 1 / 3}, abs=1e-12)
    assert summary["order"] == [R3, R1, R2]
    assert summary["points"][R3]["std"] == 0.0
    assert summary["pairwise"][R3][R1] == pytest.approx(
        {"wins": 1, "ties": 0, "losses": 0, "n": 1, "rate": 1.0, "se": 0.0, "ci_low": 1.0, "ci_high": 1.0}
    )


# ---------------------------------------------------------------------------------------------------------
# Borda points and the std over groups by hand (CRS Table 17), with a tie and a resubmission
# ---------------------------------------------------------------------------------------------------------


def test_points_per_group_mean_std_and_pairwise_counts(tmp_path):
    gens = write_generations(tmp_path / "gen", ["x", "y", "z"], {"p1": "one", "p2": "two"})
    he = tmp_path / "he"
    export_tasks(he, generations=gens, groups={"g1": ["ann1", "ann2"], "g2": ["ann3"]})
    store = TaskStore(he)

    def rank(annotator, group, prompt, ranks):
        h = store.by_id[(group, prompt)]["task_hash"]
        ranks = by_slot(he, group, prompt, ranks)
        store.submit({"annotator": annotator, "prompt_id": prompt, "task_hash": h, "ranks": ranks})

    rank("ann1", "g1", "p1", {"x": 1, "y": 2, "z": 3})
    rank("ann2", "g1", "p1", {"x": 1, "y": 2, "z": 3})
    rank("ann1", "g1", "p2", {"z": 1, "x": 2, "y": 3})  # replaced by the next line (last wins)
    rank("ann1", "g1", "p2", {"x": 1, "y": 1, "z": 2})  # tie x = y
    rank("ann3", "g2", "p1", {"z": 1, "x": 2, "y": 3})
    rank("ann3", "g2", "p2", {"x": 1, "y": 2, "z": 3})

    res = import_rankings(he, std_ddof=0)
    s = res.summary
    # g1: p1 -> x 1, y 2/3, z 1/3; p2 (tie x=y at positions 1-2) -> x, y (1 + 2/3)/2 = 5/6, z 1/3
    #     means: x (1 + 5/6)/2 = 11/12, y (2/3 + 5/6)/2 = 3/4, z 1/3
    # g2: p1 -> z 1, x 2/3, y 1/3; p2 -> x 1, y 2/3, z 1/3; means: x 5/6, y 1/2, z 2/3
    per_group = {(m, g): v for m, p in s["points"].items() for g, v in p["per_group"].items()}
    assert per_group == pytest.approx(
        {
            ("x", "g1"): 11 / 12,
            ("x", "g2"): 5 / 6,
            ("y", "g1"): 3 / 4,
            ("y", "g2"): 1 / 2,
            ("z", "g1"): 1 / 3,
            ("z", "g2"): 2 / 3,
        }
    )
    # over groups: mean of the two group means, population std = |difference| / 2
    means = {m: p["mean"] for m, p in s["points"].items()}
    stds = {m: p["std"] for m, p in s["points"].items()}
    assert means == pytest.approx({"x": 7 / 8, "y": 5 / 8, "z": 1 / 2})
    assert stds == pytest.approx({"x": 1 / 24, "y": 1 / 8, "z": 1 / 6})
    assert s["order"] == ["x", "y", "z"]
    # merged rankings over the 4 (group, prompt): x vs y above in g1p1, g2p1, g2p2, level in g1p2
    assert {k: s["pairwise"]["x"]["y"][k] for k in ("wins", "ties", "losses", "n")} == {
        "wins": 3,
        "ties": 1,
        "losses": 0,
        "n": 4,
    }
    assert s["pairwise"]["x"]["y"]["rate"] == pytest.approx(3.5 / 4)
    assert s["pairwise"]["y"]["x"]["rate"] == pytest.approx(0.5 / 4)
    assert s["pairwise"]["z"]["x"]["wins"] == 1 and s["pairwise"]["z"]["x"]["losses"] == 3  # g2p1 only
    assert s["read"] == {
        "format": "rewardmix",
        "source": str(tmp_path / "he" / "rankings.jsonl"),
        "lines_in": 6,
        "rankings_used": 5,
        "replaced": 1,
        "skipped": 0,
        "skipped_lines": [],
        "stale": 0,
        "stale_lines": [],
    }
    assert s["groups"]["g1"]["annotators"] == ["ann1", "ann2"] and s["groups"]["g2"]["rankings"] == 2

    # by-model file: the corrected ranking of ann1 on g1/p2, by model
    rows = read_lines(res.by_model_path)
    assert {"group": "g1", "prompt_id": "p2", "annotator": "ann1", "ranks": {"x": 1, "y": 1, "z": 2}} in rows
    md = res.md_path.read_text()
    assert "| x | 0.917 | 0.833 | 0.875 | 0.042 |" in md
    assert "| x | — | 3/1/0 (88% ± 17) |" in md  # se = sqrt(0.875 * 0.125 / 4) = 0.165
    assert "1 replaced by a later submission" in md

    # sample std (ddof=1) = population std * sqrt(2 / 1)
    s1 = import_rankings(he, std_ddof=1).summary
    assert s1["points"]["x"]["std"] == pytest.approx(math.sqrt(2) / 24)


def test_an_annotator_ranks_in_their_own_group_only(tmp_path):
    gens = write_generations(tmp_path / "gen", ["x", "y"], {"p1": "one"})
    he = tmp_path / "he"
    export_tasks(he, generations=gens, groups={"g1": ["ann1"], "g2": ["ann2"]})
    with pytest.raises(ApiError, match="unknown annotator 'mallory'"):
        TaskStore(he).next_task("mallory")
    # a line claiming another group is caught on import
    (he / "rankings.jsonl").write_text(
        json.dumps({"annotator": "ann1", "group": "g2", "prompt_id": "p1", "ranks": {"A": 1, "B": 2}}) + "\n"
    )
    with pytest.raises(
        DataError, match=r"rankings\.jsonl:1: field 'group': annotator 'ann1' is not in group 'g2'"
    ):
        import_rankings(he)


# ---------------------------------------------------------------------------------------------------------
# Bad lines on import
# ---------------------------------------------------------------------------------------------------------


def test_bad_ranking_lines_name_file_line_and_field(tmp_path):
    gens = write_generations(tmp_path / "gen", ["x", "y", "z"], {"p1": "one"})
    he = tmp_path / "he"
    export_tasks(he, generations=gens)
    good = json.dumps(
        {"annotator": "a", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}}
    )
    cases = [
        (
            json.dumps({"annotator": "a", "group": "all", "prompt_id": "p9", "ranks": {"A": 1}}),
            "field 'prompt_id': unknown prompt 'p9'",
        ),
        (
            json.dumps(
                {"annotator": "a", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "D": 3}}
            ),
            "field 'ranks': there is no response 'D'",
        ),
        (
            json.dumps(
                {"annotator": "a", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 1, "C": 3}}
            ),
            "field 'ranks': no response has rank 2",
        ),
        (
            '{"annotator": "a", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "A": 2, "B": 1, "C": 3}}',
            "field 'ranks': response A is ranked more than once",
        ),
        ('{"annotator": "a", "group": "all", "prompt_id": "p1"', "invalid JSON"),
        (
            json.dumps({"group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}}),
            "field 'annotator'",
        ),
    ]
    path = he / "rankings.jsonl"
    for line, message in cases:
        path.write_text(good + "\n\n" + line + "\n")  # the bad line is line 3 (line 2 is blank)
        with pytest.raises(DataError, match=rf"rankings\.jsonl:3:.*{message}"):
            import_rankings(he)
    # under skip: counted, listed by line, and the good lines still aggregate
    path.write_text(good + "\n" + "\n".join(line for line, _ in cases) + "\n")
    s = import_rankings(he, on_bad_row="skip").summary
    assert s["read"]["skipped"] == len(cases) and s["read"]["skipped_lines"] == list(range(2, 2 + len(cases)))
    assert s["read"]["rankings_used"] == 1


# ---------------------------------------------------------------------------------------------------------
# The JSON API over HTTP
# ---------------------------------------------------------------------------------------------------------


def _get(url: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"X-Rewardmix-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _post(
    url: str, body: bytes | dict, token: str, content_type: str = "application/json"
) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": content_type, "X-Rewardmix-Token": token}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_api_flow_and_validation_errors(tmp_path):
    gens = write_generations(tmp_path / "gen", ["x", "y", "z"], {"p1": "one", "p2": "two"})
    he = tmp_path / "he"
    export_tasks(he, generations=gens)
    with serving(he) as server:
        url, token = server.base_url, server.token
        assert server.url == f"{url}?token={token}" and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=5) as r:
            page = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert 'id="submit"' in page and "http" not in page.split("<script>")[1]  # no external resource

        status, nxt = _get(url + "api/next?annotator=ann", token)
        assert (
            status == 200
            and nxt["task"]["prompt_id"] == "p1"
            and nxt["progress"] == {"ranked": 0, "total": 2}
        )
        assert [r["slot"] for r in nxt["task"]["responses"]] == ["A", "B", "C"]

        rank = url + "api/rank"
        h1 = nxt["task"]["task_hash"]
        errors = [
            (
                {"annotator": "ann", "prompt_id": "p1", "ranks": {"A": 1, "B": 1, "C": 3}},
                "no response has rank 2",
            ),
            ({"annotator": "ann", "prompt_id": "p1", "ranks": {"A": 1, "B": 2}}, "response C has no rank"),
            ({"annotator": "ann", "prompt_id": "p7", "ranks": {"A": 1, "B": 2, "C": 3}}, "no prompt 'p7'"),
            ({"prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}}, "annotator name"),
            ({"annotator": "ann", "prompt_id": "p1"}, "no ranks"),
            (
                b'{"annotator": "ann", "prompt_id": "p1", "ranks": {"A": 1, "A": 2, "B": 1, "C": 2}}',
                "'A' is given more than once",
            ),
            (b"{not json", "invalid request"),
            (b"[1, 2]", "must be a JSON object"),
        ]
        for body, message in errors:
            if isinstance(body, dict):
                body = {"task_hash": h1, **body}
            status, answer = _post(rank, body, token)
            assert status == 400 and message in answer["error"], (body, answer)
        assert _post(rank, b"{}", token, content_type="text/plain")[0] == 415
        assert _post(rank, b"x" * (64 * 1024 + 1), token)[0] == 413
        assert _get(url + "nothing", token)[0] == 404
        assert _get(url + "api/next", token)[0] == 400  # no annotator
        assert not (he / "rankings.jsonl").exists()  # nothing invalid was stored

        # a valid ranking with a tie -> stored, progress advances, next prompt is p2
        status, answer = _post(
            rank,
            {"annotator": "ann", "prompt_id": "p1", "task_hash": h1, "ranks": {"A": 2, "B": 1, "C": 2}},
            token,
        )
        assert status == 200 and answer == {"ok": True, "progress": {"ranked": 1, "total": 2}}
        assert _get(url + "api/next?annotator=ann", token)[1]["task"]["prompt_id"] == "p2"
        assert _get(url + "api/next?annotator=other", token)[1]["task"]["prompt_id"] == "p1"  # per annotator
    # a restarted server resumes: ann continues at p2, and after it is done
    store = TaskStore(he)
    nxt = store.next_task("ann")["task"]
    assert nxt["prompt_id"] == "p2"
    store.submit(
        {
            "annotator": "ann",
            "prompt_id": "p2",
            "task_hash": nxt["task_hash"],
            "ranks": {"A": 1, "B": 2, "C": 3},
        }
    )
    assert store.next_task("ann") == {
        "annotator": "ann",
        "group": "all",
        "done": True,
        "task": None,
        "progress": {"ranked": 2, "total": 2},
    }
    rows = read_lines(he / "rankings.jsonl")
    assert [(r["prompt_id"], r["ranks"]) for r in rows] == [
        ("p1", {"A": 2, "B": 1, "C": 2}),
        ("p2", {"A": 1, "B": 2, "C": 3}),
    ]


def test_page_is_self_contained():
    """The page names no external resource: no http(s) URL, no src attribute, an inline empty icon."""
    page = load_page().decode()
    assert "http://" not in page and "https://" not in page
    assert " src=" not in page and 'href="data:,"' in page


def test_a_torn_last_line_does_not_swallow_the_next_ranking(tmp_path):
    gens = write_generations(tmp_path / "gen", ["x", "y"], {"p1": "one"})
    he = tmp_path / "he"
    export_tasks(he, generations=gens)
    (he / "rankings.jsonl").write_text('{"annotator": "a", "gro')  # a crash mid-line
    store = TaskStore(he)
    h = store.next_task("b")["task"]["task_hash"]
    store.submit({"annotator": "b", "prompt_id": "p1", "task_hash": h, "ranks": {"A": 1, "B": 2}})
    lines = (he / "rankings.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["annotator"] == "b"
    s = import_rankings(he, on_bad_row="skip").summary
    assert s["read"]["skipped_lines"] == [1] and s["read"]["rankings_used"] == 1


# ---------------------------------------------------------------------------------------------------------
# The stage: export -> serve (until done) -> import, from one config
# ---------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stage_export_serve_import(tmp_path, caplog):
    gens = write_generations(tmp_path / "gen", ["x", "y"], {"p1": "one", "p2": "two"})
    port = _free_port()
    base = {
        "dir": str(tmp_path / "he"),
        "groups": {"g1": ["ann1"]},
        "export": {"generations": {m: str(p) for m, p in gens.items()}, "seed": 5},
        "serve": {"port": port, "stop_when_done": True},
    }
    exported = human_eval.run(from_dict(human_eval.Config, {**base, "action": "export"}))
    assert exported.outputs["tasks"].exists() and exported.stats["groups"] == {"g1": ["ann1"]}

    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            human_eval.run(from_dict(human_eval.Config, {**base, "action": "serve"}))
        )
    )
    caplog.set_level(logging.INFO, logger="rewardmix.human.server")
    thread.start()
    url = f"http://127.0.0.1:{port}/"
    token = None
    for _ in range(100):  # wait for the server to print its address, token included
        found = [re.search(r"\?token=(\S+)", r.getMessage()) for r in caplog.records]
        token = next((m.group(1) for m in found if m), None)
        if token:
            break
        time.sleep(0.05)
    assert token, "the server printed no address with a token"
    he = tmp_path / "he"
    for pid in ("p1", "p2"):
        task = _get(url + "api/next?annotator=ann1", token)[1]["task"]
        assert task["prompt_id"] == pid
        ranks = by_slot(he, "g1", pid, {"x": 1, "y": 2})
        body = {"annotator": "ann1", "prompt_id": pid, "task_hash": task["task_hash"], "ranks": ranks}
        status, _ = _post(url + "api/rank", body, token)
        assert status == 200
    thread.join(timeout=10)
    assert not thread.is_alive() and results[0].stats["all_done"] is True

    imported = human_eval.run(from_dict(human_eval.Config, {**base, "action": "import"}))
    assert imported.stats["points"]["x"]["mean"] == 1.0 and imported.stats["points"]["y"]["mean"] == 0.5
    assert imported.outputs["report"].read_text().startswith("# Human evaluation")

    # groups in the config must match the exported ones
    with pytest.raises(ValueError, match="differ from the exported ones"):
        human_eval.run(
            from_dict(human_eval.Config, {**base, "action": "import", "groups": {"g1": ["ann1", "new"]}})
        )


def test_stage_config_validation():
    with pytest.raises(ConfigError, match="annotator 'a' is in two groups"):
        from_dict(human_eval.Config, {"groups": {"g1": ["a"], "g2": ["a"]}})
    with pytest.raises(ConfigError, match="'action' must be one of 'export', 'serve', 'import'"):
        from_dict(human_eval.Config, {"action": "rank"})
    with pytest.raises(ConfigError, match="serve.port must be in 0..65535"):
        from_dict(human_eval.Config, {"serve": {"port": 70000}})
