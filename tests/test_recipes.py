"""Every shipped recipe loads strictly, under every profile, and the paper recipes keep the papers' numbers.

A recipe is checked as ``rewardmix run`` checks it before its first step (``rewardmix.stages.run.resolve_steps``):
each step's config, with ``${steps.<name>.output_dir}`` references replaced and the profile's overrides merged, is
built strictly into its stage's ``Config``. Nothing runs and nothing is downloaded. Hub dataset names (``hf:...``)
must parse, and a task read from the hub must have a declared column mapping for that dataset.

The paper recipes (``recipes/gpu/``) are then pinned to the values their header cites: RLLR Tables 2-3 and §4.1,
CRS Tables 3, 5 and 8, so that an edit cannot drift from the paper silently. Values the papers do not publish
are not pinned here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rewardmix.config import load_config, load_yaml, to_dict
from rewardmix.data.readers import is_hub_source, parse_hub_source
from rewardmix.data.tasks import get_task
from rewardmix.stages import run

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    [
        *REPO.glob("recipes/**/*.yaml"),
        *(p for p in REPO.glob("configs/*.yaml") if load_yaml(p).get("stage") == "run"),
    ]
)
RLLR = REPO / "recipes" / "gpu" / "rllr-paper.yaml"
CRS = REPO / "recipes" / "gpu" / "crs-oasst.yaml"


def load(path: Path) -> run.Config:
    return load_config(run.Config, path, stage="run")


def profiles(path: Path) -> list[str | None]:
    return [None, *load(path).profiles]


def resolved(path: Path, profile: str | None = None) -> dict[str, run.ResolvedStep]:
    """The steps of ``path`` (under ``profile``) resolved as ``rewardmix run`` does, by name."""
    cfg = dataclasses.replace(load(path), profile=profile)
    return {step.name: step for step in run.resolve_steps(cfg)}


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings(v)


def test_the_paper_recipes_are_shipped() -> None:
    assert RLLR in RECIPES and CRS in RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_resolves_every_step_under_every_profile(path: Path) -> None:
    for profile in profiles(path):
        steps = resolved(path, profile)
        assert steps, f"{path}: no steps"
        for step in steps.values():
            # every reference was replaced by an earlier step's directory
            leftover = [s for s in strings(to_dict(step.config)) if "${" in s]
            assert not leftover, f"{path} [{profile}] step {step.name}: unresolved {leftover}"
        if profile is not None:
            run_dir = load(path).profiles[profile].output_dir
            assert run_dir and run_dir != load(path).output_dir, (
                f"{path}: profile {profile} shares the run directory"
            )


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_has_a_usage_header(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    header = text.split("\nstage:", 1)[0]
    assert header.startswith("# "), f"{path}: starts with a header comment"
    for needle in ("What", "Hardware:", "Run:", f"rewardmix run {path.relative_to(REPO)}"):
        assert needle in header, f"{path}: the header names {needle!r}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_hub_datasets_parse_and_tasks_map_their_columns(path: Path) -> None:
    for step in resolved(path).values():
        data = to_dict(step.config)
        for text in strings(data):
            if is_hub_source(text):
                parse_hub_source(text)  # raises on a malformed name
        entries = data.get("tasks") or ([data] if step.stage in ("split", "rationales") else [])
        for entry in entries:
            text = entry.get("data")
            if is_hub_source(text) and not text.startswith("hf://"):
                hub = parse_hub_source(text)
                declared = get_task(entry["task"]).hub
                assert f"{hub.dataset}:{hub.config_name}" in declared or hub.dataset in declared, (
                    f"{path} step {step.name}: task {entry['task']} declares no columns for {text}"
                )


def test_references_inside_lists_are_replaced() -> None:
    cfg = run.Config(
        output_dir="runs/r",
        steps=[
            run.StepConfig("a", "pairs", {"input": "x.jsonl"}),
            run.StepConfig(
                "b", "evaluate-rm", {"model": "m", "pairs": ["${steps.a.output_dir}/eval.jsonl", "y.jsonl"]}
            ),
        ],
    )
    assert run.resolve_steps(cfg)[1].config.pairs == ["runs/r/a/eval.jsonl", "y.jsonl"]


def test_no_recipe_holds_an_api_key() -> None:
    for path in RECIPES:
        text = path.read_text(encoding="utf-8")
        assert "sk-" not in text and "api_key:" not in text, path


# ---------------------------------------------------------------------------------------------------------
# RLLR (recipes/gpu/rllr-paper.yaml): RLLR §4.1, Tables 2 and 3


def batch(optim: Any) -> int:
    return optim.micro_batch_size * optim.gradient_accumulation_steps


@pytest.fixture(scope="module")
def rllr() -> dict[str, Any]:
    return {name: step.config for name, step in resolved(RLLR).items()}


def test_rllr_table2_caps_and_hub_sources(rllr: dict[str, Any]) -> None:
    table2_sft = {
        "mr": 2000,
        "agnews": 5000,
        "appreviews": 5000,
        "mrpc": 1000,
        "qqp": 5000,
        "mnli": 5000,
        "sst2": 5000,
        "stsb": 5000,
    }
    for task, n in table2_sft.items():
        assert rllr[f"split_{task}"].sizes["sft"] == n, task
        assert rllr[f"split_{task}"].data.startswith("hf:"), task
    assert rllr["split_appreviews"].sizes["ppo"] == 4426 and rllr["split_appreviews"].sizes["test"] == 1000
    assert rllr["split_mrpc"].sizes["ppo"] is None  # the 2,668 left of 3,668
    eval_tasks = [t.task for t in rllr["evaluate"].tasks]
    assert eval_tasks == ["mr", "agnews", "appreviews", "mrpc", "qqp", "mnli_m", "mnli_mm", "sst2", "stsb"]
    assert all(t.limit == 1000 for t in rllr["evaluate"].tasks)  # "up to 1,000 examples from each task"


def test_rllr_lora_rank_16_everywhere(rllr: dict[str, Any]) -> None:
    trained = [c for c in rllr.values() if hasattr(c, "lora")]
    assert len(trained) == 7  # sft_rat, sft, rm_label, rm_rationale and three PPO runs
    assert all(c.lora.enabled and c.lora.r == 16 for c in trained)  # RLLR §4.1: "a fixed LoRA rank of 16"


def test_rllr_table3_sft(rllr: dict[str, Any]) -> None:
    rat, plain = rllr["sft_rat"], rllr["sft"]
    assert rat.examples.with_rationale and not plain.examples.with_rationale
    assert 1e-4 <= rat.optim.learning_rate <= 1e-3 and batch(rat.optim) == 128 and rat.phases[0].epochs == 10
    assert (
        1e-5 <= plain.optim.learning_rate <= 2e-5
        and batch(plain.optim) == 128
        and plain.phases[0].epochs == 20
    )
    assert rat.model.name == "meta-llama/Llama-2-7b-hf" and rat.lora.merge_lora
    assert plain.model.name == rat.model.name


def test_rllr_table3_reward_models(rllr: dict[str, Any]) -> None:
    label, rationale = rllr["rm_label"], rllr["rm_rationale"]
    assert 1e-4 <= label.optim.learning_rate <= 1e-3 and label.optim.epochs == 1  # RLLR reward
    assert rationale.optim.learning_rate == 2e-4 and rationale.optim.epochs == 10  # RLHF reward
    for rm in (label, rationale):
        assert 64 <= batch(rm.optim) <= 128 and rm.objective.kind == "pairwise"
        assert rm.model.name == rllr["sft_rat"].output_dir + "/model"  # initialized from SFT w. rat.
    assert label.data.train == rllr["pairs_label"].output_dir + "/train.jsonl"
    assert rationale.data.train == rllr["pairs_rationale"].output_dir + "/train.jsonl"
    assert rllr["sample_sft"].generation.num_samples == 5  # RLLR App. C: 5 responses per example
    assert rllr["pairs_rationale"].source == "rankings"


def test_rllr_table3_ppo_and_the_three_rewards(rllr: dict[str, Any]) -> None:
    for name in ("ppo_rlhf", "ppo_rllr", "ppo_rllr_mixed"):
        ppo = rllr[name]
        assert 2e-6 <= ppo.ppo.learning_rate <= 1e-5 and 16 <= ppo.ppo.batch_size <= 32, name
        assert ppo.data.epochs == 1 and ppo.model.name == rllr["sft_rat"].output_dir + "/model", name
        assert ppo.data.prompts == rllr["ppo_prompts"].output_dir + "/data.jsonl", name

    def rms(name: str) -> list[tuple[str, str | None]]:
        return [(c.reward_model.path, c.reward_model.role) for c in rllr[name].reward.components]

    label = (rllr["rm_label"].output_dir + "/adapter", "rm_label")
    rationale = (rllr["rm_rationale"].output_dir + "/adapter", "rm_rationale")
    assert rms("ppo_rlhf") == [rationale]
    assert rms("ppo_rllr") == [label]
    assert rms("ppo_rllr_mixed") == [label, rationale]  # r1 (capped at λ) first: RLLR Eq. 4
    assert rllr["ppo_rllr_mixed"].reward.combinator == "threshold"


def test_rllr_gpt4_teacher_and_judge(rllr: dict[str, Any]) -> None:
    llms = [rllr[n].teacher for n in rllr if n.startswith("rationales_")] + [rllr["rank"].judge]
    llms.append(rllr["evaluate"].win_rate.judge)
    assert len(llms) == 10
    assert all(
        c.backend == "openai" and c.model == "gpt-4" and c.api_key_env == "OPENAI_API_KEY" for c in llms
    )
    assert (
        rllr["evaluate"].win_rate.judge_prompt == "rllr" and rllr["evaluate"].win_rate.baseline == "sft_rat"
    )


@pytest.mark.parametrize("profile", ["mistral_7b", "bloom_7b", "llama2_13b"])
def test_rllr_profiles_only_change_the_base_model(profile: str) -> None:
    base, other = resolved(RLLR), resolved(RLLR, profile)
    assert other["sft_rat"].config.model.name != base["sft_rat"].config.model.name
    assert other["sft"].config.model.name == other["sft_rat"].config.model.name
    for name in ("sft_rat", "sft", "rm_label", "rm_rationale"):
        a, b = base[name].config, other[name].config
        assert (a.optim, a.lora) == (b.optim, b.lora), name
    assert other["ppo_rllr"].config.ppo == base["ppo_rllr"].config.ppo
    assert other["sft_rat"].config.output_dir.startswith(load(RLLR).profiles[profile].output_dir)


# ---------------------------------------------------------------------------------------------------------
# CRS (recipes/gpu/crs-oasst.yaml): CRS §5, Tables 3, 5 and 8


@pytest.fixture(scope="module")
def crs() -> dict[str, Any]:
    return {name: step.config for name, step in resolved(CRS).items()}


def test_crs_data_by_hub_id(crs: dict[str, Any]) -> None:
    assert crs["oasst"].train == "hf:OpenAssistant/oasst1:train"
    assert crs["oasst"].reward_languages == ["en", "es", "fr", "de"]  # CRS §5.1.2
    assert crs["oasst"].sft_top_languages == 20 and crs["oasst"].rating_weights == {"quality": 1.0}
    assert [i.format for i in crs["pre_sft_data"].inputs] == ["alpaca", "dolly", "gsm8k"]
    assert crs["eval_prompts"].inputs[0].data.startswith("hf://datasets/tatsu-lab/alpaca_eval/")
    assert crs["eval_prompts"].limit == 100  # CRS §5.5.1: 100 prompts


def test_crs_table3_sft(crs: dict[str, Any]) -> None:
    sft = crs["sft"]
    o = sft.optim
    assert (o.adam_betas, o.adam_epsilon, o.learning_rate) == ((0.9, 0.999), 1e-12, 1e-4)
    assert (o.warmup_ratio, o.max_grad_norm, o.micro_batch_size, o.gradient_accumulation_steps) == (
        0.03,
        0.3,
        4,
        16,
    )
    assert (sft.lora.r, sft.lora.alpha, sft.lora.target_modules) == (16, 32, None)
    assert [(p.name, p.epochs) for p in sft.phases] == [("pre_sft", 1), ("sft", 2)]  # CRS §5.2
    assert sft.examples.max_length == 2048 and sft.examples.min_prompt_tokens == 256


def test_crs_table5_reward_models(crs: dict[str, Any]) -> None:
    for name, size in (("rm_pref", 32), ("rm_abs", 128)):  # CRS §5.3: batch 32 preference, 128 absolute
        rm = crs[name]
        o = rm.optim
        assert (o.adam_betas, o.learning_rate, o.warmup_ratio, o.max_grad_norm) == (
            (0.9, 0.95),
            5e-5,
            0.03,
            0.3,
        )
        assert o.gradient_accumulation_steps == 16 and batch(o) == size and o.epochs == 1, name
        assert (rm.lora.r, rm.lora.alpha, rm.lora.target_modules) == (16, 32, None), name
        assert (rm.model.max_length, rm.model.min_prompt_tokens) == (2048, 256), name
        assert rm.model.name == crs["sft"].output_dir + "/model", name
    assert crs["rm_pref"].objective.kind == "ranking"
    abs_rm = crs["rm_abs"]
    # the thesis' chosen absolute model: logistic + augment + under_s_8k + wgt_s_075 (CRS §5.3.2)
    assert abs_rm.objective.kind == "absolute" and abs_rm.objective.absolute_loss == "logistic"
    assert (
        tuple(abs_rm.balance.undersample_range) == (0.41, 0.89) and abs_rm.balance.undersample_total == 8000
    )
    assert abs_rm.balance.weight_strength == 0.75 and abs_rm.balance.oversample_range is None
    assert abs_rm.augment.paraphrases == crs["paraphrases"].output_dir + "/data.jsonl"


def test_crs_table8_ppo(crs: dict[str, Any]) -> None:
    for name in ("ppo_pref", "ppo_abs", "ppo_crs"):
        cfg = crs[name]
        p = cfg.ppo
        assert (p.adam_betas, p.adam_epsilon, p.weight_decay, p.learning_rate) == (
            (0.9, 0.95),
            1e-8,
            1e-6,
            1.41e-5,
        )
        assert (p.batch_size, p.ppo_epochs, p.kl.init_coef) == (16, 4, 0.002), name
        assert (p.clip_range, p.clip_range_value, p.score_clip) == (0.4, 0.4, 4.0), name
        assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (16, 32, None), name
        assert (cfg.data.max_prompt_tokens, cfg.generation.max_new_tokens) == (1024, 512), name  # CRS §5.4
        assert all(c.output == "logit" for c in cfg.reward.components), name  # logits, not bounded (Fig. 21)
    crs_reward = crs["ppo_crs"].reward
    assert crs_reward.combinator == "weighted"
    assert [(c.name, c.weight) for c in crs_reward.components] == [("pref_rm", 0.25), ("abs_rm", 0.75)]
    assert [c.name for c in crs["ppo_pref"].reward.components] == ["pref_rm"]
    assert [c.name for c in crs["ppo_abs"].reward.components] == ["abs_rm"]


def test_crs_judge_and_the_weight_profile(crs: dict[str, Any]) -> None:
    wr = crs["evaluate"].win_rate
    assert (wr.judge.model, wr.judge_prompt, wr.judge.api_key_env) == (
        "gpt-4-turbo",
        "alpaca_eval",
        "OPENAI_API_KEY",
    )
    other = resolved(CRS, "weight_0625")["ppo_crs"].config
    assert [c.weight for c in other.reward.components] == [0.625, 0.375]
    assert other.ppo == crs["ppo_crs"].ppo


def test_rllr_sentiment_grpo_profile_changes_only_the_estimator() -> None:
    path = REPO / "recipes" / "rllr-sentiment.yaml"
    full, grpo = resolved(path), resolved(path, "grpo")
    roots = [str(Path(steps["split"].config.output_dir).parent) for steps in (full, grpo)]
    assert roots[0] != roots[1] and list(full) == list(grpo)
    ppo_steps = [name for name in full if full[name].stage == "ppo"]
    assert len(ppo_steps) == 8
    for name in full:
        a = json.loads(json.dumps(to_dict(full[name].config)).replace(roots[0], roots[1]))
        b = json.loads(json.dumps(to_dict(grpo[name].config)))
        if name in ppo_steps:
            assert a["ppo"].pop("advantage") == "rloo" and b["ppo"].pop("advantage") == "grpo", name
        assert a == b, name


@pytest.mark.parametrize("profile", [None, "repro"])
def test_rllr_sentiment_seed_copies_differ_from_their_step_only_in_seed(profile: str | None) -> None:
    steps = resolved(REPO / "recipes" / "rllr-sentiment.yaml", profile)

    def plain(name: str) -> dict[str, Any]:
        return {k: v for k, v in to_dict(steps[name].config).items() if k not in ("seed", "output_dir")}

    copies = [n for n in steps if n.startswith(("ppo_rllr_s", "ppo_oracle_s"))]
    assert copies  # both profiles keep the RLLR seeds
    for name in copies:
        base = name.rsplit("_s", 1)[0]
        assert plain(name) == plain(base), name
        assert steps[name].config.seed != steps[base].config.seed
    label_rm = steps["ppo_rllr_s1"].config.reward.components[0]
    assert label_rm.reward_model.path == steps["rm_label"].config.output_dir + "/model"
