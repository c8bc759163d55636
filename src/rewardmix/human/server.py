"""A small local web server where annotators rank the exported responses (standard library only).

Serves ``page.html`` (plain HTML and JavaScript, no external resource) and a JSON API over the files of a
human-evaluation directory written by :mod:`rewardmix.human.export`:

- ``GET /api/next?annotator=NAME`` -> ``{"annotator", "group", "done", "task", "progress"}``: the first
  prompt of the annotator's group (in ``tasks.jsonl`` order) that the annotator has not ranked yet, as
  ``{"prompt_id", "prompt", "responses": [{"slot", "text"}], "task_hash"}``, or ``"done": true`` and
  ``"task": null``; ``progress`` is ``{"ranked", "total"}``.
- ``POST /api/rank`` with ``{"annotator", "prompt_id", "task_hash", "ranks": {slot: rank}}``
  (``Content-Type: application/json``) -> ``{"ok": true, "progress"}``. Ranks are validated by
  :func:`rewardmix.human.export.check_ranks` (every slot exactly once, integers 1..K, dense from 1, equal
  ranks = tie); a bad request is answered ``400 {"error": message}`` and the page shows the message. A
  ``task_hash`` other than the task's (the page shows texts of an earlier export) is answered ``409``.

Who may ask:

- Every request carries the session token, a random string made when the server starts and printed (in
  the page address) on the console: ``http://127.0.0.1:8765/?token=...``. The page sends it back with each
  API call (header ``X-Rewardmix-Token``). Without it, or with another one: ``403``.
- The ``Host`` header must name this server: ``localhost``, ``127.0.0.1``, ``[::1]``, the bound host or one
  of ``allowed_hosts``, with the bound port; an ``Origin`` header, when sent, the same. Otherwise ``403``:
  a web page elsewhere that points a host name of its own at 127.0.0.1 (DNS rebinding) cannot read the
  tasks or post rankings through the annotator's browser.
- Annotator names are compared in Unicode NFC; names with control characters, line breaks, lone
  surrogates or text-direction marks, or longer than 100 characters, are answered ``400``.

Every accepted ranking is appended to ``rankings.jsonl`` as one line ``{"annotator", "group",
"prompt_id", "task_hash", "ranks", "submitted_at"}`` under a lock, with a single ``write`` followed by
``fsync`` of the file (and of the directory when the file is new); only then is it answered ``200``. A write
that fails or is cut short (a full disk) is taken back (the file is truncated to its previous length) and
answered ``507`` with a message the page shows, so the annotator knows to submit again and no torn line can
swallow the next ranking. Posting a prompt again appends another line; the import keeps the last line per
(annotator, group, prompt) ("last wins"). A restarted server reads the file to resume every annotator
where they stopped. A request the server cannot handle is answered ``500``; the server keeps serving.

The token is the only credential: anyone holding the address can rank under any name. The server binds
to 127.0.0.1 by default; expose it to other machines only on a network you trust (or through an SSH
tunnel).

Reference: CRS §5.5.2 (the thesis used Argilla; this is a minimal stand-in with the same ranking task).
"""

from __future__ import annotations

import datetime as _dt
import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from rewardmix.human.export import (
    MANIFEST_FILE,
    RANKINGS_FILE,
    TASKS_FILE,
    check_name,
    check_ranks,
    loads_strict,
    read_task_file,
    task_hash,
)
from rewardmix.rundir import fsync_dir

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted (a ranking is a few hundred bytes)."""
TOKEN_HEADER = "X-Rewardmix-Token"
"""The header the page sends the session token in (the page address carries it as ``?token=``)."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"]*")

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
        # names compared in NFC (an export made before names were normalized may hold another form)
        self.groups: dict[str, list[str]] = {
            group: [unicodedata.normalize("NFC", name) for name in names]
            for group, names in manifest["groups"].items()
        }
        self.group_of = {name: group for group, names in self.groups.items() for name in names}
        self.tasks: dict[str, list[dict[str, Any]]] = {group: [] for group in self.groups}
        self.by_id: dict[tuple[str, str], dict[str, Any]] = {}
        for task in read_task_file(self.directory / TASKS_FILE):
            # the fingerprint of the texts shown, computed here: a ranking is stored with what it ranked
            task["task_hash"] = task_hash(task["prompt"], [(r["slot"], r["text"]) for r in task["responses"]])
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
        # (a torn last line, from a power loss between write and fsync, is ended by the next append_line)
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                name = check_name(row["annotator"], "annotator")
                self.ranked.setdefault(name, set()).add(str(row["prompt_id"]))
            except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
                log.warning(
                    "%s:%d: unreadable ranking line ignored when resuming", self.rankings_path, lineno
                )
        log.info("resuming: %d annotator(s) have ranked before", len(self.ranked))

    def annotator(self, name: Any) -> str:
        """``name`` in NFC, checked (:func:`~rewardmix.human.export.check_name`); 400 when it is not valid."""
        if not isinstance(name, str) or not name.strip():
            raise ApiError(HTTPStatus.BAD_REQUEST, "give your annotator name")
        try:
            return check_name(name, "annotator")
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None

    def group_for(self, annotator: str) -> str:
        """The group of ``annotator`` (checked by :meth:`annotator`); with open annotators, the one group."""
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
        annotator = self.annotator(annotator)
        group = self.group_for(annotator)
        with self._lock:
            done = self.ranked.get(annotator, set())
            task = next((t for t in self.tasks[group] if t["prompt_id"] not in done), None)
            progress = self.progress(annotator, group)
        shown = None
        if task is not None:
            shown = {k: task[k] for k in ("prompt_id", "prompt", "responses", "task_hash")}
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
        annotator = self.annotator(body.get("annotator"))
        group = self.group_for(annotator)
        prompt_id = body.get("prompt_id")
        task = self.by_id.get((group, prompt_id)) if isinstance(prompt_id, str) else None
        if task is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"there is no prompt {prompt_id!r} for your group")
        if "ranks" not in body:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the request has no ranks")
        if not isinstance(body.get("task_hash"), str):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the request has no task_hash: reload the page")
        if body["task_hash"] != task["task_hash"]:
            raise ApiError(
                HTTPStatus.CONFLICT,
                f"the texts of prompt {prompt_id} changed since your page showed them (the tasks were "
                "exported again): reload the page and rank what it shows",
            )
        try:
            ranks = check_ranks(body["ranks"], [r["slot"] for r in task["responses"]])
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        row = {
            "annotator": annotator,
            "group": group,
            "prompt_id": prompt_id,
            "task_hash": task["task_hash"],
            "ranks": ranks,
            "submitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            try:
                append_line(self.rankings_path, line)
            except OSError as exc:
                log.error("could not save a ranking of %s to %s: %s", prompt_id, self.rankings_path, exc)
                raise ApiError(
                    HTTPStatus.INSUFFICIENT_STORAGE,
                    f"the server could not save your ranking ({exc.strerror or exc}); it is NOT stored: "
                    "tell the organizer, then submit it again",
                ) from None
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
    """Append one line durably: one ``write``, ``fsync`` of the file (and of its directory when new).

    Returns only once the line is on disk. A failed or short write, or a failed ``fsync``, truncates the
    file back to its length before the call and raises: no part of the line stays behind, so the next line
    cannot be glued to a torn one. When the file does not end with a newline (a torn line left by a crash),
    the line is written after one.

    Raises:
        OSError: The line is not stored (disk full, I/O error, ...).
    """
    is_new = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # less the umask, as open() does
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            written = os.write(fd, line)
            if written != len(line):  # a regular file takes the whole line at once unless it is full
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)", str(path))
            os.fsync(fd)
        except OSError:
            try:  # take back whatever part of the line reached the file
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError as undo:
                log.error("%s: could not take back a partly written line: %s", path, undo)
            raise
    finally:
        os.close(fd)
    if is_new:
        fsync_dir(path.parent)  # the new file's directory entry, so that the file survives a power loss


# ---------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: HumanEvalServer
    server_version = "rewardmix-human-eval"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8", _PAGE_HEADERS)
        elif url.path == "/api/next":
            # surrogateescape: bytes that are not UTF-8 become lone surrogates, which check_name refuses
            query = parse_qs(url.query, errors="surrogateescape")
            annotator = query.get("annotator", [None])[0]
            self._api(lambda: self.server.store.next_task(annotator))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

    def _post(self) -> None:
        if urlsplit(self.path).path != "/api/rank":
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
            return
        self._api(lambda: self._after_submit(self.server.store.submit(self._read_json())))

    def _guarded(self, handle: Callable[[], None]) -> None:
        """Check who asks (:meth:`_refusal`), then ``handle``; any error becomes a 500, never a dead thread."""
        self._answered = False
        try:
            refusal = self._refusal()
            if refusal is not None:
                self.close_connection = True  # a refused request's body (if any) is never read
                self._json(HTTPStatus.FORBIDDEN, {"error": refusal})
                return
            handle()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the browser went away; nothing to answer
        except Exception as exc:  # noqa: BLE001 - the server must outlive any one request
            log.error("%s %s failed: %s: %s", self.command, self._path_for_log(), type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            self.close_connection = True
            if not self._answered:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "the server failed on this request"})

    def _refusal(self) -> str | None:
        """Why this request is refused (Host, Origin, token), or None."""
        server = self.server
        if not server.host_allowed(self.headers.get("Host")):
            return "this server answers only requests to its own address (Host header refused)"
        origin = self.headers.get("Origin")
        if origin is not None and not server.origin_allowed(origin):
            return "requests from other web pages are refused (Origin header)"
        query = parse_qs(urlsplit(self.path).query, errors="surrogateescape")
        given = self.headers.get(TOKEN_HEADER) or query.get("token", [""])[0]
        if not server.token_matches(given):
            return "missing or wrong token: open the full address printed when the server started"
        return None

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
        # ensure_ascii: any text (a lone surrogate echoed in a message included) encodes
        body = json.dumps(payload).encode("ascii")
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        self._send(status, body, "application/json; charset=utf-8", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _path_for_log(self) -> str:
        return _TOKEN_IN_TEXT.sub(r"\1***", self.path)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        # the request line carries the token in the page address: never log it
        log.debug("%s %s", self.address_string(), _TOKEN_IN_TEXT.sub(r"\1***", format % args))


class HumanEvalServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving the page and API over a :class:`TaskStore`.

    Args:
        store: The tasks and progress.
        host: Address to bind (default 127.0.0.1).
        port: Port; 0 picks a free one (see :attr:`url`).
        stop_when_done: Shut down after the submission that completes every declared annotator.
        allowed_hosts: Host names (or addresses) besides ``localhost``, ``127.0.0.1``, ``::1`` and ``host``
            that requests may name in their ``Host`` header, e.g. the machine's name on the network when
            ``host`` is ``0.0.0.0``.
        token: The session token; None = a new random one (:func:`secrets.token_urlsafe`).
    """

    daemon_threads = True

    def __init__(
        self,
        store: TaskStore,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        stop_when_done: bool = False,
        allowed_hosts: Sequence[str] = (),
        token: str | None = None,
    ) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self.store = store
        self.page = load_page()
        self.stop_when_done = stop_when_done
        self.host = host
        self.port = int(self.server_address[1])
        self.allowed_hosts = frozenset(
            _bare_host(h) for h in (*LOOPBACK_NAMES, host, *allowed_hosts) if h and not _is_wildcard(h)
        )
        self.token = token or secrets.token_urlsafe(24)

    @property
    def base_url(self) -> str:
        """The address without the token (for messages); requests need :attr:`url`."""
        host = "127.0.0.1" if _is_wildcard(self.host) else self.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    @property
    def url(self) -> str:
        """The page address with the session token: the one to open."""
        return f"{self.base_url}?token={self.token}"

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode("ascii"))

    def host_allowed(self, header: str | None) -> bool:
        """Whether a ``Host`` header names this server: an allowed host name and the bound port."""
        if header is None:
            return False
        name, port = _split_host(header.strip())
        if name is None:
            return False
        return name in self.allowed_hosts and (port if port is not None else 80) == self.port

    def origin_allowed(self, origin: str) -> bool:
        """Whether an ``Origin`` header is this server (``http://`` + an allowed host and the port)."""
        url = urlsplit(origin.strip())
        return url.scheme == "http" and url.path in ("", "/") and self.host_allowed(url.netloc)

    def after_submit(self) -> None:
        if self.stop_when_done and self.store.all_done():
            log.info("every annotator is done: stopping the server")
            # shutdown() waits for serve_forever to return: call it from a thread of its own
            threading.Thread(target=self.shutdown, daemon=True).start()


class ServeResult(NamedTuple):
    url: str
    """The address the page was served at (without the token)."""
    all_done: bool


def serve(
    directory: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stop_when_done: bool = False,
    allowed_hosts: Sequence[str] = (),
    on_ready: Callable[[str], None] | None = None,
) -> ServeResult:
    """Serve the annotation page until interrupted (Ctrl+C) or, with ``stop_when_done``, until done.

    Args:
        directory: The human-evaluation directory (export output).
        host: Address to bind; anything but a loopback address is logged as a warning.
        port: Port; 0 picks a free one.
        stop_when_done: Stop once every declared annotator has ranked every prompt of their group.
        allowed_hosts: More names requests may use in their Host header (see :class:`HumanEvalServer`).
        on_ready: Called with the URL (token included) once the server listens.

    Returns:
        A :class:`ServeResult`.
    """
    store = TaskStore(directory)
    if stop_when_done and store.open_annotators:
        raise ValueError(
            "stop_when_done needs declared annotator groups (with open annotators nobody is 'all')"
        )
    if not _is_loopback(host):
        log.warning(
            "serving on %s: anyone who can reach it and holds the address with its token can submit rankings",
            host,
        )
    if _is_wildcard(host) and not allowed_hosts:
        log.warning(
            "bound to %s but serve.allowed_hosts is empty: only localhost addresses are answered; add the "
            "name or address annotators will type (their Host header is checked)",
            host,
        )
    try:
        server = HumanEvalServer(
            store, host, port, stop_when_done=stop_when_done, allowed_hosts=allowed_hosts
        )
    except OSError as exc:  # port taken, address not local, ...
        raise OSError(
            f"cannot listen on {host}:{port}: {exc}; pick another serve.port (0 = any free one)"
        ) from exc
    try:
        log.info(
            "human evaluation page (the token in it is this session's password): %s  (annotators: %s)",
            server.url,
            _annotators_hint(store),
        )
        if on_ready is not None:
            on_ready(server.url)
        if not (stop_when_done and store.all_done()):
            server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log.info("stopped by the user")
    finally:
        server.server_close()
    return ServeResult(server.base_url, store.all_done())


@contextmanager
def serving(
    directory: str | Path, *, host: str = "127.0.0.1", port: int = 0, allowed_hosts: Sequence[str] = ()
) -> Iterator[HumanEvalServer]:
    """Run the server in a background thread for the duration of a ``with`` block (tests, notebooks)."""
    server = HumanEvalServer(TaskStore(directory), host, port, allowed_hosts=allowed_hosts)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _split_host(value: str) -> tuple[str | None, int | None]:
    """``"Name:8765"`` -> ``("name", 8765)``; ``"[::1]:80"`` -> ``("::1", 80)``; malformed -> ``(None, None)``."""
    value = value.lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None, None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None, None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text = value.partition(":")
        port_text = port_text if sep else None
    if port_text is not None and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None, None
    return (name.rstrip(".") or None), (int(port_text) if port_text is not None else None)


def _bare_host(host: str) -> str:
    host = host.strip().lower()
    return (host[1:-1] if host.startswith("[") and host.endswith("]") else host).rstrip(".")


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


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
