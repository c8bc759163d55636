"""Import human rankings and aggregate them per model: Tideman per prompt, normalized Borda over prompts.

1. Read ``key.jsonl`` (slot -> model per group and prompt) and ``rankings.jsonl`` (one line per submitted
   ranking, by slot). Every line is checked against the key: known group and prompt, every slot ranked
   exactly once, ranks integers 1..K dense from 1, annotator names valid (compared in Unicode NFC), the
   line valid UTF-8 (a leading byte-order mark is accepted). A bad line raises :class:`DataError`
   (``"rankings.jsonl:7: field 'ranks': ..."``) or, with ``on_bad_row="skip"``, is counted and skipped.
   A ranking whose ``task_hash`` is not the key's was made for other texts (an earlier export): it is set
   aside, counted as ``stale`` and named in a warning, never used. When an annotator ranked the same
   prompt more than once, the last line wins.
2. Translate slots to models: one ranking ``model -> rank`` per (group, prompt, annotator)
   (``rankings_by_model.jsonl``).
3. Merge the annotators of each (group, prompt) with Tideman's ranked pairs (CRS Table 9).
4. Per group, average each model's normalized Borda points over the group's prompts (K = 3: 1, 0.67,
   0.33); over groups, report their mean and standard deviation (CRS Table 17).
5. Count, over the merged rankings, how often each model is ranked above, level with or below each other
   model (with the win rate, ties counting half, and its standard error, CRS Eq. 7.1).

Outputs: ``human_eval.json`` (everything above), ``human_eval.md`` (the tables) and
``rankings_by_model.jsonl``.

Reference: CRS §5.5.2, Table 9 (Tideman merge), Table 17 (winning points per group, mean and std);
CRS Eq. 7.1 (standard error of the pairwise rates).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

from rewardmix.algos.ranking import borda_aggregate, borda_by_group, tideman_ranked_pairs
from rewardmix.algos.stats import win_rate_matrix
from rewardmix.data.readers import BadRowPolicy, DataError, ReadReport, SkippedRow
from rewardmix.human.export import (
    KEY_FILE,
    MANIFEST_FILE,
    RANKINGS_FILE,
    check_name,
    check_ranks,
    read_task_file,
)
from rewardmix.markdown import md_cell, md_text
from rewardmix.rundir import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

SUMMARY_JSON = "human_eval.json"
SUMMARY_MD = "human_eval.md"
BY_MODEL_FILE = "rankings_by_model.jsonl"

Key = dict[tuple[str, str], dict[str, str]]
"""``(group, prompt_id) -> {slot: model}``."""


class HumanRanking(NamedTuple):
    """One annotator's ranking of one prompt, translated to models."""

    group: str
    prompt_id: str
    annotator: str
    ranks: dict[str, int]
    """``model -> rank`` (1 = best, equal = tie)."""
    line: int
    """Line of ``rankings.jsonl`` it came from (the last one when the annotator resubmitted)."""


class RankingsRead(NamedTuple):
    """What :func:`read_rankings` found."""

    rankings: list[HumanRanking]
    """One per (group, prompt, annotator), the last line winning."""
    report: ReadReport
    """``rows_in`` = non-blank lines; the bad lines skipped."""
    replaced: int
    """Lines a later line of the same annotator and prompt replaced."""
    stale: list[int]
    """Lines set aside: rankings made for other texts than the key's (their ``task_hash`` differs)."""


class ImportResult(NamedTuple):
    summary: dict[str, Any]
    json_path: Path
    md_path: Path
    by_model_path: Path
    report: ReadReport


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


def read_key(path: str | Path) -> Key:
    """Read ``key.jsonl``: ``(group, prompt_id) -> {slot: model}``; errors name file, line and field."""
    key: Key = {}
    for lineno, row in enumerate(read_task_file(path), start=1):
        slots = row.get("slots")
        if (
            not isinstance(slots, dict)
            or len(slots) < 2
            or not all(isinstance(m, str) for m in slots.values())
        ):
            raise DataError(f"{path}:{lineno}: field 'slots': expected an object slot -> model name")
        if len(set(slots.values())) != len(slots):
            raise DataError(f"{path}:{lineno}: field 'slots': a model appears in two slots")
        key[(row["group"], row["prompt_id"])] = slots
    if not key:
        raise DataError(f"{path}: empty key: export the tasks first")
    return key


def read_task_hashes(path: str | Path) -> dict[tuple[str, str], str]:
    """``(group, prompt_id) -> task_hash`` from ``key.jsonl`` (empty for a key written before the hashes)."""
    return {
        (row["group"], row["prompt_id"]): row["task_hash"]
        for row in read_task_file(path)
        if isinstance(row.get("task_hash"), str)
    }


class _Obj(dict):
    """A JSON object that remembers which keys it saw more than once (a plain dict keeps the last)."""

    duplicates: list[str]


def _keep_duplicates(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    obj.duplicates = []
    for name, value in pairs:
        if name in obj:
            obj.duplicates.append(name)
        obj[name] = value
    return obj


def read_rankings(
    path: str | Path,
    key: Key,
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    hashes: Mapping[tuple[str, str], str] | None = None,
    on_bad_row: BadRowPolicy = "error",
) -> RankingsRead:
    """Read ``rankings.jsonl``, check every line against the key, translate slots to models.

    Args:
        path: The rankings file written by the server (or by hand, in the same format).
        key: From :func:`read_key`.
        groups: ``group -> annotators`` from the manifest; when given, an annotator must rank in their
            own group. None or empty = not checked.
        hashes: ``(group, prompt_id) -> task_hash`` of the current export (:func:`read_task_hashes`); a
            line carrying another ``task_hash`` is set aside as stale. A line without one (written by hand)
            is taken as made for the current texts.
        on_bad_row: ``"error"`` raises at the first bad line; ``"skip"`` counts and skips it.

    Returns:
        A :class:`RankingsRead`.

    Raises:
        DataError: ``"file:line: field 'x': reason"`` for a bad line under ``on_bad_row="error"``.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    group_of = {check_name(name, "annotator"): g for g, names in (groups or {}).items() for name in names}
    report = ReadReport(source=str(path), rows_in=0, rows_out=0)
    latest: dict[tuple[str, str, str], HumanRanking] = {}
    replaced = 0
    stale: list[tuple[int, str, str]] = []

    def bad(lineno: int, field_name: str | None, reason: str) -> None:
        at_field = f" field '{field_name}':" if field_name else ""
        message = f"{path}:{lineno}:{at_field} {reason}"
        if on_bad_row == "error":
            raise DataError(message)
        report.skipped.append(SkippedRow(line=lineno, field=field_name, reason=reason))
        log.warning("skipping bad ranking: %s", message)

    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as editors may write
                raw = raw[3:]
            if not raw.strip():
                continue
            report.rows_in += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                # strict: replacing bad bytes would merge names that differ only in those characters
                bad(lineno, None, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})")
                continue
            try:
                row = json.loads(line, object_pairs_hook=_keep_duplicates)
            except json.JSONDecodeError as exc:
                bad(lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            except RecursionError:
                bad(lineno, None, "invalid JSON: nested too deep")
                continue
            except ValueError:  # an integer over the digit limit of int()
                bad(
                    lineno,
                    None,
                    f"invalid JSON: an integer of more than {sys.get_int_max_str_digits()} digits",
                )
                continue
            if not isinstance(row, _Obj):
                bad(lineno, None, f"expected a JSON object, got {type(row).__name__}")
                continue
            if row.duplicates:
                bad(lineno, row.duplicates[0], "given more than once")
                continue
            annotator, group, prompt_id = row.get("annotator"), row.get("group"), row.get("prompt_id")
            try:
                annotator = check_name(annotator, "annotator")
            except ValueError as exc:
                bad(lineno, "annotator", str(exc))
                continue
            if not isinstance(group, str):
                bad(lineno, "group", f"expected a string, got {group!r}")
                continue
            if group_of and group_of.get(annotator) != group:
                bad(lineno, "group", f"annotator {annotator!r} is not in group {group!r}")
                continue
            if not isinstance(prompt_id, str) or (group, prompt_id) not in key:
                bad(lineno, "prompt_id", f"unknown prompt {prompt_id!r} for group {group!r} (not in the key)")
                continue
            made_for = row.get("task_hash")
            if made_for is not None and not isinstance(made_for, str):
                bad(lineno, "task_hash", f"expected a string, got {made_for!r}")
                continue
            if made_for is not None and hashes and hashes.get((group, prompt_id), made_for) != made_for:
                stale.append((lineno, group, prompt_id))  # made for texts this export no longer shows
                continue
            slots = key[(group, prompt_id)]
            ranks = row.get("ranks")
            if isinstance(ranks, _Obj) and ranks.duplicates:
                bad(lineno, "ranks", f"response {ranks.duplicates[0]} is ranked more than once")
                continue
            try:
                by_slot = check_ranks(ranks, list(slots))
            except ValueError as exc:
                bad(lineno, "ranks", str(exc))
                continue
            ident = (group, prompt_id, annotator)
            replaced += ident in latest  # last wins: a resubmission replaces the earlier ranking
            latest[ident] = HumanRanking(
                group, prompt_id, annotator, {slots[s]: r for s, r in by_slot.items()}, lineno
            )
    rankings = sorted(latest.values(), key=lambda r: r.line)
    report.rows_out = report.rows_in - len(report.skipped)  # stale lines are valid: set aside, not bad
    if report.skipped:
        log.warning("%s: skipped %d bad line(s) of %d", path, len(report.skipped), report.rows_in)
    if stale:
        lineno, group, prompt_id = stale[0]
        log.warning(
            "%s: set aside %d ranking(s) made for other texts than the current export (first: line %d, "
            "group %r, prompt %r): the tasks were re-exported with changed prompts or responses since; "
            "those prompts need ranking again",
            path, len(stale), lineno, group, prompt_id,
        )  # fmt: skip
    return RankingsRead(rankings, report, replaced, [line for line, _, _ in stale])


# ---------------------------------------------------------------------------------------------------------
# Aggregating
# ---------------------------------------------------------------------------------------------------------


def merge_prompts(rankings: Sequence[HumanRanking]) -> dict[tuple[str, str], dict[str, int]]:
    """Merge the annotators of each (group, prompt) with Tideman's ranked pairs.

    Args:
        rankings: One per (group, prompt, annotator), by model.

    Returns:
        ``(group, prompt_id) -> {model: merged rank}``, in the order the prompts first appear.

    Reference:
        CRS §5.5.2 and Table 9; Tideman 1987.
    """
    ballots: dict[tuple[str, str], list[dict[str, int]]] = {}
    for r in rankings:
        ballots.setdefault((r.group, r.prompt_id), []).append(r.ranks)
    return {prompt: tideman_ranked_pairs(votes) for prompt, votes in ballots.items()}


def pairwise_outcomes(
    merged: Mapping[tuple[str, str], Mapping[str, int]],
) -> dict[tuple[str, str], list[float]]:
    """Per model pair (a, b), a < b by name: 1.0 when a is ranked above b in a merged ranking, 0.5 tie, 0.0."""
    outcomes: dict[tuple[str, str], list[float]] = {}
    for ranking in merged.values():
        for a, b in combinations(sorted(ranking), 2):
            # lower rank = better: a above b -> 1.0, level -> 0.5, below -> 0.0
            outcome = 1.0 if ranking[a] < ranking[b] else 0.5 if ranking[a] == ranking[b] else 0.0
            outcomes.setdefault((a, b), []).append(outcome)
    return outcomes


def summarize(
    rankings: Sequence[HumanRanking],
    *,
    key: Key,
    std_ddof: int = 0,
) -> dict[str, Any]:
    """Aggregate validated rankings into the human-evaluation summary (steps 3 to 5 of the module).

    Args:
        rankings: From :func:`read_rankings`.
        key: From :func:`read_key` (for the models and the prompts of each group).
        std_ddof: Delta degrees of freedom of the standard deviation over groups (0 = population, as the
            thesis' Table 17 numbers; 1 = sample). With no more groups than ``std_ddof`` the std is null.

    Returns:
        A JSON-ready dict: ``models``, ``points`` (per model: ``mean``, ``std``, ``per_group``), ``order``
        (models by mean points, best first), ``groups`` (coverage and points per group), ``pairwise``
        (row model vs column model over merged rankings), ``ties`` (how many merged rankings hold a tie),
        ``prompts`` (each merged ranking).

    Raises:
        ValueError: If there is no ranking at all.
    """
    if not rankings:
        raise ValueError("no rankings to aggregate: nobody has ranked a prompt yet")
    models = sorted({m for slots in key.values() for m in slots.values()})

    # step 3. one merged ranking per (group, prompt)
    merged = merge_prompts(rankings)

    # step 4. normalized Borda points: mean over a group's prompts, then mean and std over groups
    all_groups = list(dict.fromkeys(g for g, _ in key))  # in export order
    by_group: dict[str, list[dict[str, int]]] = {}
    for group in all_groups:
        ranked = [ranking for (g, _), ranking in merged.items() if g == group]
        if ranked:
            by_group[group] = ranked
    per_group = {group: borda_aggregate(ranked) for group, ranked in by_group.items()}
    try:
        over_groups = {m: (mean, std) for m, (mean, std) in borda_by_group(by_group, ddof=std_ddof).items()}
    except ValueError:  # a model in no more than std_ddof groups: its spread is undefined
        over_groups = {m: (mean, None) for m, (mean, _) in borda_by_group(by_group, ddof=0).items()}
    points = {
        m: {
            "mean": over_groups[m][0],
            "std": over_groups[m][1],
            "per_group": {g: per_group[g][m] for g in per_group if m in per_group[g]},
        }
        for m in models
        if m in over_groups
    }
    order = sorted(points, key=lambda m: (-points[m]["mean"], m))

    # step 5. pairwise counts over the merged rankings (all groups pooled)
    matrix = win_rate_matrix(pairwise_outcomes(merged), models)
    pairwise = {
        a: {
            b: {
                "wins": wr.wins,
                "ties": wr.ties,
                "losses": wr.losses,
                "n": wr.n,
                "rate": wr.rate,
                "se": wr.se,
                "ci_low": wr.ci_low,
                "ci_high": wr.ci_high,
            }
            for b, wr in row.items()
            if wr is not None
        }
        for a, row in matrix.items()
    }

    groups = {}
    for g in all_groups:
        annotators = sorted({r.annotator for r in rankings if r.group == g})
        groups[g] = {
            "annotators": annotators,
            "prompts": sum(kg == g for kg, _ in key),
            "prompts_ranked": len(by_group.get(g, [])),
            "rankings": sum(r.group == g for r in rankings),
            "points": per_group.get(g, {}),
        }
    missing = [g for g in all_groups if g not in by_group]
    if missing:
        log.warning("no rankings yet for group(s) %s: left out of the mean over groups", missing)
    with_tie = sum(len(set(ranking.values())) < len(ranking) for ranking in merged.values())
    return {
        "models": models,
        "k": len(models),
        "std_ddof": std_ddof,
        "ties": {"merged_rankings": len(merged), "with_tie": with_tie},
        "points": points,
        "order": order,
        "groups": groups,
        "pairwise": pairwise,
        "prompts": [
            {
                "group": g,
                "prompt_id": p,
                "annotators": sum(r.group == g and r.prompt_id == p for r in rankings),
                "merged": ranking,
            }
            for (g, p), ranking in merged.items()
        ],
    }


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def render_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown: winning points per group (CRS Table 17), pairwise counts, coverage."""
    groups = [g for g, info in summary["groups"].items() if info["prompts_ranked"]]
    k = summary["k"]
    points_text = ", ".join(f"{(k - i) / k:.2f}" for i in range(k))
    std_kind = {0: "population", 1: "sample"}.get(summary["std_ddof"], f"ddof={summary['std_ddof']}")
    lines = [
        "# Human evaluation",
        "",
        f"{k} models ranked by annotators in {len(groups)} group(s). The rankings of a prompt are merged with "
        f"Tideman's ranked pairs (CRS Table 9); each model earns normalized Borda points ({points_text} from "
        f"first to last, ties share), averaged over the group's prompts; the last columns are the mean and "
        f"{std_kind} standard deviation over groups (CRS §5.5.2, Table 17).",
        "",
        "## Winning points",
        "",
        "| model | " + " | ".join(md_cell(g) for g in groups) + " | mean | std |",
        "|---|" + "---:|" * (len(groups) + 2),
    ]
    for m in summary["order"]:
        p = summary["points"][m]
        cells = [_num(p["per_group"].get(g)) for g in groups]
        lines.append(f"| {md_cell(m)} | " + " | ".join(cells) + f" | {_num(p['mean'])} | {_num(p['std'])} |")
    models = summary["models"]
    lines += [
        "",
        "## Merged rankings, model against model",
        "",
        "Each cell: prompts where the row model is ranked above / level with / below the column model in the "
        "merged ranking, and the row model's win rate (ties count half) ± its standard error (CRS Eq. 7.1).",
        "",
        "| model | " + " | ".join(md_cell(m) for m in models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for a in models:
        cells = []
        for b in models:
            c = summary["pairwise"].get(a, {}).get(b)
            cells.append(
                "—"
                if c is None
                else f"{c['wins']}/{c['ties']}/{c['losses']} ({100 * c['rate']:.0f}% ± {100 * c['se']:.0f})"
            )
        lines.append(f"| {md_cell(a)} | " + " | ".join(cells) + " |")
    ties = summary.get("ties")
    if ties:
        lines += [
            "",
            "## Ties",
            "",
            f"{ties['with_tie']} of {ties['merged_rankings']} merged ranking(s) end in a tie (two or more "
            "models level). The tie rule: annotators may rank responses level; in the Tideman merge an exact "
            "pairwise tie (as many annotators for a over b as for b over a) gives no edge, and majorities of "
            "equal strength that would close a cycle together are all left out, so the models involved stay "
            "level unless a weaker majority orders them; level models split the Borda points of the "
            "positions they occupy. No step looks at the models' names (the slots annotators saw are "
            "shuffled and the names hidden): renaming the models changes no rank and no point. Only the "
            "order of the tables lists models with equal points by name.",
        ]
    lines += [
        "",
        "## Coverage",
        "",
        "| group | annotators | prompts | prompts ranked | rankings |",
        "|---|---|---:|---:|---:|",
    ]
    for g, info in summary["groups"].items():
        names = md_cell(", ".join(info["annotators"])) or "—"
        lines.append(
            f"| {md_cell(g)} | {names} | {info['prompts']} | {info['prompts_ranked']} | {info['rankings']} |"
        )
    read = summary.get("read")
    if read:
        source = read.get("format", "rewardmix")
        if source == "rewardmix":
            text = (
                f"Read {read['lines_in']} ranking line(s): {read['replaced']} replaced by a later submission "
                f"of the same annotator and prompt (last wins), {read['skipped']} skipped as invalid."
            )
        else:
            text = (
                f"Read {read['lines_in']} {source} row(s) or record(s) of {md_text(read['source'])}: "
                f"{read['replaced']} ranking(s) replaced by a later one of the same annotator and prompt "
                f"(last wins), {read['skipped']} skipped as invalid."
            )
        if read.get("stale"):
            text += (
                f" {read['stale']} set aside: made for other prompt or response texts than the current "
                "export's (the tasks were re-exported since)."
            )
        lines += ["", text]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def import_rankings(
    directory: str | Path,
    *,
    on_bad_row: BadRowPolicy = "error",
    std_ddof: int = 0,
    output_dir: str | Path | None = None,
) -> ImportResult:
    """Import ``rankings.jsonl`` of a human-evaluation directory and write the aggregated results.

    Args:
        directory: Holds ``key.jsonl``, ``rankings.jsonl`` and (optionally) ``manifest.json``.
        on_bad_row: See :func:`read_rankings`.
        std_ddof: See :func:`summarize`.
        output_dir: Where to write the results (default: ``directory``).

    Returns:
        An :class:`ImportResult`.

    Raises:
        FileNotFoundError: If there is no key or no rankings file.
        DataError: A bad line under ``on_bad_row="error"``.
    """
    directory = Path(directory)
    out = Path(output_dir) if output_dir is not None else directory
    rankings_path = directory / RANKINGS_FILE
    if not rankings_path.exists():
        raise FileNotFoundError(f"{rankings_path}: no rankings yet (serve the page and let annotators rank)")

    # steps 1-2. validated rankings, by model
    key = read_key(directory / KEY_FILE)
    manifest_path = directory / MANIFEST_FILE
    groups = None
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        groups = None if manifest.get("open_annotators") else manifest.get("groups")
    hashes = read_task_hashes(directory / KEY_FILE)
    rankings, report, replaced, stale = read_rankings(
        rankings_path, key, groups=groups, hashes=hashes, on_bad_row=on_bad_row
    )
    if not rankings and stale:
        raise DataError(
            f"{rankings_path}: all {len(stale)} ranking(s) were made for other texts than the current "
            f"export (lines {stale[:5]}...); the tasks were re-exported since: rank them again"
        )
    read = {
        "format": "rewardmix",
        "source": str(rankings_path),
        "lines_in": report.rows_in,
        "rankings_used": len(rankings),
        "replaced": replaced,
        "skipped": len(report.skipped),
        "skipped_lines": [s.line for s in report.skipped],
        "stale": len(stale),
        "stale_lines": stale,
    }
    return write_results(out, rankings, key=key, read=read, report=report, std_ddof=std_ddof)


def write_results(
    out: Path,
    rankings: Sequence[HumanRanking],
    *,
    key: Key,
    read: dict[str, Any],
    report: ReadReport,
    std_ddof: int = 0,
) -> ImportResult:
    """Aggregate validated rankings (steps 3-5) and write ``rankings_by_model.jsonl`` and the summaries.

    Args:
        out: Output directory.
        rankings: By model, one per ballot (last wins already applied).
        key: ``(group, prompt_id) -> {response id: model}``: the models and each group's prompts.
        read: What was read (``lines_in``, ``replaced``, ``skipped``, ...), stored as ``summary["read"]``.
        report: The reader's report.
        std_ddof: See :func:`summarize`.
    """
    by_model_path = out / BY_MODEL_FILE
    atomic_write_text(
        by_model_path,
        "".join(
            json.dumps(
                {"group": r.group, "prompt_id": r.prompt_id, "annotator": r.annotator, "ranks": r.ranks},
                ensure_ascii=False,
            )
            + "\n"
            for r in rankings
        ),
    )

    # steps 3-5. merge, points, pairwise
    summary = summarize(rankings, key=key, std_ddof=std_ddof)
    summary["read"] = read
    json_path, md_path = out / SUMMARY_JSON, out / SUMMARY_MD
    atomic_write_text(json_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md_path, render_markdown(summary))
    fsync_dir(out)  # the renames that put the result files in place
    best = summary["order"][0]
    log.info(
        "human-eval import (%s): %d rankings (%d replaced, %d skipped); best: %s (%.3f points)",
        read["format"],
        len(rankings),
        read["replaced"],
        len(report.skipped),
        best,
        summary["points"][best]["mean"],
    )
    return ImportResult(summary, json_path, md_path, by_model_path, report)
