"""``rewardmix evaluate`` end to end: scripted generators, a scripted judge server, scripted reward models.

The scripted run (three models, two NLU tasks, four prompts in two datasets and two categories, two reward
models, three human pairs) has every number of eval.json derived by hand below. A second test runs real tiny
models and a real tiny reward model; there the answers are random, so it checks the parsing and counting
paths and that the judge's verdicts (scripted from the stored generations) give the expected matrix.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rewardmix.config import ConfigError, from_dict, load_config
from rewardmix.llm.batch import BatchFailedError
from rewardmix.rundir import read_jsonl
from rewardmix.stages import evaluate

REPO = Path(__file__).resolve().parents[2]

SST2 = [
    ("a joyous ride", "positive"),
    ("dull and tired", "negative"),
    ("warm , funny", "positive"),
    ("a mess", "negative"),
]
STSB = [("cats sit", "a cat sits", 1.0), ("dogs run", "a dog runs", 2.0), ("it rains", "rain falls", 3.0), ("he ate", "he eats", 4.0)]  # fmt: skip
# Scripted NLU answers, by the example's first sentence.
NLU_ANSWERS = {
    # sft: always "positive" -> 2 of 4 right; STS-B off by 0.5 on two examples
    "sft": {"a joyous ride": "positive", "dull and tired": "positive", "warm , funny": "positive", "a mess": "positive",
            "cats sit": "1.5", "dogs run": "2.0", "it rains": "3.5", "he ate": "4.0"},
    # rlhf: one unparseable SST-2 answer (counted wrong) and one unparseable STS-B answer (midpoint 2.5)
    "rlhf": {"a joyous ride": "positive", "dull and tired": "negative", "warm , funny": "positive", "a mess": None,
             "cats sit": None, "dogs run": "2.0", "it rains": "3.0", "he ate": "4.0"},
    # rllr: all right
    "rllr": {"a joyous ride": "positive", "dull and tired": "negative", "warm , funny": "positive", "a mess": "negative",
             "cats sit": "1.0", "dogs run": "2.0", "it rains": "3.0", "he ate": "4.0"},
}  # fmt: skip
PROMPTS = [
    {"id": "p0", "prompt": "Why is the sky blue?", "dataset": "oasst", "category": "Reasoning"},
    {"id": "p1", "prompt": "Write a haiku.", "dataset": "oasst", "category": "Creative"},
    {"id": "p2", "prompt": "What is 12 times 7?", "dataset": "koala", "category": "Reasoning"},
    {"id": "p3", "prompt": "Invent a word.", "dataset": "koala", "category": "Creative"},
]
PAD = {"sft": 0, "rlhf": 1, "rllr": 1}  # answer "[m:pid]" + "x" * PAD: lengths sft 8, rlhf 10, rllr 10
# The judge's preference for each (model, model, prompt): the winner's name, or "tie".
PREFERRED = {
    ("rlhf", "sft"): {"p0": "rlhf", "p1": "tie", "p2": "sft", "p3": "rlhf"},
    ("rllr", "sft"): {"p0": "rllr", "p1": "rllr", "p2": "rllr", "p3": "rllr"},
    ("rlhf", "rllr"): {"p0": "tie", "p1": "tie", "p2": "rllr", "p3": "rllr"},
}
HUMAN = [  # chosen longer in two pairs, equal lengths in one
    {"prompt": "q1", "chosen": "a long answer", "rejected": "short"},
    {"prompt": "q2", "chosen": "detailed reply", "rejected": "no"},
    {"prompt": "q3", "chosen": "same", "rejected": "size"},
]
TAG = re.compile(r"\[(sft|rlhf|rllr):(p\d)\]")


def nlu_answer(model: str, question: str) -> str:
    for key, label in NLU_ANSWERS[model].items():
        if key in question:
            return "I cannot tell." if label is None else f"Some reasons.\n\nThe answer is: {label}"
    raise AssertionError(f"unscripted question {question!r}")


def fake_factory(calls: list[str]):
    def factory(entry):
        calls.append(entry.name)

        def generate(conversations, max_new_tokens):
            out = []
            for conv in conversations:
                text = conv[-1]["content"]
                prompt = next((p for p in PROMPTS if p["prompt"] == text), None)
                if prompt is not None:
                    out.append(f"[{entry.name}:{prompt['id']}]" + "x" * PAD[entry.name])
                else:
                    out.append(nlu_answer(entry.name, text))
            return out

        return generate

    return factory


def judge(kind: str):
    """A judge that prefers per PREFERRED; it reads which model's answer is shown first from the tags."""

    def answer(body):
        shown = TAG.findall(body["messages"][-1]["content"])
        (m1, pid), (m2, _) = shown[0], shown[1]
        winner = PREFERRED.get((m1, m2), PREFERRED.get((m2, m1)))[pid]
        first = "tie" if winner == "tie" else ("1" if winner == m1 else "2")
        if kind == "rllr":
            return {"1": "Answer 1 is better", "2": "Answer 2 is better", "tie": "Equal"}[
                first
            ] + ". Because."
        ranks = {"1": (1, 2), "2": (2, 1), "tie": (1, 1)}[first]
        return json.dumps([{"model": "model_1", "rank": ranks[0]}, {"model": "model_2", "rank": ranks[1]}])

    return answer


def length_scorer(entry):
    sign = 1.0 if entry.name == "len" else -1.0  # "neg" scores short answers higher
    return lambda prompts, responses: [sign * len(r) for r in responses]


@pytest.fixture
def inputs(tmp_path):
    sst2 = tmp_path / "sst2.tsv"
    sst2.write_text("sentence\tlabel\n" + "".join(f"{s}\t{int(lab == 'positive')}\n" for s, lab in SST2))
    stsb = tmp_path / "stsb.tsv"  # the header-less 10-column GLUE layout
    stsb.write_text(
        "".join(f"{i}\tg\tf\t2012\t{i}\ts1\ts2\t{a}\t{b}\t{y}\n" for i, (a, b, y) in enumerate(STSB))
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps(h) + "\n" for h in HUMAN))
    return {"sst2": sst2, "stsb": stsb, "prompts": prompts, "human": human}


def scripted_config(tmp_path, inputs, server, kind="rllr", **extra):
    return from_dict(
        evaluate.Config,
        {
            "output_dir": str(tmp_path / f"eval-{kind}"),
            "models": [{"name": n, "path": f"unused/{n}"} for n in ("sft", "rlhf", "rllr")],
            "tasks": [
                {"task": "sst2", "data": str(inputs["sst2"])},
                {"task": "stsb", "data": str(inputs["stsb"])},
            ],
            "reward_models": [{"name": "len", "path": "unused"}, {"name": "neg", "path": "unused"}],
            "human_preferences": str(inputs["human"]),
            "histogram_bins": 2,
            "win_rate": {
                "prompts": str(inputs["prompts"]),
                "baseline": "sft",
                "judge_prompt": kind,
                "judge": {"backend": "openai", "base_url": server.url, "model": "judge", "max_retries": 1},
            },
            **extra,
        },
    )


@pytest.mark.parametrize("kind", ["rllr", "alpaca_eval"])
def test_scripted_run_gives_hand_computed_numbers(tmp_path, inputs, chat_server, kind):
    chat_server.answer = judge(kind)
    cfg = scripted_config(tmp_path, inputs, chat_server, kind)
    calls: list[str] = []
    res = evaluate.run(cfg, generator_factory=fake_factory(calls), scorer_factory=length_scorer)
    ev = json.loads(res.eval_path.read_text())
    assert calls == ["sft", "rlhf", "rllr"]  # each model loaded once
    approx = pytest.approx

    # NLU. SST-2: sft 2/4, rlhf 3/4 (one unparseable = wrong), rllr 4/4.
    assert [ev[f"eval/{m}/sst2/accuracy"] for m in ("sft", "rlhf", "rllr")] == [0.5, 0.75, 1.0]
    assert [ev[f"eval/{m}/sst2/unparseable_rate"] for m in ("sft", "rlhf", "rllr")] == [0.0, 0.25, 0.0]
    # STS-B Pearson, golds y = [1, 2, 3, 4] (mean 2.5, dy = [-1.5, -.5, .5, 1.5], sum dy^2 = 5):
    # sft x = [1.5, 2, 3.5, 4]: dx = [-1.25, -.75, .75, 1.25], sum dx dy = 4.5, sum dx^2 = 4.25 -> r = 4.5 / sqrt(21.25)
    # rlhf x = [2.5 (unparseable -> midpoint), 2, 3, 4]: dx = [-.375, -.875, .125, 1.125], sum dx dy = 2.75,
    # sum dx^2 = 2.1875 -> r = 2.75 / sqrt(10.9375)
    r_sft, r_rlhf = 4.5 / math.sqrt(21.25), 2.75 / math.sqrt(10.9375)
    assert ev["eval/sft/stsb/pearson"] == approx(r_sft, abs=1e-12)
    assert ev["eval/rlhf/stsb/pearson"] == approx(r_rlhf, abs=1e-12)
    assert ev["eval/rlhf/stsb/unparseable_rate"] == 0.25 and ev["eval/rllr/stsb/pearson"] == approx(1.0)
    # AVG. of Table 4: the mean of the two task columns.
    assert ev["eval/sft/avg"] == approx((0.5 + r_sft) / 2)
    assert ev["eval/rlhf/avg"] == approx((0.75 + r_rlhf) / 2)
    assert ev["eval/rllr/avg"] == approx(1.0)

    # Paired tests on the same SST-2 items (golds +, -, +, -). Correct: sft [1, 0, 1, 0], rlhf [1, 1, 1, 0]
    # (the unparseable 4th answer is wrong), rllr [1, 1, 1, 1]. Pairs in list order; d = a - b per item.
    # sft vs rlhf: d = [0, -1, 0, 0] -> b = 0, c = 1, diff = -1/4; var(d, ddof=1) = (1 - 4/16) / 3 = 1/4,
    #   SE = sqrt(1/4 / 4) = 1/4; McNemar(0, 1) = min(1, 2 * 1/2) = 1.
    # sft vs rllr: d = [0, -1, 0, -1] -> b = 0, c = 2, diff = -1/2; var = (2 - 4/4) / 3 = 1/3, SE = sqrt(1/12);
    #   McNemar(0, 2) = 2 * C(2,0) / 2^2 = 1/2.
    # rlhf vs rllr: d = [0, 0, 0, -1] -> as sft vs rlhf.
    expected = {
        ("sft", "rlhf"): (0.5, 0.75, -0.25, 0.25, 0, 1, 1.0),
        ("sft", "rllr"): (0.5, 1.0, -0.5, math.sqrt(1 / 12), 0, 2, 0.5),
        ("rlhf", "rllr"): (0.75, 1.0, -0.25, 0.25, 0, 1, 1.0),
    }
    for (a, b), (acc_a, acc_b, diff, se, n_b, n_c, p) in expected.items():
        key = f"eval/paired/sst2/{a}/{b}"
        assert ev[f"{key}/n"] == 4 and (ev[f"{key}/b"], ev[f"{key}/c"]) == (n_b, n_c)
        assert (ev[f"{key}/acc_a"], ev[f"{key}/acc_b"], ev[f"{key}/diff"]) == (acc_a, acc_b, diff)
        assert ev[f"{key}/diff_se"] == approx(se, abs=1e-15) and ev[f"{key}/mcnemar_p"] == p
        assert (ev[f"{key}/ci_low"], ev[f"{key}/ci_high"]) == approx((diff - 1.96 * se, diff + 1.96 * se))
    # Bootstrap, sft vs rllr: d* = -(number of -1 among 4 draws from [0, -1, 0, -1]) / 4, so d* >= 0 only when
    # all four draws are 0 (probability 1/2^4): p ~ 2/16 = 0.125; d* = -1 has mass 1/16 > 2.5% and d* = 0 too,
    # so the percentile interval is exactly [-1, 0]. sft vs rlhf: P(d* >= 0) = (3/4)^4 -> p ~ 0.633; the
    # 2.5% point falls on d* = -3/4 (P(d* <= -3/4) = 13/256 = 5.1%, P(d* = -1) = 0.4%).
    assert ev["eval/paired/sst2/sft/rllr/bootstrap_p"] == approx(0.125, abs=0.02)
    assert (
        ev["eval/paired/sst2/sft/rllr/bootstrap_ci_low"],
        ev["eval/paired/sst2/sft/rllr/bootstrap_ci_high"],
    ) == (-1.0, 0.0)
    assert ev["eval/paired/sst2/sft/rlhf/bootstrap_p"] == approx(2 * 0.75**4, abs=0.03)
    assert (
        ev["eval/paired/sst2/sft/rlhf/bootstrap_ci_low"],
        ev["eval/paired/sst2/sft/rlhf/bootstrap_ci_high"],
    ) == (-0.75, 0.0)
    assert not any(k.startswith("eval/paired/stsb/") for k in ev)  # Pearson: no per-item correctness
    assert not any(k.startswith("eval/paired/sst2/rlhf/sft/") for k in ev)  # each pair once, in list order

    # Win rates. Pairs in list order: (sft, rlhf), (sft, rllr), (rlhf, rllr).
    # sft vs rlhf per prompt (1 = sft wins): p0 0, p1 .5, p2 1, p3 0 -> 1.5 / 4 = .375; mirrored .625
    assert ev["eval/win_rate/sft/rlhf"] == 0.375 and ev["eval/win_rate/rlhf/sft"] == 0.625
    assert (
        ev["eval/win_rate/sft/rlhf/wins"],
        ev["eval/win_rate/sft/rlhf/losses"],
        ev["eval/win_rate/sft/rlhf/ties"],
    ) == (1, 2, 1)
    assert (ev["eval/win_rate/rlhf/sft/wins"], ev["eval/win_rate/rlhf/sft/losses"]) == (2, 1)
    se = math.sqrt(0.375 * 0.625 / 4)  # CRS Eq. 7.1, the same for the mirrored cell
    assert ev["eval/win_rate/sft/rlhf/se"] == approx(se) and ev["eval/win_rate/rlhf/sft/se"] == approx(se)
    assert ev["eval/win_rate/rlhf/sft/ci_low"] == approx(0.625 - 1.96 * se)
    assert ev["eval/win_rate/rlhf/sft/ci_high"] == approx(0.625 + 1.96 * se)
    assert ev["eval/win_rate/sft/rlhf/tie_rate"] == 0.25
    # rllr beats sft on all four: 1.0, SE 0, and the mirror 0.0
    assert ev["eval/win_rate/rllr/sft"] == 1.0 and ev["eval/win_rate/sft/rllr"] == 0.0
    assert ev["eval/win_rate/rllr/sft/se"] == 0.0
    # rlhf vs rllr: tie, tie, loss, loss -> 1 / 4
    assert ev["eval/win_rate/rlhf/rllr"] == 0.25 and ev["eval/win_rate/rllr/rlhf"] == 0.75
    assert ev["eval/win_rate/rlhf/rllr/ties"] == 2
    assert "eval/win_rate/sft/sft" not in ev
    # per dataset: oasst = p0, p1 -> sft vs rlhf [0, .5] = .25; koala = p2, p3 -> [1, 0] = .5
    assert ev["eval/win_rate_by_dataset/oasst/sft/rlhf"] == 0.25
    assert ev["eval/win_rate_by_dataset/koala/sft/rlhf"] == 0.5
    assert ev["eval/win_rate_by_dataset/koala/sft/rlhf/n"] == 2
    # per category: Reasoning = p0, p2 -> [0, 1] = .5; Creative = p1, p3 -> [.5, 0] = .25
    assert ev["eval/win_rate_by_category/Reasoning/sft/rlhf"] == 0.5
    assert ev["eval/win_rate_by_category/Creative/sft/rlhf"] == 0.25
    # per dataset x category: oasst / Reasoning = p0 only, rlhf won it
    assert ev["eval/win_rate_by_dataset_category/oasst/Reasoning/rlhf/sft"] == 1.0
    assert ev["eval/win_rate_by_dataset_category/oasst/Reasoning/rlhf/sft/n"] == 1
    assert ev["eval/datasets"] == ["koala", "oasst"] and ev["eval/categories"] == ["Creative", "Reasoning"]
    # RLLR Fig. 4 against sft: rlhf wins 2, ties 1, loses 1 of 4; rllr wins all
    assert [ev[f"eval/vs_baseline/rlhf/{k}"] for k in ("win", "tie", "lose", "n")] == [0.5, 0.25, 0.25, 4]
    assert [ev[f"eval/vs_baseline/rllr/{k}"] for k in ("win", "tie", "lose")] == [1.0, 0.0, 0.0]
    assert "eval/vs_baseline/sft/win" not in ev
    assert (
        ev["eval/judge/comparisons"] == 12 and ev["eval/judge/judged"] == 12 and ev["eval/judge/failed"] == 0
    )

    # Reward models. "len" scores = answer lengths: sft 8, rlhf 10, rllr 10. Non-tie verdicts (9):
    # sft/rlhf: p0 rlhf (10 > 8: 1), p2 sft (8 < 10: 0), p3 rlhf (1)            -> 2 of 3
    # sft/rllr: rllr wins 4x (10 > 8)                                          -> 4 of 4
    # rlhf/rllr: p2, p3 rllr, equal scores (1/2 each)                          -> 1 of 2
    assert ev["eval/rm/len/judge_agreement"] == approx(7 / 9) and ev["eval/rm/len/judge_agreement/n"] == 9
    assert ev["eval/rm/len/judge_agreement_by_pair/sft/rlhf"] == approx(2 / 3)
    assert ev["eval/rm/len/judge_agreement_by_pair/sft/rllr"] == 1.0
    assert ev["eval/rm/len/judge_agreement_by_pair/rlhf/rllr"] == 0.5
    # by dataset: oasst non-ties = sft/rlhf p0 (1), sft/rllr p0, p1 (2) -> 3/3; koala: 0 + 1 + 2 + .5 + .5 = 4 of 6
    assert ev["eval/rm/len/judge_agreement_by_dataset/oasst"] == 1.0
    assert ev["eval/rm/len/judge_agreement_by_dataset/koala"] == approx(4 / 6)
    assert ev["eval/rm/len/judge_agreement_by_dataset/koala/n"] == 6
    assert ev["eval/rm/len/judge_agreement_by_pair_dataset/sft/rlhf/koala"] == 0.5  # p2 (0) and p3 (1)
    # "neg" = -length: per verdict 1 - above except equal scores stay 1/2: 1 + 0 + 1 = 2 of 9
    assert ev["eval/rm/neg/judge_agreement"] == approx(2 / 9)
    # humans: chosen longer twice (1 each), equal length once (1/2): len 2.5 / 3, neg 0.5 / 3
    assert ev["eval/rm/len/human_agreement"] == approx(2.5 / 3) and ev["eval/rm/len/human_agreement/n"] == 3
    assert ev["eval/rm/neg/human_agreement"] == approx(0.5 / 3)
    # scores are the lengths themselves: r = rho = 1 (and -1 for "neg"); 12 answers
    assert ev["eval/rm/len/length_pearson"] == approx(1.0) and ev["eval/rm/len/length_spearman"] == approx(
        1.0
    )
    assert ev["eval/rm/neg/length_pearson"] == approx(-1.0) and ev["eval/rm/len/length_n"] == 12
    # distribution of "len": four 8s and eight 10s; two bins over [8, 10]: [8, 9) holds 4, [9, 10] holds 8
    dist = ev["eval/rm/len/score_distribution"]
    assert dist["count"] == 12 and dist["mean"] == approx(112 / 12) and dist["min"] == 8 and dist["max"] == 10
    assert dist["histogram"] == {"edges": [8.0, 9.0, 10.0], "counts": [4, 8]}
    assert ev["eval/rm/len/score_distribution/sft"]["histogram"]["counts"] == [4, 0]  # same edges per model
    assert ev["eval/sft/response_length/mean"] == 8.0

    # Audit files: every generation, every parsed answer, every judgment, every score.
    gens = read_jsonl(res.output_dir / "generations" / "rlhf.jsonl")
    assert len(gens) == 4 + 4 + 4 and {g["id"] for g in gens} >= {"nlu/sst2/3", "prompt/p2"}
    preds = [
        p
        for p in read_jsonl(res.output_dir / "nlu_predictions.jsonl")
        if p["model"] == "rlhf" and p["task"] == "sst2"
    ]
    assert [p["ok"] for p in preds] == [True, True, True, False] and preds[3]["correct"] is False
    judgments = read_jsonl(res.output_dir / "judgments.jsonl")
    assert len(judgments) == 12 and {j["swapped"] for j in judgments} == {
        True,
        False,
    }  # order randomized, recorded
    assert sum(j["outcome"] for j in judgments if (j["model_a"], j["model_b"]) == ("sft", "rlhf")) == 1.5
    assert len(read_jsonl(res.output_dir / "rm_scores.jsonl")) == 2 * 12
    tables = res.tables_path.read_text()
    assert "| sft | 50.00 | " + f"{100 * r_sft:.2f} | {100 * (0.5 + r_sft) / 2:.2f} |" in tables
    assert f"62.5% ± {100 * 1.96 * se:.1f} (n=4)" in tables
    half = 100 * 1.96 * math.sqrt(1 / 12)  # sft vs rllr: -50.00 ± 28.87, 95% CI -50 ± 56.58
    ci = f"[{-50 - half:+.2f}, {-50 + half:+.2f}]"
    assert f"| SST-2 | sft | rllr | 4 | 50.00 | 100.00 | -50.00 ± 28.87 | {ci} | 0.500 |" in tables

    # A rerun loads no model and asks the judge nothing: same numbers.
    requests = chat_server.count
    again = evaluate.run(cfg, generator_factory=fake_factory(calls), scorer_factory=length_scorer)
    assert calls == ["sft", "rlhf", "rllr"] and chat_server.count == requests
    assert again.metrics == ev


def test_changed_answers_are_generated_and_judged_again(tmp_path, inputs, chat_server):
    chat_server.answer = judge("rllr")
    cfg = scripted_config(tmp_path, inputs, chat_server, tasks=[], reward_models=[], human_preferences=None)
    calls: list[str] = []
    evaluate.run(cfg, generator_factory=fake_factory(calls))
    first = chat_server.count
    # Another generation budget for prompts: every stored answer is stale, so all are generated again; their
    # text is the same here, so the judge requests are identical and come from the cache (no new calls).
    cfg.generation.prompt_max_new_tokens = 7
    evaluate.run(cfg, generator_factory=fake_factory(calls))
    assert calls == ["sft", "rlhf", "rllr"] * 2 and chat_server.count == first
    rows = read_jsonl(tmp_path / "eval-rllr" / "generations" / "sft.jsonl")
    assert len(rows) == 4  # stale rows were replaced, not appended


def test_a_judge_that_never_answers_is_an_error_not_an_empty_win_rate(tmp_path, inputs, chat_server):
    chat_server.answer = lambda body: "I refuse to choose."  # no verdict: a failed comparison
    cfg = scripted_config(tmp_path, inputs, chat_server, tasks=[], reward_models=[], human_preferences=None)
    cfg.win_rate.judge.max_failed_fraction = 1.0  # even the loosest limit: nothing judged is an error
    with pytest.raises(
        BatchFailedError, match=r"evaluate: judge requests: 12 of 12 failed \(100%, none answered\)"
    ):
        evaluate.run(cfg, generator_factory=fake_factory([]))
    out = Path(cfg.output_dir)
    assert not (out / "eval.json").exists()
    assert len(read_jsonl(out / "judge_outputs.failures.jsonl")) == 12  # listed for the user


def test_failed_judgments_under_the_limit_are_counted_not_guessed(tmp_path, inputs, chat_server):
    # one request at a time, no retry: the first 3 of the 12 comparisons get a 500 (25% <= 50%)
    chat_server.answer = judge("rllr")
    chat_server.faults.extend([("status", 500, {}, "internal")] * 3)
    cfg = scripted_config(tmp_path, inputs, chat_server, tasks=[], reward_models=[], human_preferences=None)
    cfg.win_rate.judge.max_retries, cfg.win_rate.judge.concurrency = 0, 1
    ev = evaluate.run(cfg, generator_factory=fake_factory([])).metrics
    assert (ev["eval/judge/failed"], ev["eval/judge/judged"]) == (3, 9)
    n = sum(ev[f"eval/win_rate/{a}/{b}/n"] for a, b in (("rlhf", "sft"), ("rllr", "sft"), ("rlhf", "rllr")))
    assert n == 9  # the win rates use the judged comparisons only


def test_bad_prompt_row_names_file_and_record(tmp_path, inputs, chat_server):
    inputs["prompts"].write_text(
        json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"text": "no prompt"}) + "\n"
    )
    cfg = scripted_config(tmp_path, inputs, chat_server, tasks=[], reward_models=[], human_preferences=None)
    with pytest.raises(ValueError, match=r"prompts.jsonl: record 2: field 'prompt'"):
        evaluate.run(cfg, generator_factory=fake_factory([]))
    inputs["prompts"].write_text(
        json.dumps(PROMPTS[0]) + "\n" + json.dumps({**PROMPTS[1], "dataset": ["x"]}) + "\n"
    )
    with pytest.raises(ValueError, match=r"record 2: field 'dataset': expected a string"):
        evaluate.run(cfg, generator_factory=fake_factory([]))
    cfg.on_bad_row = "skip"
    cfg.models = cfg.models[:1]  # one model: no judge needed
    ev = evaluate.run(cfg, generator_factory=fake_factory([])).metrics
    assert ev["eval/sft/response_length/mean"] == 8.0  # the good prompt only


# Gold scores of each model's answer per prompt p0..p3 (the gold-reward-model protocol; no LLM judge).
GOLD = {"sft": [1.0, 2.0, 3.0, 4.0], "rlhf": [2.0, 2.0, 1.0, 5.0], "rllr": [3.0, 3.0, 3.0, 3.0]}


def gold_or_length_scorer(entry):
    if entry.name != "gold":
        return length_scorer(entry)
    return lambda prompts, responses: [
        GOLD[m][int(pid[1:])] for m, pid in (TAG.findall(r)[0] for r in responses)
    ]


def test_gold_reward_model_scores_compares_and_checks_the_proxies(tmp_path, inputs):
    cfg = from_dict(
        evaluate.Config,
        {
            "output_dir": str(tmp_path / "eval-gold"),
            "models": [{"name": n, "path": f"unused/{n}"} for n in ("sft", "rlhf", "rllr")],
            "reward_models": [{"name": n, "path": "unused"} for n in ("len", "neg", "gold")],
            "win_rate": {"prompts": str(inputs["prompts"]), "use_judge": False},
            "gold": {"reward_model": "gold"},
        },
    )
    result = evaluate.run(cfg, generator_factory=fake_factory([]), scorer_factory=gold_or_length_scorer)
    ev = json.loads(result.eval_path.read_text())
    assert not (result.output_dir / "judgments.jsonl").exists()  # no LLM judge was asked
    # means and SE (ddof 1) over the 4 prompts: sft 2.5 +- sqrt(5/12), rlhf 2.5 +- sqrt(3/4), rllr 3 +- 0
    for model, mean, se in (
        ("sft", 2.5, math.sqrt(5 / 12)),
        ("rlhf", 2.5, math.sqrt(3 / 4)),
        ("rllr", 3.0, 0.0),
    ):
        assert ev[f"eval/gold/{model}/mean"] == pytest.approx(mean)
        assert ev[f"eval/gold/{model}/se"] == pytest.approx(se)
        assert ev[f"eval/gold/{model}/n"] == 4
    # by gold score, a tie counting 1/2: rlhf vs sft W T L W; rllr vs sft W W T L; rllr vs rlhf W W W L
    assert ev["eval/gold_win_rate/rlhf/sft"] == pytest.approx(0.625)
    assert ev["eval/gold_win_rate/sft/rlhf"] == pytest.approx(0.375)
    assert ev["eval/gold_win_rate/rllr/sft"] == pytest.approx(0.625)
    assert ev["eval/gold_win_rate/rllr/rlhf"] == pytest.approx(0.75)
    assert ev["eval/gold_win_rate/rllr/rlhf/n"] == 4
    assert ev["eval/gold_win_rate_by_dataset/koala/rllr/rlhf"] == pytest.approx(0.5)  # p2 W, p3 L
    # proxies against the 10 non-tie gold comparisons: length agrees on 6 (equal lengths count 1/2), -length on 4
    assert ev["eval/rm/len/gold_agreement"] == pytest.approx(0.6)
    assert ev["eval/rm/neg/gold_agreement"] == pytest.approx(0.4)
    assert ev["eval/rm/len/gold_agreement/n"] == 10
    assert "eval/rm/gold/gold_agreement" not in ev
    tables = result.tables_path.read_text()
    assert "Gold reward model" in tables and "62.5%" in tables


def test_config_validation():
    base = {"models": [{"name": "a", "path": "tiny"}]}
    with pytest.raises(ConfigError, match="gold.reward_model 'g' is not the name of a reward_models entry"):
        from_dict(evaluate.Config, {**base, "gold": {"reward_model": "g"}})
    with pytest.raises(ConfigError, match="needs win_rate.prompts"):
        from_dict(
            evaluate.Config,
            {**base, "reward_models": [{"name": "g", "path": "x"}], "gold": {"reward_model": "g"}},
        )
    with pytest.raises(ConfigError, match="not the name of a model"):
        from_dict(evaluate.Config, {**base, "win_rate": {"baseline": "b"}})
    with pytest.raises(ConfigError, match="reserved"):
        from_dict(evaluate.Config, {"models": [{"name": "win_rate", "path": "tiny"}]})
    with pytest.raises(ConfigError, match="reserved"):
        from_dict(evaluate.Config, {"models": [{"name": "paired", "path": "tiny"}]})
    with pytest.raises(ConfigError, match="bootstrap_resamples"):
        from_dict(evaluate.Config, {**base, "paired": {"bootstrap_resamples": 0}})
    with pytest.raises(ConfigError, match="must be letters"):
        from_dict(evaluate.Config, {"models": [{"name": "a/b", "path": "tiny"}]})
    with pytest.raises(ConfigError, match="duplicate"):
        from_dict(evaluate.Config, {"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]})
    with pytest.raises(ConfigError, match="missing required key 'models\\[0\\].path'|'path'"):
        from_dict(evaluate.Config, {"models": [{"name": "a"}]})


def test_shipped_config_loads_strictly(tmp_path):
    cfg = load_config(evaluate.Config, REPO / "configs" / "evaluate.yaml", stage="evaluate")
    assert [m.name for m in cfg.models] and cfg.win_rate.baseline in [m.name for m in cfg.models]
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "evaluate.yaml").read_text() + "win_rat: {}\n")
    with pytest.raises(ConfigError, match="unknown key 'win_rat'"):
        load_config(evaluate.Config, bad, stage="evaluate")


# ---------------------------------------------------------------------------------------------------------
# Real tiny models


def test_tiny_models_and_reward_model_end_to_end(tmp_path, inputs, chat_server):
    from rewardmix.models.heads import ScalarHeadModel
    from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rm_dir = tmp_path / "rm"
    ScalarHeadModel(build_tiny_causal_lm(tok, seed=7), seed=0).save_pretrained(rm_dir, tokenizer=tok)
    out = tmp_path / "eval-tiny"

    def answers_of(model):
        rows = read_jsonl(out / "generations" / f"{model}.jsonl")
        return {r["prompt_id"]: r["text"] for r in rows if r["kind"] == "prompt"}

    def tiny_judge(body):
        """Prefers m2's answer unless both answers are the same text (then "Equal")."""
        text = body["messages"][-1]["content"]
        first = re.search(r"\[Answer 1\] (.*)\n\n\[Answer 2\] ", text, re.S).group(1)
        question = re.search(r"\[Question\] (.*?)\n\n\[Answer 1\]", text, re.S).group(1)
        pid = next(p["id"] for p in PROMPTS if p["prompt"] == question)
        m1, m2 = answers_of("m1")[pid], answers_of("m2")[pid]
        if m1 == m2:
            return "Equal"
        return "Answer 1 is better" if first == m2 else "Answer 2 is better"

    chat_server.answer = tiny_judge
    cfg = from_dict(
        evaluate.Config,
        {
            "output_dir": str(out),
            "cpu": True,
            "models": [{"name": "m1", "path": "tiny:1"}, {"name": "m2", "path": "tiny:2"}],
            "tasks": [{"task": "sst2", "data": str(inputs["sst2"]), "limit": 3}],
            "reward_models": [{"name": "rm", "path": str(rm_dir), "batch_size": 3}],
            "generation": {"nlu_max_new_tokens": 6, "prompt_max_new_tokens": 6, "batch_size": 3},
            "win_rate": {
                "prompts": str(inputs["prompts"]),
                "baseline": "m1",
                "judge": {"backend": "openai", "base_url": chat_server.url, "model": "judge"},
            },
        },
    )
    ev = evaluate.run(cfg).metrics
    # NLU: whatever the random models said, the counts agree with the stored parses.
    for m in ("m1", "m2"):
        preds = [p for p in read_jsonl(out / "nlu_predictions.jsonl") if p["model"] == m]
        assert len(preds) == 3 and ev[f"eval/{m}/sst2/n"] == 3
        assert ev[f"eval/{m}/sst2/unparseable_rate"] == sum(not p["ok"] for p in preds) / 3
        assert ev[f"eval/{m}/sst2/accuracy"] == sum(bool(p["correct"]) for p in preds) / 3
    # Win rates: m2 wins every prompt where the answers differ, ties the others.
    a1, a2 = answers_of("m1"), answers_of("m2")
    differ = sum(a1[p["id"]] != a2[p["id"]] for p in PROMPTS)
    assert differ >= 1
    assert ev["eval/win_rate/m2/m1"] == pytest.approx((differ + 0.5 * (4 - differ)) / 4)
    assert ev["eval/win_rate/m2/m1/wins"] == differ and ev["eval/vs_baseline/m2/win"] == differ / 4
    # Reward model: agreement recomputed from the stored scores and verdicts.
    scores = {(r["model"], r["prompt_id"]): r["score"] for r in read_jsonl(out / "rm_scores.jsonl")}
    values = []
    for j in read_jsonl(out / "judgments.jsonl"):
        if j["verdict"] != "tie":
            win, lose = ("m1", "m2") if j["verdict"] == "a" else ("m2", "m1")
            s_w, s_l = scores[(win, j["prompt_id"])], scores[(lose, j["prompt_id"])]
            values.append(1.0 if s_w > s_l else 0.5 if s_w == s_l else 0.0)
    assert ev["eval/rm/rm/judge_agreement"] == pytest.approx(sum(values) / len(values))
    assert ev["eval/rm/rm/score_distribution"]["count"] == 8


def test_cli_exits_1_when_most_judge_requests_fail(tmp_path, inputs, chat_server, capsys):
    """Issue 17: through ``rewardmix evaluate``, 3 of 4 comparisons failing is exit 1 with the cause, not a win
    rate from the one that succeeded; under a looser ``max_failed_fraction`` the same run succeeds."""
    from rewardmix import cli

    chat_server.answer = lambda body: "Answer 1 is better. It is clearer."
    config = tmp_path / "eval.yaml"
    config.write_text(
        "models:\n  - {name: m1, path: 'tiny:1'}\n  - {name: m2, path: 'tiny:2'}\n"
        "cpu: true\ngeneration: {prompt_max_new_tokens: 4, batch_size: 4}\n"
        f"win_rate:\n  prompts: {inputs['prompts']}\n"
        f"  judge: {{backend: openai, base_url: '{chat_server.url}', model: judge, max_retries: 0, concurrency: 1}}\n"
    )
    chat_server.faults.extend([("status", 500, {}, "internal")] * 3)  # the first 3 of the 4 comparisons
    assert cli.main(["evaluate", str(config), f"output_dir={tmp_path / 'e1'}"]) == 1
    err = capsys.readouterr().err
    assert "evaluate: judge requests: 3 of 4 failed (75%, above max_failed_fraction=0.5)" in err
    assert "HTTP 500" in err and "Traceback" not in err
    assert not (tmp_path / "e1" / "eval.json").exists()

    chat_server.faults.extend([("status", 500, {}, "internal")] * 3)
    argv = [
        "evaluate",
        str(config),
        f"output_dir={tmp_path / 'e2'}",
        "win_rate.judge.max_failed_fraction=0.8",
    ]
    assert cli.main(argv) == 0
    ev = json.loads((tmp_path / "e2" / "eval.json").read_text())
    assert (ev["eval/judge/failed"], ev["eval/judge/judged"]) == (3, 1)
