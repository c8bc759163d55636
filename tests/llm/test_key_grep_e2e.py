"""Issue 17, end to end: an API key read with trailing whitespace never shows up anywhere, in any spelling.

A teacher job (``rationales``) and two judge jobs (``rank``, and ``evaluate`` with tiny models) run against the
fake chat server with the key in an environment variable ending in ``\\r``, ``\\n``, ``\\r\\n``, spaces or a tab
(a key file saved with CRLF and read with ``$(cat key.txt)``; the CLI reads keys only from the variable named
by ``api_key_env``, there is no key-file option). The server echoes the ``Authorization`` header back in an
error body, in an answer and in a rejected request, so there is a leak to redact. Then EVERY file under the
run folders (configs, run info, outputs, stats, failure lists, the SQLite cache, generations) and everything
printed or logged are searched for the key as set, stripped, escaped (``repr``, ``unicode_escape``, JSON),
URL-encoded (``quote``, ``quote_plus``), base64-encoded, and for a 12-character piece of it (a truncated leak).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from pathlib import Path

import pytest

from tests.badinput.runner import fake_llm_answer
from tests.test_security import _run_cli

REPO = Path(__file__).resolve().parents[2]
# Not sk-shaped (only the environment-value rule can hide it) and with characters that URL-encoding changes.
KEY = "rmx-Kf83+jd/Q0=aPzz71Lm"
LEAKY = [
    ("status", 500, {}, "upstream saw {auth}"),
    "echo_auth",
    ("status", 400, {}, "bad request from {auth}"),
]


def spellings(raw: str) -> set[str]:
    """Every form of the key that must not appear: as set, stripped, escaped, URL- and base64-encoded, a piece."""
    forms = set()
    for value in (raw, raw.strip()):
        forms |= {
            value,
            repr(value)[1:-1],
            value.encode("unicode_escape").decode(),
            json.dumps(value)[1:-1],
            urllib.parse.quote(value),
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value),
            base64.b64encode(value.encode()).decode(),
        }
    return forms | {raw.strip()[4:16]}


def leaks(root: Path, console: str, raw: str) -> list[str]:
    """``where: spelling`` for every spelling of the key found in a file under ``root`` or in ``console``."""
    found = []
    for form in sorted(spellings(raw)):
        needle = form.encode()
        found += [
            f"{p.relative_to(root)}: {form!r}"
            for p in sorted(root.rglob("*"))
            if p.is_file() and needle in p.read_bytes()
        ]
        found += [f"console: {form!r}"] * (form in console)
    return found


def rank_judge(body):
    return "The second answer is clearer.\n\nRanking: 2>1"


def pairwise_judge(body):
    return "Answer 2 is better. It is more specific."


def write_inputs(tmp_path: Path, server_url: str, variable: str) -> dict[str, list[str]]:
    """The three jobs' command lines (their inputs written to ``tmp_path``)."""
    sst2 = tmp_path / "sst2.tsv"
    sst2.write_text(
        "sentence\tlabel\n"
        + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(["dull", "warm", "a slog", "bright"]))
    )
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps({"question": f"q{i}", "answers": ["a", "b"]}) + "\n" for i in range(3))
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in ("hi", "bye", "yes", "no"))
    )
    llm = f"backend: openai, base_url: '{server_url}', model: fake, api_key_env: {variable}, max_retries: 2, concurrency: 1"
    evaluate = tmp_path / "evaluate.yaml"
    evaluate.write_text(
        "models:\n  - {name: m1, path: 'tiny:1'}\n  - {name: m2, path: 'tiny:2'}\ncpu: true\n"
        f"generation: {{prompt_max_new_tokens: 4, batch_size: 4}}\nwin_rate:\n  prompts: {prompts}\n  judge: {{{llm}}}\n"
    )
    llm_args = [
        f"base_url={server_url}",
        "backend=openai",
        "model=fake",
        f"api_key_env={variable}",
        "max_retries=2",
        "concurrency=1",
    ]
    return {
        "rationales": ["rationales", "task=sst2", f"data={sst2}", f"output_dir={tmp_path / 'rationales'}"]
        + [f"teacher.{a}" for a in llm_args],
        "rank": ["rank", f"input={samples}", f"output_dir={tmp_path / 'rank'}"] + [f"judge.{a}" for a in llm_args],
        "evaluate": ["evaluate", str(evaluate), f"output_dir={tmp_path / 'evaluate'}"],
    }  # fmt: skip


def run_jobs(mode, tmp_path, chat_server, monkeypatch, variable, raw_key) -> str:
    """Run the teacher job and both judge jobs, each against a server that leaks the key; returns the console."""
    jobs = write_inputs(tmp_path, chat_server.url, variable)
    console = ""
    for name, answer in (("rationales", fake_llm_answer), ("rank", rank_judge), ("evaluate", pairwise_judge)):
        chat_server.answer = answer
        chat_server.faults.extend(LEAKY)
        code, printed = _run_cli(mode, jobs[name], variable, raw_key, monkeypatch)
        assert code == 0, f"{name}: {printed[-3000:]}"
        console += printed
    return console


def check_no_leak(tmp_path: Path, chat_server, console: str, raw_key: str) -> None:
    # the server got the key, stripped, as a bearer token on every request of the three jobs
    assert chat_server.count >= 10 + 3 + 4 and set(chat_server.auth_headers) == {f"Bearer {raw_key.strip()}"}
    # ... and what it leaked back was there to be redacted (so this test can fail)
    assert "upstream saw Bearer ***" in console
    assert "***" in (tmp_path / "rationales" / "teacher_outputs.jsonl").read_text()
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    for job in ("rationales", "rank", "evaluate"):
        assert {f"{job}/config.yaml", f"{job}/run_info.json", f"{job}/llm_cache.sqlite"} <= written, written
    assert {"rank/rankings.jsonl", "evaluate/eval.json", "evaluate/judgments.jsonl"} <= written
    assert leaks(tmp_path, console, raw_key) == []


@pytest.mark.parametrize(
    "suffix", ["\r", "\n", "\r\n", "   ", " \t\r\n"], ids=["cr", "lf", "crlf", "spaces", "mixed"]
)
def test_teacher_and_judge_jobs_never_show_the_key(tmp_path, chat_server, monkeypatch, suffix):
    console = run_jobs("in-process", tmp_path, chat_server, monkeypatch, "RMX_E2E_KEY", KEY + suffix)
    check_no_leak(tmp_path, chat_server, console, KEY + suffix)


@pytest.mark.slow  # three fresh interpreters (about 15 s on 2 shared cores)
def test_teacher_and_judge_processes_never_show_the_key(tmp_path, chat_server, monkeypatch):
    """The same with real ``python -m rewardmix.cli`` processes (their own logging set-up and exception hooks),
    the key in the default variable OPENAI_API_KEY."""
    console = run_jobs("process", tmp_path, chat_server, monkeypatch, "OPENAI_API_KEY", KEY + "\r\n")
    check_no_leak(tmp_path, chat_server, console, KEY + "\r\n")


def test_the_search_finds_every_spelling(tmp_path):
    """The grep itself: each spelling planted in a file, or printed, is found (a search that finds nothing
    would make the tests above pass vacuously)."""
    raw = KEY + "\r\n"
    forms = sorted(spellings(raw))
    assert "rmx-Kf83%2Bjd%2FQ0%3DaPzz71Lm" in forms and "rmx-Kf83+jd/Q0=aPzz71Lm\\r\\n" in forms
    for i, form in enumerate(forms):
        (tmp_path / f"f{i}.bin").write_bytes(b"prefix " + form.encode() + b" suffix")
    found = leaks(tmp_path, "log line " + forms[0], raw)
    assert {line.split(":")[0] for line in found} == {f"f{i}.bin" for i in range(len(forms))} | {"console"}
    assert os.environ.get("RMX_E2E_KEY") is None  # in-process runs leave the environment as it was
