"""The data-preparation stages of the paper recipes: combine, oasst and sample.

combine and oasst run on small files written here (OASST messages with the columns of the public
``OpenAssistant/oasst1`` dataset: message_id, parent_id, message_tree_id, role, text, lang, rank, deleted,
review_result, labels as ``{name: [...], value: [...], count: [...]}``); sample runs the random tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rewardmix.config import ConfigError, from_dict
from rewardmix.data.pairs import read_pairs
from rewardmix.data.readers import DataError
from rewardmix.scoring.rm_inputs import InputEncoder
from rewardmix.stages import combine, oasst, sample


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# combine


def test_combine_mixes_chat_formats_with_per_input_limits_and_tags(tmp_path: Path) -> None:
    alpaca = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": f"do {i}", "input": "ctx" if i == 0 else "", "output": f"done {i}"}
            for i in range(6)
        ],
    )
    gsm8k = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "1+1?", "answer": "2 #### 2"}])
    cfg = from_dict(
        combine.Config,
        {
            "output_dir": str(tmp_path / "out"),
            "inputs": [
                {"data": str(alpaca), "name": "alpaca", "format": "alpaca", "limit": 4},
                {"data": str(gsm8k), "name": "gsm8k", "format": "gsm8k"},
            ],
            "tag_field": "dataset",
            "seed": 3,
        },
    )
    result = combine.run(cfg)
    rows = read_jsonl(result.data_path)
    assert sorted(r["dataset"] for r in rows) == ["alpaca"] * 4 + ["gsm8k"]
    assert {
        "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2 #### 2"}],
        "dataset": "gsm8k",
    } in rows
    kept = {r["messages"][1]["content"] for r in rows if r["dataset"] == "alpaca"}
    assert len(kept) == 4 and kept < {f"done {i}" for i in range(6)}
    assert result.stats["inputs"]["alpaca"] == {"rows_in": 6, "skipped": 0, "kept": 4}
    # seeded: the same seed gives the same file, another seed another order
    again = combine.run(cfg)
    assert again.data_path.read_text() == result.data_path.read_text()
    other = combine.run(
        from_dict(combine.Config, {**_plain(cfg), "output_dir": str(tmp_path / "o2"), "seed": 4})
    )
    assert other.data_path.read_text() != result.data_path.read_text()


def test_combine_copies_fields_so_rationale_records_become_sft_rows(tmp_path: Path) -> None:
    records = [
        {
            "task": t,
            "question": f"q {t}",
            "gold_label": "yes",
            "gold_rationale": f"because {t}",
            "wrong_label": "no",
            "wrong_rationale": "...",
        }
        for t in ("mrpc", "qqp")
    ]
    a = write_jsonl(tmp_path / "a.jsonl", records[:1])
    b = write_jsonl(tmp_path / "b.jsonl", records[1:])
    cfg = from_dict(
        combine.Config,
        {
            "output_dir": str(tmp_path / "out"),
            "inputs": [{"data": str(a)}, {"data": str(b)}],
            "copy_fields": {"rationale": "gold_rationale", "label": "gold_label"},
            "shuffle": False,
        },
    )
    rows = read_jsonl(combine.run(cfg).data_path)
    assert [r["task"] for r in rows] == ["mrpc", "qqp"]  # shuffle off: input order
    assert all(r["rationale"] == r["gold_rationale"] and r["label"] == "yes" for r in rows)
    assert all("wrong_rationale" in r for r in rows)  # the originals stay for `rewardmix pairs`


def test_combine_reports_rows_that_do_not_convert(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "x", "output": "y"}, {"instruction": "z"}])
    base = {"output_dir": str(tmp_path / "out"), "inputs": [{"data": str(data), "format": "alpaca"}]}
    with pytest.raises(DataError, match=r"d.jsonl:2: .*'output'"):
        combine.run(from_dict(combine.Config, base))
    result = combine.run(
        from_dict(combine.Config, {**base, "on_bad_row": "skip", "output_dir": str(tmp_path / "o2")})
    )
    assert result.stats["inputs"]["input0"] == {"rows_in": 2, "skipped": 1, "kept": 1}


def test_combine_config_rejects_duplicate_input_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate name"):
        from_dict(
            combine.Config, {"inputs": [{"data": "a.jsonl", "name": "x"}, {"data": "b.jsonl", "name": "x"}]}
        )


def _plain(cfg: combine.Config) -> dict[str, Any]:
    from rewardmix.config import to_dict

    return to_dict(cfg)


# ---------------------------------------------------------------------------------------------------------
# oasst


def _msg(mid, pid, tid, role, text, *, lang="en", rank=None, quality=None, count=3, **extra):
    labels = (
        None
        if quality is None
        else {"name": ["spam", "quality"], "value": [0.0, quality], "count": [count, count]}
    )
    return {
        "message_id": mid,
        "parent_id": pid,
        "message_tree_id": tid,
        "role": role,
        "text": text,
        "lang": lang,
        "rank": rank,
        "labels": labels,
        "deleted": False,
        "review_result": True,
        **extra,
    }


OASST_ROWS = [
    _msg("p1", None, "t1", "prompter", "What is 2+2?"),
    _msg("a2", "p1", "t1", "assistant", "5", rank=1, quality=0.1),  # listed first: the thread follows rank 0
    _msg("a1", "p1", "t1", "assistant", "4", rank=0, quality=0.9),
    _msg("a3", "p1", "t1", "assistant", "buy now", rank=2, deleted=True),
    _msg("p2", "a1", "t1", "prompter", "Why?"),
    _msg("a4", "p2", "t1", "assistant", "Counting.", quality=0.5, count=1),
    _msg("a5", "p2", "t1", "assistant", "Rude.", review_result=False),
    _msg("q1", None, "t2", "prompter", "Hola", lang="es"),
    _msg("r1", None, "t3", "prompter", "Privet", lang="ru"),
    _msg("r2", "r1", "t3", "assistant", "Da", rank=0, quality=0.7),
]


def run_oasst(tmp_path: Path, **kw) -> oasst.OasstResult:
    data = write_jsonl(tmp_path / "oasst.jsonl", OASST_ROWS)
    cfg = from_dict(
        oasst.Config, {"output_dir": str(tmp_path / "out"), "train": str(data), "eval": None, **kw}
    )
    return oasst.run(cfg)


def test_oasst_writes_the_crs_files(tmp_path: Path) -> None:
    result = run_oasst(tmp_path, sft_top_languages=2)
    files = {name: read_jsonl(path) for name, path in result.files.items()}
    user, bot = "user", "assistant"
    # SFT: the top-ranked thread (a1, not a2), languages en/es kept (ru left out: third most common)
    assert files["sft_train"] == [
        {
            "messages": [
                {"role": user, "content": "What is 2+2?"},
                {"role": bot, "content": "4"},
                {"role": user, "content": "Why?"},
                {"role": bot, "content": "Counting."},
            ],
            "tree_id": "t1",
            "lang": "en",
        }
    ]
    # rankings: the deleted reply is gone, ranks as in the data (0 best)
    assert [(r["responses"], r["ranks"]) for r in files["rankings_train"]] == [(["5", "4"], [1, 0])]
    # human pairs in the pair-file schema, readable by `evaluate-rm` (read_pairs rejects unknown keys)
    assert [
        (p.prompt, p.chosen, p.rejected, p.kind) for p in read_pairs(result.files["human_pairs_train"])
    ] == [("What is 2+2?", "4", "5", "ranking")]
    assert files["human_pairs_train"][0]["meta"] == {
        "chosen_rank": 0,
        "rejected_rank": 1,
        "tree_id": "t1",
        "lang": "en",
    }
    # ratings: quality of each rated reply in en/es/fr/de; the ru reply is not a reward language
    assert sorted((r["response"], r["score"]) for r in files["ratings_train"]) == [
        ("4", 0.9),
        ("5", 0.1),
        ("Counting.", 0.5),
    ]
    # RL prompts: the conversation up to every prompter message, in the reward languages
    assert [[m["content"] for m in r["messages"]] for r in files["prompts_train"]] == [
        ["What is 2+2?"],
        ["What is 2+2?", "4", "Why?"],
        ["Hola"],
    ]
    assert result.stats["train"]["dropped_messages"] == {"deleted": 1, "review_rejected": 1}
    assert result.stats["sft_languages"] == ["en", "es"]


def test_oasst_rating_thresholds_and_prompt_depth(tmp_path: Path) -> None:
    result = run_oasst(tmp_path, min_rating_count=2, max_prompt_turns=1, prompt_languages=None)
    ratings = read_jsonl(result.files["ratings_train"])
    assert sorted(r["response"] for r in ratings) == ["4", "5"]  # "Counting." had one rater
    prompts = read_jsonl(result.files["prompts_train"])
    assert sorted(r["messages"][0]["content"] for r in prompts) == ["Hola", "Privet", "What is 2+2?"]


def test_oasst_orphan_messages_are_an_error(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", [*OASST_ROWS, _msg("x", "missing", "t1", "assistant", "?")])
    cfg = from_dict(oasst.Config, {"output_dir": str(tmp_path / "out"), "train": str(data), "eval": None})
    with pytest.raises(DataError, match="orphan"):
        oasst.run(cfg)


def test_oasst_reads_labels_of_the_json_export_too() -> None:
    node = {"labels": {"quality": {"value": 0.25, "count": 4}, "humor": {"value": 0.5, "count": 1}}}
    assert oasst.labels_of(node) == {"quality": (0.25, 4), "humor": (0.5, 1)}
    cfg = oasst.Config(rating_weights={"quality": 0.5, "humor": 0.5})
    assert oasst.rating(node, cfg) == pytest.approx(0.375)
    assert oasst.rating({"labels": None}, cfg) is None


# ---------------------------------------------------------------------------------------------------------
# sample


def run_sample(tmp_path: Path, name: str, **generation) -> sample.SampleResult:
    data = tmp_path / "q.jsonl"
    if not data.exists():
        write_jsonl(
            data,
            [{"question": f"What is {i} plus one?", "task": "sst2", "label": "positive"} for i in range(5)],
        )
    cfg = from_dict(
        sample.Config,
        {
            "output_dir": str(tmp_path / name),
            "input": str(data),
            "cpu": True,
            "model": {"path": "tiny"},
            "generation": {"num_samples": 3, "max_new_tokens": 6, **generation},
        },
    )
    return sample.run(cfg)


def test_sample_writes_k_answers_per_question_independent_of_batching(tmp_path: Path) -> None:
    big = run_sample(tmp_path, "big", batch_size=15)
    small = run_sample(tmp_path, "small", batch_size=1)
    rows = read_jsonl(big.samples_path)
    assert [r["question"] for r in rows] == [f"What is {i} plus one?" for i in range(5)]
    assert all(len(r["answers"]) == 3 and r["task"] == "sst2" for r in rows)
    assert len({a for r in rows for a in r["answers"]}) > 5  # sampled, not one greedy answer repeated
    assert [r["answers"] for r in read_jsonl(small.samples_path)] == [r["answers"] for r in rows]


def test_sample_resumes_and_regenerates_rows_made_with_other_settings(tmp_path: Path) -> None:
    first = run_sample(tmp_path, "run")
    lines = first.samples_path.read_text().splitlines(keepends=True)
    # a kill after two rows, mid-write of the third
    first.samples_path.write_text("".join(lines[:2]) + lines[2][:10])
    resumed = run_sample(tmp_path, "run")
    assert resumed.stats["sampled_now"] == 3
    assert resumed.samples_path.read_text() == "".join(lines)
    hotter = run_sample(tmp_path, "run", temperature=2.0)
    assert hotter.stats["sampled_now"] == 5  # every stored row was made at temperature 1.0


def test_sample_names_rows_without_a_question(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "ok?"}, {"prompt": "no question field"}])
    cfg = from_dict(
        sample.Config, {"output_dir": str(tmp_path / "o"), "input": str(data), "model": {"path": "tiny"}}
    )
    with pytest.raises(DataError, match=r"q.jsonl:2: field 'question'"):
        sample.run(cfg)


# ---------------------------------------------------------------------------------------------------------
# The files are what the next stages of the paper recipes read


def test_oasst_files_feed_sft_reward_models_ppo_and_evaluation(tmp_path: Path, tiny_tokenizer) -> None:
    from rewardmix.data.prompts import load_prompts
    from rewardmix.stages import evaluate, ppo, sft
    from rewardmix.stages import reward_model as rm
    from tests.stages.test_ppo import rule_reward

    files = run_oasst(tmp_path, sft_top_languages=2).files
    convs, _ = sft.read_conversations(
        str(files["sft_train"]), "messages", sft.ExamplesConfig(train_on="all_assistant")
    )
    assert [m.role for m in convs[0]] == ["user", "assistant", "user", "assistant"]

    encoder = InputEncoder(tiny_tokenizer, "causal_lm", max_length=256, min_prompt_tokens=8)
    ranking = rm.Config(output_dir=str(tmp_path / "rm"))
    ranking.objective.kind, ranking.data.train = "ranking", str(files["rankings_train"])
    items, _, report = rm.load_items(ranking, encoder)
    assert report["format"] == "ranking" and [it.answers for it in items] == [("5", "4")]
    rating = rm.Config(output_dir=str(tmp_path / "rm"))
    rating.objective.kind, rating.data.train = "absolute", str(files["ratings_train"])
    items, _, _ = rm.load_items(rating, encoder)
    assert sorted(it.target for it in items) == [0.1, 0.5, 0.9]
    assert any("Why?" in it.prompt for it in items)  # multi-turn context kept as the prompt

    prompts_cfg = ppo.Config(output_dir=str(tmp_path / "ppo"), reward=rule_reward())
    prompts_cfg.data.prompts, prompts_cfg.data.format = str(files["prompts_train"]), "messages"
    prompts = load_prompts(prompts_cfg.data, tiny_tokenizer)
    assert [
        p.messages[-1].role if hasattr(p.messages[-1], "role") else p.messages[-1]["role"] for p in prompts
    ] == ["user"] * 3

    human = evaluate.Config(human_preferences=str(files["human_pairs_train"]))
    assert [r["chosen"] for r in evaluate.read_human_preferences(human)] == ["4"]


def test_sample_answers_go_through_rank_and_pairs(tmp_path: Path, chat_server) -> None:
    from rewardmix.stages import pairs, rank

    samples = run_sample(tmp_path, "sample").samples_path
    chat_server.answer = lambda body: "Answer 2 reads best.\n\nRanking: 2>1=3"
    judge = {"backend": "openai", "model": "judge", "base_url": chat_server.url, "max_retries": 0}
    ranked = rank.run(
        from_dict(rank.Config, {"input": str(samples), "output_dir": str(tmp_path / "rank"), "judge": judge})
    )
    rows = read_jsonl(ranked.rankings_path)
    assert [r["ranks"] for r in rows] == [[2, 1, 2]] * 5 and rows[0]["task"] == "sst2"
    built = pairs.run(
        from_dict(
            pairs.Config,
            {
                "input": str(ranked.rankings_path),
                "source": "rankings",
                "output_dir": str(tmp_path / "p"),
                "eval_fraction": 0.0,
            },
        )
    )
    # per question: answer 2 beats 1 and 3, the 1 = 3 tie gives no pair
    assert len(read_jsonl(built.train_path)) == 10


def test_combined_rationales_are_sft_rows(tmp_path: Path) -> None:
    from rewardmix.stages import sft

    record = {
        "task": "sst2",
        "question": "Movie review: fine.",
        "gold_label": "positive",
        "gold_rationale": "It says fine.",
        "wrong_label": "negative",
        "wrong_rationale": "Fine is faint praise.",
    }
    data = write_jsonl(tmp_path / "r.jsonl", [record])
    cfg = from_dict(
        combine.Config,
        {
            "output_dir": str(tmp_path / "c"),
            "inputs": [{"data": str(data)}],
            "copy_fields": {"rationale": "gold_rationale", "label": "gold_label"},
        },
    )
    path = str(combine.run(cfg).data_path)
    convs, counts = sft.read_conversations(path, "auto", sft.ExamplesConfig())
    assert counts["format"] == "nlu"
    assert convs[0][-1].content == "It says fine.\n\nThe answer is: positive"
