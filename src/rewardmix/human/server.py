"""A small local web server where annotators rank the exported responses (standard library only).

Serves ``page.html`` (plain HTML and JavaScript, no external resource) and a JSON API over the files of a
human-evaluation directory written by :mod:`rewardmix.human.export`:

- ``GET /api/next?annotator=NAME`` -> ``{"annotator", "group", "done", "task", "progress"}``: the first
  prompt of the annotator's group (in ``tasks.jsonl`` order) that the annotator has not ranked yet, as
  ``{"prompt_id", "prompt", "responses": [{"slot", "text"}]}``, or ``"done": true`` and ``"task": null``;
  ``progress`` is ``{"ranked", "total"}``.
- ``POST /api/rank`` with ``{"annotator", "prompt_id", "ranks": {slot: rank}}`` (``Content-Type:
  application/json``) -> ``{"ok": true, "progress"}``. Ranks are validated by
  :func:`rewardmix.human.export.check_ranks` (every slot exactly once, integers 1..K, dense from 1, equal
  ranks = tie); a bad request is answered ``400 {"error": message}`` and the page shows the message.

Every accepted ranking is appended to ``rankings.jsonl`` as one line ``{"annotator", "group",
"prompt_id", "ranks", "submitted_at"}``, written with a single ``write`` and ``fsync`` under a lock, so a
crash loses at most the ranking being submitted. Posting a prompt again appends another line; the import
keeps the last line per (annotator, group, prompt) ("last wins"). A restarted server reads the file to
resume every annotator where they stopped.

There is no authentication: anyone who can reach the port can rank under any name. The server binds to
127.0.0.1 by default; expose it to other machines only on a network you trust (or through an SSH tunnel).

Reference: CRS §5.5.2 (the thesis used Argilla; this is a minimal stand-in with the same ranking task).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from rewardmix.human.export import (
    MANIFEST_FILE,
    MAX_NAME_CHARS,
    RANKINGS_FILE,
    TASKS_FILE,
    check_ranks,
    loads_strict,
    read_task_file,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted (a ranking is a few hundred bytes)."""

_PAGE_HEADERS = {
    # Everything the page needs is inline; nothing may be fetched from elsewhere.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ApiError(Exception):
    """A request the API refuses; ``message`` is shown to the annotator."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def load_page() -> bytes:
    """The annotation page shipped as package data (``rewardmix/human/page.html``)."""
    return resources.files("rewardmix.human").joinpath("page.html").read_bytes()


# ---------------------------------------------------------------------------------------------------------
# The task store: tasks, annotators, and who has ranked what
# ---------------------------------------------------------------------------------------------------------


class TaskStore:
    """The tasks of a human-evaluation directory and each annotator's progress; thread-safe.

    Args:
        directory: Holds ``tasks.jsonl`` and ``manifest.json`` (from the export); ``rankings.jsonl`` is
            read if present (to resume) and appended to.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        manifest = json.loads((self.directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        self.open_annotators: bool = manifest["open_annotators"]
        self.groups: dict[str, list[str]] = manifest["groups"]
        self.group_of = {name: group for group, names in self.groups.items() for name in names}
        self.tasks: dict[str, list[dict[str, Any]]] = {group: [] for group in self.groups}
        self.by_id: dict[tuple[str, str], dict[str, Any]] = {}
        for task in read_task_file(self.directory / TASKS_FILE):
            self.tasks.setdefault(task["group"], []).append(task)
            self.by_id[(task["group"], task["prompt_id"])] = task
        self.rankings_path = self.directory / RANKINGS_FILE
        self.ranked: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._resume()

    def _resume(self) -> None:
        if not self.rankings_path.exists():
            return
        raw = self.rankings_path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # A torn last line (power loss between write and fsync): start the next ranking on a new line.
            with self.rankings_path.open("ab") as f:
                f.write(b"\n")
        for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.ranked.setdefault(str(row["annotator"]), set()).add(str(row["prompt_id"]))
            except (ValueError, KeyError, TypeError):
                log.warning(
                    "%s:%d: unreadable ranking line ignored when resuming", self.rankings_path, lineno
                )
        log.info("resuming: %d annotator(s) have ranked before", len(self.ranked))

    def group_for(self, annotator: Any) -> str:
        """The group of ``annotator``; with open annotators, any valid name joins the one group."""
        if not isinstance(annotator, str) or not annotator.strip():
            raise ApiError(HTTPStatus.BAD_REQUEST, "give your annotator name")
        if annotator != annotator.strip() or len(annotator) > MAX_NAME_CHARS:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"an annotator name has no surrounding spaces and at most {MAX_NAME_CHARS} characters",
            )
        if self.open_annotators:
            return next(iter(self.groups))
        if annotator not in self.group_of:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"unknown annotator {annotator!r}: check the name you were given"
            )
        return self.group_of[annotator]

    def progress(self, annotator: str, group: str) -> dict[str, int]:
        ids = {t["prompt_id"] for t in self.tasks[group]}
        return {"ranked": len(self.ranked.get(annotator, set()) & ids), "total": len(ids)}

    def next_task(self, annotator: Any) -> dict[str, Any]:
        """The answer of ``GET /api/next``."""
        group = self.group_for(annotator)
        with self._lock:
            done = self.ranked.get(annotator, set())
            task = next((t for t in self.tasks[group] if t["prompt_id"] not in done), None)
            progress = self.progress(annotator, group)
        shown = None
        if task is not None:
            shown = {k: task[k] for k in ("prompt_id", "prompt", "responses")}
        return {
            "annotator": annotator,
            "group": group,
            "done": task is None,
            "task": shown,
            "progress": progress,
        }

    def submit(self, body: Any) -> dict[str, Any]:
        """Validate one ranking, append it to ``rankings.jsonl`` and answer ``POST /api/rank``."""
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the request must be a JSON object")
        annotator = body.get("annotator")
        group = self.group_for(annotator)
        prompt_id = body.get("prompt_id")
        task = self.by_id.get((group, prompt_id)) if isinstance(prompt_id, str) else None
        if task is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"there is no prompt {prompt_id!r} for your group")
        if "ranks" not in body:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the request has no ranks")
        try:
            ranks = check_ranks(body["ranks"], [r["slot"] for r in task["responses"]])
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        row = {
            "annotator": annotator,
            "group": group,
            "prompt_id": prompt_id,
            "ranks": ranks,
            "submitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            append_line(self.rankings_path, line)
            self.ranked.setdefault(annotator, set()).add(prompt_id)
            progress = self.progress(annotator, group)
        log.info("%s ranked %s (%d/%d)", annotator, prompt_id, progress["ranked"], progress["total"])
        return {"ok": True, "progress": progress}

    def all_done(self) -> bool:
        """Whether every declared annotator has ranked every prompt of their group (False when open)."""
        if self.open_annotators:
            return False
        with self._lock:
            return all(
                self.progress(name, group)["ranked"] == len(self.tasks[group])
                for group, names in self.groups.items()
                for name in names
            )


def append_line(path: Path, line: bytes) -> None:
    """Append one line with a single ``write`` on an ``O_APPEND`` descriptor, then ``fsync``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # less the umask, as open() does
    try:
        written = os.write(fd, line)
        if written != len(line):  # a regular file takes the whole line at once; refuse to leave half of it
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: HumanEvalServer
    server_version = "rewardmix-human-eval"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8", _PAGE_HEADERS)
        elif url.path == "/api/next":
            annotator = parse_qs(url.query).get("annotator", [None])[0]
            self._api(lambda: self.server.store.next_task(annotator))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/api/rank":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
            return
        self._api(lambda: self._after_submit(self.server.store.submit(self._read_json())))

    def _after_submit(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.server.after_submit()
        return answer

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True  # a body of unknown length cannot be skipped
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be taken for the next request
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request larger than {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # Browsers cannot send this type cross-site without asking first: no form elsewhere can post here.
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the ranking as application/json")
        try:
            return loads_strict(raw)
        except ValueError as exc:  # invalid JSON, a key given twice, or not UTF-8
            raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid request: {exc}") from None

    def _api(self, answer: Callable[[], dict[str, Any]]) -> None:
        try:
            self._json(HTTPStatus.OK, answer())
        except ApiError as exc:
            self._json(exc.status, {"error": exc.message})

    def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        self._send(status, body, "application/json; charset=utf-8", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


class HumanEvalServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving the page and API over a :class:`TaskStore`.

    Args:
        store: The tasks and progress.
        host: Address to bind (default 127.0.0.1).
        port: Port; 0 picks a free one (see :attr:`url`).
        stop_when_done: Shut down after the submission that completes every declared annotator.
    """

    daemon_threads = True

    def __init__(
        self, store: TaskStore, host: str = "127.0.0.1", port: int = 0, *, stop_when_done: bool = False
    ) -> None:
        super().__init__((host, port), _Handler)
        self.store = store
        self.page = load_page()
        self.stop_when_done = stop_when_done

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def after_submit(self) -> None:
        if self.stop_when_done and self.store.all_done():
            log.info("every annotator is done: stopping the server")
            # shutdown() waits for serve_forever to return: call it from a thread of its own
            threading.Thread(target=self.shutdown, daemon=True).start()


class ServeResult(NamedTuple):
    url: str
    all_done: bool


def serve(
    directory: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stop_when_done: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> ServeResult:
    """Serve the annotation page until interrupted (Ctrl+C) or, with ``stop_when_done``, until done.

    Args:
        directory: The human-evaluation directory (export output).
        host: Address to bind; anything but a loopback address is logged as a warning (no authentication).
        port: Port; 0 picks a free one.
        stop_when_done: Stop once every declared annotator has ranked every prompt of their group.
        on_ready: Called with the URL once the server listens.

    Returns:
        A :class:`ServeResult`.
    """
    store = TaskStore(directory)
    if stop_when_done and store.open_annotators:
        raise ValueError(
            "stop_when_done needs declared annotator groups (with open annotators nobody is 'all')"
        )
    if not _is_loopback(host):
        log.warning("serving on %s: anyone who can reach it can submit rankings (there is no login)", host)
    try:
        server = HumanEvalServer(store, host, port, stop_when_done=stop_when_done)
    except OSError as exc:  # port taken, address not local, ...
        raise OSError(
            f"cannot listen on {host}:{port}: {exc}; pick another serve.port (0 = any free one)"
        ) from exc
    try:
        log.info("human evaluation page: %s (annotators: %s)", server.url, _annotators_hint(store))
        if on_ready is not None:
            on_ready(server.url)
        if not (stop_when_done and store.all_done()):
            server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log.info("stopped by the user")
    finally:
        server.server_close()
    return ServeResult(server.url, store.all_done())


@contextmanager
def serving(directory: str | Path, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[HumanEvalServer]:
    """Run the server in a background thread for the duration of a ``with`` block (tests, notebooks)."""
    server = HumanEvalServer(TaskStore(directory), host, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _annotators_hint(store: TaskStore) -> str:
    if store.open_annotators:
        return "any name"
    return "; ".join(f"{group}: {', '.join(names)}" for group, names in store.groups.items())
