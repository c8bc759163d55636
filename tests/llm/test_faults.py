"""Endpoint faults at the stage level (issue 9, item 4), through the CLI against the fake server.

tests/llm/test_http.py covers each fault on one client call and tests/llm/test_batch.py the batch job; here
whole ``rationales`` / ``rank`` runs meet a storm of faults (timeouts, resets, bodies cut short, 429 with
Retry-After, 5xx, truncated and malformed JSON, answers without content, refusals) and must come out with the
same records as a run on a healthy server, every retry counted in stats.json, backoff honoured, and an
interrupted job resumed without sending any request twice.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rewardmix import cli
from rewardmix.llm import http
from rewardmix.rundir import read_jsonl
from tests.badinput.runner import fake_llm_answer

# One of each fault, several of the common ones; cause = how the client counts it.
FAULTS = [
    ("timeout", "timeout"),
    ("timeout", "timeout"),
    ("reset", "connection"),
    ("reset", "connection"),
    ("cut", "connection"),
    (("status", 429, {"Retry-After": "1.5"}, '{"error": "rate limited"}'), "rate_limit"),
    (("status", 429, {"Retry-After": "0"}, '{"error": "rate limited"}'), "rate_limit"),
    (("status", 500, {}, '{"error": "internal"}'), "server_error"),
    (("status", 502, {}, "<html>bad gateway</html>"), "server_error"),
    (("status", 503, {"Retry-After": "2"}, "overloaded"), "server_error"),
    ("truncated", "malformed_json"),
    ("garbage", "malformed_json"),
    ("missing_choices", "missing_content"),
    ("no_content", "missing_content"),
]


@pytest.fixture
def sst2(tmp_path):
    path = tmp_path / "sst2.tsv"
    rows = ["a joyous ride", "flat and dull", "REFUSE-ME please", "warm and funny", "a slog"]
    path.write_text("sentence\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(rows)))
    return path


def teacher_answer(body):
    if "REFUSE-ME" in body["messages"][-1]["content"]:
        return "I'm sorry, but I cannot provide a rationale for that."
    return fake_llm_answer(body)


def rationales_argv(data, out, server, *extra):
    return [
        "rationales",
        "task=sst2",
        f"data={data}",
        f"output_dir={out}",
        "teacher.backend=openai",
        f"teacher.base_url={server.url}",
        "teacher.model=fake",
        "teacher.timeout=0.3",  # the fake server hangs 0.6 s on a "timeout" fault
        "teacher.max_retries=30",  # with 4 requests in flight, one may meet many faults in a row
        *extra,
    ]


def test_rationales_survive_a_fault_storm(tmp_path, chat_server, client_sleeps, sst2):
    chat_server.answer = teacher_answer
    assert cli.main(rationales_argv(sst2, tmp_path / "clean", chat_server)) == 0
    clean_requests = chat_server.count
    assert clean_requests == 10  # 5 examples x (gold, wrong)

    chat_server.faults.extend(action for action, _ in FAULTS)
    assert cli.main(rationales_argv(sst2, tmp_path / "faulty", chat_server)) == 0

    # every fault cost exactly one extra request, and nothing else changed
    assert chat_server.count - clean_requests == 10 + len(FAULTS)
    clean, faulty = (read_jsonl(tmp_path / d / "rationales.jsonl") for d in ("clean", "faulty"))
    assert faulty == clean and len(clean) == 4
    stats = json.loads((tmp_path / "faulty" / "stats.json").read_text())
    assert stats["teacher"]["retries"] == dict(Counter(cause for _, cause in FAULTS))
    assert stats["teacher"]["failed"] == [] and stats["kept"] == 4
    assert stats["dropped"] == {"missing": 0, "refusal": 1, "contradiction": 0}  # refusal filtered, counted
    # Retry-After honoured exactly (429: 1.5 s and 0 s; 503: 2 s); the rest backed off with jitter
    assert sorted(s for s in client_sleeps if s in (0.0, 1.5, 2.0)) == [0.0, 1.5, 2.0]
    assert len(client_sleeps) == len(FAULTS) and all(0 <= s <= 60 for s in client_sleeps)


def test_retries_exhausted_item_is_recorded_then_redone(tmp_path, chat_server, client_sleeps, sst2):
    """An item whose retries all fail is listed as failed (never silently dropped); a rerun asks only for it."""
    chat_server.answer = teacher_answer
    chat_server.faults.extend([("status", 503, {}, "down")] * 3)
    argv = rationales_argv(
        sst2, tmp_path / "out", chat_server, "teacher.max_retries=2", "teacher.concurrency=1"
    )
    assert cli.main(argv) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [f["id"] for f in stats["teacher"]["failed"]] == ["0:gold"]
    assert "gave up after 3 attempts" in stats["teacher"]["failed"][0]["reason"]
    assert stats["dropped"]["missing"] == 1 and stats["kept"] == 3  # example 0 lacks its gold rationale
    failures = read_jsonl(tmp_path / "out" / "teacher_outputs.failures.jsonl")
    assert [f["id"] for f in failures] == ["0:gold"]

    before = chat_server.count
    assert cli.main(argv) == 0  # the server is healthy now
    assert chat_server.count - before == 1  # only the failed item is asked again
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["kept"] == 4 and stats["teacher"]["failed"] == []


def test_interrupted_job_resumes_without_paying_twice(
    tmp_path, chat_server, client_sleeps, sst2, monkeypatch, capsys
):
    chat_server.answer = teacher_answer
    chat_server.faults.extend(["reset", ("status", 500, {}, "x"), "truncated"])
    calls = []
    real_complete = http.OpenAICompatibleClient.complete

    def complete(self, request):
        calls.append(request)
        if len(calls) == 6:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the job, before the 6th request is sent
        return real_complete(self, request)

    monkeypatch.setattr(http.OpenAICompatibleClient, "complete", complete)
    argv = rationales_argv(sst2, tmp_path / "out", chat_server)
    assert cli.main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    done_first = len(read_jsonl(tmp_path / "out" / "teacher_outputs.jsonl"))
    assert 5 <= done_first < 10  # the calls in flight finished and were written

    assert cli.main(argv) == 0
    # Over both runs each of the 10 distinct requests reached the server exactly once, apart from the 3
    # faulty attempts that were retried.
    counts = chat_server.request_counts()
    assert len(counts) == 10 and sum(counts.values()) == 10 + 3
    assert sorted(counts.values()).count(1) >= 7
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["teacher"]["skipped_existing"] == done_first and stats["kept"] == 4
    assert stats["cache"]["misses"] == 10 - done_first  # the second run paid only for what was missing


def test_rank_counts_refusals_and_reasks(tmp_path, chat_server, client_sleeps):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps({"question": f"q{i}", "answers": ["a", "b"]}) + "\n" for i in range(1, 4))
    )
    refusal = "I'm sorry, but I cannot help with ranking these answers."

    def judge(body):
        prompt = body["messages"][-1]["content"]
        if "q3" in prompt or ("q2" in prompt and body["seed"] == 0):
            return refusal  # q2 refuses once, then ranks when asked again; q3 always refuses
        return "Answer 2 is clearer.\n\nRanking: 2>1"

    chat_server.answer = judge
    chat_server.faults.extend(["garbage", ("status", 429, {"Retry-After": "0"}, "slow")])
    argv = [
        "rank",
        f"input={samples}",
        f"output_dir={tmp_path / 'rank'}",
        "judge.backend=openai",
        f"judge.base_url={chat_server.url}",
        "judge.model=fake",
        "judge.max_retries=10",
    ]
    assert cli.main(argv) == 0
    stats = json.loads((tmp_path / "rank" / "stats.json").read_text())
    assert (stats["questions"], stats["ranked"], stats["failed"], stats["refused"]) == (3, 2, 1, 1)
    assert stats["judge"]["retries"] == {"malformed_json": 1, "rate_limit": 1, "parse": 2}
    assert [f["reason"].startswith("refusal") for f in stats["judge"]["failed"]] == [True]
    ranked = read_jsonl(tmp_path / "rank" / "rankings.jsonl")
    assert [r["question"] for r in ranked] == ["q1", "q2"] and all(r["ranks"] == [2, 1] for r in ranked)
