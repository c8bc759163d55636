"""The one small interface every teacher/judge backend implements.

A :class:`ChatRequest` is everything that determines an answer (messages, model, sampling settings, seed);
its canonical JSON form and SHA-256 :meth:`ChatRequest.key` identify it in the disk cache and in batch
outputs. Credentials are *not* part of a request: they belong to the client, which reads them from the
environment at call time (see :mod:`rewardmix.redact`). A :class:`ChatClient` turns a request into a
:class:`ChatResponse`. Backends: :class:`rewardmix.llm.http.OpenAICompatibleClient` (OpenAI, vLLM,
llama.cpp server, Ollama) and :class:`rewardmix.llm.local.LocalChatClient` (a local ``transformers`` model).

Reference: SPEC §2 (teachers and judges: backends, cache, retries).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rewardmix.redact import redact

__all__ = [
    "ROLES",
    "ChatClient",
    "ChatRequest",
    "ChatResponse",
    "LLMError",
    "LLMHTTPError",
    "RetriesExhaustedError",
]

ROLES = frozenset({"system", "user", "assistant"})

# Bump when the meaning of a field changes, so old cache entries stop matching.
_KEY_VERSION = 1


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completion request, independent of the backend that serves it.

    Attributes:
        messages: The conversation, each ``{"role": "system"|"user"|"assistant", "content": str}``; stored
            as a tuple of fresh dicts so a request cannot change after it was keyed.
        model: Model name sent to the server (or the local model's path/id). ``None`` means "the client's
            model"; clients and :class:`rewardmix.llm.cache.CachedClient` fill it in before keying, so two
            models never share a cache entry.
        temperature: 0 = greedy. Sampled requests (``temperature > 0`` or ``n > 1``) are cached like any
            other, by the full request including ``seed``: vary ``seed`` to get fresh samples.
        max_tokens: Upper bound on generated tokens.
        seed: Sampling seed, sent to the server (OpenAI and vLLM honour it, best effort) and used by the local
            backend; part of the cache key.
        n: Number of choices to return.
        top_p: Nucleus-sampling mass.
        stop: Stop strings.
    """

    messages: tuple[Mapping[str, str], ...]
    model: str | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int | None = None
    n: int = 1
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        msgs = tuple(_check_message(i, m) for i, m in enumerate(self.messages))
        if not msgs:
            raise ValueError("ChatRequest.messages must not be empty")
        object.__setattr__(self, "messages", msgs)
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError(f"ChatRequest.model must be a non-empty string or None, got {self.model!r}")
        if not self.temperature >= 0.0:
            raise ValueError(f"ChatRequest.temperature must be >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"ChatRequest.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"ChatRequest.max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"ChatRequest.n must be an int >= 1, got {self.n!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"ChatRequest.seed must be an int or None, got {self.seed!r}")

    @classmethod
    def user(cls, content: str, *, system: str | None = None, **kwargs: Any) -> ChatRequest:
        """A request with one user message (optionally preceded by a system message)."""
        msgs = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": content}
        ]
        return cls(messages=tuple(msgs), **kwargs)

    def with_model(self, model: str | None) -> ChatRequest:
        """This request with ``model`` filled in when it has none (a request's own model wins)."""
        if self.model is not None or model is None:
            return self
        return dataclasses.replace(self, model=model)

    def replace(self, **changes: Any) -> ChatRequest:
        """A copy with some fields changed, e.g. ``request.replace(seed=7)``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The canonical dict form (plain JSON types, no credentials)."""
        return {
            "v": _KEY_VERSION,
            "messages": [dict(m) for m in self.messages],
            "model": self.model,
            "temperature": float(self.temperature),
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "n": self.n,
            "top_p": float(self.top_p),
            "stop": list(self.stop),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChatRequest:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d.pop("v", None)
        d["messages"] = tuple(d["messages"])
        d["stop"] = tuple(d.get("stop", ()))
        return cls(**d)

    def canonical_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces, UTF-8 kept; equal requests give identical strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def key(self) -> str:
        """SHA-256 hex digest of :meth:`canonical_json`: the cache key and the batch-output ``key``."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def __hash__(self) -> int:
        return hash(self.key())


def _check_message(i: int, m: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(m, Mapping):
        raise ValueError(f"ChatRequest.messages[{i}] must be a mapping with role and content, got {type(m)}")
    extra = set(m) - {"role", "content"}
    if extra:
        raise ValueError(f"ChatRequest.messages[{i}] has unknown keys {sorted(extra)}")
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise ValueError(f"ChatRequest.messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise ValueError(f"ChatRequest.messages[{i}].content must be a string, got {type(content).__name__}")
    return {"role": role, "content": content}


@dataclass(frozen=True)
class ChatResponse:
    """A backend's answer.

    Attributes:
        text: The first choice's content (the only one when ``n == 1``).
        choices: Every choice's content, ``choices[0] == text``.
        usage: Token counts as reported by the backend (``prompt_tokens``, ``completion_tokens``, ...).
        meta: Other facts worth keeping: ``model``, ``finish_reasons``, ``backend``, ``cached`` (set by
            :class:`rewardmix.llm.cache.CachedClient` on a hit).
    """

    text: str
    choices: tuple[str, ...] = ()
    usage: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choices = tuple(self.choices) or (self.text,)
        if choices[0] != self.text:
            raise ValueError("ChatResponse.choices[0] must equal text")
        object.__setattr__(self, "choices", choices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "choices": list(self.choices),
            "usage": dict(self.usage),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChatResponse:
        return cls(
            text=d["text"],
            choices=tuple(d.get("choices", ())),
            usage=dict(d.get("usage", {})),
            meta=dict(d.get("meta", {})),
        )


@runtime_checkable
class ChatClient(Protocol):
    """Anything that answers a :class:`ChatRequest`.

    Implementations may also expose ``model`` (the default model name, used to fill ``request.model``) and
    ``retry_counts`` (a ``dict`` of retries per cause); :func:`rewardmix.llm.batch.run_batch` reports them
    when present.
    """

    def complete(self, request: ChatRequest) -> ChatResponse: ...


class LLMError(RuntimeError):
    """A teacher/judge call failed. Messages are redacted: they never contain an API key."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class LLMHTTPError(LLMError):
    """The server rejected the request with a status that retrying cannot fix (400, 401, 403, 404, ...).

    Attributes:
        status: The HTTP status code.
        fatal: True for statuses that will fail every request the same way (401, 403, 404: bad key, no
            permission, wrong URL or model), so a batch job stops instead of recording N identical failures.
    """

    FATAL_STATUSES = frozenset({401, 403, 404})

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.fatal = status in self.FATAL_STATUSES


class RetriesExhaustedError(LLMError):
    """Every attempt failed with a retryable cause.

    Attributes:
        attempts: Number of attempts made.
        last_cause: Retry cause of the last failure (``"timeout"``, ``"connection"``, ``"rate_limit"``,
            ``"server_error"``, ``"malformed_json"``, ``"missing_content"``).
    """

    def __init__(self, attempts: int, last_cause: str, message: str) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_cause = last_cause
