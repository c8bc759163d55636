"""Export human-evaluation tasks: the K responses of each prompt in a seeded random order.

Input: the generations of K >= 2 models, either one JSONL file per model with ``id``, ``prompt`` and
``response`` per line, or one file whose lines also carry ``model``. A line may carry ``group``: its
response is then shown to that annotator group only (CRS §5.5.2: three groups rank the same prompts, each
with responses from its own generation run); a line without ``group`` is shared by every group. Without
declared groups all annotators form one group, ``"all"``, open to any annotator name.

Output, in one directory (the files :mod:`rewardmix.human.server` and :mod:`rewardmix.human.aggregate`
read):

- ``tasks.jsonl``: what annotators see, one line per (group, prompt):
  ``{"group", "prompt_id", "prompt", "responses": [{"slot": "A", "text": ...}, ...], "task_hash"}``;
- ``key.jsonl``: which model wrote which slot, one line per (group, prompt):
  ``{"group", "prompt_id", "slots": {"A": "model_x", ...}, "task_hash"}``. Annotators never see model names;
- ``manifest.json``: models, K, seed, the groups and their annotators, prompts per group, and how often
  each model landed in each slot (a check of the positional balance).

The order of a prompt's responses is a shuffle seeded by ``(seed, group, prompt_id)`` alone, so it does not
depend on the order of the input files and a re-export reproduces it. Slots are letters (``A``, ``B``, ...)
so that a slot can never be mistaken for a rank.

``task_hash`` (:func:`task_hash`) fingerprints the texts annotators see for one task (the prompt and each
slot's response). The server stores it with every ranking, and the import sets aside a ranking whose hash is
not the key's: a ranking is never reused for texts its annotator did not read. A re-export into a directory
that holds rankings is refused when it would change a slot's model or a task's texts.

Reference: CRS §5.5.2 ("three responses ... in randomized order to reduce the positional bias"; 12
annotators in 3 groups, 20 prompts each).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import random
import string
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rewardmix.data.readers import BadRowPolicy, DataError, ReadReport, SkippedRow, as_str, read_records
from rewardmix.rundir import atomic_write_text, fsync_dir, read_jsonl

log = logging.getLogger(__name__)

TASKS_FILE = "tasks.jsonl"
KEY_FILE = "key.jsonl"
MANIFEST_FILE = "manifest.json"
RANKINGS_FILE = "rankings.jsonl"
OPEN_GROUP = "all"
"""The one group used when no groups are declared: any annotator name may join it."""

SLOTS = string.ascii_uppercase
MAX_MODELS = len(SLOTS)
MAX_NAME_CHARS = 100
"""Longest annotator name, group name or prompt id accepted."""

# Characters that may not appear in a name: they are invisible, break lines, or reorder the text around them.
_DIRECTION_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # control, lone surrogate, line and paragraph separator


class Generation(NamedTuple):
    """One model's response to one prompt."""

    model: str
    group: str | None
    """The annotator group this response is for; None = every group."""
    prompt_id: str
    prompt: str
    response: str
    source: str
    """The file it came from (for error messages)."""


class Task(NamedTuple):
    """What one annotator group sees for one prompt."""

    group: str
    prompt_id: str
    prompt: str
    responses: list[tuple[str, str]]
    """``(slot, text)`` in slot order A, B, ..."""
    slots: dict[str, str]
    """``slot -> model`` (goes to key.jsonl only)."""


class ExportResult(NamedTuple):
    tasks_path: Path
    key_path: Path
    manifest: dict[str, Any]
    reports: list[ReadReport]


# ---------------------------------------------------------------------------------------------------------
# Reading generations
# ---------------------------------------------------------------------------------------------------------


def as_prompt_id(value: Any) -> str:
    """A prompt id from a string or an integer (``7`` and ``"7"`` are the same id)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"expected a string or an integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ValueError("empty id")
    if len(text) > MAX_NAME_CHARS:
        raise ValueError(f"id longer than {MAX_NAME_CHARS} characters")
    return text


def _response_text(value: Any) -> str:
    # An empty answer is still an answer a model gave: annotators rank it too.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value.strip()


def read_generations(
    generations: Mapping[str, str | Path] | None = None,
    generations_file: str | Path | None = None,
    *,
    on_bad_row: BadRowPolicy = "error",
) -> tuple[list[Generation], list[ReadReport]]:
    """Read generations from one file per model, or from one file with a ``model`` field.

    Args:
        generations: ``model -> JSONL path`` with ``id``, ``prompt``, ``response`` (and optionally
            ``group``) per line.
        generations_file: One JSONL file with ``model``, ``id``, ``prompt``, ``response`` (``group``
            optional) per line.
        on_bad_row: ``"error"`` stops at the first bad line (``file:line: field 'x': reason``); ``"skip"``
            counts it in the read report.

    Returns:
        ``(generations, reports)``: every valid line, and one read report per file.

    Raises:
        ValueError: If both or neither of ``generations`` and ``generations_file`` are given.
        DataError: A bad line under ``on_bad_row="error"``.
    """
    if bool(generations) == (generations_file is not None):
        raise ValueError("give either generations (model -> file) or generations_file (one file), not both")
    fields: dict[str, Any] = {"id": as_prompt_id, "prompt": as_str, "response": _response_text}
    sources: list[tuple[str | None, Path]] = (
        [(model, Path(path)) for model, path in generations.items()]  # type: ignore[union-attr]
        if generations
        else [(None, Path(generations_file))]  # type: ignore[arg-type]
    )
    out: list[Generation] = []
    reports = []
    for model, path in sources:
        row_fields = fields if model is not None else {"model": as_str, **fields}
        rows, report = read_records(path, fields=row_fields, on_bad_row=on_bad_row)
        for row in rows:
            group = row.get("group")
            if group is not None:
                try:
                    group = as_prompt_id(group)  # the same rules as an id: a string or an integer, short
                except (TypeError, ValueError) as exc:
                    # read_records keeps no line numbers for valid rows: name the id instead
                    message = f"{path}: field 'group': invalid value {group!r} (id {row['id']!r}): {exc}"
                    if on_bad_row == "error":
                        raise DataError(message) from None
                    log.warning("skipping bad row: %s", message)
                    report.skipped.append(SkippedRow(line=0, field="group", reason=message))
                    report.rows_out -= 1
                    continue
            out.append(
                Generation(
                    model=model if model is not None else row["model"],
                    group=group,
                    prompt_id=row["id"],
                    prompt=row["prompt"],
                    response=row["response"],
                    source=str(path),
                )
            )
        reports.append(report)
    return out, reports


# ---------------------------------------------------------------------------------------------------------
# Building tasks
# ---------------------------------------------------------------------------------------------------------


def slot_order(models: Sequence[str], *, seed: int, group: str, prompt_id: str) -> list[str]:
    """The models in the order their responses are shown: a shuffle seeded by (seed, group, prompt_id).

    Args:
        models: The models of the prompt (their order does not matter: they are sorted first).
        seed: Export seed.
        group: Annotator group.
        prompt_id: Prompt id.

    Returns:
        The models, the first one in slot A, the second in slot B, ...

    Reference:
        CRS §5.5.2 (randomized order against positional bias).
    """
    order = sorted(models)
    random.Random(f"{seed}:{group}:{prompt_id}").shuffle(order)
    return order


def build_tasks(
    generations: Sequence[Generation],
    *,
    groups: Sequence[str] = (),
    seed: int = 0,
    on_bad_row: BadRowPolicy = "error",
) -> tuple[list[Task], dict[str, int]]:
    """Group the responses by (group, prompt) and shuffle each prompt's K responses into slots.

    For group g a model's response to a prompt is its line with ``group == g`` if there is one, else its
    line without ``group``. A prompt enters a group's tasks when every model has a response for it there.

    Args:
        generations: From :func:`read_generations`.
        groups: Declared annotator groups; empty = one group, :data:`OPEN_GROUP`.
        seed: Seed of the slot order (:func:`slot_order`).
        on_bad_row: What to do with a duplicate (model, group, id), a prompt whose text differs between
            lines, or a prompt some model did not answer: raise :class:`DataError`, or drop and count it.

    Returns:
        ``(tasks, dropped)``: tasks in the order prompts first appear in the input, grouped by group;
        ``dropped`` counts the lines and prompts dropped under ``on_bad_row="skip"`` by reason.

    Raises:
        DataError: On the problems above under ``on_bad_row="error"``, a line naming an undeclared group,
            fewer than 2 or more than 26 models, or no complete prompt at all.
    """
    models = sorted({g.model for g in generations})
    if not 2 <= len(models) <= MAX_MODELS:
        raise DataError(f"human evaluation needs 2 to {MAX_MODELS} models, got {len(models)}: {models}")
    group_names = list(groups) or [OPEN_GROUP]
    dropped = {"duplicate_lines": 0, "prompt_mismatch": 0, "incomplete_prompts": 0}

    def bad(kind: str, message: str) -> None:
        if on_bad_row == "error":
            raise DataError(message)
        dropped[kind] += 1
        log.warning("skipping: %s", message)

    # step 1. index: (model, group-or-None, id) -> generation; remember each prompt's text and first position
    by_key: dict[tuple[str, str | None, str], Generation] = {}
    prompts: dict[str, Generation] = {}
    for gen in generations:
        if gen.group is not None and gen.group not in group_names:
            declared = list(groups) if groups else "none declared"
            raise DataError(
                f"{gen.source}: field 'group': {gen.group!r} is not a declared group ({declared})"
            )
        key = (gen.model, gen.group, gen.prompt_id)
        if key in by_key:
            where = f" for group {gen.group!r}" if gen.group is not None else ""
            bad("duplicate_lines", f"{gen.source}: field 'id': {gen.prompt_id!r} appears twice{where}")
            continue
        first = prompts.setdefault(gen.prompt_id, gen)
        if first.prompt != gen.prompt:
            bad(
                "prompt_mismatch",
                f"{gen.source}: field 'prompt': id {gen.prompt_id!r} has a different prompt than in "
                f"{first.source} (model {first.model!r}); ids must name the same prompt in every file",
            )
            continue
        by_key[key] = gen

    # step 2. per group and prompt: one response per model, in a seeded random slot order
    tasks: list[Task] = []
    bad_ids: set[str] = set()
    for group in group_names:
        for prompt_id, first in prompts.items():
            chosen = {
                m: by_key.get((m, group, prompt_id)) or by_key.get((m, None, prompt_id)) for m in models
            }
            missing = [m for m, g in chosen.items() if g is None]
            if missing:
                if prompt_id not in bad_ids:
                    bad_ids.add(prompt_id)
                    bad(
                        "incomplete_prompts",
                        f"prompt id {prompt_id!r} (first in {first.source}) has no response from "
                        f"model(s) {missing} for group {group!r}",
                    )
                continue
            order = slot_order(models, seed=seed, group=group, prompt_id=prompt_id)
            slots = {SLOTS[i]: m for i, m in enumerate(order)}
            responses = [(slot, chosen[m].response) for slot, m in slots.items()]  # type: ignore[union-attr]
            tasks.append(Task(group, prompt_id, first.prompt, responses, slots))
    if not tasks:
        raise DataError("no prompt has a response from every model: nothing to export")
    return tasks, dropped


# ---------------------------------------------------------------------------------------------------------
# Writing and reading the task files
# ---------------------------------------------------------------------------------------------------------


def task_hash(prompt: str, responses: Sequence[tuple[str, str]]) -> str:
    """Fingerprint of what annotators see for one task: the prompt and each slot's text, in slot order.

    Args:
        prompt: The prompt text.
        responses: ``(slot, text)`` pairs in slot order.

    Returns:
        The first 16 hex digits of the SHA-256 of the canonical JSON ``{"prompt", "responses": [[slot,
        text], ...]}``.
    """
    doc = json.dumps(
        {"prompt": prompt, "responses": [[slot, text] for slot, text in responses]},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(doc.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def write_tasks(
    tasks: Sequence[Task],
    out_dir: str | Path,
    *,
    groups: Mapping[str, Sequence[str]],
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path, dict[str, Any]]:
    """Write ``tasks.jsonl``, ``key.jsonl`` and ``manifest.json`` atomically.

    Refuses to overwrite the tasks when ``rankings.jsonl`` already holds rankings and the new export would
    give a slot another model (the rankings name slots) or show other texts in a task (the rankings were
    made for the old texts): either would silently pair old rankings with something their annotators never
    judged.

    Args:
        tasks: From :func:`build_tasks`.
        out_dir: The human-evaluation directory.
        groups: ``group -> annotator names``; empty = one open group.
        seed: Recorded in the manifest.
        extra: More manifest entries (e.g. read statistics).

    Returns:
        ``(tasks_path, key_path, manifest)``.

    Raises:
        FileExistsError: If rankings exist and the key or a task's texts would change.
    """
    out = Path(out_dir)
    hashes = [task_hash(t.prompt, t.responses) for t in tasks]
    key_lines = "".join(
        json.dumps(
            {"group": t.group, "prompt_id": t.prompt_id, "slots": t.slots, "task_hash": h}, ensure_ascii=False
        )
        + "\n"
        for t, h in zip(tasks, hashes, strict=True)
    )
    key_path, rankings = out / KEY_FILE, out / RANKINGS_FILE
    if rankings.exists() and rankings.stat().st_size > 0:
        _refuse_changes_under_rankings(out, tasks, hashes)
    task_lines = "".join(
        json.dumps(
            {
                "group": t.group,
                "prompt_id": t.prompt_id,
                "prompt": t.prompt,
                "responses": [{"slot": s, "text": text} for s, text in t.responses],
                "task_hash": h,
            },
            ensure_ascii=False,
        )
        + "\n"
        for t, h in zip(tasks, hashes, strict=True)
    )
    models = sorted({m for t in tasks for m in t.slots.values()})
    slot_counts = {m: dict.fromkeys(SLOTS[: len(models)], 0) for m in models}
    for t in tasks:
        for slot, m in t.slots.items():
            slot_counts[m][slot] += 1
    group_names = list(groups) or [OPEN_GROUP]
    manifest = {
        "models": models,
        "k": len(models),
        "seed": seed,
        "groups": {g: list(groups.get(g, [])) for g in group_names},
        "open_annotators": not groups,
        "prompts_per_group": {g: sum(t.group == g for t in tasks) for g in group_names},
        "slot_counts": slot_counts,
        **(extra or {}),
    }
    atomic_write_text(out / TASKS_FILE, task_lines)
    atomic_write_text(key_path, key_lines)
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    fsync_dir(out)  # the renames that put the three files in place
    return out / TASKS_FILE, key_path, manifest


def _refuse_changes_under_rankings(out: Path, tasks: Sequence[Task], hashes: Sequence[str]) -> None:
    rankings = out / RANKINGS_FILE
    old_key = {(r["group"], r["prompt_id"]): r.get("slots") for r in _read_if_exists(out / KEY_FILE)}
    if old_key != {(t.group, t.prompt_id): t.slots for t in tasks}:
        raise FileExistsError(  # with the file name: the CLI prints it as one line, exit 1
            errno.EEXIST,
            f"already holds rankings made against the current {KEY_FILE}; exporting a different set of "
            "tasks there would pair them with the wrong models: use another directory",
            str(rankings),
        )
    # the old texts, fingerprinted the same way (also for a tasks.jsonl written before task_hash existed)
    old_hash = {}
    for row in _read_if_exists(out / TASKS_FILE):
        try:
            shown = [(r["slot"], r["text"]) for r in row["responses"]]
            old_hash[(row["group"], row["prompt_id"])] = task_hash(row["prompt"], shown)
        except (KeyError, TypeError):
            old_hash[(row["group"], row["prompt_id"])] = None  # unreadable: treated as changed
    changed = [t for t, h in zip(tasks, hashes, strict=True) if old_hash.get((t.group, t.prompt_id)) != h]
    if changed:
        first = changed[0]
        raise FileExistsError(
            errno.EEXIST,
            f"already holds rankings, and this export changes the prompt or response texts of {len(changed)} "
            f"task(s) (first: group {first.group!r}, prompt {first.prompt_id!r}); those rankings were made "
            "for the old texts and would be reused for the new ones: export into another directory",
            str(rankings),
        )


def _read_if_exists(path: Path) -> list[dict[str, Any]]:
    return read_task_file(path) if path.exists() else []


def export_tasks(
    out_dir: str | Path,
    *,
    generations: Mapping[str, str | Path] | None = None,
    generations_file: str | Path | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    on_bad_row: BadRowPolicy = "error",
) -> ExportResult:
    """Read generations and write the task files (:func:`read_generations`, :func:`build_tasks`,
    :func:`write_tasks`).

    Args:
        out_dir: The human-evaluation directory.
        generations: ``model -> JSONL file``.
        generations_file: One JSONL file with a ``model`` field (instead of ``generations``).
        groups: ``group -> annotator names`` (each annotator in one group); None/empty = one open group.
        seed: Seed of the slot order.
        on_bad_row: Bad-line policy of the readers and of :func:`build_tasks`.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ValueError: If an annotator is in two groups or a name is empty or too long.
        DataError: Bad input (see :func:`read_generations` and :func:`build_tasks`).
    """
    groups = check_groups(groups or {})
    gens, reports = read_generations(generations, generations_file, on_bad_row=on_bad_row)
    tasks, dropped = build_tasks(gens, groups=list(groups), seed=seed, on_bad_row=on_bad_row)
    read = {
        "lines_in": sum(r.rows_in for r in reports),
        "lines_out": sum(r.rows_out for r in reports),
        "lines_skipped": sum(len(r.skipped) for r in reports),
        "dropped": dropped,
    }
    tasks_path, key_path, manifest = write_tasks(
        tasks, out_dir, groups=groups, seed=seed, extra={"read": read}
    )
    log.info(
        "human-eval export: %d models, %d tasks in %d group(s) -> %s",
        manifest["k"],
        len(tasks),
        len(manifest["groups"]),
        tasks_path,
    )
    return ExportResult(tasks_path, key_path, manifest, reports)


def check_groups(groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Check group and annotator names (:func:`check_name`) and that no annotator is in two groups.

    Returns:
        The groups with every name in NFC, the form the server and the import compare names in.
    """
    seen: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for group, annotators in groups.items():
        group = check_name(group, "group")
        if not annotators:
            raise ValueError(f"group {group!r} has no annotators")
        out[group] = []
        for name in annotators:
            name = check_name(name, "annotator")
            if name in seen and seen[name] == group:  # e.g. once in NFC and once in NFD
                raise ValueError(
                    f"annotator {name!r} is named twice in group {group!r} (names compare in NFC)"
                )
            if name in seen:
                raise ValueError(f"annotator {name!r} is in two groups: {seen[name]!r} and {group!r}")
            seen[name] = group
            out[group].append(name)
    return out


def check_name(name: Any, what: str) -> str:
    """A name in Unicode NFC: non-empty, at most :data:`MAX_NAME_CHARS` characters, no surrounding whitespace.

    Names are compared exactly after NFC, so ``"José"`` typed with a combining accent is the same annotator
    as ``"José"`` typed with one code point, while ``"José"`` and ``"Jose"`` stay two annotators. Control
    characters, line separators, lone surrogates (not Unicode text) and text-direction overrides (they make
    one name look like another) are refused.

    Raises:
        ValueError: With a message naming ``what`` (``"annotator"``, ``"group"``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} name must be a non-empty string, got {name!r}")
    for char in name:
        if unicodedata.category(char) in _BAD_CATEGORIES or char in _DIRECTION_CONTROLS:
            raise ValueError(
                f"{what} name {ascii(name)} holds the character U+{ord(char):04X}: control characters, "
                "line breaks, lone surrogates and text-direction marks are not allowed in a name"
            )
    name = unicodedata.normalize("NFC", name)
    if name != name.strip():
        raise ValueError(f"{what} name {name!r} has surrounding whitespace")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{what} name longer than {MAX_NAME_CHARS} characters")
    return name


def check_ranks(ranks: Any, slots: Sequence[str]) -> dict[str, int]:
    """Validate an annotator's ranking of one prompt's slots.

    Valid: a mapping naming every slot exactly once, each rank an integer 1..K, ranks dense from 1
    (equal ranks are a tie; ``{A: 1, B: 1, C: 2}`` is valid, ``{A: 1, B: 1, C: 3}`` has a gap). A slot named
    twice must be caught while parsing the JSON (:func:`loads_strict`), as a dict cannot hold it.

    Args:
        ranks: ``slot -> rank`` as submitted.
        slots: The prompt's slots.

    Returns:
        ``slot -> rank`` in slot order.

    Raises:
        ValueError: With a message an annotator can act on.
    """
    if not isinstance(ranks, dict):
        raise ValueError("ranks must be an object mapping each response to its rank")
    k = len(slots)
    unknown = sorted(str(s) for s in set(ranks) - set(slots))
    if unknown:
        raise ValueError(f"there is no response {unknown[0]!r} (responses: {', '.join(slots)})")
    missing = [s for s in slots if ranks.get(s) in (None, "")]
    if missing:
        raise ValueError(f"response {missing[0]} has no rank: rank every response")
    out = {}
    for slot in slots:
        rank = ranks[slot]
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= k:
            raise ValueError(
                f"the rank of response {slot} must be a whole number from 1 to {k}, got {rank!r}"
            )
        out[slot] = rank
    used = set(out.values())
    if max(used) != len(used):  # ranks 1..max all used <=> dense from 1
        gap = min(r for r in range(1, k + 1) if r not in used)
        raise ValueError(
            f"no response has rank {gap} but rank {max(used)} is used: ranks must have no gaps "
            "(tied responses share a rank, e.g. 1, 1, 2)"
        )
    return out


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(f"{key!r} is given more than once")
        seen[key] = value
    return seen


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that rejects an object naming a key twice (``{"A": 1, "A": 2}``).

    Raises:
        ValueError: ``json.JSONDecodeError`` for invalid JSON, :class:`DuplicateKeyError` for a repeated key.
    """
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)


def read_task_file(path: str | Path) -> list[dict[str, Any]]:
    """Read ``tasks.jsonl`` or ``key.jsonl`` as written by :func:`write_tasks`; errors name file and line."""

    def check(lineno: int, row: Any) -> None:
        for name in ("group", "prompt_id"):
            if not isinstance(row.get(name), str):
                raise DataError(f"{path}:{lineno}: field '{name}': missing or not a string")

    return read_jsonl(path, check=check, error=DataError)
