"""``rewardmix rank``: a judge ranks K sampled answers per question (RLLR Appendix C).

Input JSONL, one question per line: ``{"question": ..., "answers": [a1, ..., aK]}`` (extra keys such as
``id`` or ``task`` are kept). Every request carries a freshly shuffled ranking example (seeded per line), the
judge may declare ties (``2>1=5>3=4``), and an answer whose ranking does not parse is asked again, then
recorded as failed (a refusal among them is also counted as ``refused`` in stats.json). Output
``rankings.jsonl`` adds ``ranks`` (aligned with ``answers``, 1 = best, ties share a rank) and ``judge_text``;
``rewardmix pairs source=rankings`` turns it into rationale-sensitive pairs. Calls are cached and the job
resumes after a kill. When no question is ranked, or more than ``judge.max_failed_fraction`` of the requests
fail, the stage writes what it has, then stops with an error (exit code 1).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from rewardmix.data.readers import DataError, as_str, read_records, save_report
from rewardmix.llm.batch import check_failures, read_batch_texts, run_batch
from rewardmix.llm.config import LLMConfig, build_client
from rewardmix.llm.filters import find_refusal
from rewardmix.llm.prompts import ParseError, parse_ranking, ranking_prompt
from rewardmix.rundir import atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)


def _judge_defaults() -> LLMConfig:
    return LLMConfig(temperature=0.0, max_tokens=512)


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"input": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    input: str = "runs/samples/samples.jsonl"
    """JSONL with ``question`` and ``answers`` (a list of at least 2 strings) per line."""
    output_dir: str = "runs/rank"
    """Run directory: rankings.jsonl, judge_outputs.jsonl, stats.json, read_report.json."""
    seed: int = 0
    """Seed of the ranking examples shown to the judge (per line, so a resumed run asks the same)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Bad input rows: stop with an error naming file, line and field, or skip them and count them."""
    judge: LLMConfig = field(default_factory=_judge_defaults)


class RankResult(NamedTuple):
    output_dir: Path
    rankings_path: Path
    stats: dict[str, Any]


def run(cfg: Config) -> RankResult:
    # step 1. read the questions and their sampled answers
    out = prepare_run_dir(cfg.output_dir, cfg, stage="rank")
    records, report = read_records(
        cfg.input, fields={"question": as_str, "answers": _answers}, on_bad_row=cfg.on_bad_row
    )
    save_report(report, out / "read_report.json")
    if not records:
        raise DataError(
            f"{cfg.input}: no usable record ({report.rows_in} read, {len(report.skipped)} skipped)"
        )

    # step 2. one ranking request per question, with its own shuffled example
    requests = [
        (
            str(i),
            cfg.judge.request(ranking_prompt(r["question"], r["answers"], random.Random(f"{cfg.seed}:{i}"))),
        )
        for i, r in enumerate(records)
    ]
    k_of = {str(i): len(r["answers"]) for i, r in enumerate(records)}

    # step 3. ask the judge; an unparseable ranking is asked again, then recorded as failed
    client = build_client(cfg.judge, out)
    batch = run_batch(
        requests,
        client,
        out_path=out / "judge_outputs.jsonl",
        concurrency=cfg.judge.concurrency,
        desc="rank",
        validate=lambda item_id, response: _judge_ranking(response.text, k_of[item_id]),
    )

    # step 4. write the rankings aligned with the answers
    texts = read_batch_texts(out / "judge_outputs.jsonl")
    rows = []
    for i, record in enumerate(records):
        text = texts.get(str(i))
        if text is None:
            continue  # failed after retries: listed in the batch failures file and counted below
        ranks = parse_ranking(text, len(record["answers"]))
        rows.append(
            {**record, "ranks": [ranks[j + 1] for j in range(len(record["answers"]))], "judge_text": text}
        )
    rankings_path = out / "rankings.jsonl"
    atomic_write_text(rankings_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    stats = {
        "questions": len(records),
        "ranked": len(rows),
        "failed": len(records) - len(rows),
        "refused": sum(f.reason.startswith("refusal") for f in batch.failed),
        "judge": batch.to_dict(),
        "cache": {"hits": client.hits, "misses": client.misses},
    }
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    log.info("rank: %d questions -> %d ranked, %d failed", len(records), len(rows), stats["failed"])
    # a judge that ranked nothing (or too little) is an error, not an empty file a recipe goes on with
    check_failures(batch, cfg.judge.max_failed_fraction, what="rank: judge requests")
    return RankResult(out, rankings_path, stats)


def _judge_ranking(text: str, k: int) -> dict[int, int]:
    """The judge's ranking; an answer without one that is a refusal says so (counted as ``refused``)."""
    try:
        return parse_ranking(text, k)
    except ParseError:
        refusal = find_refusal(text)
        if refusal is None:
            raise
        raise ParseError(f"refusal ({refusal!r}), no ranking", text) from None


def _answers(value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(a, str) and a.strip() for a in value)
    ):
        raise ValueError("expected a list of at least 2 non-empty strings")
    return value
