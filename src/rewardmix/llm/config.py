"""The teacher/judge section of a stage config, and the client it builds (cached on disk)."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rewardmix.config import check_ranges
from rewardmix.llm.cache import CachedClient, DiskCache
from rewardmix.llm.client import ChatClient, ChatRequest

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class LLMConfig:
    backend: Literal["openai", "local"] = "local"
    """``openai``: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama);
    ``local``: a ``transformers`` model run in this process."""
    model: str = "offline:smollm2"
    """Model name sent to the endpoint (openai) or a path / hub id / ``offline:smollm2`` (local)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """Endpoint base URL, the part before ``/chat/completions`` (openai backend)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key; the key itself never goes in a config."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    max_tokens: int = 256
    """Maximum new tokens per answer."""
    seed: int = 0
    """Base seed of every request (part of the cache key: change it to get fresh samples)."""
    timeout: float = 60.0
    """Seconds before an HTTP request counts as timed out (and is retried)."""
    max_retries: int = 6
    """Retries per request on timeouts, 429, 5xx and malformed answers, with exponential backoff."""
    rate_limit_per_min: float | None = None
    """Requests per minute at most (openai backend); null = unlimited."""
    concurrency: int = 4
    """Requests in flight at once; the local backend generates them together as one batch (on a CPU a batch
    of 8 costs little more than one request)."""
    cache: str | None = None
    """SQLite cache file; null = ``<output_dir>/llm_cache.sqlite``. A repeated request is never paid twice."""
    max_failed_fraction: float = 0.5
    """Largest share of requests that may fail (after their retries) with the stage still succeeding; above it,
    or when no request succeeds at all, the stage stops with an error (exit code 1) naming the share and the
    cause, after writing what it has. 0 = any failure is an error; 1 = only "nothing succeeded" is."""
    trust_remote_code: bool = False
    """Allow custom model code from the model folder (local backend). Off unless you trust the model."""

    @property
    def preflight_paths(self) -> dict[str, str]:
        """Path fields checked before the run starts (``rewardmix.preflight``): the model of the local backend."""
        return {"model": "model"} if self.backend == "local" else {}

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least_1=("max_tokens", "concurrency"),
            at_least_0=("temperature", "max_retries"),
            positive=("timeout", "rate_limit_per_min"),
            fraction=("max_failed_fraction",),
        )
        # A key pasted where a config expects a name or a URL would be saved with the config and logged: refuse
        # it, without repeating it in the message.
        if not _ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits, _), e.g. "
                "OPENAI_API_KEY; put the key itself in that variable, never in a config"
            )
        parts = urllib.parse.urlsplit(self.base_url)
        if "@" in parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                "base_url must hold no user:password@, query string or fragment (credentials in a URL end up in "
                "saved configs and logs); give the key through the environment variable named by api_key_env"
            )

    def request(self, prompt: str, *, seed_offset: int = 0) -> ChatRequest:
        """A one-turn user request with this section's sampling settings."""
        return ChatRequest.user(
            prompt, temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed + seed_offset
        )


def build_client(cfg: LLMConfig, output_dir: str | Path) -> CachedClient:
    """The configured client wrapped in the on-disk cache."""
    client: ChatClient
    if cfg.backend == "openai":
        from rewardmix.llm.http import OpenAICompatibleClient

        client = OpenAICompatibleClient(
            cfg.base_url,
            cfg.model,
            api_key_env=cfg.api_key_env,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
            rate_limit_per_min=cfg.rate_limit_per_min,
        )
    else:
        from rewardmix.llm.local import LocalChatClient
        from rewardmix.models.loading import resolve_model_path

        client = LocalChatClient(
            resolve_model_path(cfg.model),
            trust_remote_code=cfg.trust_remote_code,
            max_batch_size=cfg.concurrency,
        )
    cache_path = Path(cfg.cache) if cfg.cache else Path(output_dir) / "llm_cache.sqlite"
    return CachedClient(client, DiskCache(cache_path))
