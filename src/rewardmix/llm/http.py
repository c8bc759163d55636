"""OpenAI-compatible chat-completions client on the standard library (no extra dependency).

Works with OpenAI and with local servers that speak the same JSON: vLLM (``vllm serve``), llama.cpp
(``llama-server``), Ollama (``http://localhost:11434/v1``). ``base_url`` is the part before
``/chat/completions``, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.

The API key is read from ``os.environ[api_key_env]`` at every call (by :func:`read_api_key`, the one place
that reads it) and never stored on the client. Surrounding whitespace is stripped (a key file saved with CRLF
line ends, ``export KEY=$'sk-abc\\r'``); a key that still holds a control character is refused with a message
naming the variable, never the key, when the client is built. A missing variable is allowed: the request is then sent without an ``Authorization`` header, which is what
local servers expect (they ignore or do not require it); a remote API will answer 401, which raises
:class:`LLMHTTPError` at once.

Retries (exponential backoff with jitter, ``sleep`` injectable for tests) happen on: timeouts, connection
errors (reset, refused, truncated body; a refused connection before this client ever got an answer is
retried only :data:`REFUSED_RETRIES` times, at most 1 s apart, then raises :class:`ServerUnreachableError`:
the server is most likely not running, and a batch job stops at once), 429 (honouring ``Retry-After``), 408/409/425 and 5xx, a body that is
not valid JSON, and a response without ``choices[i].message.content``. Other 4xx statuses (400, 401, 403,
404, ...) raise :class:`LLMHTTPError` without a retry. Retries are counted per cause in
:attr:`OpenAICompatibleClient.retry_counts`.

Reference: SPEC §2 ("retried with backoff, rate-limited"); OpenAI API reference, ``POST /chat/completions``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from rewardmix.llm.client import ChatRequest, ChatResponse, LLMError, LLMHTTPError, RetriesExhaustedError
from rewardmix.redact import get_redacting_logger, redact, register_secret_env

__all__ = [
    "REFUSED_RETRIES",
    "RETRY_CAUSES",
    "OpenAICompatibleClient",
    "RateLimiter",
    "ServerUnreachableError",
    "parse_retry_after",
    "read_api_key",
]

logger = get_redacting_logger(__name__)

RETRY_CAUSES = ("timeout", "connection", "rate_limit", "server_error", "malformed_json", "missing_content")

# 408 Request Timeout, 409 Conflict (some gateways under load), 425 Too Early: transient by definition.
_RETRYABLE_4XX = frozenset({408, 409, 425})
# A hostile or buggy Retry-After must not stall a job for hours.
_MAX_RETRY_AFTER_S = 600.0
_BODY_SNIPPET = 300
REFUSED_RETRIES = 2
"""Retries of a refused connection while the client has had no answer yet (the server is probably down)."""
_REFUSED_MAX_DELAY_S = 1.0


class ServerUnreachableError(LLMError):
    """The connection was refused and no request of this client ever succeeded: nothing listens at
    ``base_url``. Fatal: a batch job stops instead of failing every item the same way."""

    fatal = True


def read_api_key(env_name: str) -> str | None:
    """The API key in ``os.environ[env_name]``, surrounding whitespace stripped; ``None`` when unset or blank.

    Raises:
        LLMError: The key holds a control character (after stripping); the message names the variable only.
    """
    raw = os.environ.get(env_name)
    if raw is None:
        return None
    key = raw.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise LLMError(
            f"the API key in environment variable {env_name} holds a control character (a line break or "
            f"tab inside it?); set {env_name} to the key alone, e.g. export {env_name}=\"$(tr -d '\\r\\n' < keyfile)\""
        )
    return key or None


class _RetryableError(Exception):
    """Internal: one failed attempt that may succeed when repeated."""

    def __init__(
        self, cause: str, detail: str, retry_after: float | None = None, *, refused: bool = False
    ) -> None:
        super().__init__(detail)
        self.cause = cause
        self.retry_after = retry_after
        self.refused = refused


class RateLimiter:
    """Spaces calls at least ``60 / per_minute`` seconds apart across threads.

    A simple start-time scheduler: each caller reserves the next free slot and sleeps until it. Bursts are
    not allowed, which keeps a long batch job under a requests-per-minute quota without bookkeeping.
    """

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not per_minute > 0:
            raise ValueError(f"rate_limit_per_min must be > 0, got {per_minute!r}")
        self.interval = 60.0 / per_minute
        self._clock, self._sleep = clock, sleep
        self._next = -float("inf")
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until this caller's slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return wait


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; ``None`` if absent/bad.

    Args:
        value: Header value, e.g. ``"2"``, ``"0.5"`` or ``"Wed, 21 Oct 2015 07:28:00 GMT"``.
        now: Current POSIX time for HTTP dates (default ``time.time()``).

    Returns:
        Non-negative seconds, capped at 600, or ``None``.
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


class OpenAICompatibleClient:
    """Chat client for any ``POST {base_url}/chat/completions`` endpoint.

    Args:
        base_url: Endpoint prefix, e.g. ``"https://api.openai.com/v1"`` or ``"http://127.0.0.1:8000/v1"``.
        model: Default model name, used when a request has none.
        api_key_env: Environment variable holding the key; read at every call, never stored. Unset is fine
            for local servers (no ``Authorization`` header is sent).
        timeout: Socket timeout in seconds for connecting and for each read.
        max_retries: Retries after the first attempt (so at most ``max_retries + 1`` attempts).
        backoff_base: First backoff delay in seconds; attempt ``i`` (0-based) waits about
            ``min(backoff_max, backoff_base * 2**i)``, jittered to between half and all of it.
        backoff_max: Cap on one backoff delay (a 429's ``Retry-After`` is honoured even when longer, up to
            600 s).
        rate_limit_per_min: Optional requests-per-minute ceiling shared by all threads using this client.
        extra_headers: Additional HTTP headers (e.g. ``{"OpenAI-Organization": ...}``); never logged.
        sleep: Sleep function (tests inject a recorder).
        rng: Random source for jitter (tests inject a seeded one).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        rate_limit_per_min: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {redact(base_url)!r}")
        if max_retries < 0 or timeout <= 0 or backoff_base < 0 or backoff_max < 0:
            raise ValueError("max_retries, backoff_base and backoff_max must be >= 0 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._extra_headers = dict(extra_headers or {})
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._limiter = RateLimiter(rate_limit_per_min, sleep=sleep) if rate_limit_per_min else None
        self._lock = threading.Lock()
        self._retry_counts: Counter[str] = Counter()
        self._attempts = 0
        self._answered = False
        register_secret_env(api_key_env)
        read_api_key(api_key_env)  # a malformed key fails here, once, with a clean message

    def __repr__(self) -> str:
        # Only the variable's name, never its value; user:password in the URL is dropped too.
        parts = urllib.parse.urlsplit(self.base_url)
        netloc = parts.netloc.rpartition("@")[2]
        safe_url = redact(parts._replace(netloc=netloc).geturl())
        return f"OpenAICompatibleClient(base_url={safe_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    @property
    def retry_counts(self) -> dict[str, int]:
        """Retries so far, per cause (see :data:`RETRY_CAUSES`)."""
        with self._lock:
            return dict(self._retry_counts)

    @property
    def attempts(self) -> int:
        """HTTP attempts so far (first tries and retries)."""
        with self._lock:
            return self._attempts

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request``, retrying transient failures; see the module docstring for what is retried.

        Raises:
            LLMHTTPError: A non-retryable status (400, 401, 403, 404, ...).
            LLMError: The server returned fewer choices than ``request.n`` (it does not support ``n``).
            RetriesExhaustedError: ``max_retries`` retries all failed.
        """
        request = request.with_model(self.model)
        body = json.dumps(self._payload(request)).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            if self._limiter is not None:
                self._limiter.acquire()
            try:
                return self._attempt(body, request.n)
            except _RetryableError as err:
                refused = err.cause == "connection" and err.refused and not self._answered
                if refused and attempt >= min(REFUSED_RETRIES, self.max_retries):
                    raise ServerUnreachableError(
                        f"{self.url}: connection refused ({attempt + 1} attempts); is the server at "
                        f"{self.base_url} running?"
                    ) from None
                if attempt == self.max_retries:
                    raise RetriesExhaustedError(
                        attempt + 1,
                        err.cause,
                        f"{self.url}: gave up after {attempt + 1} attempts; last failure ({err.cause}): {err}",
                    ) from None
                delay = self._delay(attempt, err.retry_after)
                if refused:
                    delay = min(delay, _REFUSED_MAX_DELAY_S)
                with self._lock:
                    self._retry_counts[err.cause] += 1
                logger.warning(
                    "%s: attempt %d/%d failed (%s: %s); retrying in %.2fs",
                    self.url,
                    attempt + 1,
                    self.max_retries + 1,
                    err.cause,
                    err,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": [dict(m) for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "top_p": request.top_p,
            "n": request.n,
        }
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.stop:
            payload["stop"] = list(request.stop)
        return payload

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self._extra_headers}
        key = read_api_key(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        full = min(self.backoff_max, self.backoff_base * (2.0**attempt))
        # "Equal jitter": at least half the exponential delay, so retries stay spaced out, plus a random
        # half so that many threads hit by the same outage do not retry in lockstep.
        with self._lock:
            return full / 2.0 + self._rng.uniform(0.0, full / 2.0)

    def _attempt(self, body: bytes, n: int) -> ChatResponse:
        with self._lock:
            self._attempts += 1
        req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except ValueError as e:
            # http.client refuses a header value with a control character (an extra header); its message
            # quotes the value, hence redacted; retrying cannot help.
            raise LLMError(f"{self.url}: the request could not be sent: {e}") from None
        except urllib.error.HTTPError as e:
            self._answered = True  # a server is there, even if it fails
            raise self._http_error(e) from None
        except TimeoutError as e:
            raise _RetryableError("timeout", f"timed out after {self.timeout}s ({e})") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise _RetryableError("timeout", f"timed out after {self.timeout}s ({e.reason})") from None
            refused = isinstance(e.reason, ConnectionRefusedError)
            raise _RetryableError("connection", f"connection error: {e.reason}", refused=refused) from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            # RemoteDisconnected / reset / IncompleteRead (body cut short): the server or network dropped us.
            refused = isinstance(e, ConnectionRefusedError)
            raise _RetryableError(
                "connection", f"connection error: {type(e).__name__}: {e}", refused=refused
            ) from None
        self._answered = True
        return _parse_completion(raw, n)

    def _http_error(self, e: urllib.error.HTTPError) -> Exception:
        try:
            snippet = e.read()[:_BODY_SNIPPET].decode("utf-8", "replace")
        except Exception:  # reading an error body is best effort
            snippet = ""
        status = e.code
        if status == 429:
            return _RetryableError(
                "rate_limit", f"HTTP 429: {snippet}", parse_retry_after(e.headers.get("Retry-After"))
            )
        if status >= 500 or status in _RETRYABLE_4XX:
            return _RetryableError(
                "server_error", f"HTTP {status}: {snippet}", parse_retry_after(e.headers.get("Retry-After"))
            )
        hint = {
            401: "unauthorized: check the API key in the environment variable " + repr(self.api_key_env),
            403: "forbidden: the key has no access to this model or endpoint",
            404: f"not found: check base_url ({self.base_url!r}) and model ({self.model!r})",
        }.get(status, "the request was rejected; retrying would not help")
        return LLMHTTPError(status, f"{self.url}: HTTP {status} ({hint}); server said: {snippet}")


def _parse_completion(raw: bytes, n: int) -> ChatResponse:
    """Decode a chat-completions body; malformed or empty answers are retryable."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        snippet = raw[:80].decode("utf-8", "replace")
        raise _RetryableError("malformed_json", f"response is not valid JSON ({e}): {snippet!r}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise _RetryableError("missing_content", "response has no choices")
    texts = []
    for i, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise _RetryableError("missing_content", f"choices[{i}].message.content is missing")
        texts.append(content)
    if len(texts) < n:
        raise LLMError(
            f"asked for n={n} choices, the server returned {len(texts)}; it may not support n > 1 "
            "(send n requests with different seeds instead)"
        )
    finish = [c.get("finish_reason") for c in choices]
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    meta = {"model": data.get("model"), "finish_reasons": finish, "backend": "openai-compatible"}
    return ChatResponse(text=texts[0], choices=tuple(texts), usage=usage, meta=meta)
