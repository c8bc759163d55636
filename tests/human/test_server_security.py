"""The annotation server over real HTTP in a thread: who may ask (Host, Origin, session token), annotator
names (NFC, refused characters), durable writes (a full disk answered 507, nothing torn left behind), a
handler that survives bad input, and rankings made for other texts refused (task_hash)."""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from rewardmix.data.readers import DataError
from rewardmix.human import server as server_module
from rewardmix.human.aggregate import import_rankings
from rewardmix.human.export import export_tasks
from rewardmix.human.formats import import_tool_rankings
from rewardmix.human.server import serve, serving

PROMPTS = {"p1": "one", "p2": "two"}


def export(folder: Path, changed: tuple[str, ...] = ()) -> Path:
    """A human-eval directory for models x, y, z on p1, p2; the prompts in ``changed`` get new responses."""
    gen = folder.parent / f"{folder.name}-gen-{len(changed)}"
    gen.mkdir(parents=True, exist_ok=True)
    paths = {}
    for m in ("x", "y", "z"):
        rows = [
            {"id": p, "prompt": t, "response": f"{m} on {p}" + (" (regenerated)" if p in changed else "")}
            for p, t in PROMPTS.items()
        ]
        paths[m] = gen / f"{m}.jsonl"
        paths[m].write_text("".join(json.dumps(r) + "\n" for r in rows))
    export_tasks(folder, generations=paths)
    return folder


def request(server, method: str, path: str, *, body=None, headers=None, token=True, host=None):
    """One request on a fresh connection: ``(status, parsed JSON or raw text)``."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    # host: None = this server's address, False = no Host header at all
    all_headers = {"Host": host if host is not None else f"127.0.0.1:{server.port}"}
    if token is True:
        all_headers["X-Rewardmix-Token"] = server.token
    elif isinstance(token, str):
        all_headers["X-Rewardmix-Token"] = token
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
        all_headers["Content-Length"] = str(len(data))
    all_headers.update(headers or {})
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in all_headers.items():
            if value is not False:
                conn.putheader(name, value)
        conn.endheaders(data)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, (json.loads(raw) if "json" in kind else raw.decode())


def next_task(server, annotator: str) -> dict:
    status, answer = request(server, "GET", f"/api/next?annotator={quote(annotator)}")
    assert status == 200, answer
    return answer


def rank(server, annotator: str, headers=None):
    """Rank the annotator's next task A > B > C as the page would: ``(status, answer)``."""
    task = next_task(server, annotator)["task"]
    body = {
        "annotator": annotator,
        "prompt_id": task["prompt_id"],
        "task_hash": task["task_hash"],
        "ranks": {r["slot"]: i for i, r in enumerate(task["responses"], start=1)},
    }
    return request(server, "POST", "/api/rank", body=body, headers=headers)


# ---------------------------------------------------------------------------------------------------------
# Who may ask
# ---------------------------------------------------------------------------------------------------------


def test_host_header_must_name_this_server(tmp_path):
    he = export(tmp_path / "he")
    with serving(he) as server:
        port = server.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}"):
            assert request(server, "GET", "/api/next?annotator=a", host=host)[0] == 200, host
        # a page of another site whose name resolves to 127.0.0.1 (DNS rebinding) sends its own name
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", "127.0.0.1", "", False):
            status, answer = request(server, "GET", "/api/next?annotator=a", host=host)
            assert status == 403 and "Host header" in answer["error"], (host, answer)
        status, _ = request(server, "POST", "/api/rank", body={"annotator": "a"}, host=f"evil.example:{port}")
        assert status == 403 and not (he / "rankings.jsonl").exists()


def test_allowed_hosts_adds_a_name(tmp_path):
    he = export(tmp_path / "he")
    with serving(he, allowed_hosts=["annotate.lan"]) as server:
        assert request(server, "GET", "/api/next?annotator=a", host=f"annotate.lan:{server.port}")[0] == 200
        assert request(server, "GET", "/api/next?annotator=a", host=f"other.lan:{server.port}")[0] == 403


def test_origin_header_when_sent_must_be_this_server(tmp_path):
    he = export(tmp_path / "he")
    with serving(he) as server:
        own = f"http://127.0.0.1:{server.port}"
        assert rank(server, "a")[0] == 200
        task = next_task(server, "b")["task"]
        body = {"annotator": "b", "prompt_id": task["prompt_id"], "task_hash": task["task_hash"]}
        body["ranks"] = {"A": 1, "B": 2, "C": 3}
        for origin in (
            "http://evil.example",
            f"https://127.0.0.1:{server.port}",
            "null",
            f"{own}.evil.example",
        ):
            status, answer = request(server, "POST", "/api/rank", body=body, headers={"Origin": origin})
            assert status == 403 and "Origin" in answer["error"], (origin, answer)
        assert next_task(server, "b")["progress"]["ranked"] == 0  # nothing was stored
        assert request(server, "POST", "/api/rank", body=body, headers={"Origin": own})[0] == 200


def test_every_request_needs_the_session_token(tmp_path, caplog):
    he = export(tmp_path / "he")
    caplog.set_level(logging.DEBUG, logger="rewardmix.human.server")
    with serving(he) as server, serving(he) as other:
        assert server.token != other.token and len(server.token) >= 32  # random per session
        assert server.url == f"{server.base_url}?token={server.token}"
        # the page: with the token in the address only
        assert request(server, "GET", f"/?token={server.token}", token=False)[0] == 200
        for path, token in (("/", False), ("/", "wrong"), (f"/?token={other.token}", False), ("/x", False)):
            status, answer = request(server, "GET", path, token=token)
            assert status == 403 and "token" in answer["error"], (path, answer)
        # the API: the header (as the page sends it) or the address
        assert request(server, "GET", "/api/next?annotator=a", token=False)[0] == 403
        assert request(server, "GET", f"/api/next?annotator=a&token={server.token}", token=False)[0] == 200
        status, _ = request(server, "POST", "/api/rank", body={"annotator": "a"}, token=other.token)
        assert status == 403 and not (he / "rankings.jsonl").exists()
    assert caplog.records and not any(server.token in r.getMessage() for r in caplog.records)  # not logged

    # serve() prints the address, token included, once when it starts
    caplog.clear()
    printed = []

    def on_ready(url):
        printed.append(url)
        raise KeyboardInterrupt  # stop at once, as Ctrl+C would

    result = serve(he, on_ready=on_ready)
    assert "?token=" in printed[0] and "token" not in result.url
    assert [r.getMessage() for r in caplog.records if printed[0] in r.getMessage()]


# ---------------------------------------------------------------------------------------------------------
# Names, bad input, a handler that never dies
# ---------------------------------------------------------------------------------------------------------


def test_names_are_nfc_and_bad_names_are_400(tmp_path):
    he = export(tmp_path / "he")
    with serving(he) as server:
        assert rank(server, "Jos\u00e9")[0] == 200  # "José", é as one code point (NFC)
        # the same name typed with a combining accent (NFD) is the same annotator: p1 is done for them
        same = next_task(server, "Jose\u0301")
        assert same["annotator"] == "Jos\u00e9" and same["progress"]["ranked"] == 1
        assert next_task(server, "Jose")["progress"]["ranked"] == 0  # not stripped to ASCII: another one
        bad = [
            "a%00b",  # a control character
            "a%0Ab",  # a line break
            "a%E2%80%AEb",  # a right-to-left override (makes one name look like another)
            "x" * 101,  # too long
            "%20a",  # surrounding space
            "Jos%E9",  # Latin-1, not UTF-8
        ]
        for name in bad:
            status, answer = request(server, "GET", f"/api/next?annotator={name}")
            assert status == 400 and "annotator name" in answer["error"], (name, answer)
        # a lone surrogate in the JSON body (valid JSON, not Unicode text): 400, and the server goes on
        task = next_task(server, "b")["task"]
        raw = (
            b'{"annotator": "a\\ud800", "prompt_id": "p1", "task_hash": "%s", "ranks": {"A": 1, "B": 2, "C": 3}}'
            % task["task_hash"].encode()
        )
        status, answer = request(server, "POST", "/api/rank", body=raw)
        assert status == 400 and "U+D800" in answer["error"]
        status, answer = request(
            server, "GET", "/api/next?annotator=%ED%A0%80"
        )  # the surrogate, UTF-8 encoded
        assert status == 400
        assert rank(server, "b")[0] == 200
    lines = [json.loads(line) for line in (he / "rankings.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["annotator"] for r in lines] == ["Jos\u00e9", "b"]


def test_an_unexpected_error_is_a_500_and_the_server_goes_on(tmp_path, monkeypatch):
    he = export(tmp_path / "he")
    with serving(he) as server:

        def broken(annotator):
            raise RuntimeError("boom")

        monkeypatch.setattr(server.store, "next_task", broken)
        status, answer = request(server, "GET", "/api/next?annotator=a")
        assert status == 500 and "failed" in answer["error"]
        monkeypatch.undo()
        assert request(server, "GET", "/api/next?annotator=a")[0] == 200


# ---------------------------------------------------------------------------------------------------------
# Durable writes
# ---------------------------------------------------------------------------------------------------------


def test_a_write_torn_by_a_full_disk_is_507_and_leaves_nothing(tmp_path, monkeypatch):
    he = export(tmp_path / "he")
    real_write = os.write

    def full_disk(fd, data):
        if b'"ranks"' not in data:
            return real_write(fd, data)
        real_write(fd, data[: len(data) // 2])  # half the line reaches the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    with serving(he) as server:
        assert rank(server, "a")[0] == 200
        before = (he / "rankings.jsonl").read_bytes()
        monkeypatch.setattr(server_module.os, "write", full_disk)
        status, answer = rank(server, "a")
        monkeypatch.undo()
        assert status == 507 and "NOT stored" in answer["error"] and "No space left" in answer["error"]
        assert (he / "rankings.jsonl").read_bytes() == before  # the torn half was taken back
        assert next_task(server, "a")["progress"]["ranked"] == 1  # p2 is still to rank
        assert rank(server, "a")[0] == 200  # the disk has room again: the resubmission is stored
    s = import_rankings(he).summary
    assert s["read"]["rankings_used"] == 2 and s["read"]["skipped"] == 0


def test_a_failed_fsync_is_507_and_the_line_is_taken_back(tmp_path, monkeypatch):
    he = export(tmp_path / "he")
    calls = []
    real_fsync = os.fsync

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    with serving(he) as server:
        monkeypatch.setattr(server_module.os, "fsync", failing_fsync)
        status, answer = rank(server, "a")
        monkeypatch.undo()
        assert status == 507 and "NOT stored" in answer["error"]
        assert (he / "rankings.jsonl").read_bytes() == b""
        assert next_task(server, "a")["progress"]["ranked"] == 0


def test_a_new_rankings_file_is_fsynced_with_its_directory(tmp_path, monkeypatch):
    he = export(tmp_path / "he")
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(server_module.os, "fsync", spy)
    with serving(he) as server:
        assert rank(server, "a")[0] == 200
        assert rank(server, "a")[0] == 200
    rankings, folder = os.path.realpath(he / "rankings.jsonl"), os.path.realpath(he)
    assert synced == [rankings, folder, rankings]  # the directory once, when the file appeared


# ---------------------------------------------------------------------------------------------------------
# Rankings are never reused for other texts
# ---------------------------------------------------------------------------------------------------------


def test_re_export_with_changed_responses_is_refused_under_rankings(tmp_path):
    he = export(tmp_path / "he")
    with serving(he) as server:
        assert rank(server, "a")[0] == 200
    before = {name: (he / name).read_bytes() for name in ("tasks.jsonl", "key.jsonl", "manifest.json")}
    with pytest.raises(FileExistsError, match=r"changes the prompt or response texts of 1 task\(s\)"):
        export(he, changed=("p2",))  # same models, same slots: only the texts differ
    assert {name: (he / name).read_bytes() for name in before} == before  # nothing overwritten
    export(he)  # the same texts again: allowed


def test_rankings_made_for_other_texts_are_set_aside(tmp_path, caplog):
    old = export(tmp_path / "old")
    with serving(old) as server:
        assert rank(server, "a")[0] == 200  # p1
        assert rank(server, "a")[0] == 200  # p2
    # a new export with p2's responses regenerated, and the old rankings copied in
    new = export(tmp_path / "new", changed=("p2",))
    (new / "rankings.jsonl").write_bytes((old / "rankings.jsonl").read_bytes())
    with caplog.at_level(logging.WARNING):
        s = import_rankings(new).summary
    assert s["read"]["stale"] == 1 and s["read"]["stale_lines"] == [2] and s["read"]["rankings_used"] == 1
    assert [p["prompt_id"] for p in s["prompts"]] == ["p1"]  # the p2 ranking was not reused
    assert any("set aside 1 ranking(s) made for other texts" in r.getMessage() for r in caplog.records)
    assert "1 set aside: made for other prompt or response texts" in (new / "human_eval.md").read_text()

    # a page still showing p2's old texts posts their task_hash: 409, nothing stored
    old_hash = json.loads((old / "key.jsonl").read_text().splitlines()[1])["task_hash"]
    with serving(new) as server:
        body = {"annotator": "b", "prompt_id": "p2", "task_hash": old_hash, "ranks": {"A": 1, "B": 2, "C": 3}}
        status, answer = request(server, "POST", "/api/rank", body=body)
        assert status == 409 and "reload the page" in answer["error"]
    assert (new / "rankings.jsonl").read_bytes() == (old / "rankings.jsonl").read_bytes()


def test_all_rankings_stale_is_an_error(tmp_path):
    old = export(tmp_path / "old")
    with serving(old) as server:
        assert rank(server, "a")[0] == 200
    new = export(tmp_path / "new", changed=("p1", "p2"))
    (new / "rankings.jsonl").write_bytes((old / "rankings.jsonl").read_bytes())
    with pytest.raises(DataError, match=r"all 1 ranking\(s\) were made for other texts"):
        import_rankings(new)


def test_tool_ballots_carrying_an_old_task_hash_are_set_aside(tmp_path, caplog):
    old, new = export(tmp_path / "old"), export(tmp_path / "new", changed=("p2",))
    old_hash = [json.loads(line)["task_hash"] for line in (old / "key.jsonl").read_text().splitlines()]
    new_hash = [json.loads(line)["task_hash"] for line in (new / "key.jsonl").read_text().splitlines()]
    assert old_hash[0] == new_hash[0] and old_hash[1] != new_hash[1]  # only p2's texts changed
    # a CSV whose ballots name the task_hash of the tasks they were made from (p2: the old texts)
    rows = [("p1", old_hash[0]), ("p2", old_hash[1])]
    csv = "prompt_id,annotator,response_id,rank,task_hash\n" + "".join(
        f"{pid},u1,{slot},{rank},{h}\n" for pid, h in rows for slot, rank in (("A", 1), ("B", 2), ("C", 3))
    )
    (tmp_path / "r.csv").write_text(csv)
    with caplog.at_level(logging.WARNING):
        s = import_tool_rankings(new, tmp_path / "r.csv", "csv").summary
    assert s["read"]["stale"] == 1 and [p["prompt_id"] for p in s["prompts"]] == ["p1"]
    assert any("set aside 1 ranking(s) made for other texts" in r.getMessage() for r in caplog.records)
    # Argilla: metadata.task_hash; all ballots stale -> nothing to import, said so
    records = [
        {
            "id": "p2",
            "fields": {},
            "metadata": {"task_hash": old_hash[1]},
            "responses": {"ranking": [{"user_id": "u1", "status": "submitted", "value": ["A", "B", "C"]}]},
        }
    ]
    (tmp_path / "a.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match="1 made for other texts than the current export"):
        import_tool_rankings(new, tmp_path / "a.json", "argilla")
    records[0]["metadata"]["task_hash"] = new_hash[1]  # made for the current texts: used
    (tmp_path / "a.json").write_text(json.dumps(records))
    assert import_tool_rankings(new, tmp_path / "a.json", "argilla").summary["read"]["stale"] == 0


def test_cli_refuses_the_re_export_in_one_line(tmp_path, capsys):
    from rewardmix.cli import main

    def generations(suffix: str) -> str:
        path = tmp_path / f"gen{suffix}.jsonl"
        rows = [{"model": m, "id": "p1", "prompt": "one", "response": f"{m}{suffix}"} for m in "xy"]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    he = tmp_path / "he"
    assert (
        main(["human-eval", "action=export", f"dir={he}", f"export.generations_file={generations('')}"]) == 0
    )
    (he / "rankings.jsonl").write_text('{"annotator": "a"}\n')
    capsys.readouterr()
    code = main(["human-eval", "action=export", f"dir={he}", f"export.generations_file={generations('-v2')}"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert (
        f"rewardmix: error: {he / 'rankings.jsonl'}: already holds rankings, and this export changes" in err
    )


def test_declared_annotators_are_matched_in_nfc(tmp_path):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(
        "".join(json.dumps({"model": m, "id": "p1", "prompt": "q", "response": m}) + "\n" for m in "xy")
    )
    he = tmp_path / "he"
    export_tasks(he, generations_file=gen, groups={"g": ["Jose\u0301"]})  # declared in NFD
    with serving(he) as server:
        assert next_task(server, "Jos\u00e9")["group"] == "g"  # typed in NFC: the same annotator
        assert request(server, "GET", "/api/next?annotator=Jose")[0] == 400  # another name: unknown
        assert rank(server, "Jos\u00e9")[0] == 200
        assert server.store.all_done()
