"""A real chat-completions HTTP server on 127.0.0.1 with a scripted fault queue and scripted answers.

Used by the llm tests (faults, retries, leaks) and the stage tests (a teacher/judge whose answers the test
chooses through ``ScriptedServer.answer``). Fixture ``chat_server`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def answer_for(body: dict[str, Any]) -> str:
    """The good answer the server gives: deterministic in the request, so tests can predict it."""
    last_user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    return f"echo[{body.get('seed')}]: {last_user}"


def completion(contents: list[str], model: str = "fake-model") -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
            for i, c in enumerate(contents)
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


@dataclass
class ScriptedServer:
    """State shared with the handler threads.

    ``faults`` is consumed one action per request; when it is empty the server answers well. Actions:
    ``"timeout"`` (sleep ``hang_s`` before answering), ``"reset"`` (close the socket with RST),
    ``("status", code, headers, body)``, ``"truncated"`` (half a JSON body with a matching length),
    ``"garbage"`` (200 with non-JSON text), ``"missing_choices"`` (200 with ``{"choices": []}``),
    ``"no_content"`` (200, valid JSON, a choice without ``message.content``), ``"cut"`` (the headers promise the
    whole body, half of it is sent, then the connection closes: an incomplete read),
    ``"echo_auth"`` (a good answer whose content repeats the Authorization header and the bare key: a leak
    to redact),
    ``("choices", k)`` (a good answer with k choices).
    """

    port: int = 0
    hang_s: float = 0.6
    answer: Callable[[dict[str, Any]], str] = field(default=lambda body: answer_for(body))
    faults: deque = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def request_counts(self) -> Counter:
        """How often each distinct request body arrived."""
        with self.lock:
            return Counter(json.dumps(r, sort_keys=True) for r in self.requests)


def _make_handler(state: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def finish(self) -> None:
            try:
                super().finish()
            except OSError:
                pass  # the "reset" action closed the socket already

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            auth = self.headers.get("Authorization")
            with state.lock:
                state.requests.append(body)
                state.auth_headers.append(auth)
                state.paths.append(self.path)
                action = state.faults.popleft() if state.faults else "good"
            good = json.dumps(completion([state.answer(body)], body.get("model", "fake"))).encode()
            try:
                if action == "good":
                    self._send(200, good)
                elif action == "timeout":
                    time.sleep(state.hang_s)
                    self._send(200, good)
                elif action == "reset":
                    # SO_LINGER with timeout 0: close() sends RST instead of FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                elif action == "truncated":
                    self._send(200, good[: len(good) // 2])
                elif action == "garbage":
                    self._send(200, b"<html>Bad Gateway, try later</html>")
                elif action == "missing_choices":
                    self._send(200, json.dumps({"id": "x", "choices": []}).encode())
                elif action == "no_content":
                    self._send(
                        200, json.dumps({"id": "x", "choices": [{"index": 0, "message": {}}]}).encode()
                    )
                elif action == "cut":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(good)))
                    self.end_headers()
                    self.wfile.write(good[: len(good) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif action == "echo_auth":
                    bare = str(auth).split()[-1]
                    content = f"I saw header {auth} and the bare key {bare}."
                    leak = json.dumps(completion([content], body.get("model", "fake"))).encode()
                    self._send(200, leak)
                elif action[0] == "status":
                    _, code, headers, text = action
                    text = text.replace("{auth}", str(auth))
                    self._send(code, text.encode(), headers)
                elif action[0] == "choices":
                    payload = completion([state.answer(body)] * action[1], body.get("model", "fake"))
                    self._send(200, json.dumps(payload).encode())
                else:
                    raise AssertionError(f"unknown action {action!r}")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before we answered

    return Handler


@contextmanager
def serve(state: ScriptedServer | None = None) -> Iterator[ScriptedServer]:
    """Run a ThreadingHTTPServer on 127.0.0.1 (free port) speaking the chat-completions JSON."""
    state = state or ScriptedServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
