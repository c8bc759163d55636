"""``rewardmix oasst``: the OpenAssistant conversations as the files of CRS's pipeline (CRS §5.1).

OASST (Köpf et al. 2023) is a table of messages (``message_id``, ``parent_id``, ``message_tree_id``, ``role``,
``text``, ``lang``, ``rank``, ``labels``, ...), each tree a prompt with ranked, rated replies. One pass over
the training split and the held-out split writes, for each split (``<name>_train.jsonl`` and
``<name>_eval.jsonl``):

- ``sft``: the top-ranked thread of every tree in the most common languages, ending with an assistant turn:
  ``{"messages": [...], "tree_id", "lang"}`` (CRS §5.1.1; ``rewardmix sft`` with ``format: messages``).
- ``rankings``: every prompter message with at least two ranked assistant replies: ``{"prompt": [messages up
  to it], "responses": [...], "ranks": [...]}`` with rank 0 best (CRS §5.1.2; the ``ranking`` objective of
  ``rewardmix reward-model``).
- ``ratings``: every assistant reply with the rating labels: ``{"prompt": [...], "response", "score"}`` with the
  score the weighted sum of its labels, by default ``quality`` alone (CRS §5.3.1; the ``absolute`` objective).
- ``prompts``: the conversation up to every prompter message (``{"messages": [...]}``), the RL prompts of
  CRS §5.1.3 (``rewardmix ppo`` with ``data.format: messages``).
- ``human_pairs``: single-turn prompts' ranked replies as pairs in the schema of ``rewardmix pairs``
  (``{"prompt", "chosen", "rejected", "kind": "ranking", "meta"}``), for the reward-model agreement with human
  rankings (CRS Table 14; ``human_preferences`` of ``rewardmix evaluate``, ``pairs`` of ``evaluate-rm``).

Messages marked deleted or rejected in review are left out with their replies (counted in stats.json).

What a run does, in order (the numbered steps of :func:`run`):

1. Read the split (a file, or ``hf:OpenAssistant/oasst1:<split>``) and assemble the trees.
2. Drop deleted / rejected messages with their subtrees.
3. Walk every tree and write the five files and their counts per language.

Reference: CRS §5.1.1-5.1.3 (threads, languages, reward data, RL prompts), §5.3.1 (quality label); Köpf et al.
2023 (the dataset).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from rewardmix.data.chat import OASST_ROLES, build_trees, top_ranked_thread
from rewardmix.data.ratings import aggregate_ratings
from rewardmix.data.readers import read_records, save_report
from rewardmix.rundir import atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)

OUTPUTS = ("sft", "rankings", "ratings", "prompts", "human_pairs")


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"train": "data", "eval": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    output_dir: str = "runs/oasst"
    """Run directory: ``<output>_train.jsonl`` and ``<output>_eval.jsonl`` for each output, stats.json."""
    train: str = "hf:OpenAssistant/oasst1:train"
    """The training messages: a JSONL/Parquet file of OASST messages, or a hub dataset."""
    eval: str | None = "hf:OpenAssistant/oasst1:validation"
    """The held-out messages (the ``*_eval.jsonl`` files); null: none."""
    sft_top_languages: int = 20
    """SFT threads: keep the trees whose prompt is in one of the N most common languages of the training
    trees (CRS §5.1.1: "SFT only uses instances with the top 20 languages"); 0: every language."""
    reward_languages: list[str] = field(default_factory=lambda: ["en", "es", "fr", "de"])
    """Rankings, ratings and human pairs: the languages kept (CRS §5.1.2: English, Spanish, French, German)."""
    prompt_languages: list[str] | None = field(default_factory=lambda: ["en", "es", "fr", "de"])
    """RL prompts: the languages kept (the reward models' languages); null: every language."""
    rating_weights: dict[str, float] = field(default_factory=lambda: {"quality": 1.0})
    """Label -> weight of the rating score (CRS §5.3.1 trained on ``quality`` alone; its w2_wgt / w3_wgt
    aggregations are in ``rewardmix.data.ratings``). A reply lacking a weighted label has no rating."""
    min_rating_count: int = 1
    """Ratings: the fewest annotators behind each weighted label for the reply to be kept."""
    max_prompt_turns: int | None = None
    """RL prompts: the most messages in a prompt conversation (1: the root prompts only); null: no limit."""

    def __post_init__(self) -> None:
        if self.sft_top_languages < 0:
            raise ValueError("sft_top_languages must be >= 0")
        if not self.rating_weights:
            raise ValueError("rating_weights: give at least one label")
        if self.min_rating_count < 1:
            raise ValueError("min_rating_count must be >= 1")
        if self.max_prompt_turns is not None and self.max_prompt_turns < 1:
            raise ValueError("max_prompt_turns must be >= 1 or null")


class OasstResult(NamedTuple):
    output_dir: Path
    files: dict[str, Path]
    """``<output>_<split>`` -> its JSONL file."""
    stats: dict[str, Any]


def run(cfg: Config) -> OasstResult:
    out = prepare_run_dir(cfg.output_dir, cfg, stage="oasst")
    splits = {"train": cfg.train, **({"eval": cfg.eval} if cfg.eval is not None else {})}
    reports, files, stats = [], {}, {}
    sft_languages: set[str] | None = None
    for split, source in splits.items():
        # step 1. the split's messages, assembled into trees
        rows, report = read_records(source, on_bad_row="error")
        reports.append(report)
        trees = build_trees(rows, source=source)

        # step 2. deleted / rejected messages go with their replies
        trees, dropped = prune(trees)
        if sft_languages is None:
            sft_languages = top_languages(trees, cfg.sft_top_languages)

        # step 3. the five outputs
        records = extract(trees, cfg, sft_languages)
        for name in OUTPUTS:
            path = out / f"{name}_{split}.jsonl"
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[name]))
            files[f"{name}_{split}"] = path
        stats[split] = {
            "source": source,
            "messages": len(rows),
            "trees": len(trees),
            "dropped_messages": dropped,
            **{name: len(records[name]) for name in OUTPUTS},
            "languages": {name: dict(Counter(_lang(r) for r in records[name])) for name in OUTPUTS},
        }
        log.info("oasst %s: %s", split, ", ".join(f"{n} {len(records[n])}" for n in OUTPUTS))
    stats["sft_languages"] = sorted(sft_languages or []) if cfg.sft_top_languages else None
    save_report(reports, out / "read_report.json")
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    return OasstResult(out, files, stats)


def prune(trees: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Trees without their deleted (``deleted: true``) or review-rejected (``review_result: false``) messages.

    A removed message takes its replies with it; a tree whose prompt is removed is dropped.
    """
    dropped: Counter[str] = Counter()

    def bad(node: Mapping[str, Any]) -> str | None:
        if node.get("deleted") is True:
            return "deleted"
        if node.get("review_result") is False:
            return "review_rejected"
        return None

    def size(node: Mapping[str, Any]) -> int:
        return 1 + sum(size(r) for r in node.get("replies") or [])

    def walk(node: dict[str, Any]) -> None:
        kept = []
        for reply in node.get("replies") or []:
            reason = bad(reply)
            if reason is None:
                walk(reply)
                kept.append(reply)
            else:
                dropped[reason] += size(reply)
        node["replies"] = kept

    out = []
    for tree in trees:
        reason = bad(tree["prompt"])
        if reason is not None:
            dropped[reason] += size(tree["prompt"])
            continue
        walk(tree["prompt"])
        out.append(tree)
    return out, dict(dropped)


def top_languages(trees: Sequence[Mapping[str, Any]], n: int) -> set[str] | None:
    """The ``n`` most common prompt languages of ``trees`` (ties: alphabetical); None when ``n`` is 0."""
    if n == 0:
        return None
    counts = Counter(str(t["prompt"].get("lang")) for t in trees)
    return {lang for lang, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]}


def extract(
    trees: Sequence[Mapping[str, Any]], cfg: Config, sft_languages: set[str] | None
) -> dict[str, list[dict[str, Any]]]:
    """The rows of every output (see the module docstring) from pruned trees."""
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in OUTPUTS}
    reward_langs = set(cfg.reward_languages)
    prompt_langs = set(cfg.prompt_languages) if cfg.prompt_languages is not None else None
    for tree in trees:
        tid, lang = str(tree["message_tree_id"]), tree["prompt"].get("lang")
        if sft_languages is None or lang in sft_languages:
            thread = [m.to_dict() for m in top_ranked_thread(tree)]
            while thread and thread[-1]["role"] != "assistant":
                thread.pop()  # SFT learns an assistant turn; a trailing prompter turn has no answer
            if thread:
                records["sft"].append({"messages": thread, "tree_id": tid, "lang": lang})
        for path, node in walk_paths(tree["prompt"]):
            if node["role"] != "prompter":
                continue
            context = [_message(m) for m in path]
            if prompt_langs is None or lang in prompt_langs:
                if cfg.max_prompt_turns is None or len(context) <= cfg.max_prompt_turns:
                    records["prompts"].append({"messages": context, "tree_id": tid, "lang": lang})
            if lang not in reward_langs:
                continue
            replies = [r for r in node.get("replies") or [] if r.get("role") == "assistant"]
            ranked = [r for r in replies if isinstance(r.get("rank"), int)]
            if len(ranked) >= 2:
                row = {
                    "prompt": context,
                    "responses": [r["text"] for r in ranked],
                    "ranks": [r["rank"] for r in ranked],
                }
                records["rankings"].append({**row, "tree_id": tid, "lang": lang})
                if len(context) == 1:
                    records["human_pairs"] += [
                        {
                            "prompt": context[0]["content"],
                            "chosen": a["text"],
                            "rejected": b["text"],
                            "kind": "ranking",
                            "task": None,
                            "meta": {
                                "chosen_rank": a["rank"],
                                "rejected_rank": b["rank"],
                                "tree_id": tid,
                                "lang": lang,
                            },
                        }
                        for a in ranked
                        for b in ranked
                        if a["rank"] < b["rank"]
                    ]
            for reply in replies:
                score = rating(reply, cfg)
                if score is not None:
                    records["ratings"].append(
                        {
                            "prompt": context,
                            "response": reply["text"],
                            "score": score,
                            "tree_id": tid,
                            "lang": lang,
                        }
                    )
    return records


def walk_paths(root: Mapping[str, Any]) -> Iterator[tuple[list[Mapping[str, Any]], Mapping[str, Any]]]:
    """``(path from the root to the node, node)`` for every node of a tree, depth first."""
    stack: list[list[Mapping[str, Any]]] = [[root]]
    while stack:
        path = stack.pop()
        yield path, path[-1]
        for reply in reversed(path[-1].get("replies") or []):
            stack.append([*path, reply])


def labels_of(node: Mapping[str, Any]) -> dict[str, tuple[float, int]]:
    """A message's labels as ``name -> (value, count)``, from the hub's ``{name: [...], value: [...],
    count: [...]}`` columns or the JSON export's ``{name: {value, count}}``."""
    raw = node.get("labels")
    if not raw:
        return {}
    if isinstance(raw.get("name"), list):
        return {
            n: (float(v), int(c)) for n, v, c in zip(raw["name"], raw["value"], raw["count"], strict=True)
        }
    return {n: (float(d["value"]), int(d["count"])) for n, d in raw.items() if isinstance(d, Mapping)}


def rating(node: Mapping[str, Any], cfg: Config) -> float | None:
    """The reply's score (weighted labels, CRS §5.3.1), or None when a weighted label is missing or thin."""
    labels = labels_of(node)
    used = [name for name, w in cfg.rating_weights.items() if w != 0]
    if any(name not in labels or labels[name][1] < cfg.min_rating_count for name in used):
        return None
    return aggregate_ratings({name: value for name, (value, _) in labels.items()}, cfg.rating_weights)


def _lang(record: Mapping[str, Any]) -> str | None:
    return record["lang"] if "lang" in record else record["meta"]["lang"]


def _message(node: Mapping[str, Any]) -> dict[str, str]:
    return {"role": OASST_ROLES[node["role"]], "content": node["text"].strip()}
