"""Seeded, deterministic splits and the capped multi-task mixture of RLLR Table 2.

Shuffles use ``random.Random`` seeded with an int or a string: both are independent of ``PYTHONHASHSEED``
(string seeds go through SHA-512), so the same seed gives the same split on every machine and run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

__all__ = ["CAP_KEYS", "Mixture", "TaskRows", "build_mixture", "shuffled", "split_counts", "split_records"]

T = TypeVar("T")

CAP_KEYS = ("sft", "prompt_pool", "test")
"""The keys of a per-task cap override in :func:`build_mixture`."""

_EPS = 1e-9  # guards floor(fraction * n) against float error such as 0.29 * 100 = 28.999999999999996


def split_records(
    records: Sequence[T], *, sizes: Mapping[str, int | float | None], seed: int
) -> dict[str, list[T]]:
    """Shuffle ``records`` with ``random.Random(seed)`` and cut them into named splits, in ``sizes`` order.

    Sizes: an ``int`` is a row count; a ``float`` in (0, 1] a fraction of ``len(records)``; ``None`` (at most
    one split) takes the rest. Fractions are floored, and when no split takes the rest the rows lost to
    flooring go one each to the fractional splits with the largest remainders (ties: first in order), so
    ``{"train": 0.8, "dev": 0.2}`` covers every row. Every row lands in exactly one split: sizes that leave
    rows over with no ``None`` split, or ask for more rows than there are, are an error.

    Args:
        records: the rows (any objects; they are not copied).
        sizes: split name -> size, e.g. ``{"dev": 500, "test": 0.1, "train": None}``.
        seed: the shuffle seed.

    Returns:
        split name -> rows, in the order of ``sizes``.

    Raises:
        ValueError: a bad size, more than one ``None``, too many rows asked for, or rows left over.
    """
    n = len(records)
    counts = split_counts(n, sizes)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out: dict[str, list[T]] = {}
    start = 0
    for name, count in counts.items():
        out[name] = [records[i] for i in order[start : start + count]]
        start += count
    return out


def split_counts(n: int, sizes: Mapping[str, int | float | None]) -> dict[str, int]:
    """How many of ``n`` rows each split of :func:`split_records` gets (same rules, no rows needed)."""
    if not sizes:
        raise ValueError("sizes is empty")
    rest = [name for name, size in sizes.items() if size is None]
    if len(rest) > 1:
        raise ValueError(f"only one split may take the rest (size None), got {rest}")
    counts: dict[str, int] = {}
    remainders: dict[str, float] = {}
    for name, size in sizes.items():
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int | float):
            raise ValueError(
                f"split {name!r}: size must be an int count, a float fraction or None, got {size!r}"
            )
        if isinstance(size, int):
            if size < 0:
                raise ValueError(f"split {name!r}: negative count {size}")
            counts[name] = size
        else:
            if not 0.0 < size <= 1.0:
                raise ValueError(f"split {name!r}: a fraction must be in (0, 1], got {size}")
            exact = size * n
            counts[name] = math.floor(exact + _EPS)
            remainders[name] = exact - counts[name]
    taken = sum(counts.values())
    exact_total = taken + sum(remainders.values())
    if not rest and abs(exact_total - n) < 1e-6:
        # The sizes add up to all rows; largest-remainder rounding gives back the rows lost to flooring.
        by_remainder = sorted(remainders, key=lambda k: -remainders[k])  # stable: ties keep sizes order
        for name in by_remainder[: n - taken]:
            counts[name] += 1
        taken = n
    if taken > n:
        raise ValueError(f"sizes ask for {taken} rows but there are only {n}: {dict(sizes)}")
    if rest:
        counts[rest[0]] = n - taken
    elif taken < n:
        raise ValueError(
            f"sizes leave {n - taken} of {n} rows in no split: {dict(sizes)}; give one split size None for the rest"
        )
    return {name: counts[name] for name in sizes}


class TaskRows(NamedTuple):
    """One task's rows before mixing: its training rows and its test rows."""

    train: list[Any]
    test: list[Any]


@dataclass
class Mixture:
    """A multi-task mixture (RLLR §4.1 "Training", Table 2), split per task.

    ``prompt_pool`` rows keep their labels: PPO uses them as prompts only, but evaluation may use the labels
    (e.g. accuracy of rollouts). Nothing in a mixture should train on them with supervision.
    """

    sft: dict[str, list[Any]]
    """task -> supervised training rows (at most the task's SFT cap)."""
    prompt_pool: dict[str, list[Any]]
    """task -> surplus training rows: unsupervised PPO prompts."""
    test: dict[str, list[Any]]
    """task -> test rows (at most the task's test cap)."""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """task -> ``{"sft", "prompt_pool", "test", "train_in", "test_in"}``: rows per part and rows given, so
    the rows a cap left out (``train_in - sft - prompt_pool``, ``test_in - test``) can be seen in a saved file."""
    seed: int = 0

    def rows(self, part: Literal["sft", "prompt_pool", "test"]) -> list[tuple[str, Any]]:
        """``(task, row)`` pairs of one part, task by task in mixture order (shuffle before training)."""
        if part not in CAP_KEYS:
            raise ValueError(f"part must be one of {CAP_KEYS}, got {part!r}")
        per_task: dict[str, list[Any]] = getattr(self, part)
        return [(task, row) for task, rows in per_task.items() for row in rows]

    def totals(self) -> dict[str, int]:
        """The counts summed over tasks."""
        keys = ("sft", "prompt_pool", "test", "train_in", "test_in")
        return {key: sum(c[key] for c in self.counts.values()) for key in keys}


def build_mixture(
    tasks: Mapping[str, TaskRows],
    *,
    sft_cap: int = 5000,
    test_cap: int | None = 1000,
    prompt_pool_cap: int | None = None,
    caps: Mapping[str, Mapping[str, int | None]] | None = None,
    seed: int,
) -> Mixture:
    """Cap each task's supervised and test rows; the training surplus becomes the PPO prompt pool.

    Per task: the training rows are shuffled, the first ``min(n, sft_cap)`` go to ``sft`` and the next ones
    (up to ``prompt_pool_cap``, None = all) to ``prompt_pool``; the test rows are shuffled and the first
    ``test_cap`` (None = all) kept. Each task has its own random stream seeded by ``(seed, task name)``, so
    adding or removing a task leaves the others' splits unchanged.

    RLLR Table 2 as a call: ``build_mixture(tasks, sft_cap=5000, test_cap=1000, prompt_pool_cap=5000,
    caps={"mr": {"sft": 2000}}, seed=...)``. MNLI's 2,000 test prompts are two tasks, matched and mismatched:
    give the training rows to one of them (``TaskRows(train, test_matched)``) and none to the other
    (``TaskRows([], test_mismatched)``) so no training row is used twice.

    Reference: RLLR §4.1 "Training" and Table 2 (5,000 supervised per task, surplus to PPO, test up to 1,000).

    Args:
        tasks: task name -> its rows.
        sft_cap: most supervised rows per task.
        test_cap: most test rows per task (None: no cap).
        prompt_pool_cap: most PPO prompt rows per task (None: the whole surplus).
        caps: per-task overrides, task -> ``{"sft" | "prompt_pool" | "test": cap}``.
        seed: the shuffle seed.

    Raises:
        ValueError: a negative cap, or an override naming an unknown task or cap key.
    """
    caps = caps or {}
    unknown_tasks = sorted(set(caps) - set(tasks))
    if unknown_tasks:
        raise ValueError(f"caps name tasks that are not in the mixture: {unknown_tasks}")
    defaults = {"sft": sft_cap, "prompt_pool": prompt_pool_cap, "test": test_cap}
    _check_caps("defaults", defaults)
    mixture = Mixture(sft={}, prompt_pool={}, test={}, seed=seed)
    for task, rows in tasks.items():
        override = dict(caps.get(task, {}))
        unknown_keys = sorted(set(override) - set(CAP_KEYS))
        if unknown_keys:
            raise ValueError(f"caps[{task!r}]: unknown keys {unknown_keys}; known: {list(CAP_KEYS)}")
        task_caps = {**defaults, **override}
        _check_caps(f"caps[{task!r}]", task_caps)
        if task_caps["sft"] is None:
            raise ValueError(f"caps[{task!r}]: the sft cap must be an int")

        train = shuffled(rows.train, f"{seed}/{task}/train")
        n_sft = min(len(train), task_caps["sft"])
        pool_end = len(train) if task_caps["prompt_pool"] is None else n_sft + task_caps["prompt_pool"]
        test = shuffled(rows.test, f"{seed}/{task}/test")
        n_test = len(test) if task_caps["test"] is None else min(len(test), task_caps["test"])

        mixture.sft[task] = train[:n_sft]
        mixture.prompt_pool[task] = train[n_sft:pool_end]
        mixture.test[task] = test[:n_test]
        mixture.counts[task] = {
            "sft": n_sft,
            "prompt_pool": len(mixture.prompt_pool[task]),
            "test": n_test,
            "train_in": len(rows.train),
            "test_in": len(rows.test),
        }
    return mixture


def _check_caps(where: str, caps: Mapping[str, int | None]) -> None:
    for key, cap in caps.items():
        if cap is None:
            continue
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"{where}: cap {key!r} must be a non-negative int or None, got {cap!r}")


def shuffled(rows: Sequence[T], seed: str) -> list[T]:
    out = list(rows)
    random.Random(seed).shuffle(out)
    return out
