"""rationales -> pairs and rank -> pairs, against a real local chat-completions server (scripted answers)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from rewardmix.config import ConfigError, from_dict
from rewardmix.data.pairs import read_pairs
from rewardmix.data.readers import DataError
from rewardmix.data.tasks import get_task
from rewardmix.llm.batch import BatchFailedError
from rewardmix.rundir import read_jsonl
from rewardmix.stages import pairs, rank, rationales

LABEL_IN_PROMPT = re.compile(r'rationale for the answer "([^"]+)"')


def teacher(body):
    """A well-behaved teacher: argues for whatever label it was asked about; refuses one special text."""
    prompt = body["messages"][-1]["content"]
    label = LABEL_IN_PROMPT.search(prompt).group(1)
    if "REFUSE-ME" in prompt:
        return "I'm sorry, but I cannot provide a rationale for that."
    return f"The wording clearly points to {label}, as the tone shows."


@pytest.fixture
def sst2_file(tmp_path):
    path = tmp_path / "sst2.tsv"
    rows = [
        "sentence\tlabel",
        "a joyous ride\t1",
        "dull and tired\t0",
        "REFUSE-ME please\t1",
        "warm , funny\t1",
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def openai_teacher(server, **kw):
    return {"backend": "openai", "base_url": server.url, "model": "fake", "max_retries": 2, **kw}


def test_rationales_then_label_sensitive_pairs(tmp_path, chat_server, sst2_file):
    chat_server.answer = teacher
    cfg = from_dict(
        rationales.Config,
        {
            "output_dir": str(tmp_path / "rat"),
            "task": "sst2",
            "data": str(sst2_file),
            "teacher": openai_teacher(chat_server),
        },
    )
    res = rationales.run(cfg)
    records = read_jsonl(res.rationales_path)
    # 4 examples, one refused -> 3 kept, the refusal counted, 8 teacher calls (gold + wrong each)
    assert len(records) == 3 and res.stats["dropped"]["refusal"] == 1
    assert chat_server.count == 8
    labels = set(get_task("sst2").labels)
    for r in records:
        assert r["wrong_label"] != r["gold_label"] and {r["gold_label"], r["wrong_label"]} == labels
        assert r["gold_label"] in r["gold_rationale"] and r["wrong_label"] in r["wrong_rationale"]
    # the gold halves, as the sft stage's NLU rows
    sft_rows = read_jsonl(res.output_dir / "sft.jsonl")
    assert [(r["question"], r["rationale"], r["label"]) for r in sft_rows] == [
        (r["question"], r["gold_rationale"], r["gold_label"]) for r in records
    ]

    # A rerun pays nothing: every answer comes from the batch output / cache.
    rationales.run(cfg)
    assert chat_server.count == 8

    out = pairs.run(
        pairs.Config(input=str(res.rationales_path), output_dir=str(tmp_path / "pairs"), eval_fraction=0.34)
    )
    train, held = read_pairs(out.train_path), read_pairs(out.eval_path)
    assert len(train) + len(held) == 3 and len(held) == 1
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in held})
    for p in train + held:
        assert p.kind == "label_sensitive"
        assert p.chosen.endswith(f"The answer is: {p.meta['chosen_label']}")
        assert p.rejected.endswith(f"The answer is: {p.meta['rejected_label']}")
    # every label-sensitive pair carries two different labels (RLLR Fig. 2 statistic)
    assert out.stats["pair_types"]["pairs/label_sensitive/share"] == 1.0


def test_rationales_drop_a_plain_language_contradiction(tmp_path, chat_server, sst2_file):
    """Issue 17: asked to justify "negative" for "a joyous ride", the teacher praises it instead."""

    def honest_teacher(body):
        prompt = body["messages"][-1]["content"]
        label = LABEL_IN_PROMPT.search(prompt).group(1)
        if "joyous" in prompt and label == "negative":
            return "The review expresses a strong and positive sentiment; the ride is a joy."
        return f"The wording clearly points to {label}, as the tone shows."

    chat_server.answer = honest_teacher
    cfg = from_dict(
        rationales.Config,
        {"output_dir": str(tmp_path / "rat"), "task": "sst2", "data": str(sst2_file),
         "teacher": openai_teacher(chat_server)},
    )  # fmt: skip
    res = rationales.run(cfg)
    assert res.stats["dropped"] == {"missing": 0, "refusal": 0, "contradiction": 1}
    assert [r["question"] for r in read_jsonl(res.rationales_path)] == [
        get_task("sst2").template.format(text=t)
        for t in ("dull and tired", "REFUSE-ME please", "warm , funny")
    ]
    # filter_plain_language: false keeps only the explicit "the answer is X" rules (the demo's weak teacher)
    explicit_only = dataclasses.replace(cfg, output_dir=str(tmp_path / "rat2"), filter_plain_language=False)
    assert rationales.run(explicit_only).stats["dropped"] == {"missing": 0, "refusal": 0, "contradiction": 0}


def test_rank_then_rationale_sensitive_pairs(tmp_path, chat_server):
    samples = tmp_path / "samples.jsonl"
    rows = [
        {"question": "q1", "answers": ["a", "b", "c"], "task": "sst2"},
        {"question": "q2", "answers": ["d", "e", "f"], "task": "sst2"},
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # First answer is unparseable (a gap) -> asked again with a moved seed; then a ranking with a tie.
    chat_server.answer = lambda body: (
        "Ranking: 1>3"
        if body["seed"] == 0 and "q1" in body["messages"][-1]["content"]
        else "Because.\n\nRanking: 2>1=3"
    )
    res = rank.run(
        from_dict(
            rank.Config,
            {
                "input": str(samples),
                "output_dir": str(tmp_path / "rank"),
                "judge": openai_teacher(chat_server),
            },
        )
    )
    ranked = read_jsonl(res.rankings_path)
    assert [r["ranks"] for r in ranked] == [[2, 1, 2], [2, 1, 2]]
    assert res.stats["ranked"] == 2 and res.stats["failed"] == 0

    out = pairs.run(
        pairs.Config(
            input=str(res.rankings_path), output_dir=str(tmp_path / "p"), source="rankings", eval_fraction=0
        )
    )
    got = read_pairs(out.train_path)
    # per question: b beats a and c; a = c is a tie and skipped -> 2 pairs each, 1 tie each
    assert sorted((p.chosen, p.rejected) for p in got) == [("b", "a"), ("b", "c"), ("e", "d"), ("e", "f")]
    assert out.stats["skipped_ties"] == 2
    assert out.eval_path is None


def test_pairs_from_ratings_and_bad_rows(tmp_path):
    path = tmp_path / "ratings.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "responses": ["x", "y", "z"], "ratings": [0.9, 0.5, 0.45]})
        + "\n"
        + json.dumps({"prompt": "q", "responses": ["u"]})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"ratings.jsonl:2: field 'ratings'"):
        pairs.run(
            pairs.Config(
                input=str(path), output_dir=str(tmp_path / "a"), source="ratings", margin=0.1, eval_fraction=0
            )
        )
    out = pairs.run(
        pairs.Config(
            input=str(path),
            output_dir=str(tmp_path / "b"),
            source="ratings",
            margin=0.1,
            eval_fraction=0,
            on_bad_row="skip",
        )
    )
    # x (0.9) beats y and z by >= 0.1; y vs z differ by 0.05 < margin -> no pair
    assert sorted((p.chosen, p.rejected) for p in read_pairs(out.train_path)) == [("x", "y"), ("x", "z")]
    assert out.stats["records"] == {"in": 2, "used": 1, "skipped": 1}


def test_pairs_add_label_swap_and_answer_only_pairs_to_the_train_file_only(tmp_path):
    records = [
        {"task": "mr", "question": f"q{i}", "gold_label": "positive", "gold_rationale": f"good {i}",
         "wrong_label": "negative", "wrong_rationale": f"also good {i}"}
        for i in range(8)
    ]  # fmt: skip
    rationales = tmp_path / "rationales.jsonl"
    rationales.write_text("".join(json.dumps(r) + "\n" for r in records))
    labeled = tmp_path / "rest.jsonl"
    labeled.write_text(
        "".join(json.dumps({"question": f"r{i}", "label": "negative"}) + "\n" for i in range(5))
    )
    plain = pairs.run(pairs.Config(input=str(rationales), output_dir=str(tmp_path / "a"), eval_fraction=0.25))
    more = pairs.run(
        pairs.Config(
            input=str(rationales), output_dir=str(tmp_path / "b"), eval_fraction=0.25,
            label_swap=True, labeled=str(labeled), labeled_limit=3,
        )
    )  # fmt: skip
    assert more.eval_path.read_text() == plain.eval_path.read_text()  # the held-out pairs stay the teacher's
    got = read_pairs(more.train_path)
    assert got[:6] == read_pairs(plain.train_path)
    swapped = [p for p in got if p.meta.get("augment") == "label_swap"]
    assert sorted(p.rejected for p in swapped) == sorted(
        p.chosen.replace("positive", "negative") for p in got[:6]
    )
    answer_only = [(p.prompt, p.chosen, p.rejected) for p in got if p.meta.get("augment") == "answer_only"]
    assert answer_only == [(f"r{i}", "The answer is: negative", "The answer is: positive") for i in range(3)]
    assert more.stats["pairs_added"] == {"label_swap": 6, "answer_only": 3}
    assert more.stats["pairs"] == {"train": 15, "eval": 2}
    with pytest.raises(ConfigError, match="source=rationales"):
        from_dict(pairs.Config, {"source": "rankings", "label_swap": True})
    labeled.write_text('{"question": "r0", "label": "negative"}\n{"question": "r1", "label": "neutral"}\n')
    with pytest.raises(
        DataError, match=r"rest.jsonl:2: field 'label': .*'neutral' is not a label of task 'mr'"
    ):
        pairs.run(pairs.Config(input=str(rationales), output_dir=str(tmp_path / "c"), labeled=str(labeled)))


def test_stage_configs_validate():
    with pytest.raises(ConfigError, match="eval_fraction"):
        from_dict(pairs.Config, {"eval_fraction": 1.5})
    with pytest.raises(ConfigError, match="'teacher.backend' must be one of 'openai', 'local'"):
        from_dict(rationales.Config, {"teacher": {"backend": "gpt"}})


def test_rank_when_every_judgment_fails(tmp_path, chat_server):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"question": "q", "answers": ["a", "b"]}) + "\n")
    chat_server.answer = lambda body: "no ranking here"
    cfg = from_dict(
        rank.Config,
        {"input": str(samples), "output_dir": str(tmp_path / "r"), "judge": openai_teacher(chat_server)},
    )
    # nothing parsed: an error (not an empty file a recipe goes on with), naming the share and the cause
    with pytest.raises(BatchFailedError, match=r"1 of 1 failed \(100%, none answered\).*ParseError"):
        rank.run(cfg)
    # what the run did is still written: no output row, the failure counted and listed
    stats = json.loads((tmp_path / "r" / "stats.json").read_text())
    assert read_jsonl(tmp_path / "r" / "rankings.jsonl") == [] and stats["failed"] == 1
    assert len(read_jsonl(tmp_path / "r" / "judge_outputs.failures.jsonl")) == 1
