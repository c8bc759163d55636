"""Disk cache of chat responses: the same request is never sent twice.

:class:`DiskCache` is one SQLite file (WAL journal, so readers never block the writer and a kill cannot
corrupt it) mapping :meth:`ChatRequest.key` to the response JSON, with the request JSON kept beside it for
inspection. :class:`CachedClient` wraps any :class:`ChatClient`.

What "same request" means: the full canonical request, i.e. messages, model, temperature, max_tokens,
seed, n, top_p and stop. Sampled requests (``temperature > 0`` or ``n > 1``) are cached too: asking again
with the same seed returns the stored samples (that is what makes a rerun free and reproducible). To draw
fresh samples, change ``seed``. The endpoint URL and the API key are not part of the key; the key never
reaches the file (everything stored passes through :func:`rewardmix.redact.redact`).

Reference: SPEC §2 ("calls are cached on disk (same request -> no second call)").
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType

from rewardmix.llm.client import ChatClient, ChatRequest, ChatResponse
from rewardmix.redact import get_redacting_logger, redact

__all__ = ["CachedClient", "DiskCache"]

logger = get_redacting_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class DiskCache:
    """A SQLite key -> response store, safe to share between threads and processes.

    Args:
        path: The database file; parent folders are created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the threads of a batch job, serialized by a lock; SQLite's own locking
        # (with a busy timeout) covers other processes using the same file.
        self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)

    def get(self, key: str) -> ChatResponse | None:
        """The stored response for ``key``, or ``None``."""
        with self._lock:
            row = self._conn.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else ChatResponse.from_dict(json.loads(row[0]))

    def put(self, key: str, request: ChatRequest, response: ChatResponse) -> None:
        """Store ``response`` under ``key`` (replacing any older entry)."""
        req_json = redact(request.canonical_json())
        resp_json = redact(json.dumps(response.to_dict(), sort_keys=True, ensure_ascii=False))
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, request, response, created) VALUES (?, ?, ?, ?)",
                (key, req_json, resp_json, time.time()),
            )

    def __contains__(self, key: object) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    def __enter__(self) -> DiskCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskCache({str(self.path)!r})"


class CachedClient:
    """A :class:`ChatClient` that answers from a :class:`DiskCache` when it can.

    Concurrent calls with the same request wait for the first one instead of all calling the backend.

    Args:
        client: The backend.
        cache: Where responses are stored.

    Attributes:
        hits: Requests answered from the cache.
        misses: Requests sent to the backend.
    """

    def __init__(self, client: ChatClient, cache: DiskCache) -> None:
        self.client = client
        self.cache = cache
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    @property
    def model(self) -> str | None:
        return getattr(self.client, "model", None)

    @property
    def retry_counts(self) -> dict[str, int]:
        return dict(getattr(self.client, "retry_counts", {}))

    def resolve(self, request: ChatRequest) -> ChatRequest:
        """``request`` with the backend's model filled in: the form that is keyed and sent."""
        return request.with_model(self.model)

    def complete(self, request: ChatRequest) -> ChatResponse:
        request = self.resolve(request)
        key = request.key()
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with key_lock:
                cached = self.cache.get(key)
                if cached is not None:
                    with self._lock:
                        self.hits += 1
                    meta = {**cached.meta, "cached": True}
                    return ChatResponse(cached.text, cached.choices, cached.usage, meta)
                with self._lock:
                    self.misses += 1
                response = self.client.complete(request)
                self.cache.put(key, request, response)
                return response
        finally:
            with self._lock:
                self._key_locks.pop(key, None)

    def __repr__(self) -> str:
        return f"CachedClient({self.client!r}, {self.cache!r})"
