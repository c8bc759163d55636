"""Reward-model training data: records (pairs, rankings, ratings) -> tokenized *items*, one per loss term.

Formats (``data.format``, or told from the first record's keys):

- ``pairs``: preference pairs as ``rewardmix pairs`` writes them (``chosen``/``rejected``; strict schema);
- ``ranking``: ``{"prompt", "responses", "ranks"}``, lower rank = better, ties allowed;
- ``ratings``: ``{"prompt"?, "response", "score"}`` with the rating in [0, 1] (JSONL/CSV/TSV/Parquet).

What each objective makes of them:

- ``pairwise``: one item per pair (a ranking record gives its C(K,2) pairs); the margin is the constant
  ``objective.margin`` or ``pair.meta[objective.margin_key]`` times ``objective.margin_scale``;
- ``ranking``: one item per K-way group: a ranking record, or the pairs sharing a prompt whose ``meta`` has
  ``chosen_rank``/``rejected_rank`` (what ``rewardmix pairs`` writes for rankings); a pair without ranks is
  a group of two;
- ``absolute``: one item per rated response. The imbalance tools of CRS §5.3.1 run on the training set, in
  this order: stratified under-sampling of a range, over-sampling of a range, paraphrase augmentation (only
  with a file of paraphrases: they need a generator model; data augmented beforehand is read like any other
  rating file), loss weights with a strength.

Every response is tokenized with its prompt by the reward model's input encoder
(:class:`rewardmix.scoring.rm_inputs.InputEncoder`). A pair or group whose differently ranked responses
become identical by truncation carries no signal and is dropped (counted in the report).

Reference: RLLR Eq. 2-3 (margins); CRS Eq. 2.12 (K-way groups), §5.3 (truncation), §5.3.1 and Algorithm 1
(imbalance tools).
"""

from __future__ import annotations

import hashlib
import logging
import random
from array import array
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

from rewardmix.config import check_ranges
from rewardmix.data import ratings as rating_tools
from rewardmix.data.chat import Message, as_messages
from rewardmix.data.pairs import PreferencePair, pair_from_row, pairs_from_ranking
from rewardmix.data.readers import DataError, RowError, read_records
from rewardmix.data.toy import BUILTIN_TOY, toy_pairs, toy_rankings, toy_ratings

log = logging.getLogger(__name__)

ObjectiveKind = Literal["pairwise", "ranking", "absolute"]
DataFormat = Literal["auto", "pairs", "ranking", "ratings"]
Similarity = Callable[[list[str], list[str]], list[float]]
"""Batched sentence similarity ``(texts_a, texts_b) -> [sim(a_i, b_i)]`` (paraphrase vs original)."""


# ---------------------------------------------------------------------------------------------------------
# Config sections


@dataclass
class DataConfig:
    preflight_paths: ClassVar[dict[str, str]] = {"train": "data", "eval": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    train: str = BUILTIN_TOY
    """Training file: preference pairs (JSONL written by ``rewardmix pairs``), ranking records
    (``{"prompt", "responses", "ranks"}``), or ratings (``{"prompt"?, "response", "score"}``; JSONL/CSV/TSV/
    Parquet); ``builtin:toy`` generates 96 toy items of the objective's kind (smoke runs)."""
    eval: str | None = None
    """Held-out file in a format the objective accepts; null: ``eval_fraction`` of ``train`` (or none)."""
    eval_fraction: float = 0.0
    """Fraction of ``train`` records held out for evaluation when ``eval`` is null (0: no eval set)."""
    format: DataFormat = "auto"
    """``pairs``, ``ranking`` or ``ratings``; ``auto`` tells it from the first record's keys."""
    prompt_key: str = "prompt"
    """Ratings: field holding the prompt (absent or empty: the response is scored alone)."""
    text_key: str = "response"
    """Ratings: field holding the rated response."""
    score_key: str = "score"
    """Ratings: field holding the rating in [0, 1]."""
    limit: int | None = None
    """Keep only the first N training records (null: all)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Ranking/rating files: stop at a malformed row (file, line, field) or count, log and skip it (pair files
    are always strict)."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("limit",), below_1=("eval_fraction",))


@dataclass
class BalanceConfig:
    undersample_range: tuple[float, float] | None = None
    """Absolute: stratified under-sampling of ratings in [low, high] (CRS under_s: [0.41, 0.89]); null: off."""
    undersample_bins: int = 5
    """Equal-width bins of the under-sampled range (CRS: 5)."""
    undersample_total: int = 8000
    """Records kept in the under-sampled range, split evenly over its bins (CRS under_s_8k: 8000)."""
    oversample_range: tuple[float, float] | None = None
    """Absolute: duplicate ratings in [low, high] (CRS over_s: [0.0, 0.40]); null: off."""
    oversample_factor: float = 2.0
    """Copies per over-sampled record in all (CRS: 2)."""
    weight_strength: float = 0.0
    """Absolute: loss weights (N / n_bin) ** strength for the boosted bins (CRS wgt_s_05 / wgt_s_075:
    0.5 / 0.75); 0: no weights."""
    weight_bins: list[float] = field(default_factory=lambda: [0.0, 0.405, 0.895, 1.0])
    """Bin edges for the loss weights; the default splits low (<= 0.40), mid and high (>= 0.9) as CRS §5.3.1."""
    weight_boost_bins: list[int] | None = field(default_factory=lambda: [0])
    """Indices of the bins whose weight is raised (CRS: the low end, bin 0); null: every bin (balances them)."""
    weight_normalize: bool = True
    """Divide the weights by their mean, so the loss scale (and the learning rate) stays comparable."""

    def __post_init__(self) -> None:
        check_ranges(
            self,
            at_least_1=("undersample_bins", "undersample_total", "oversample_factor"),
            at_least_0=("weight_strength",),
        )


@dataclass
class AugmentConfig:
    paraphrases: str | None = None
    """Absolute: JSONL of ``{"text", "paraphrase"}`` rows (written by a generator model) used for CRS
    Algorithm 1; null: no augmentation. Records without a paraphrase are reported as ``empty``."""
    low: float | None = None
    """Augment only records rated >= low (null: no lower bound)."""
    high: float | None = None
    """Augment only records rated <= high (null: no upper bound)."""
    adjustment: float = rating_tools.DEFAULT_ADJUSTMENT
    """Algorithm 1's adjustment factor: new rating = rating * adjustment * similarity."""
    similarity_model: str = "offline:minilm"
    """Sentence encoder for the paraphrase-original similarity (a folder, hub id or ``offline:minilm``)."""

    @property
    def preflight_paths(self) -> dict[str, str]:
        """Path fields checked before the run starts (``rewardmix.preflight``); the encoder only when used."""
        return {"paraphrases": "data", "similarity_model": "model"} if self.paraphrases else {}


# ---------------------------------------------------------------------------------------------------------
# Items, and what building them needs from the objective and the encoder


class Item(NamedTuple):
    """One loss term: a pair, a ranked group, or a rated response, with every response tokenized.

    ``sequences[k]`` is the input of ``answers[k]``; ``ranks[k]`` its rank (lower is better; a pair is
    ``(0, 1)``, chosen first); ``target`` the rating of an absolute item (else None).
    """

    prompt: str
    answers: tuple[str, ...]
    sequences: tuple[tuple[int, ...], ...]
    ranks: tuple[float, ...]
    target: float | None = None
    weight: float = 1.0
    margin: float = 0.0
    task: str | None = None


class ItemObjective(Protocol):
    """The fields of the reward-model stage's ``objective`` section that shape items."""

    kind: ObjectiveKind
    margin: float
    margin_key: str | None
    margin_scale: float


class ItemEncoder(Protocol):
    """Turns ``(prompt, answer)`` into token ids (:class:`rewardmix.scoring.rm_inputs.InputEncoder`)."""

    max_length: int
    unstable: int
    """How many inputs needed the fallback for chat templates that are not prefix-stable (a running total)."""

    def __call__(
        self, prompt: str | Sequence[Message | Mapping[str, Any]], answer: str
    ) -> tuple[int, ...]: ...


class _RawItem(NamedTuple):
    prompt: str
    prompt_obj: str | Sequence[Message | Mapping[str, Any]]
    answers: tuple[str, ...]
    ranks: tuple[float, ...]
    target: float | None = None
    weight: float = 1.0
    margin: float = 0.0
    task: str | None = None


def prompt_text(prompt: str | Sequence[Message | Mapping[str, Any]]) -> str:
    """A prompt as one string: a string as is, a list of messages as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.role}: {m.content}" for m in as_messages(prompt))


# ---------------------------------------------------------------------------------------------------------
# Reading


def read_data(
    source: str, data: DataConfig, objective: ObjectiveKind, *, seed: int
) -> tuple[list[Any], DataFormat, dict[str, Any] | None]:
    """Records of ``source``: PreferencePairs (``pairs``) or dicts (``ranking``, ``ratings``), and their format.

    ``auto`` tells the format from the first record's keys: ``chosen``/``rejected`` -> pairs,
    ``responses``/``ranks`` -> ranking, ``data.score_key`` -> ratings.

    Returns:
        ``(records, format, the reader's report as a dict, or None for builtin data)``.
    """
    if source == BUILTIN_TOY:
        fmt: DataFormat = {"pairwise": "pairs", "ranking": "ranking", "absolute": "ratings"}[objective]
        records = {"pairs": toy_pairs, "ranking": toy_rankings, "ratings": toy_ratings}[fmt](96, seed=seed)
        return records, fmt, None
    # Each record is checked as it is read (format told from the first one), so a bad one is an error or a
    # counted skip at its line, under data.on_bad_row.
    formats: list[DataFormat] = [] if data.format == "auto" else [data.format]

    def check(row: dict[str, Any]) -> None:
        if not formats:
            try:
                formats.append(detect_format([row], source, data))
            except DataError as e:
                raise RowError(None, str(e).removeprefix(f"{source}: ")) from None
        _check_record(row, formats[0], data)
        if objective == "pairwise" and formats[0] == "ranking" and not isinstance(row["prompt"], str):
            # a conversation prompt ranks only K-way (the pairs of a ranking are built from string prompts)
            raise RowError(
                "prompt", "the pairwise objective needs a string prompt (or objective.kind=ranking)"
            )

    rows, read_report = read_records(source, on_bad_row=data.on_bad_row, check=check)
    fmt = formats[0] if formats else detect_format(rows, source, data)
    if fmt == "pairs":
        return [pair_from_row(row) for row in rows], fmt, read_report.to_dict()
    return rows, fmt, read_report.to_dict()


def _check_record(row: dict[str, Any], fmt: DataFormat, data: DataConfig) -> None:
    """Raise for a record that the builders below would reject (field named in the message)."""
    if fmt == "pairs":
        pair_from_row(row)  # strict schema: an unknown key is an error
    elif fmt == "ranking":
        _ranking_record(row, 0)
    elif fmt == "ratings":
        _rated_item(row, 0, data)


def detect_format(rows: Sequence[Mapping[str, Any]], source: str, data: DataConfig) -> DataFormat:
    """The format of a data file from its first record's keys (see :func:`read_data`)."""
    if not rows:
        raise DataError(f"{source}: no records")
    keys = set(rows[0])
    if {"chosen", "rejected"} <= keys:
        return "pairs"
    if {"responses", "ranks"} <= keys:
        return "ranking"
    if data.score_key in keys:
        return "ratings"
    raise DataError(
        f"{source}: cannot tell the format from the keys {sorted(keys)}; set data.format (pairs: chosen/rejected; "
        f"ranking: responses/ranks; ratings: {data.text_key}/{data.score_key})"
    )


# ---------------------------------------------------------------------------------------------------------
# Building items


def build_items(
    records: Sequence[Any],
    fmt: DataFormat,
    objective: ItemObjective,
    data: DataConfig,
    encoder: ItemEncoder,
) -> tuple[list[Item], dict[str, Any]]:
    """Turn records of format ``fmt`` into tokenized items for the objective; and counts of what was dropped.

    Args:
        records: What :func:`read_data` returned (balanced first, for ratings).
        fmt: Their format.
        objective: The stage's ``objective`` section (kind and margins).
        data: The ``data`` section (the field names of rating records).
        encoder: The reward model's input encoder.
    """
    kind = objective.kind
    allowed = {"pairwise": ("pairs", "ranking"), "ranking": ("pairs", "ranking"), "absolute": ("ratings",)}[
        kind
    ]
    if records and fmt not in allowed:
        raise DataError(f"the {kind} objective needs {' or '.join(allowed)} data, got {fmt} records")
    counts: dict[str, Any] = {"records": len(records)}
    if kind == "absolute":
        raw = [_rated_item(row, i, data) for i, row in enumerate(records)]
    elif kind == "pairwise":
        pairs = records if fmt == "pairs" else _pairs_of_rankings(records, counts)
        raw = [_pair_item(pair, objective, counts) for pair in pairs]
    else:
        raw = _group_pairs(records, counts) if fmt == "pairs" else _ranking_items(records, counts)
    items, identical = [], 0
    for item in raw:
        sequences = tuple(encoder(item.prompt_obj, answer) for answer in item.answers)
        if kind != "absolute" and _no_signal(sequences, item.ranks):
            identical += 1
            continue
        items.append(
            Item(
                item.prompt,
                item.answers,
                sequences,
                item.ranks,
                item.target,
                item.weight,
                item.margin,
                item.task,
            )
        )
    counts["items"] = len(items)
    counts["dropped_identical_after_truncation"] = identical
    if identical:
        log.warning(
            "%d items dropped: their ranked texts are identical after truncation (no signal)", identical
        )
    counts["truncated_to_max_length"] = sum(
        1 for item in items for seq in item.sequences if len(seq) >= encoder.max_length
    )
    counts["encoded_with_fallback"] = encoder.unstable  # running total of this encoder (not prefix-stable)
    counts["sequences"] = sum(len(item.sequences) for item in items)
    counts["tokens"] = sum(len(seq) for item in items for seq in item.sequences)
    return items, counts


def _no_signal(sequences: Sequence[tuple[int, ...]], ranks: Sequence[float]) -> bool:
    # A ranked pair whose two inputs are identical (after truncation) cannot be learned; nor can a group all of
    # whose differently ranked responses collapsed onto each other.
    by_text: dict[tuple[int, ...], set[float]] = defaultdict(set)
    for seq, rank in zip(sequences, ranks, strict=True):
        by_text[seq].add(rank)
    distinct = {min(r) for r in by_text.values()}
    return len(distinct) < 2 or any(len(r) > 1 for r in by_text.values())


def _pair_item(pair: PreferencePair, objective: ItemObjective, counts: dict[str, Any]) -> _RawItem:
    margin = objective.margin
    if objective.margin_key is not None:
        value = pair.meta.get(objective.margin_key)
        if value is None:
            counts["pairs_without_margin_key"] = counts.get("pairs_without_margin_key", 0) + 1
        else:
            margin = objective.margin_scale * float(value)
    return _RawItem(
        pair.prompt, pair.prompt, (pair.chosen, pair.rejected), (0.0, 1.0), margin=margin, task=pair.task
    )


def _ranking_record(
    row: Mapping[str, Any], index: int
) -> tuple[str | list[Any], list[str], list[int], str | None]:
    where = f"ranking record {index}"
    prompt, responses, ranks = row.get("prompt"), row.get("responses"), row.get("ranks")
    if not isinstance(prompt, str | list):
        raise DataError(f"{where}: field 'prompt': expected a string or a list of messages")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DataError(f"{where}: field 'responses': expected a list of strings")
    if not isinstance(ranks, list) or len(ranks) != len(responses):
        raise DataError(f"{where}: field 'ranks': expected a list of {len(responses)} integers")
    if any(isinstance(r, bool) or not isinstance(r, int) for r in ranks):
        raise DataError(f"{where}: field 'ranks': expected integers (lower is better)")
    task = row.get("task")
    return prompt, responses, ranks, task if isinstance(task, str) else None


def _ranking_items(rows: Sequence[Mapping[str, Any]], counts: dict[str, Any]) -> list[_RawItem]:
    items, skipped = [], 0
    for i, row in enumerate(rows):
        prompt, responses, ranks, task = _ranking_record(row, i)
        if len(set(ranks)) < 2:
            skipped += 1  # a single response or all tied: no pair to learn from
            continue
        items.append(
            _RawItem(prompt_text(prompt), prompt, tuple(responses), tuple(float(r) for r in ranks), task=task)
        )
    counts["groups_without_pairs"] = skipped
    return items


def _pairs_of_rankings(rows: Sequence[Mapping[str, Any]], counts: dict[str, Any]) -> list[PreferencePair]:
    pairs: list[PreferencePair] = []
    for i, row in enumerate(rows):
        prompt, responses, ranks, task = _ranking_record(row, i)
        if not isinstance(prompt, str):
            raise DataError(f"ranking record {i}: the pairwise objective needs a string prompt")
        pairs.extend(pairs_from_ranking(prompt, responses, ranks, task=task).pairs)
    counts["pairs_from_rankings"] = len(pairs)
    return pairs


def _group_pairs(pairs: Sequence[PreferencePair], counts: dict[str, Any]) -> list[_RawItem]:
    """Pairs of one prompt with ``meta`` ranks -> one K-way group; a pair without ranks -> a group of two."""
    groups: dict[tuple[str, str | None], dict[str, float]] = {}
    singles: list[_RawItem] = []
    for n, pair in enumerate(pairs):
        chosen_rank, rejected_rank = pair.meta.get("chosen_rank"), pair.meta.get("rejected_rank")
        if chosen_rank is None or rejected_rank is None:
            singles.append(
                _RawItem(pair.prompt, pair.prompt, (pair.chosen, pair.rejected), (0.0, 1.0), task=pair.task)
            )
            continue
        group = groups.setdefault((pair.prompt, pair.task), {})
        for text, rank in ((pair.chosen, float(chosen_rank)), (pair.rejected, float(rejected_rank))):
            if group.setdefault(text, rank) != rank:
                raise DataError(
                    f"pair {n + 1}: response ranked {rank} here and {group[text]} in another pair"
                )
    items = [
        _RawItem(prompt, prompt, tuple(ranked), tuple(ranked.values()), task=task)
        for (prompt, task), ranked in groups.items()
    ]
    counts["groups_from_pairs"], counts["pairs_without_ranks"] = len(items), len(singles)
    return items + singles


def _rated_item(row: Mapping[str, Any], index: int, data: DataConfig) -> _RawItem:
    where = f"rating record {index}"
    text = row.get(data.text_key)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field '{data.text_key}': expected a non-empty string")
    score = row.get(data.score_key)
    try:
        target = float(score)
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: field '{data.score_key}': expected a number in [0, 1], got {score!r}"
        ) from None
    if not 0.0 <= target <= 1.0:
        raise DataError(f"{where}: field '{data.score_key}': {target} is outside [0, 1]")
    prompt = row.get(data.prompt_key) or ""
    weight = float(row.get("_weight", 1.0))
    return _RawItem(
        prompt_text(prompt), prompt, (text,), (), target=target, weight=weight, task=row.get("task")
    )


# ---------------------------------------------------------------------------------------------------------
# Imbalance tools (absolute objective, training set)


def balance_ratings(
    records: Sequence[Mapping[str, Any]],
    balance: BalanceConfig,
    augment: AugmentConfig,
    data: DataConfig,
    *,
    seed: int,
    similarity: Similarity | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Under-sample, over-sample, augment and weight rated training records (CRS §5.3.1), as configured.

    Loss weights are stored in each record's ``_weight`` field.

    Args:
        records: Rating records.
        balance: The ``balance`` section (sampling and weights).
        augment: The ``augment`` section (paraphrases).
        data: The ``data`` section (field names of the records).
        seed: Seed of the sampling (the stage's seed).
        similarity: The sentence encoder's similarity (``augment.similarity_model``), needed only with
            ``augment.paraphrases``.

    Returns:
        ``(records, report)`` with the record count after each tool.

    Reference: CRS §5.3.1 "Handling Uneven Distribution" (under_s, over_s, augment, wgt_s), Algorithm 1.
    """
    key = data.score_key
    rows = [dict(r) for r in records]
    for i, row in enumerate(rows):  # ratings tools need numbers; CSV/TSV give strings
        try:
            row[key] = float(row[key])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"rating record {i}: field '{key}': expected a number") from None
    report: dict[str, Any] = {"records_in": len(rows)}
    if balance.undersample_range is not None:
        low, high = balance.undersample_range
        bins = rating_tools.equal_width_bins(low, high, balance.undersample_bins)
        per_bin = balance.undersample_total // balance.undersample_bins
        rows = rating_tools.undersample_by_bins(
            rows, score_key=key, bins=bins, per_bin=per_bin, rng=random.Random(seed)
        )
        report["after_undersample"] = len(rows)
    if balance.oversample_range is not None:
        low, high = balance.oversample_range
        rows = rating_tools.oversample_range(
            rows,
            score_key=key,
            low=low,
            high=high,
            factor=balance.oversample_factor,
            rng=random.Random(seed + 1),
        )
        report["after_oversample"] = len(rows)
    if augment.paraphrases is not None:
        if similarity is None:
            raise ValueError("augment.paraphrases needs a similarity function (augment.similarity_model)")
        rows, report["augment"] = _augment(rows, augment, similarity, text_key=data.text_key, score_key=key)
    report["pre_augmented"] = sum(1 for row in rows if "augmentation" in row)
    if balance.weight_strength > 0:
        weights = rating_tools.loss_weights(
            [row[key] for row in rows],
            bins=balance.weight_bins,
            strength=balance.weight_strength,
            boost_bins=balance.weight_boost_bins,
            normalize=balance.weight_normalize,
        )
        for row, weight in zip(rows, weights, strict=True):
            row["_weight"] = weight
        report["weights"] = {"min": min(weights), "max": max(weights)}
    report["records_out"] = len(rows)
    log.info("rating balance: %s", report)
    return rows, report


def _augment(
    rows: list[dict[str, Any]],
    augment: AugmentConfig,
    similarity: Similarity,
    *,
    text_key: str,
    score_key: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    table, _ = read_records(augment.paraphrases, on_bad_row="error")
    mapping = {str(r["text"]): str(r["paraphrase"]) for r in table if "text" in r and "paraphrase" in r}
    out, report = rating_tools.augment_paraphrases(
        rows,
        paraphrase=lambda text: mapping.get(text, ""),
        similarity=similarity,
        text_key=text_key,
        score_key=score_key,
        low=augment.low,
        high=augment.high,
        adjustment=augment.adjustment,
    )
    return out, report.to_dict()


# ---------------------------------------------------------------------------------------------------------
# Hash and sample rows of items


def items_hash(items: Sequence[Item]) -> str:
    """A short hash of tokenized items: a resumed run must train on the very same data."""
    digest = hashlib.sha256()
    for item in items:
        for seq in item.sequences:
            digest.update(array("q", seq).tobytes())
            digest.update(b"|")
        digest.update(repr((item.ranks, item.target, item.weight, item.margin)).encode())
        digest.update(b"#")
    return digest.hexdigest()[:16]


def sample_rows(items: Sequence[Item], scores: Sequence[float]) -> list[dict[str, Any]]:
    """Rows of samples.jsonl: each item with the scores of its answers.

    Args:
        items: The items shown.
        scores: The scores of all their sequences, concatenated in item order.
    """
    rows, start = [], 0
    for item in items:
        end = start + len(item.sequences)
        row: dict[str, Any] = {
            "prompt": item.prompt,
            "answers": list(item.answers),
            "scores": list(scores[start:end]),
        }
        if item.target is None:
            row["ranks"] = list(item.ranks)
        else:
            row["target"] = item.target
        rows.append(row)
        start = end
    return rows
