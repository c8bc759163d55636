"""OpenAICompatibleClient against a real local HTTP server that injects faults."""

from __future__ import annotations

import email.utils
import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewardmix.llm.batch import run_batch
from rewardmix.llm.cache import CachedClient, DiskCache
from rewardmix.llm.client import ChatRequest, LLMError, LLMHTTPError, RetriesExhaustedError
from rewardmix.llm.http import OpenAICompatibleClient, RateLimiter, parse_retry_after
from rewardmix.redact import REDACTED, redact


def make_client(server, sleeps, **kw) -> OpenAICompatibleClient:
    kw.setdefault("timeout", 0.25)
    kw.setdefault("max_retries", 10)
    kw.setdefault("backoff_base", 0.5)
    kw.setdefault("backoff_max", 4.0)
    return OpenAICompatibleClient(server.url, "fake-model", sleep=sleeps, rng=random.Random(0), **kw)


def test_every_fault_is_retried_and_counted_by_cause(chat_server, sleeps, api_key):
    chat_server.faults.extend(
        [
            "timeout",
            "reset",
            ("status", 500, {}, '{"error": "boom"}'),
            ("status", 429, {"Retry-After": "3"}, '{"error": "slow down"}'),
            "truncated",
            "garbage",
            "missing_choices",
        ]
    )
    client = make_client(chat_server, sleeps)
    req = ChatRequest.user("Is this review positive?", seed=7, max_tokens=20)

    resp = client.complete(req)

    # 7 faults then the good answer: 8 requests reached the server.
    assert chat_server.count == 8
    assert resp.text == "echo[7]: Is this review positive?"
    assert resp.usage["completion_tokens"] == 5
    assert client.retry_counts == {
        "timeout": 1,
        "connection": 1,
        "server_error": 1,
        "rate_limit": 1,
        "malformed_json": 2,  # truncated JSON and garbage text
        "missing_content": 1,
    }
    assert client.attempts == 8
    # The 429 (4th attempt) waits exactly its Retry-After; the others back off exponentially with equal jitter:
    # attempt i waits in [d/2, d] with d = min(4.0, 0.5 * 2**i) -> d = 0.5, 1, 2, -, 4, 4, 4.
    assert len(sleeps) == 7
    assert sleeps[3] == 3.0
    for i, delay in enumerate(sleeps):
        if i == 3:
            continue
        d = min(4.0, 0.5 * 2**i)
        assert d / 2 <= delay <= d, (i, delay)
    # Every attempt sent the same body to /v1/chat/completions with the key as a Bearer token.
    assert set(chat_server.paths) == {"/v1/chat/completions"}
    assert all(r == chat_server.requests[0] for r in chat_server.requests)
    assert chat_server.auth_headers[0] == f"Bearer {api_key}"


def test_request_body_is_the_chat_completions_payload(chat_server, sleeps):
    client = make_client(chat_server, sleeps)
    req = ChatRequest(
        messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}),
        temperature=0.7,
        max_tokens=33,
        seed=5,
        top_p=0.9,
        stop=("\n\n",),
    )
    client.complete(req)
    assert chat_server.requests == [
        {
            "model": "fake-model",  # filled from the client because the request has none
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "temperature": 0.7,
            "max_tokens": 33,
            "top_p": 0.9,
            "n": 1,
            "seed": 5,
            "stop": ["\n\n"],
        }
    ]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_fail_at_once_without_retry(chat_server, sleeps, api_key, status):
    chat_server.faults.append(("status", status, {}, '{"error": "no: {auth}"}'))
    client = make_client(chat_server, sleeps)
    with pytest.raises(LLMHTTPError) as info:
        client.complete(ChatRequest.user("hello"))
    err = info.value
    assert err.status == status
    assert err.fatal == (status != 400)
    assert chat_server.count == 1 and sleeps == [] and client.retry_counts == {}
    assert f"HTTP {status}" in str(err)
    if status == 401:
        assert "OPENAI_API_KEY" in str(err)  # names the variable to fix...
    # ...but never its value, even though the server echoed the Authorization header into its error body.
    assert api_key not in str(err) and api_key not in repr(err)
    assert "Bearer " + REDACTED in str(err)


def test_retries_exhausted_names_the_last_cause(chat_server, sleeps):
    chat_server.faults.extend([("status", 503, {}, "down")] * 3)
    client = make_client(chat_server, sleeps, max_retries=2)
    with pytest.raises(RetriesExhaustedError) as info:
        client.complete(ChatRequest.user("hello"))
    # max_retries=2 -> 3 attempts, 2 sleeps.
    assert info.value.attempts == 3 and info.value.last_cause == "server_error"
    assert chat_server.count == 3 and len(sleeps) == 2
    assert client.retry_counts == {"server_error": 2}


def test_missing_key_sends_no_authorization_header(chat_server, sleeps, monkeypatch):
    # Local servers (vLLM, llama.cpp, Ollama) need no key: the variable may be unset.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    resp = make_client(chat_server, sleeps).complete(ChatRequest.user("hi"))
    assert resp.text == "echo[None]: hi"
    assert chat_server.auth_headers == [None]


def test_key_is_read_at_call_time(chat_server, sleeps, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "first-key-0123456789")
    client = make_client(chat_server, sleeps, api_key_env="MY_LLM_KEY")
    client.complete(ChatRequest.user("a"))
    monkeypatch.setenv("MY_LLM_KEY", "second-key-0123456789")
    client.complete(ChatRequest.user("b"))
    assert chat_server.auth_headers == ["Bearer first-key-0123456789", "Bearer second-key-0123456789"]
    assert "first-key" not in repr(client) and "second-key" not in repr(client)
    assert "MY_LLM_KEY" in repr(client)


def test_server_without_n_support_is_a_clear_error(chat_server, sleeps):
    chat_server.faults.append(("choices", 1))
    client = make_client(chat_server, sleeps)
    with pytest.raises(LLMError, match="n=3"):
        client.complete(ChatRequest.user("x", n=3, temperature=1.0))
    assert chat_server.count == 1  # not retried: asking again cannot help


def test_n_choices_are_returned(chat_server, sleeps):
    chat_server.faults.append(("choices", 3))
    resp = make_client(chat_server, sleeps).complete(ChatRequest.user("x", n=3, temperature=1.0, seed=1))
    assert resp.choices == ("echo[1]: x",) * 3 and resp.text == "echo[1]: x"


def test_api_key_never_leaks(chat_server, sleeps, api_key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # A 500 whose body echoes the Authorization header (logged on retry), then an answer that echoes it in
    # its content (stored in the cache and the batch output), then a 401 echoing it (an exception).
    chat_server.faults.extend([("status", 500, {}, "upstream saw {auth}"), "echo_auth"])
    cache_path = tmp_path / "cache.sqlite"
    cache = DiskCache(cache_path)
    client = CachedClient(make_client(chat_server, sleeps), cache)
    out = tmp_path / "out.jsonl"
    report = run_batch(
        [("q1", ChatRequest.user("first")), ("q2", ChatRequest.user("second"))],
        client,
        out_path=out,
        concurrency=1,
        progress=False,
    )
    assert report.done == 2 and report.retries == {"server_error": 1}
    chat_server.faults.append(("status", 401, {}, "bad key {auth}"))
    with pytest.raises(LLMHTTPError) as info:
        run_batch([("q3", ChatRequest.user("third"))], client, out_path=out, progress=False)
    cache.close()

    # The key did travel to the server (so there was something to leak)...
    assert all(h == f"Bearer {api_key}" for h in chat_server.auth_headers)
    # ...and shows up nowhere on our side.
    assert "upstream saw" in caplog.text  # the retry warning was logged, redacted
    assert api_key not in caplog.text
    assert api_key not in str(info.value) and api_key not in repr(info.value)
    files = [cache_path, *tmp_path.glob("cache.sqlite*"), out, tmp_path / "out.failures.jsonl"]
    for path in files:
        if path.exists():
            assert api_key.encode() not in path.read_bytes(), path
    leaked_line = [line for line in out.read_text().splitlines() if "I saw header" in line]
    assert leaked_line and REDACTED in leaked_line[0]
    assert api_key not in repr(client.client)


def test_redact_rules(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "abcdefgh-secret-value")
    assert redact("key=abcdefgh-secret-value!") == "key=***!"
    assert redact("Authorization: Bearer xyz.123") == "Authorization: Bearer ***"
    assert redact("use sk-ABCDEFGHIJKLMNOPQRST now") == "use *** now"
    # Short placeholder keys of local servers are not secrets: replacing every "x" would wreck logs.
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    assert redact("max x") == "max x"


def test_logging_filter_redacts_records_on_the_rewardmix_logger(monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "filter-test-key-987654321")
    caplog.set_level(logging.INFO)
    logging.getLogger("rewardmix").info("config: key=%s", "filter-test-key-987654321")
    try:
        raise RuntimeError("boom filter-test-key-987654321")
    except RuntimeError:
        logging.getLogger("rewardmix").exception("failed")
    assert "key=***" in caplog.text
    assert "filter-test-key-987654321" not in caplog.text


def test_rate_limiter_spaces_calls():
    now = [0.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    limiter = RateLimiter(120, clock=lambda: now[0], sleep=sleep)  # 120/min -> one slot every 0.5 s
    for _ in range(3):
        limiter.acquire()
    now[0] += 10.0  # idle for a while: the next call goes at once
    limiter.acquire()
    assert waits == [0.5, 0.5]


def test_rate_limit_is_applied_by_the_client(chat_server, sleeps):
    client = make_client(chat_server, sleeps, rate_limit_per_min=60)
    client.complete(ChatRequest.user("a"))
    client.complete(ChatRequest.user("b"))
    # Second call waits for its slot: about 1 s after the first (minus the time the first call took).
    assert len(sleeps) == 1 and 0.5 < sleeps[0] <= 1.0


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("100000") == 600.0  # capped
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(10.0)


@settings(max_examples=50, deadline=None)
@given(
    attempt=st.integers(0, 12),
    base=st.floats(0.01, 5.0),
    cap=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**31),
)
def test_backoff_is_exponential_capped_and_jittered(attempt, base, cap, seed):
    client = OpenAICompatibleClient(
        "http://127.0.0.1:9/v1", "m", backoff_base=base, backoff_max=cap, rng=random.Random(seed)
    )
    full = min(cap, base * 2**attempt)
    delay = client._delay(attempt, None)
    assert full / 2 <= delay <= full
    assert client._delay(attempt, 7.5) == 7.5  # Retry-After wins
