"""``rewardmix pairs``: build preference-pair files (train / held-out eval) and their statistics.

Sources, chosen by ``source``:

- ``rationales``: the output of ``rewardmix rationales`` -> label-sensitive pairs, gold ≻ wrong (RLLR §3.2);
- ``rankings``: K answers per prompt with a judge's ranking (``rewardmix rank``, or OASST-style rankings)
  -> rationale-sensitive pairs, all C(K,2) with different ranks, ties skipped (RLLR Appendix C);
- ``ratings``: rated responses per prompt -> the higher rating wins when the gap is at least ``margin``.

With ``source: rationales``, ``label_swap`` and ``labeled`` add label-sensitive pairs to the train file only
(same rationale under both labels; answer-only pairs from labeled rows), counted in ``stats.json``
``pairs_added``. The held-out split is by prompt (record), so no prompt appears in both files.
``stats.json`` counts pairs per kind, skipped ties and, when ``task`` is set, the share of label- vs
rationale-sensitive pairs (RLLR Fig. 2).
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from rewardmix.data.pairs import (
    PreferencePair,
    answer_only_pairs,
    label_sensitive_pairs,
    label_swap_pairs,
    pair_type_stats,
    pairs_from_ratings,
    rationale_sensitive_pairs,
    write_pairs,
)
from rewardmix.data.readers import DataError, RowError, as_str, read_records, save_report
from rewardmix.data.splits import split_records
from rewardmix.data.tasks import get_task, parse_label, task_names
from rewardmix.rundir import atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"input": "data", "labeled": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    input: str = "runs/rationales/rationales.jsonl"
    """JSONL input: rationales.jsonl (source=rationales), rankings.jsonl (rankings) or rated responses (ratings)."""
    output_dir: str = "runs/pairs"
    """Run directory: train.jsonl, eval.jsonl, stats.json, read_report.json."""
    source: Literal["rationales", "rankings", "ratings"] = "rationales"
    """What the input holds (see the module docstring for each format)."""
    task: str | None = None
    """Task name for pair-type statistics (label parser); null = take it from the records when present."""
    margin: float = 0.0
    """Ratings only: the smallest rating gap that makes a pair."""
    eval_fraction: float = 0.1
    """Share of prompts held out for reward-model evaluation (0 = no eval file)."""
    seed: int = 0
    """Seed of the train/eval split."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Bad input rows: stop with an error naming file, line and field, or skip them and count them."""
    label_swap: bool = False
    """Rationales only: also train on each gold rationale under both labels (gold ≻ wrong), so that only
    the label differs (docs/tuning.md, section 8: the small teacher's wrong-label rationales often argue the
    gold label). Train file only; the held-out pairs stay the teacher's."""
    labeled: str | None = None
    """Rationales only: JSONL of labeled task rows (``question``, ``label``; e.g. the split stage's
    ``rest.jsonl``) that add answer-only pairs ``The answer is: gold`` ≻ ``The answer is: wrong`` to the
    train file: the label signal of sentences the teacher never saw. Null = none."""
    labeled_limit: int | None = None
    """At most this many rows of ``labeled`` (the first ones; null = all)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in [0, 1)")
        if (self.label_swap or self.labeled is not None) and self.source != "rationales":
            raise ValueError("label_swap and labeled need source=rationales (they add label-sensitive pairs)")
        if self.labeled_limit is not None and self.labeled_limit < 1:
            raise ValueError("labeled_limit must be >= 1 (or null for all rows)")
        if self.task is not None and self.task not in task_names():
            raise ValueError(f"unknown task {self.task!r} (registered: {', '.join(task_names())})")
        if self.source == "ratings" and not self.margin > 0:
            raise ValueError(
                "margin must be > 0 with source=ratings (the smallest rating gap that makes a pair)"
            )


class PairsStageResult(NamedTuple):
    output_dir: Path
    train_path: Path
    eval_path: Path | None
    stats: dict[str, Any]


REQUIRED = {
    "rationales": ("question", "gold_label", "gold_rationale", "wrong_label", "wrong_rationale"),
    "rankings": ("question", "answers", "ranks"),
    "ratings": ("prompt", "responses", "ratings"),
}


def run(cfg: Config) -> PairsStageResult:
    # step 1. read the records (one per prompt)
    out = prepare_run_dir(cfg.output_dir, cfg, stage="pairs")
    fields = {name: (as_str if name in ("question", "prompt") else _present) for name in REQUIRED[cfg.source]}
    # A record that cannot make pairs (wrong label = gold label, ranks that do not fit the answers, ...) is a
    # bad row at its line, an error or a counted skip like any other.
    records, report = read_records(
        cfg.input, fields=fields, on_bad_row=cfg.on_bad_row, check=lambda row: _check_record(cfg, row)
    )
    save_report(report, out / "read_report.json")
    if not records:
        raise DataError(
            f"{cfg.input}: no usable record ({report.rows_in} read, {len(report.skipped)} skipped)"
        )

    # step 2. split by prompt before building pairs, so no prompt lands in both files
    # eval_fraction 0 (a float 0.0 from YAML) means no eval prompts: a count of 0, as split_records wants it
    eval_size = cfg.eval_fraction if cfg.eval_fraction > 0 else 0
    splits = split_records(records, sizes={"eval": eval_size, "train": None}, seed=cfg.seed)

    # step 3. build the pairs of each split
    counts: dict[str, int] = {"skipped_ties": 0, "skipped_identical": 0}
    built: dict[str, list[PreferencePair]] = {}
    for name in ("train", "eval"):
        built[name] = []
        for record in splits[name]:
            built[name] += _pairs_of(cfg, record, counts)
    task = cfg.task or next((r.get("task") for r in records if r.get("task")), None)
    added = _added_train_pairs(cfg, built["train"], task)
    built["train"] += added

    # step 4. write files and statistics
    train_path, eval_path = out / "train.jsonl", out / "eval.jsonl"
    write_pairs(train_path, built["train"])
    if cfg.eval_fraction > 0:
        write_pairs(eval_path, built["eval"])
    stats: dict[str, Any] = {
        "records": {"in": report.rows_in, "used": len(records), "skipped": len(report.skipped)},
        "prompts": {name: len(rows) for name, rows in splits.items()},
        "pairs": {name: len(pairs) for name, pairs in built.items()},
        "pairs_added": {kind: sum(p.meta.get("augment") == kind for p in added) for kind in _AUGMENTS},
        **counts,
    }
    if task is not None:
        spec = get_task(task)
        stats["pair_types"] = pair_type_stats(
            built["train"] + built["eval"], lambda text: _label_or_none(spec, text)
        )
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    log.info(
        "pairs: %s -> %s (records skipped %d; answer pairs skipped: %d ties, %d identical texts)",
        stats["pairs"],
        out,
        len(report.skipped),
        counts["skipped_ties"],
        counts["skipped_identical"],
    )
    return PairsStageResult(out, train_path, eval_path if cfg.eval_fraction > 0 else None, stats)


_AUGMENTS = ("label_swap", "answer_only")


def _added_train_pairs(cfg: Config, train: list[PreferencePair], task: str | None) -> list[PreferencePair]:
    """The train-only pairs of ``label_swap`` and ``labeled`` (see their fields)."""
    added = label_swap_pairs(train) if cfg.label_swap else []
    if cfg.labeled is not None:
        if task is None:
            raise DataError(f"{cfg.labeled}: labeled rows need the task (set `task`)")
        spec = get_task(task)
        if spec.labels is None:
            raise DataError(
                f"labeled: task {task!r} has no label set (a scale task); answer-only pairs need one"
            )
        labels = spec.labels

        def gold(value: Any) -> Any:  # a label outside the task's set is a bad row at its line
            if _present(value) not in labels:
                raise ValueError(f"{value!r} is not a label of task {task!r} ({', '.join(map(str, labels))})")
            return value

        rows, report = read_records(
            cfg.labeled, fields={"question": as_str, "label": gold}, on_bad_row=cfg.on_bad_row
        )
        if report.skipped:
            log.warning("labeled: %d of %d rows skipped (bad rows)", len(report.skipped), report.rows_in)
        rows = rows[: cfg.labeled_limit]
        added += answer_only_pairs(rows, labels=spec.labels, rng=random.Random(cfg.seed), task=task)
    return added


def _pairs_of(cfg: Config, record: dict[str, Any], counts: dict[str, int]) -> list[PreferencePair]:
    if cfg.source == "rationales":
        return label_sensitive_pairs([record])
    if cfg.source == "rankings":
        ranks = record["ranks"]
        if isinstance(ranks, dict):  # JSON object keys are strings: {"1": 2, ...}
            ranks = {int(k): int(v) for k, v in ranks.items()}
        result = rationale_sensitive_pairs(
            record["question"], record["answers"], ranks, task=record.get("task")
        )
    else:
        result = pairs_from_ratings(
            record["prompt"],
            record["responses"],
            record["ratings"],
            margin=cfg.margin,
            task=record.get("task"),
        )
    counts["skipped_ties"] += result.skipped_ties
    counts["skipped_identical"] += result.skipped_identical
    return result.pairs


_LIST_FIELDS = {"rankings": "answers", "ratings": "responses"}
_RANKS_FIELDS = {"rankings": "ranks", "ratings": "ratings"}
_FIELD_IN_MESSAGE = re.compile(r"(?:example \d+: )?field '([^']+)': (.*)", re.DOTALL)


def _check_record(cfg: Config, record: dict[str, Any]) -> None:
    """Reject a record that cannot make pairs, naming the field at fault (see ``run`` step 1)."""
    task = record.get("task")
    if task is not None and task not in task_names():
        raise RowError("task", f"unknown task {task!r} (registered: {', '.join(task_names())})")
    if cfg.source == "rationales":
        for name in ("gold_label", "wrong_label"):
            if isinstance(record[name], bool) or not isinstance(record[name], str | int | float):
                raise RowError(name, f"expected a label (a string or a number), got {_kind(record[name])}")
    texts = _LIST_FIELDS.get(cfg.source)
    if texts is not None:
        value = record[texts]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RowError(texts, f"expected a list of strings, got {_kind(value)}")
    try:
        _pairs_of(cfg, record, {"skipped_ties": 0, "skipped_identical": 0})
    except (ValueError, TypeError) as e:
        match = _FIELD_IN_MESSAGE.fullmatch(str(e))
        if match is not None:  # label_sensitive_pairs names the field after the example's index
            raise RowError(match.group(1), match.group(2)) from None
        raise RowError(_RANKS_FIELDS.get(cfg.source), str(e)) from None


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list with " + ", ".join(sorted({type(v).__name__ for v in value}))
    return type(value).__name__


def _present(value: Any) -> Any:
    if value is None or value == "" or value == [] or value == {}:
        raise ValueError("missing or empty")
    return value


def _label_or_none(spec, text: str) -> str | None:
    parsed = parse_label(spec, text)
    return str(parsed.label) if parsed.ok else None
