"""Issue 17: a key with a trailing carriage return never leaks, and a batch that failed is not a success.

(1) ``OPENAI_API_KEY='sk-test-123\\r'`` (a key file saved with CRLF): the key is stripped and the run works;
nothing printed, logged or written holds the key, escaped or not; a key with a control character inside is
refused naming the variable only. (2) ``rationales`` / ``rank`` stop with exit code 1 when the server is not
running (quickly, "is the server at ... running?"), when every request fails, or when more than
``max_failed_fraction`` of them fail; a share under the limit still succeeds and is counted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rewardmix import cli
from rewardmix.llm import http
from rewardmix.llm.client import LLMError
from rewardmix.redact import redact
from rewardmix.rundir import read_jsonl
from tests.badinput.runner import fake_llm_answer

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-test-123"


@pytest.fixture
def sst2(tmp_path):
    path = tmp_path / "sst2.tsv"
    rows = ["a joyous ride", "flat and dull", "warm and funny", "a slog", "bright"]
    path.write_text("sentence\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(rows)))
    return path


def rationales_argv(data, out, base_url, *extra):
    return [
        "rationales",
        "task=sst2",
        f"data={data}",
        f"output_dir={out}",
        "teacher.backend=openai",
        f"teacher.base_url={base_url}",
        "teacher.model=fake",
        *extra,
    ]


def _files_with(root: Path, needle: str) -> list[str]:
    raw = needle.encode()
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and raw in p.read_bytes()]


# ---------------------------------------------------------------------------------------------------------
# (1) the key with a trailing carriage return


def test_redact_hides_the_key_stripped_and_escaped(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "\r")
    for text in (
        f"Invalid header value b'Bearer {KEY}\\r'",  # how http.client quotes it
        repr(KEY + "\r"),
        f"key={KEY}\r",
        f"token {KEY} sent",
    ):
        assert KEY not in redact(text), text


def test_a_key_read_with_a_trailing_cr_works_and_never_shows(tmp_path, chat_server, sst2):
    """A real process (its own logging and exception hooks), the key as a CRLF key file leaves it."""
    chat_server.answer = fake_llm_answer
    # the server echoes the key back: in an error body (logged as a retry) and in an answer (written)
    chat_server.faults.extend([("status", 500, {}, "upstream saw {auth}"), "echo_auth"])
    out = tmp_path / "out"
    argv = rationales_argv(sst2, out, chat_server.url, "teacher.max_retries=2", "teacher.concurrency=1")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OPENAI_API_KEY": KEY + "\r"}
    proc = subprocess.run(
        [sys.executable, "-m", "rewardmix.cli", "-v", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-3000:]
    assert set(chat_server.auth_headers) == {f"Bearer {KEY}"}  # sent stripped, as the key it is
    assert "upstream saw Bearer ***" in printed  # the leak was there to be redacted
    assert KEY not in printed
    assert _files_with(tmp_path, KEY) == []
    assert "***" in (out / "teacher_outputs.jsonl").read_text()


def test_a_key_with_a_control_character_inside_is_refused_by_name(tmp_path, chat_server, sst2, capsys):
    os.environ["RMX_ISSUE17_KEY"] = "sk-abc\r\ndef-ghijkl"
    try:
        argv = rationales_argv(sst2, tmp_path / "out", chat_server.url, "teacher.api_key_env=RMX_ISSUE17_KEY")
        assert cli.main(argv) == 1
    finally:
        del os.environ["RMX_ISSUE17_KEY"]
    err = capsys.readouterr().err
    assert "RMX_ISSUE17_KEY" in err and "control character" in err
    assert "sk-abc" not in err and "def-ghijkl" not in err
    assert chat_server.count == 0  # refused before any request


# ---------------------------------------------------------------------------------------------------------
# (2) failures are not reported as success


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("stage", ["rationales", "rank"])
def test_no_server_fails_fast_with_a_hint(tmp_path, sst2, capsys, stage):
    base_url = f"http://127.0.0.1:{_closed_port()}/v1"
    if stage == "rationales":
        argv = rationales_argv(
            sst2, tmp_path / "out", base_url
        )  # default max_retries (6), real client_sleeps
    else:
        samples = tmp_path / "samples.jsonl"
        samples.write_text(json.dumps({"question": "q", "answers": ["a", "b"]}) + "\n")
        argv = ["rank", f"input={samples}", f"output_dir={tmp_path / 'out'}", "judge.backend=openai"]
        argv += [f"judge.base_url={base_url}", "judge.model=fake"]
    start = time.monotonic()
    assert cli.main(argv) == 1
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"is the server at {base_url} running?" in err
    assert "Traceback" not in err


def test_a_server_that_always_fails_is_an_error_naming_the_share(
    tmp_path, chat_server, client_sleeps, sst2, capsys
):
    chat_server.faults.extend([("status", 500, {}, "internal")] * 100)
    out = tmp_path / "out"
    assert cli.main(rationales_argv(sst2, out, chat_server.url, "teacher.max_retries=1")) == 1
    err = capsys.readouterr().err
    assert "10 of 10 failed (100%" in err and "RetriesExhaustedError" in err and "HTTP 500" in err
    # what the run did is still written, for the user to look at
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 0 and len(stats["teacher"]["failed"]) == 10
    assert len(read_jsonl(out / "teacher_outputs.failures.jsonl")) == 10


def test_rank_with_a_server_that_always_fails_is_an_error(tmp_path, chat_server, client_sleeps, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps({"question": f"q{i}", "answers": ["a", "b"]}) + "\n" for i in range(3))
    )
    chat_server.faults.extend([("status", 503, {}, "down")] * 100)
    argv = ["rank", f"input={samples}", f"output_dir={tmp_path / 'r'}", "judge.backend=openai"]
    argv += [f"judge.base_url={chat_server.url}", "judge.model=fake", "judge.max_retries=1"]
    assert cli.main(argv) == 1
    assert "rank: judge requests: 3 of 3 failed (100%" in capsys.readouterr().err


def test_a_partly_failing_server_under_the_limit_succeeds_and_counts(
    tmp_path, chat_server, client_sleeps, sst2, capsys
):
    chat_server.answer = fake_llm_answer
    # one request at a time, no retry: the first 3 of the 10 requests fail (examples 0 and 1 lose a rationale)
    chat_server.faults.extend([("status", 500, {}, "internal")] * 3)
    extra = ("teacher.max_retries=0", "teacher.concurrency=1")
    assert cli.main(rationales_argv(sst2, tmp_path / "ok", chat_server.url, *extra)) == 0
    stats = json.loads((tmp_path / "ok" / "stats.json").read_text())
    assert len(stats["teacher"]["failed"]) == 3 and stats["teacher"]["done"] == 7
    assert stats["kept"] == 3 and stats["dropped"]["missing"] == 2

    # the same share above a stricter limit is an error
    chat_server.faults.extend([("status", 500, {}, "internal")] * 3)
    strict = (*extra, "teacher.max_failed_fraction=0.2")
    capsys.readouterr()
    assert cli.main(rationales_argv(sst2, tmp_path / "strict", chat_server.url, *strict)) == 1
    assert "3 of 10 failed (30%, above max_failed_fraction=0.2)" in capsys.readouterr().err


def test_max_failed_fraction_is_checked():
    from rewardmix.llm.config import LLMConfig

    with pytest.raises(ValueError, match="max_failed_fraction"):
        LLMConfig(max_failed_fraction=1.5)


def test_no_server_on_the_client(client_sleeps):
    client = http.OpenAICompatibleClient(f"http://127.0.0.1:{_closed_port()}/v1", "fake", max_retries=6)
    with pytest.raises(LLMError, match="running\\?") as info:
        client.complete(http.ChatRequest.user("hi"))
    assert info.value.fatal and client.attempts == http.REFUSED_RETRIES + 1
    assert all(s <= 1.0 for s in client_sleeps) and len(client_sleeps) == http.REFUSED_RETRIES
