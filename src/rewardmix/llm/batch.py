"""Resumable batch jobs of chat requests.

:func:`run_batch` sends ``(id, request)`` items through a client with at most ``concurrency`` calls in
flight and appends one JSON line per finished item, ``{"id", "key", "text"}`` (plus ``"choices"`` when
``n > 1``), flushed and fsynced, to ``out_path``. Killing the job loses at most the calls in flight. On a
rerun, ids already in ``out_path`` are skipped; a torn last line (the process died mid-write) is detected,
logged and cut off, so that item is simply done again.

Items that fail (retries exhausted, a rejected request, an answer the ``validate`` hook cannot parse after
``parse_retries`` re-asks) are appended to ``failures_path`` with the reason and listed in the returned
:class:`BatchReport`; they are never dropped silently, and a rerun tries them again (the failures file is
started afresh by each run, so it always describes the last run). An authentication-type error (401, 403,
404) or a server that is not running stops the job at once instead of failing every item the same way.
:func:`check_failures` turns a batch in which nothing, or too large a share, succeeded into an error.

Reference: SPEC §0 ("every stage can resume after being killed") and §2 ("resumable").
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rewardmix.llm.client import ChatClient, ChatRequest, ChatResponse, LLMError
from rewardmix.llm.prompts import ParseError
from rewardmix.redact import get_redacting_logger, redact
from rewardmix.rundir import read_jsonl, read_jsonl_repair

__all__ = ["BatchFailedError", "BatchReport", "FailedItem", "check_failures", "read_done_ids", "run_batch"]

logger = get_redacting_logger(__name__)

# A re-ask after a malformed answer needs a different cache key, or the cache would hand back the same
# unparseable text; the seed is moved by this much per re-ask.
_PARSE_RETRY_SEED_STEP = 1_000_003


@dataclass(frozen=True)
class FailedItem:
    """One item that produced no output: its id, request key, error class and message."""

    id: str
    key: str
    error: str
    reason: str


@dataclass
class BatchReport:
    """What a :func:`run_batch` call did.

    Attributes:
        total: Items given.
        done: Items answered and written in this run.
        skipped_existing: Items already in the output file from an earlier run.
        failed: Items that failed in this run, with reasons (also in the failures file).
        retries: Retries per cause during this run (client-side causes such as ``"timeout"``, plus
            ``"parse"`` for re-asks after an unparseable answer).
        out_path: The output JSONL.
        failures_path: The failures JSONL.
    """

    total: int
    done: int = 0
    skipped_existing: int = 0
    failed: list[FailedItem] = field(default_factory=list)
    retries: dict[str, int] = field(default_factory=dict)
    out_path: str = ""
    failures_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": self.done,
            "skipped_existing": self.skipped_existing,
            "failed": [vars(f) for f in self.failed],
            "retries": dict(self.retries),
            "out_path": self.out_path,
            "failures_path": self.failures_path,
        }


class BatchFailedError(LLMError):
    """Too many items of a batch failed (all of them, or a share above ``max_failed_fraction``).

    Attributes:
        failed: Items that failed in this run.
        total: Items of the batch.
    """

    def __init__(self, message: str, *, failed: int, total: int) -> None:
        super().__init__(message)
        self.failed = failed
        self.total = total


def check_failures(report: BatchReport, max_failed_fraction: float, *, what: str) -> None:
    """Raise :class:`BatchFailedError` when no item of ``report`` has an answer, or when the failed share
    (``len(report.failed) / report.total``) is above ``max_failed_fraction``.

    Args:
        report: What :func:`run_batch` returned.
        max_failed_fraction: The largest failed share that still counts as success (0 = no failure allowed).
        what: Names the job in the message, e.g. ``"rationales: teacher requests"``.

    Raises:
        BatchFailedError: With the counts, the share, the most common cause and the failures file.
    """
    failed, total = len(report.failed), report.total
    if total == 0:
        return
    answered = report.done + report.skipped_existing
    share = failed / total
    if answered > 0 and share <= max_failed_fraction:
        return
    causes = Counter(f.error for f in report.failed).most_common(1)
    cause = ""
    if causes:
        first = next(f for f in report.failed if f.error == causes[0][0])
        cause = f"; most common cause {first.error} ({causes[0][1]}x), e.g. {first.id}: {first.reason}"
    limit = "none answered" if answered == 0 else f"above max_failed_fraction={max_failed_fraction:g}"
    raise BatchFailedError(
        f"{what}: {failed} of {total} failed ({share:.0%}, {limit}){cause}; every failure is listed in "
        f"{report.failures_path}; a rerun asks only for the missing ones",
        failed=failed,
        total=total,
    )


def read_batch_texts(out_path: str | Path) -> dict[str, str]:
    """``{id: text}`` of a batch's output file; empty when no item succeeded (the file was never written)."""
    path = Path(out_path)
    if not path.exists():
        return {}
    return {row["id"]: row["text"] for row in read_jsonl(path)}


def read_done_ids(out_path: str | Path, *, repair: bool = True) -> set[str]:
    """Ids already written to ``out_path``, cutting off a torn last line.

    A last line without its newline, or one that is not valid JSON, is what a kill mid-write leaves: it is
    logged and (with ``repair``) truncated away. A bad line anywhere else means the file was edited or
    corrupted otherwise, and is an error naming the line.

    Raises:
        ValueError: ``path:line: ...`` for a malformed line before the last, a line without ``id``, or a
            repeated id.
    """
    path = Path(out_path)
    ids: set[str] = set()

    def check(lineno: int, row: Any) -> None:
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise ValueError(f"{path}:{lineno}: field 'id': missing or not a string")
        if row["id"] in ids:
            raise ValueError(f"{path}:{lineno}: field 'id': {row['id']!r} appears twice")
        ids.add(row["id"])

    torn = read_jsonl_repair(path, check, repair=repair, invalid_json="invalid JSON in batch output")
    if torn:
        logger.warning(
            "%s: ignoring a torn last line (%d bytes, from an interrupted run); it will be redone", path, torn
        )
    return ids


class _JsonlAppender:
    """Appends JSON lines with flush + fsync, one writer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, row: dict[str, Any]) -> None:
        line = redact(json.dumps(row, ensure_ascii=False)) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def run_batch(
    requests: Sequence[tuple[str, ChatRequest]],
    client: ChatClient,
    *,
    out_path: str | Path,
    concurrency: int = 4,
    desc: str = "llm",
    failures_path: str | Path | None = None,
    validate: Callable[[str, ChatResponse], Any] | None = None,
    parse_retries: int = 1,
    progress: bool = True,
) -> BatchReport:
    """Run (or resume) a batch of chat requests; see the module docstring.

    Args:
        requests: ``(id, request)`` pairs; ids must be unique strings.
        client: Any :class:`ChatClient` (wrap it in :class:`rewardmix.llm.cache.CachedClient` to also reuse
            answers across different output files).
        out_path: Output JSONL, appended to.
        concurrency: Maximum calls in flight (threads).
        desc: Progress-bar label.
        failures_path: Failures JSONL; default ``<out_path stem>.failures.jsonl`` beside ``out_path``.
        validate: Optional check of an answer, ``validate(id, response)``; raising :class:`ParseError` marks
            the answer malformed (e.g. ``lambda _, r: parse_ranking(r.text, 5)``).
        parse_retries: Re-asks (with the seed moved, so the cache does not return the same text) after a
            malformed answer before the item is recorded as failed.
        progress: Show a tqdm progress bar.

    Returns:
        A :class:`BatchReport`.

    Raises:
        ValueError: Duplicate ids, ``concurrency < 1``, or a corrupt output file.
        LLMError: A fatal one (``fatal`` true: HTTP 401, 403, 404, or no server listening at the URL); lines
            already written are kept.
        KeyboardInterrupt: Re-raised after the calls in flight have finished and been written.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    dupes = sorted(i for i, c in Counter(i for i, _ in requests).items() if c > 1)
    if dupes:
        raise ValueError(f"run_batch: duplicate ids {dupes[:10]}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fail_path = (
        Path(failures_path) if failures_path is not None else out.with_name(out.stem + ".failures.jsonl")
    )

    # step 1. what is done already (repairing a torn last line)
    done_ids = read_done_ids(out)
    todo = [(i, r) for i, r in requests if i not in done_ids]
    report = BatchReport(
        total=len(requests),
        skipped_existing=len(requests) - len(todo),
        out_path=str(out),
        failures_path=str(fail_path),
    )
    if report.skipped_existing:
        logger.info("%s: %d of %d items already done, resuming", out, report.skipped_existing, len(requests))

    # step 2. run the rest, at most `concurrency` in flight, each worker writing its own line
    fail_path.write_text("", encoding="utf-8")
    writer, fail_writer = _JsonlAppender(out), _JsonlAppender(fail_path)
    retries_before = Counter(getattr(client, "retry_counts", {}) or {})
    parse_retry_count = [0]
    lock = threading.Lock()

    def work(item_id: str, request: ChatRequest) -> None:
        key = _resolved_key(client, request)
        try:
            response, answered = _complete_valid(
                client, item_id, request, validate, parse_retries, parse_retry_count, lock
            )
        except ParseError as e:
            _record_failure(report, fail_writer, lock, FailedItem(item_id, key, "ParseError", str(e)))
            return
        except LLMError as e:
            if getattr(e, "fatal", False):  # 401/403/404, no server listening: every item would fail alike
                raise
            _record_failure(report, fail_writer, lock, FailedItem(item_id, key, type(e).__name__, str(e)))
            return
        # The key of the request that produced the text (a re-ask after a malformed answer has another seed).
        row: dict[str, Any] = {"id": item_id, "key": _resolved_key(client, answered), "text": response.text}
        if len(response.choices) > 1:
            row["choices"] = list(response.choices)
        writer.append(row)
        with lock:
            report.done += 1

    bar = tqdm(total=len(requests), initial=report.skipped_existing, desc=desc, disable=not progress)
    pending = iter(todo)
    in_flight: set[Future[None]] = set()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"rewardmix-{desc}")
    try:
        for item_id, request in _take(pending, concurrency):
            in_flight.add(pool.submit(work, item_id, request))
        while in_flight:
            finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                fut.result()  # re-raises fatal errors and KeyboardInterrupt from a worker
                bar.update(1)
            for item_id, request in _take(pending, len(finished)):
                in_flight.add(pool.submit(work, item_id, request))
    finally:
        # Calls already running finish and write their lines; nothing new starts.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        retries_after = Counter(getattr(client, "retry_counts", {}) or {})
        retries = {k: v for k, v in (retries_after - retries_before).items() if v > 0}
        if parse_retry_count[0]:
            retries["parse"] = parse_retry_count[0]
        report.retries = retries

    # step 3. report
    logger.info(
        "%s: %d done, %d already present, %d failed (see %s); retries %s",
        out,
        report.done,
        report.skipped_existing,
        len(report.failed),
        fail_path,
        report.retries or "none",
    )
    return report


def _take(it: Any, n: int) -> list[tuple[str, ChatRequest]]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _resolved_key(client: ChatClient, request: ChatRequest) -> str:
    return request.with_model(getattr(client, "model", None)).key()


def _complete_valid(
    client: ChatClient,
    item_id: str,
    request: ChatRequest,
    validate: Callable[[str, ChatResponse], Any] | None,
    parse_retries: int,
    parse_retry_count: list[int],
    lock: threading.Lock,
) -> tuple[ChatResponse, ChatRequest]:
    """Call the client; on an unparseable answer re-ask with a moved seed up to ``parse_retries`` times.

    Returns the accepted response and the request that produced it.
    """
    attempt_request = request
    for attempt in range(parse_retries + 1):
        response = client.complete(attempt_request)
        if validate is None:
            return response, attempt_request
        try:
            validate(item_id, response)
            return response, attempt_request
        except ParseError as e:
            if attempt == parse_retries:
                raise
            logger.warning("%s: malformed answer (%s); asking again with another seed", item_id, e.reason)
            with lock:
                parse_retry_count[0] += 1
            base_seed = request.seed if request.seed is not None else 0
            attempt_request = request.replace(seed=base_seed + (attempt + 1) * _PARSE_RETRY_SEED_STEP)
    raise AssertionError("unreachable")


def _record_failure(
    report: BatchReport, writer: _JsonlAppender, lock: threading.Lock, item: FailedItem
) -> None:
    writer.append(vars(item))
    with lock:
        report.failed.append(item)
    logger.warning("%s: failed (%s): %s", item.id, item.error, item.reason)
