"""Fixtures of the llm tests: a fake API key in the environment and a recording sleep (the server: tests/fake_llm.py)."""

from __future__ import annotations

import pytest

from rewardmix.llm import http


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A unique fake key in the environment (OPENAI_API_KEY), to grep for leaks."""
    # Not "sk-..." shaped, so finding no leak proves the environment-value rule works, not the sk- pattern.
    key = "rmx-test-key-" + "Q7zX9vLk2P4wRt8N"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return key


class Sleeps(list):
    """An injectable sleep that records delays instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client_sleeps(monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps) -> Sleeps:
    """Backoff delays of every client the stages build, recorded in ``sleeps`` instead of slept."""

    class RecordingClient(http.OpenAICompatibleClient):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, sleep=sleeps, **kwargs)

    monkeypatch.setattr(http, "OpenAICompatibleClient", RecordingClient)
    return sleeps
