"""``rewardmix combine``: several data files (or hub datasets) in one JSONL, optionally as chat rows.

The other stages read one file each; a multi-task or multi-dataset run makes that file here. Uses:

- RLLR's multi-task mixture (RLLR §4.1, Table 2): the rationales of each task, or each task's PPO prompts, in
  one shuffled file; ``copy_fields: {rationale: gold_rationale, label: gold_label}`` also makes the rationale
  records of ``rewardmix rationales`` into the ``question``/``rationale``/``label`` rows of "SFT w. rat.".
- CRS's *pre_sft* mixture (CRS §5.2): Alpaca, Dolly and GSM8K, each converted to ``{"messages": [...]}`` rows
  (``format: alpaca | dolly | gsm8k``) and shuffled together.

What a run does, in order (the numbered steps of :func:`run`):

1. Read each input (JSONL/CSV/TSV/Parquet, or ``hf:<id>[:<config>]:<split>``) with the bad-row policy; take
   its first ``limit`` rows after a seeded shuffle.
2. Convert its rows when a chat ``format`` is given (a row that does not convert is a bad row), copy fields,
   and tag each row with its input's name.
3. Shuffle everything together (seeded), keep the first ``limit`` rows, and write ``data.jsonl`` with
   ``stats.json`` (rows read, skipped and written per input) and ``read_report.json``.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from rewardmix.config import check_ranges
from rewardmix.data.chat import ChatDataError, Message, from_alpaca, from_dolly, from_gsm8k
from rewardmix.data.readers import DataError, ReadReport, RowError, read_records, save_report
from rewardmix.rundir import atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)

ChatFormat = Literal["keep", "alpaca", "dolly", "gsm8k", "prompt_response"]


@dataclass
class InputConfig:
    preflight_paths: ClassVar[dict[str, str]] = {"data": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    data: str
    """A JSONL/CSV/TSV/Parquet file, or a hub dataset ``hf:<id>[:<config>]:<split>`` (e.g.
    ``hf:tatsu-lab/alpaca:train``)."""
    name: str = ""
    """The input's name in stats.json and in ``tag_field``; empty: ``input<index>``."""
    format: ChatFormat = "keep"
    """``keep``: rows as read; ``alpaca`` (instruction, input, output), ``dolly`` (instruction, response; the
    context left out as in CRS §5.1.1), ``gsm8k`` (question, answer), ``prompt_response``: each row becomes a
    chat row ``{"messages": [user, assistant]}``."""
    limit: int | None = None
    """Keep this many rows of this input (after its own seeded shuffle when ``shuffle``); null: all."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_0=("limit",))


@dataclass
class Config:
    output_dir: str = "runs/combine"
    """Run directory: data.jsonl, stats.json, read_report.json."""
    inputs: list[InputConfig] = field(
        default_factory=lambda: [InputConfig(data="runs/rationales/rationales.jsonl", name="rationales")]
    )
    """The files or hub datasets to combine, in order (at least one)."""
    copy_fields: dict[str, str] = field(default_factory=dict)
    """New field -> existing field, copied in every row (the existing one stays); a row without the existing
    field is a bad row. E.g. ``{rationale: gold_rationale, label: gold_label}`` for SFT on rationale records."""
    tag_field: str | None = None
    """A field set to the input's name in every row (e.g. ``dataset``, for per-dataset breakdowns); null: none."""
    shuffle: bool = True
    """Shuffle each input before its ``limit`` and all rows together at the end (seeded); false: keep order."""
    limit: int | None = None
    """Keep this many rows of the combined data (after the final shuffle); null: all."""
    seed: int = 0
    """Shuffle seed."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Bad input rows: stop with an error naming file, line and field, or skip them and count them."""

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: give at least one input")
        names = [self.input_name(i) for i in range(len(self.inputs))]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"inputs: duplicate name(s) {', '.join(duplicates)}")
        check_ranges(self, at_least_0=("limit",))

    def input_name(self, index: int) -> str:
        """The name of input ``index`` (its ``name``, or ``input<index>``)."""
        return self.inputs[index].name or f"input{index}"


class CombineResult(NamedTuple):
    output_dir: Path
    data_path: Path
    stats: dict[str, Any]


def run(cfg: Config) -> CombineResult:
    out = prepare_run_dir(cfg.output_dir, cfg, stage="combine")
    rows: list[dict[str, Any]] = []
    reports: list[ReadReport] = []
    per_input: dict[str, dict[str, int]] = {}
    for i, entry in enumerate(cfg.inputs):
        # step 1. read the input; a seeded shuffle before its limit, so the kept rows are a random sample
        name = cfg.input_name(i)
        read, report = read_records(
            entry.data, on_bad_row=cfg.on_bad_row, check=lambda row, e=entry: convert_row(row, e.format, cfg)
        )
        reports.append(report)
        if cfg.shuffle:
            random.Random(f"{cfg.seed}:{name}").shuffle(read)
        kept = read if entry.limit is None else read[: entry.limit]

        # step 2. chat conversion and copied fields (done by the check above), the input's tag
        for row in kept:
            converted = convert_row(row, entry.format, cfg)
            if cfg.tag_field is not None:
                converted[cfg.tag_field] = name
            rows.append(converted)
        per_input[name] = {
            "rows_in": report.rows_in,
            "skipped": len(report.skipped),
            "kept": len(kept),
        }
        log.info("%s (%s): %d rows read, %d kept", name, entry.data, report.rows_in, len(kept))

    # step 3. shuffle together, the overall limit, data.jsonl and its statistics
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(rows)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    data_path = out / "data.jsonl"
    atomic_write_text(data_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    save_report(reports, out / "read_report.json")
    stats: dict[str, Any] = {"rows": len(rows), "inputs": per_input}
    if cfg.tag_field is not None:
        stats["rows_per_input"] = dict(Counter(r[cfg.tag_field] for r in rows))
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    log.info("combine: %d rows from %d inputs -> %s", len(rows), len(cfg.inputs), data_path)
    return CombineResult(out, data_path, stats)


def convert_row(row: dict[str, Any], fmt: ChatFormat, cfg: Config) -> dict[str, Any]:
    """One row as written: converted to a chat row for a chat ``fmt``, with ``cfg.copy_fields`` added.

    Raises:
        RowError: the row does not fit ``fmt`` or lacks a field to copy (a bad row under the policy).
    """
    out = dict(row)
    for new, old in cfg.copy_fields.items():
        if old not in row:
            raise RowError(old, f"missing (copy_fields wants it as {new!r})")
        out[new] = row[old]
    if fmt == "keep":
        return out
    try:
        if fmt == "alpaca":
            messages = from_alpaca(row)
        elif fmt == "dolly":
            messages = from_dolly(row)  # CRS §5.1.1: "we do not consider context information"
        elif fmt == "gsm8k":
            messages = from_gsm8k(row)
        else:
            messages = [Message("user", _text(row, "prompt")), Message("assistant", _text(row, "response"))]
    except (ChatDataError, DataError) as e:
        raise RowError(None, str(e)) from None
    return {"messages": [m.to_dict() for m in messages], **{k: out[k] for k in cfg.copy_fields}}


def _text(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RowError(name, f"expected a non-empty string, got {value!r}")
    return value.strip()
