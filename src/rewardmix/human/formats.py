"""Read rankings made in other tools: Argilla (1.x and 2.x), Label Studio (Ranker, Pairwise) and CSV.

Each reader turns a file into :class:`ToolRanking` ballots (response id -> rank, 1 = best, equal = tie;
gaps such as 1, 3, 3 are accepted and mean the same order as 1, 2, 2); :func:`to_model_rankings` maps the
response ids to models, either through the ``key.jsonl`` of a rewardmix export (the ids are then the
slots ``A``, ``B``, ... of ``tasks.jsonl``) or, when the directory holds no key, through a mapping the file
carries (``metadata.models`` / ``data.models`` / a ``model`` column) or, lacking one, the ids themselves
as model names.

Accepted shapes (the README, "Importing rankings from Argilla, Label Studio or CSV", has whole examples):

- **Argilla 1.x** (``FeedbackDataset``, records as ``record.dict()`` / ``to_dict``): a JSON list (or
  ``{"records": [...]}``, or JSON Lines) of ``{"fields": {...}, "external_id": "p1", "metadata": {...},
  "responses": [{"user_id": "...", "status": "submitted", "values": {"<question>": {"value":
  [{"value": "A", "rank": 1}, ...]}}}]}``.
- **Argilla 2.x** (``rg.Dataset``, ``dataset.records.to_json`` / ``to_list(flatten=False)``): the same
  container of ``{"id": "p1", "fields": {...}, "metadata": {...}, "responses": {"<question>":
  [{"user_id": "...", "status": "submitted", "value": ["A", "C", "B"]}]}}``; a value may also be the
  1.x list of ``{"value", "rank"}`` objects (ties).
  In both, the prompt id is ``metadata.prompt_id`` or else ``external_id`` (1.x) / ``id`` (2.x), the group
  ``metadata.group`` (optional), the annotator the ``user_id``; only ``submitted`` responses count
  (drafts and discarded ones are counted and left out).
- **Label Studio** (JSON export, one object per task): ``{"id": 7, "data": {"prompt_id": "p1", ...},
  "annotations": [{"completed_by": 3, "was_cancelled": false, "result": [...]}]}`` where a result is a
  Ranker ``{"type": "ranker", "value": {"ranker": {"<list name>": ["B", "A", "C"]}}}`` (the order is the
  ranking, no ties; bucket columns are not accepted) or a Pairwise ``{"type": "pairwise", "value":
  {"selected": "left"}}`` whose two response ids are ``data.left_id`` and ``data.right_id``. The prompt id
  is ``data.prompt_id`` or else the task ``id``; the group ``data.group`` (optional). Cancelled
  annotations are left out. Each pairwise judgement is one ballot of two responses.
- **CSV**: a header with ``prompt_id``, ``annotator``, ``response_id``, ``rank`` (optional ``group`` and
  ``model``, ``task_hash``), one row per ranked response; the rows of one (group, prompt, annotator) form
  one ranking.

Files are UTF-8, a leading byte-order mark accepted; bytes that are not UTF-8 make their line or record
bad (never replaced). Annotator ids are compared in Unicode NFC, exactly. A ballot may carry the
``task_hash`` of the rewardmix task it ranks (Argilla ``metadata.task_hash``, Label Studio
``data.task_hash``, a CSV ``task_hash`` column): when the directory's ``key.jsonl`` holds another one for
that prompt, the ballot was made for texts this export no longer shows and is set aside (counted as
``read.stale``, named in a warning), never used.

A bad record raises :class:`~rewardmix.data.readers.DataError` naming file, line or record and field
(``"rankings.csv:4: field 'rank': ..."``, ``"export.json: record 3: field 'responses[0].values...'"``),
or is counted and skipped under ``on_bad_row="skip"``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from rewardmix.data.readers import BadRowPolicy, DataError, ReadReport, RowError, SkippedRow, decode_json_row
from rewardmix.human.aggregate import HumanRanking, ImportResult, read_key, read_task_hashes, write_results
from rewardmix.human.export import KEY_FILE, OPEN_GROUP, as_prompt_id, check_groups, check_name

log = logging.getLogger(__name__)

ToolFormat = Literal["argilla", "labelstudio", "csv"]
CSV_COLUMNS = ("prompt_id", "annotator", "response_id", "rank")
BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte-order mark some tools write at the start of a file (accepted and dropped)."""
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by "surrogateescape"


class ToolRanking(NamedTuple):
    """One ballot read from another tool's file, still by the tool's response ids."""

    where: str
    """``"file:line"`` or ``"file: record N"`` (for messages)."""
    order: int
    """Position in the file (the last of an annotator's ballots on a prompt wins)."""
    group: str | None
    """From the file, or None (then from ``groups`` or the key)."""
    prompt_id: str
    annotator: str
    ranks: dict[str, int]
    """``response id -> rank`` (1 = best, equal = tie, gaps allowed)."""
    models: dict[str, str] | None
    """``response id -> model`` when the file carries it."""
    id_field: str
    """The field holding the response ids (for messages)."""
    pairwise: bool = False
    """A judgement between two of the prompt's responses (Label Studio Pairwise)."""
    task_hash: str | None = None
    """The ``task_hash`` of the rewardmix task the annotator saw, when the file carries it."""


class _Bad(Exception):
    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


class Reader(NamedTuple):
    """Collects the bad records of one file: raise at the first (``"error"``) or count them (``"skip"``)."""

    path: Path
    on_bad_row: BadRowPolicy
    report: ReadReport

    def bad(self, where: str, line: int, field: str | None, reason: str) -> None:
        at_field = f" field '{field}':" if field else ""
        message = f"{where}:{at_field} {reason}"
        if self.on_bad_row == "error":
            raise DataError(message)
        self.report.skipped.append(SkippedRow(line=line, field=field, reason=reason))
        log.warning("skipping bad ranking: %s", message)


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------


def _load_records(reader: Reader, container: str) -> list[tuple[str, int, Any]]:
    """``(where, position, record)`` from a JSON list, ``{container: [...]}`` or JSON Lines.

    The file is UTF-8, with or without a leading byte-order mark (spreadsheet and Windows tools write one).
    Bytes that are not UTF-8 are an error naming the line (in JSON Lines: a bad record), never replaced:
    replacing them would merge annotator names that differ only in those characters.
    """
    path = reader.path
    raw = path.read_bytes()
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len([line for line in raw.splitlines() if line.strip()]) < 2:
            raise DataError(f"{path}:{_line_of(raw, exc.start)}: {_not_utf8(raw, exc)}") from None
        return _json_lines(reader, raw.split(b"\n"))
    try:
        # as strict as the data readers: a key given twice, NaN, a huge integer, too deep nesting are refused
        doc = decode_json_row(text)
    except json.JSONDecodeError as exc:
        if len([line for line in text.splitlines() if line.strip()]) < 2:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        return _json_lines(reader, raw.split(b"\n"))
    except RowError as exc:
        if _json_lines_file(text):  # the first record of JSON Lines: judged with its line
            return _json_lines(reader, raw.split(b"\n"))
        at_field = f" field '{exc.field}':" if exc.field else ""
        raise DataError(f"{path}:{at_field} {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get(container), list):
        doc = doc[container]
    if not isinstance(doc, list):
        raise DataError(f'{path}: expected a JSON list of {container} (or {{"{container}": [...]}})')
    reader.report.rows_in += len(doc)
    kind = container.rstrip("s")
    return [(f"{path}: {kind} {i}", i, record) for i, record in enumerate(doc, start=1)]


def _json_lines(reader: Reader, lines: list[bytes]) -> list[tuple[str, int, Any]]:
    path = reader.path
    records = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        reader.report.rows_in += 1
        try:
            records.append((f"{path}:{lineno}", lineno, decode_json_row(raw.decode("utf-8"))))
        except UnicodeDecodeError as exc:
            reader.bad(f"{path}:{lineno}", lineno, None, _not_utf8(raw, exc))
        except json.JSONDecodeError as exc:
            reader.bad(f"{path}:{lineno}", lineno, None, f"invalid JSON: {exc.msg}")
        except RowError as exc:
            reader.bad(f"{path}:{lineno}", lineno, exc.field, str(exc))
    return records


def _json_lines_file(text: str) -> bool:
    """Whether ``text`` is JSON Lines: two or more non-blank lines, the first a whole JSON value on its own."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        decode_json_row(lines[0])
    except json.JSONDecodeError:
        return False
    except RowError:
        pass  # a whole value, with a problem of its own
    return True


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {column}); save the file as UTF-8"


def _name(value: Any, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise _Bad(field, f"expected a non-empty string or integer, got {value!r}")
    return str(value).strip()


def _prompt_id(value: Any, field: str) -> str:
    try:
        return as_prompt_id(value)
    except (TypeError, ValueError) as exc:
        raise _Bad(field, f"invalid prompt id {value!r}: {exc}") from None


def _task_hash(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Bad(field, f"expected the task_hash string of tasks.jsonl, got {value!r}")
    return value.strip()


def _rank(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Bad(field, f"expected an integer rank >= 1, got {value!r}")
    return value


def _models(value: Any, field: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(m, str) and m.strip() for k, m in value.items()
    ):
        raise _Bad(field, "expected an object response id -> model name")
    return {k: m.strip() for k, m in value.items()}


def _ranked_items(items: Any, field: str) -> dict[str, int]:
    """``[{"value": id, "rank": r}, ...]`` (ties allowed) or ``[id, id, ...]`` (best first) -> ranks."""
    if not isinstance(items, list) or len(items) < 2:
        raise _Bad(field, f"expected a list ranking at least 2 responses, got {items!r}")
    ranks: dict[str, int] = {}
    for i, item in enumerate(items):
        if isinstance(item, dict):
            rid = _name(item.get("value"), f"{field}[{i}].value")
            rank = _rank(item.get("rank"), f"{field}[{i}].rank")
        else:
            rid, rank = _name(item, f"{field}[{i}]"), i + 1
        if rid in ranks:
            raise _Bad(f"{field}[{i}]", f"response {rid!r} is ranked more than once")
        ranks[rid] = rank
    return ranks


# ---------------------------------------------------------------------------------------------------------
# Argilla
# ---------------------------------------------------------------------------------------------------------


def read_argilla(reader: Reader, *, question: str | None = None) -> list[ToolRanking]:
    """Ballots of an Argilla 1.x (``responses`` a list) or 2.x (``responses`` an object) record export.

    Args:
        reader: The file and its bad-record policy.
        question: Name of the ranking question; None = the only question whose answers are lists.

    Returns:
        One ballot per submitted response.
    """
    out: list[ToolRanking] = []
    skipped_status = 0
    for where, pos, record in _load_records(reader, "records"):
        try:
            if not isinstance(record, dict):
                raise _Bad(None, f"expected a JSON object, got {type(record).__name__}")
            metadata = record.get("metadata") or {}
            if isinstance(metadata, str):  # the Hugging Face form stores metadata as a JSON string
                try:
                    metadata = json.loads(metadata)
                except json.JSONDecodeError:
                    raise _Bad("metadata", "expected an object (or a JSON string of one)") from None
            if not isinstance(metadata, dict):
                raise _Bad("metadata", "expected an object")
            responses = record.get("responses")
            if isinstance(responses, list):  # 1.x: [{"user_id", "status", "values": {q: {"value": [...]}}}]
                id_name = "external_id"
                answers = []
                for j, resp in enumerate(responses):
                    if not isinstance(resp, dict) or not isinstance(resp.get("values", {}), dict):
                        raise _Bad(f"responses[{j}]", "expected {'user_id', 'status', 'values': {...}}")
                    values = {
                        q: (v.get("value") if isinstance(v, dict) else v)
                        for q, v in (resp.get("values") or {}).items()
                    }
                    answers.append((f"responses[{j}]", resp, values, f"responses[{j}].values.{{q}}.value"))
            elif isinstance(responses, dict):  # 2.x: {q: [{"user_id", "status", "value": [...]}]}
                id_name = "id"
                for q, per_user in responses.items():
                    if not isinstance(per_user, list) or not all(isinstance(r, dict) for r in per_user):
                        raise _Bad(f"responses.{q}", "expected a list of {'user_id', 'status', 'value'}")
                # the ranking question: named, or the only one answered with lists (none: not ranked yet)
                ranked = {
                    q: [] for q, rs in responses.items() if any(isinstance(r.get("value"), list) for r in rs)
                }
                q = question or (_ranking_question(ranked, "responses") if ranked else "")
                answers = [
                    (f"responses.{q}[{j}]", resp, {q: resp.get("value")}, "{at}.value")
                    for j, resp in enumerate(responses.get(q, []))
                ]
            else:
                raise _Bad("responses", "expected a list (Argilla 1.x) or an object (Argilla 2.x)")
            if "prompt_id" in metadata:
                prompt_id = _prompt_id(metadata["prompt_id"], "metadata.prompt_id")
            else:
                prompt_id = _prompt_id(record.get(id_name), f"{id_name} (or metadata.prompt_id)")
            group = _name(metadata["group"], "metadata.group") if metadata.get("group") is not None else None
            models = _models(metadata.get("models"), "metadata.models")
            made_for = _task_hash(metadata.get("task_hash"), "metadata.task_hash")
            for at, resp, values, value_field in answers:
                if resp.get("status", "submitted") != "submitted":
                    skipped_status += 1
                    continue
                try:  # a bad answer costs that answer only, not the record's other annotators
                    out.append(
                        _argilla_ballot(
                            where,
                            pos,
                            prompt_id,
                            group,
                            models,
                            at,
                            resp,
                            values,
                            question,
                            value_field,
                            is_v2=id_name == "id",
                        )._replace(task_hash=made_for)
                    )
                except _Bad as exc:
                    reader.bad(where, pos, exc.field, exc.reason)
        except _Bad as exc:
            reader.bad(where, pos, exc.field, exc.reason)
    if skipped_status:
        log.info("%s: left out %d draft or discarded response(s)", reader.path, skipped_status)
    return out


def _argilla_ballot(
    where: str,
    pos: int,
    prompt_id: str,
    group: str | None,
    models: dict[str, str] | None,
    at: str,
    resp: Mapping[str, Any],
    values: Mapping[str, Any],
    question: str | None,
    value_field: str,
    *,
    is_v2: bool,
) -> ToolRanking:
    # 2.x answers were picked for their question already; 1.x answers carry every question
    q = question or (next(iter(values)) if is_v2 else _ranking_question(values, at))
    if q not in values:
        raise _Bad(f"{at}.values", f"no answer to the ranking question {q!r}")
    field = value_field.format(q=q, at=at)
    annotator = _annotator(resp.get("user_id"), f"{at}.user_id")
    return ToolRanking(
        where, pos, group, prompt_id, annotator, _ranked_items(values[q], field), models, field
    )


def _ranking_question(values: Mapping[str, Any], at: str) -> str:
    ranking = [q for q, v in values.items() if isinstance(v, list)]
    if len(ranking) != 1:
        raise _Bad(
            at,
            f"cannot tell the ranking question among {sorted(values)}: set import_question to its name",
        )
    return ranking[0]


# ---------------------------------------------------------------------------------------------------------
# Label Studio
# ---------------------------------------------------------------------------------------------------------


def read_labelstudio(reader: Reader) -> list[ToolRanking]:
    """Ballots of a Label Studio JSON export: Ranker results (one ranking) and Pairwise results (one pair)."""
    out: list[ToolRanking] = []
    for where, pos, task in _load_records(reader, "tasks"):
        try:
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise _Bad("data", "expected a task object with a 'data' object")
            data = task["data"]
            if "prompt_id" in data:
                prompt_id = _prompt_id(data["prompt_id"], "data.prompt_id")
            else:
                prompt_id = _prompt_id(task.get("id"), "id (or data.prompt_id)")
            group = _name(data["group"], "data.group") if data.get("group") is not None else None
            models = _models(data.get("models"), "data.models")
            made_for = _task_hash(data.get("task_hash"), "data.task_hash")
            annotations = task.get("annotations")
            if not isinstance(annotations, list):
                raise _Bad("annotations", "expected a list")
            for j, ann in enumerate(annotations):
                try:  # a bad annotation costs that annotation only
                    at = f"annotations[{j}]"
                    if not isinstance(ann, dict) or not isinstance(ann.get("result"), list):
                        raise _Bad(f"{at}.result", "expected an annotation with a 'result' list")
                    if ann.get("was_cancelled"):
                        continue
                    annotator = _annotator(ann.get("completed_by"), f"{at}.completed_by")
                    found: list[ToolRanking] = []
                    for k, result in enumerate(ann["result"]):
                        field = f"{at}.result[{k}].value"
                        kind = result.get("type") if isinstance(result, dict) else None
                        value = result.get("value") if isinstance(result, dict) else None
                        if kind == "ranker":
                            ranker = value.get("ranker") if isinstance(value, dict) else None
                            if not isinstance(ranker, dict) or len(ranker) != 1:
                                raise _Bad(
                                    f"{field}.ranker",
                                    "expected one list of ids, best first (Ranker without Bucket columns)",
                                )
                            ((list_name, order),) = ranker.items()
                            ranks, pairwise = _ranked_items(order, f"{field}.ranker.{list_name}"), False
                            id_field = f"{field}.ranker.{list_name}"
                        elif kind == "pairwise":
                            selected = value.get("selected") if isinstance(value, dict) else None
                            if selected not in ("left", "right"):
                                raise _Bad(
                                    f"{field}.selected", f"expected 'left' or 'right', got {selected!r}"
                                )
                            left = _name(data.get("left_id"), "data.left_id")
                            right = _name(data.get("right_id"), "data.right_id")
                            if left == right:
                                raise _Bad("data.right_id", f"the same response {left!r} on both sides")
                            ranks = {left: 1, right: 2} if selected == "left" else {right: 1, left: 2}
                            pairwise, id_field = True, "data.left_id/right_id"
                        else:
                            continue  # other controls of the same labeling page (comments, ratings, ...)
                        found.append(
                            ToolRanking(
                                where,
                                pos,
                                group,
                                prompt_id,
                                annotator,
                                ranks,
                                models,
                                id_field,
                                pairwise,
                                made_for,
                            )
                        )
                    if not found:
                        raise _Bad(f"{at}.result", "no ranker or pairwise result")
                    out.extend(found)
                except _Bad as exc:
                    reader.bad(where, pos, exc.field, exc.reason)
        except _Bad as exc:
            reader.bad(where, pos, exc.field, exc.reason)
    return out


def _annotator(value: Any, field: str) -> str:
    # completed_by is a user id; some exports expand it to the user object
    if isinstance(value, dict):
        value = value.get("email") or value.get("username") or value.get("id")
    try:  # NFC, compared exactly: names differing only in non-ASCII characters stay apart
        return check_name(_name(value, field), "annotator")
    except ValueError as exc:
        raise _Bad(field, str(exc)) from None


# ---------------------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------------------


def read_csv(reader: Reader) -> list[ToolRanking]:
    """Ballots of a CSV with ``prompt_id, annotator, response_id, rank`` (optional ``group``, ``model``)."""
    path = reader.path
    # utf-8-sig: a leading byte-order mark is dropped; surrogateescape keeps bytes that are not UTF-8 so
    # that their row is refused (replacing them would merge annotator names differing in those characters)
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        rows = csv.DictReader(f)
        header = [(h or "").strip() for h in rows.fieldnames or []]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{path}:1: header: missing column(s) {missing}; expected {', '.join(CSV_COLUMNS)} "
                "(optional: group, model, task_hash)"
            )
        rows.fieldnames = header
        ballots: dict[tuple[str | None, str, str], dict[str, Any]] = {}
        for row in rows:
            lineno = rows.line_num
            reader.report.rows_in += 1
            try:
                if None in row or any(row.get(c) is None for c in CSV_COLUMNS):
                    raise _Bad(None, f"expected {len(header)} columns")
                undecodable = [c for c, v in row.items() if v and _UNDECODABLE.search(v)]
                if undecodable:
                    raise _Bad(undecodable[0], "not valid UTF-8; save the file as UTF-8")
                prompt_id = _prompt_id(row["prompt_id"].strip(), "prompt_id")
                annotator = _annotator(row["annotator"], "annotator")
                rid = _name(row["response_id"], "response_id")
                text = row["rank"].strip()
                if not text.lstrip("+").isdigit():
                    raise _Bad("rank", f"expected an integer rank >= 1, got {text!r}")
                rank = _rank(int(text), "rank")
                group = (row.get("group") or "").strip() or None
                model = (row.get("model") or "").strip() or None
                made_for = (row.get("task_hash") or "").strip() or None
                if "model" in header and model is None:
                    raise _Bad("model", "empty (the column is there: give every row its model)")
                ballot = ballots.setdefault(
                    (group, prompt_id, annotator), {"line": lineno, "ranks": {}, "models": {}}
                )
                if rid in ballot["ranks"]:
                    raise _Bad(
                        "response_id", f"response {rid!r} ranked twice by {annotator!r} on {prompt_id!r}"
                    )
                if ballot.setdefault("task_hash", made_for) != made_for:
                    raise _Bad("task_hash", f"differs from the ballot's first row (line {ballot['line']})")
                ballot["ranks"][rid] = rank
                if model is not None:
                    ballot["models"][rid] = model
                ballot["last"] = lineno
            except _Bad as exc:
                reader.bad(f"{path}:{lineno}", lineno, exc.field, exc.reason)
    out = []
    for (group, prompt_id, annotator), ballot in ballots.items():
        if len(ballot["ranks"]) < 2:
            where = f"{path}:{ballot['line']}"
            reader.bad(where, ballot["line"], "response_id", f"only one response ranked by {annotator!r}")
            continue
        out.append(
            ToolRanking(
                f"{path}:{ballot['line']}",
                ballot["last"],
                group,
                prompt_id,
                annotator,
                ballot["ranks"],
                ballot["models"] or None,
                "response_id",
                task_hash=ballot["task_hash"],
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# Response ids -> models
# ---------------------------------------------------------------------------------------------------------


def dense(ranks: Mapping[str, int]) -> dict[str, int]:
    """Ranks renumbered 1, 2, ... keeping the order and the ties: ``{a: 1, b: 3, c: 3}`` -> ``{1, 2, 2}``."""
    levels = {r: i for i, r in enumerate(sorted(set(ranks.values())), start=1)}
    return {rid: levels[r] for rid, r in ranks.items()}


class Resolved(NamedTuple):
    group: str
    prompt_id: str
    annotator: str
    ranks: dict[str, int]
    """``model -> rank``, dense."""
    order: int
    pairwise_ids: frozenset[str] | None
    task_hash: str | None = None


def to_model_rankings(
    ballots: Sequence[ToolRanking],
    *,
    key: Mapping[tuple[str, str], Mapping[str, str]] | None,
    groups: Mapping[str, Sequence[str]] | None,
    bad: Callable[[ToolRanking, str | None, str], None],
    key_path: str = "key.jsonl",
) -> tuple[list[Resolved], dict[tuple[str, str], dict[str, str]]]:
    """Map each ballot's response ids to models and its annotator to a group.

    Args:
        ballots: From a reader.
        key: ``(group, prompt_id) -> {slot: model}`` of a rewardmix export, or None (the file maps ids).
        groups: ``group -> annotators`` (config or manifest), used when a ballot names no group.
        bad: Called with ``(ballot, field, reason)`` for a ballot that cannot be mapped.
        key_path: For messages.

    Returns:
        ``(rankings, key)``: the mapped ballots; the key they were mapped with (built from the file's ids
        and models when ``key`` is None).
    """
    group_of = {name: g for g, names in (groups or {}).items() for name in names}
    groups_of_prompt: dict[str, list[str]] = {}
    for g, p in key or {}:
        groups_of_prompt.setdefault(p, []).append(g)
    built: dict[tuple[str, str], dict[str, str]] = {}
    out = []
    for b in ballots:
        group = b.group or group_of.get(b.annotator)
        if group is None and key is not None:
            found = groups_of_prompt.get(b.prompt_id, [])
            if len(found) > 1:
                bad(b, "group", f"prompt {b.prompt_id!r} is in groups {found}: name the ballot's group")
                continue
            group = found[0] if found else OPEN_GROUP
        elif group is None:
            if group_of:
                bad(b, "group", f"annotator {b.annotator!r} is in no group of `groups` and no group is given")
                continue
            group = OPEN_GROUP
        if key is not None:
            slots = key.get((group, b.prompt_id))
            if slots is None:
                bad(
                    b,
                    "prompt_id",
                    f"prompt {b.prompt_id!r} (group {group!r}) is not in {key_path}: the file ranks responses "
                    "this export did not write; import it into a directory without key.jsonl, with the "
                    "models named in the file",
                )
                continue
            unknown = sorted(set(b.ranks) - set(slots))
            if unknown:
                bad(b, b.id_field, f"unknown response id(s) {unknown}; the exported ones are {sorted(slots)}")
                continue
            if not b.pairwise and set(b.ranks) != set(slots):
                bad(b, b.id_field, f"response(s) {sorted(set(slots) - set(b.ranks))} not ranked")
                continue
            clash = [rid for rid, m in (b.models or {}).items() if rid in slots and slots[rid] != m]
            if clash:
                bad(
                    b,
                    "models",
                    f"response {clash[0]!r} is {slots[clash[0]]!r} in {key_path}, not {b.models[clash[0]]!r}",
                )  # type: ignore[index]
                continue
            mapping: Mapping[str, str] = slots
        else:
            mapping = b.models if b.models is not None else {rid: rid for rid in b.ranks}
            missing = sorted(set(b.ranks) - set(mapping))
            if missing:
                bad(b, "models", f"no model given for response(s) {missing}")
                continue
            known = built.setdefault((group, b.prompt_id), {})
            used = {rid: mapping[rid] for rid in b.ranks}
            if len(set(used.values())) != len(used):
                bad(b, "models", "two ranked responses map to the same model")
                continue
            conflict = [rid for rid, m in used.items() if known.get(rid, m) != m]
            if conflict:
                bad(b, "models", f"response {conflict[0]!r} maps to another model in an earlier ballot")
                continue
            known.update(used)
        pair = frozenset(b.ranks) if b.pairwise else None
        ranks = dense({mapping[rid]: r for rid, r in b.ranks.items()})
        out.append(Resolved(group, b.prompt_id, b.annotator, ranks, b.order, pair, b.task_hash))
    return out, (dict(key) if key is not None else built)  # type: ignore[arg-type]


READERS: dict[str, Callable[..., list[ToolRanking]]] = {
    "argilla": read_argilla,
    "labelstudio": read_labelstudio,
    "csv": read_csv,
}


def read_tool_file(
    path: str | Path, fmt: ToolFormat, *, question: str | None = None, on_bad_row: BadRowPolicy = "error"
) -> tuple[list[ToolRanking], Reader]:
    """Read one file of another tool; see the module docstring for the shapes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (import_path; the {fmt} export to import)")
    reader = Reader(path, on_bad_row, ReadReport(source=str(path), rows_in=0, rows_out=0))
    if fmt == "argilla":
        ballots = read_argilla(reader, question=question)
    else:
        ballots = READERS[fmt](reader)
    return ballots, reader


def import_tool_rankings(
    directory: str | Path,
    path: str | Path,
    fmt: ToolFormat,
    *,
    question: str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    on_bad_row: BadRowPolicy = "error",
    std_ddof: int = 0,
) -> ImportResult:
    """Import another tool's rankings into a human-evaluation directory and write the aggregated results.

    1. Read the file's ballots (:func:`read_tool_file`).
    2. Map response ids to models: through ``directory/key.jsonl`` when there is one (a rewardmix export:
       the ids are its slots), else through the file's own mapping or the ids as model names.
    3. Keep the last ballot of each (group, prompt, annotator) — of each pair, for pairwise ballots.
    4. Aggregate and write as the rewardmix import does (:func:`~rewardmix.human.aggregate.write_results`).

    Args:
        directory: The evaluation directory (results are written here).
        path: The tool's export.
        fmt: ``"argilla"``, ``"labelstudio"`` or ``"csv"``.
        question: Argilla ranking question name (None = the only list-valued one).
        groups: ``group -> annotators`` for ballots that name no group (with a key: the manifest's).
        on_bad_row: ``"error"`` raises at the first bad record; ``"skip"`` counts it.
        std_ddof: See :func:`~rewardmix.human.aggregate.summarize`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: A bad record under ``on_bad_row="error"``, or no usable ranking at all.
    """
    directory = Path(directory)
    groups = check_groups(groups or {})  # annotator names in NFC, as the ballots' names are compared
    # step 1. ballots by the tool's response ids
    ballots, reader = read_tool_file(path, fmt, question=question, on_bad_row=on_bad_row)

    # step 2. ids -> models
    key_path = directory / KEY_FILE
    key = read_key(key_path) if key_path.exists() else None
    if key is None and ballots and not any(b.models for b in ballots):
        ids = {rid for b in ballots for rid in b.ranks}
        if all(len(rid) == 1 and rid.isupper() for rid in ids):
            log.warning(
                "%s: no key.jsonl in %s and no models in the file: the response ids %s are taken as model "
                "names; if they are the slots of a rewardmix export, import into that export's directory",
                path,
                directory,
                sorted(ids),
            )

    def bad(b: ToolRanking, field: str | None, reason: str) -> None:
        reader.bad(b.where, b.order, field, reason)

    resolved, used_key = to_model_rankings(ballots, key=key, groups=groups, bad=bad, key_path=str(key_path))

    # step 2b. ballots made for other texts than this export's (their task_hash differs) are set aside
    hashes = read_task_hashes(key_path) if key is not None else {}
    stale = [
        r for r in resolved if r.task_hash and hashes.get((r.group, r.prompt_id), r.task_hash) != r.task_hash
    ]
    if stale:
        log.warning(
            "%s: set aside %d ranking(s) made for other texts than the export in %s (first: group %r, prompt "
            "%r): the tasks were re-exported with changed prompts or responses since",
            path, len(stale), directory, stale[0].group, stale[0].prompt_id,
        )  # fmt: skip
        resolved = [r for r in resolved if r not in stale]

    # step 3. last wins per (group, prompt, annotator[, pair])
    latest: dict[tuple[Any, ...], Resolved] = {}
    for r in sorted(resolved, key=lambda r: r.order):
        latest[(r.group, r.prompt_id, r.annotator, r.pairwise_ids)] = r
    replaced = len(resolved) - len(latest)
    rankings = [
        HumanRanking(r.group, r.prompt_id, r.annotator, r.ranks, r.order)
        for r in sorted(latest.values(), key=lambda r: r.order)
    ]
    if not rankings:
        raise DataError(
            f"{path}: no submitted ranking to import ({len(reader.report.skipped)} bad record(s), "
            f"{len(stale)} made for other texts than the current export)"
        )
    report = reader.report
    report.rows_out = report.rows_in - len(report.skipped)

    # step 4. merge, points, pairwise; write
    read = {
        "format": fmt,
        "source": str(path),
        "lines_in": report.rows_in,
        "rankings_used": len(rankings),
        "replaced": replaced,
        "skipped": len(report.skipped),
        "skipped_lines": [s.line for s in report.skipped],
        "mapped_by": "key" if key is not None else "file",
        "stale": len(stale),
        "stale_lines": sorted({r.order for r in stale}),
    }
    return write_results(directory, rankings, key=used_key, read=read, report=report, std_ddof=std_ddof)
