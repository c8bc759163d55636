"""The recipe stage: steps run in order, finished ones are skipped, a changed or cut-off one runs again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rewardmix.config import ConfigError, load_config
from rewardmix.rundir import prepare_run_dir, read_jsonl
from rewardmix.stages import run, sft

REPO = Path(__file__).resolve().parents[2]


def fake_model_folder(out: Path) -> None:
    """What step b names as its model (checked before it runs, as a real sft run's output would be)."""
    (out / "model").mkdir(exist_ok=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "model" / "model.safetensors").write_bytes(b"")


@pytest.fixture
def calls(monkeypatch):
    """Replace sft.run by a fast fake that records which run directories it was called on."""
    seen: list[str] = []

    def fake_run(cfg: sft.Config) -> str:
        seen.append(Path(cfg.output_dir).name)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "done.txt").write_text(cfg.model.name)
        fake_model_folder(out)
        return f"result of {out.name}"

    monkeypatch.setattr(sft, "run", fake_run)
    return seen


def write_recipe(tmp_path: Path, *, a: dict | None = None, b: dict | None = None) -> Path:
    steps = [
        {"name": "a", "stage": "sft", "config": {"model": {"name": "tiny"}, **(a or {})}},
        {
            "name": "b",
            "stage": "sft",
            "config": {"model": {"name": "${steps.a.output_dir}/model"}, **(b or {})},
        },
    ]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"stage": "run", "output_dir": str(tmp_path / "out"), "steps": steps}))
    return path


def run_recipe(path: Path) -> run.RecipeResult:
    return run.run(load_config(run.Config, path, stage="run"))


def statuses(result: run.RecipeResult) -> list[tuple[str, str]]:
    return [(s.name, s.status) for s in result.steps]


def test_two_steps_run_in_order_then_a_rerun_skips_both(tmp_path, calls):
    path = write_recipe(tmp_path)
    first = run_recipe(path)
    assert statuses(first) == [("a", "ran"), ("b", "ran")]
    assert calls == ["a", "b"]
    assert [s.result for s in first.steps] == ["result of a", "result of b"]
    state = json.loads((tmp_path / "out" / run.STATE_FILE).read_text())
    assert set(state["steps"]) == {"a", "b"}

    again = run_recipe(path)
    assert statuses(again) == [("a", "skipped"), ("b", "skipped")]
    assert calls == ["a", "b"], "a finished step's stage must not run again"
    assert [s.result for s in again.steps] == [None, None]


def test_changing_step_two_reruns_step_two_only(tmp_path, calls):
    run_recipe(write_recipe(tmp_path))
    result = run_recipe(write_recipe(tmp_path, b={"seed": 7}))
    assert statuses(result) == [("a", "skipped"), ("b", "ran")]
    assert calls == ["a", "b", "b"]
    # The finished run of the old config is kept beside, not resumed as "already done", not deleted.
    assert len(list((tmp_path / "out").glob("b.stale-*"))) == 1
    assert not list((tmp_path / "out").glob("a.stale-*"))


def test_changing_step_one_reruns_both(tmp_path, calls):
    run_recipe(write_recipe(tmp_path))
    result = run_recipe(write_recipe(tmp_path, a={"seed": 7}))
    assert statuses(result) == [("a", "ran"), ("b", "ran")]
    assert calls == ["a", "b", "a", "b"]


def test_a_kill_during_step_two_resumes_there(tmp_path, calls, monkeypatch):
    fake_run = sft.run

    def killed_in_b(cfg):
        if Path(cfg.output_dir).name == "b":
            Path(cfg.output_dir).mkdir(parents=True)
            (Path(cfg.output_dir) / "checkpoint").write_text("half")
            raise KeyboardInterrupt
        return fake_run(cfg)

    path = write_recipe(tmp_path)
    monkeypatch.setattr(sft, "run", killed_in_b)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path)
    monkeypatch.setattr(sft, "run", fake_run)

    result = run_recipe(path)
    assert statuses(result) == [("a", "skipped"), ("b", "ran")]
    assert calls == ["a", "b"]
    # The cut-off step resumes in its own directory (its checkpoints are there), not in a fresh one.
    assert (tmp_path / "out" / "b" / "checkpoint").read_text() == "half"
    assert not list((tmp_path / "out").glob("b.stale-*"))


def test_a_bad_key_in_the_last_step_fails_before_any_step_runs(tmp_path, calls):
    path = write_recipe(tmp_path, b={"optim": {"learning_rte": 1e-3}})
    with pytest.raises(ConfigError, match=r"recipe step 'b'.*unknown key 'optim.learning_rte'"):
        run_recipe(path)
    assert calls == []


def test_a_bad_key_message_names_the_recipe_line(tmp_path, calls):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "stage: run\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "steps:\n"
        "  - name: a\n"
        "    stage: sft\n"
        "    config:\n"
        "      sed: 3\n"
    )
    with pytest.raises(ConfigError, match=r"^recipe step 'a':7: unknown key 'sed'"):
        run_recipe(path)


def test_output_references_resolve_to_the_earlier_steps_run_directory(tmp_path, calls):
    result = run_recipe(write_recipe(tmp_path))
    assert (result.steps[1].output_dir / "done.txt").read_text() == f"{tmp_path / 'out' / 'a'}/model"
    assert result.steps[0].output_dir == tmp_path / "out" / "a"


def test_references_in_lists_and_an_explicit_output_dir(tmp_path):
    cfg = run.Config(
        output_dir=str(tmp_path / "out"),
        steps=[
            run.StepConfig("a", "sft", {"output_dir": str(tmp_path / "elsewhere")}),
            run.StepConfig("b", "sft", {"phases": [{"data": "${steps.a.output_dir}/x.jsonl"}]}),
        ],
    )
    resolved = run.resolve_steps(cfg)
    assert resolved[1].config.phases[0].data == f"{tmp_path / 'elsewhere'}/x.jsonl"


@pytest.mark.parametrize("ref", ["${steps.nope.output_dir}", "${steps.b.output_dir}", "${output_dir}"])
def test_an_unknown_or_later_reference_is_an_error_naming_the_key(tmp_path, calls, ref):
    path = write_recipe(tmp_path, a={"model": {"name": ref}})
    with pytest.raises(ConfigError, match=r"recipe step 'a'.*key 'model.name': unknown reference"):
        run_recipe(path)
    assert calls == []


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"name": "a", "stage": "sft"}, {"name": "a", "stage": "sft"}], "duplicate step name"),
        ([{"name": "a", "stage": "nope"}], "unknown stage 'nope'"),
        ([{"name": "a", "stage": "demo"}], "cannot be a recipe step"),
        ([{"name": "a", "stage": "sft", "config": 3}], "config must be a mapping"),
    ],
)
def test_malformed_recipes_are_config_errors(tmp_path, steps, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"stage": "run", "steps": steps}))
    with pytest.raises(ConfigError, match=message):
        load_config(run.Config, path, stage="run")


def test_a_recipe_without_steps_runs_nothing(tmp_path):
    result = run.run(run.Config(output_dir=str(tmp_path)))
    assert result.steps == []
    assert json.loads(result.state_path.read_text()) == {"steps": {}}


def test_shipped_toy_recipe_loads_strictly_and_every_step_validates():
    cfg = load_config(run.Config, REPO / "configs" / "recipe-toy.yaml", stage="run")
    resolved = run.resolve_steps(cfg)
    assert [s.stage for s in resolved] == ["sft", "sft"]
    assert resolved[1].config.model.name == f"{resolved[0].config.output_dir}/model"


def test_toy_recipe_runs_end_to_end_and_the_second_step_starts_from_the_first(tmp_path):
    cfg = load_config(
        run.Config, REPO / "configs" / "recipe-toy.yaml", [f"output_dir={tmp_path}"], stage="run"
    )
    result = run.run(cfg)
    assert statuses(result) == [("sft_a", "ran"), ("sft_b", "ran")]
    assert (tmp_path / "sft_a" / "model").is_dir() and (tmp_path / "sft_b" / "model").is_dir()
    assert [s.result.global_step for s in result.steps] == [4, 2]
    recorded = yaml.safe_load((tmp_path / "sft_b" / "config.yaml").read_text())
    assert recorded["model"]["name"] == f"{tmp_path / 'sft_a'}/model"
    assert statuses(run.run(cfg)) == [("sft_a", "skipped"), ("sft_b", "skipped")]


def write_profiled(tmp_path: Path, profiles: dict) -> Path:
    path = write_recipe(tmp_path, a={"seed": 3, "phases": [{"data": "builtin:toy", "max_steps": 40}]})
    data = yaml.safe_load(path.read_text())
    data["profiles"] = profiles
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_profile_merges_overrides_into_one_step_and_uses_its_own_directory(tmp_path, calls):
    small = {
        "output_dir": str(tmp_path / "small"),
        "steps": {"a": {"phases": [{"data": "builtin:toy", "max_steps": 2}]}},
    }
    path = write_profiled(tmp_path, {"small": small})
    cfg = load_config(run.Config, path, ["profile=small"], stage="run")
    a, b = run.resolve_steps(cfg)
    assert a.config.phases[0].max_steps == 2  # the list was replaced by the profile's
    assert a.config.seed == 3  # a key the profile does not name keeps the recipe's value
    assert Path(a.config.output_dir) == tmp_path / "small" / "a"
    assert b.config.model.name == str(tmp_path / "small" / "a" / "model")  # references follow the profile
    result = run.run(cfg)
    assert (tmp_path / "small" / "recipe_state.json").exists() and not (tmp_path / "out").exists()
    assert statuses(result) == [("a", "ran"), ("b", "ran")]
    # without the profile the recipe is unchanged
    full_a = run.resolve_steps(load_config(run.Config, path, stage="run"))[0]
    assert (
        full_a.config.phases[0].max_steps == 40 and Path(full_a.config.output_dir) == tmp_path / "out" / "a"
    )


def test_a_profile_drops_a_step_but_not_one_that_a_later_step_needs(tmp_path, calls):
    path = write_profiled(tmp_path, {"no_b": {"drop": ["b"]}, "no_a": {"drop": ["a"]}})
    steps = run.resolve_steps(load_config(run.Config, path, ["profile=no_b"], stage="run"))
    assert [s.name for s in steps] == ["a"]
    with pytest.raises(ConfigError, match=r"unknown reference \$\{steps\.a\.output_dir\}"):
        run.resolve_steps(load_config(run.Config, path, ["profile=no_a"], stage="run"))


def test_a_profile_inserts_steps_after_a_named_one(tmp_path, calls):
    extra = {"name": "a2", "stage": "sft", "config": {"model": {"name": "${steps.a.output_dir}/model"}, "phases": [{"data": "builtin:toy", "max_steps": 1}]}}  # fmt: skip
    path = write_profiled(
        tmp_path, {"more": {"output_dir": str(tmp_path / "more"), "insert_after": {"a": [extra]}}}
    )
    steps = run.resolve_steps(load_config(run.Config, path, ["profile=more"], stage="run"))
    assert [s.name for s in steps] == ["a", "a2", "b"]
    assert steps[1].config.model.name == str(
        tmp_path / "more" / "a" / "model"
    )  # it may refer to earlier steps
    assert Path(steps[1].config.output_dir) == tmp_path / "more" / "a2"
    assert [s.name for s in run.resolve_steps(load_config(run.Config, path, stage="run"))] == ["a", "b"]
    assert statuses(run.run(load_config(run.Config, path, ["profile=more"], stage="run"))) == [
        ("a", "ran"),
        ("a2", "ran"),
        ("b", "ran"),
    ]


@pytest.mark.parametrize(
    "profiles, override, message",
    [
        (
            {"small": {"insert_after": {"c": []}}},
            "profile=small",
            "insert_after: unknown or dropped step\\(s\\) c",
        ),
        (
            {"small": {"insert_after": {"a": [{"name": "b", "stage": "sft"}]}}},
            "profile=small",
            "insert_after: step name\\(s\\) b already used",
        ),
        ({"small": {}}, "profile=big", "profile 'big' is not defined in profiles \\(known: small\\)"),
        ({"small": {"drop": ["c"]}}, "profile=small", "profiles.small.drop: unknown step\\(s\\) c"),
        ({"small": {"steps": {"c": {}}}}, "profile=small", "profiles.small.steps: unknown step\\(s\\) c"),
        ({"small": {"steps": {"a": 3}}}, "profile=small", "profiles.small.steps.a: must be a mapping"),
        ({"small": {"stepz": {}}}, "profile=small", "stepz"),
    ],
)
def test_bad_profiles_are_config_errors(tmp_path, profiles, override, message):
    path = write_profiled(tmp_path, profiles)
    with pytest.raises(ConfigError, match=message):
        load_config(run.Config, path, [override], stage="run")


def test_a_profile_override_the_stage_rejects_names_the_step_and_profile(tmp_path, calls):
    path = write_profiled(tmp_path, {"small": {"steps": {"a": {"optim": {"micro_batch_sizes": 2}}}}})
    with pytest.raises(ConfigError, match=r"recipe step 'a' \(profile 'small'\).*micro_batch_sizes"):
        run.resolve_steps(load_config(run.Config, path, ["profile=small"], stage="run"))


# ---------------------------------------------------------------------------------------------------------
# Unfinished work that started from other inputs


@pytest.fixture
def run_dirs(monkeypatch):
    """A fast fake sft.run that writes a real run folder (config, lock) and records the folders it ran in;
    the step named in ``kill`` is cut off after writing a checkpoint."""
    seen: list[str] = []
    kill: set[str] = set()

    def fake_run(cfg: sft.Config) -> str:
        out = prepare_run_dir(cfg.output_dir, cfg, stage="sft", resumable=True)
        seen.append(out.name)
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "step-1").write_text(f"trained from {cfg.model.name}, seed {cfg.seed}")
        if out.name in kill:
            raise KeyboardInterrupt
        fake_model_folder(out)
        return out.name

    monkeypatch.setattr(sft, "run", fake_run)
    return seen, kill


def test_a_step_cut_off_then_an_earlier_step_edited_restarts_clean(tmp_path, run_dirs):
    seen, kill = run_dirs
    path = write_recipe(tmp_path)
    kill.add("b")
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path)
    kill.clear()
    assert (tmp_path / "out" / "b" / "checkpoints" / "step-1").exists()

    result = run_recipe(write_recipe(tmp_path, a={"seed": 7}))  # step a edited: its output changes
    assert statuses(result) == [("a", "ran"), ("b", "ran")]
    stale = list((tmp_path / "out").glob("b.stale-*"))
    assert len(stale) == 1, "b's unfinished run, trained on a's old output, is set aside"
    assert (
        stale[0] / "checkpoints" / "step-1"
    ).read_text() == f"trained from {tmp_path / 'out' / 'a'}/model, seed 0"
    assert seen == ["a", "b", "a", "b"]
    assert len(list((tmp_path / "out").glob("a.stale-*"))) == 1  # a, finished with the old config


def test_a_cut_off_step_whose_own_config_changed_is_set_aside_and_an_unchanged_one_resumes(
    tmp_path, run_dirs
):
    seen, kill = run_dirs
    kill.add("b")
    with pytest.raises(KeyboardInterrupt):
        run_recipe(write_recipe(tmp_path))
    with pytest.raises(KeyboardInterrupt):  # a plain rerun resumes b in place
        run_recipe(write_recipe(tmp_path))
    assert not list((tmp_path / "out").glob("b.stale-*"))
    kill.clear()

    result = run_recipe(write_recipe(tmp_path, b={"seed": 3}))
    assert statuses(result) == [("a", "skipped"), ("b", "ran")]
    assert len(list((tmp_path / "out").glob("b.stale-*"))) == 1
    assert not list((tmp_path / "out").glob("a.stale-*"))


def test_a_state_without_start_records_sets_aside_a_step_behind_one_that_ran_again(tmp_path, run_dirs):
    seen, kill = run_dirs
    kill.add("b")
    with pytest.raises(KeyboardInterrupt):
        run_recipe(write_recipe(tmp_path))
    kill.clear()
    state_path = tmp_path / "out" / run.STATE_FILE
    state = json.loads(state_path.read_text())
    del state["started"]  # as an earlier version wrote it
    state_path.write_text(json.dumps(state))

    run_recipe(write_recipe(tmp_path, a={"seed": 7}))
    assert len(list((tmp_path / "out").glob("b.stale-*"))) == 1


def toy_recipe(tmp_path: Path, name: str, *, seed_a: int = 0) -> run.Config:
    """The shipped toy recipe (sft_a: 4 steps, then sft_b: 2 steps from sft_a's model), sft_b checkpointing
    every step, in ``tmp_path / name``."""
    data = yaml.safe_load((REPO / "configs" / "recipe-toy.yaml").read_text())
    data["output_dir"] = str(tmp_path / name)
    data["steps"][0]["config"]["seed"] = seed_a
    data["steps"][1]["config"]["logging"]["checkpoint_every"] = 1
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(run.Config, path, stage="run")


def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def cut_in_sft_b(monkeypatch) -> None:
    """sft_b is killed right after its step-1 checkpoint (the toy recipe's other steps run as they are)."""
    real_run = sft.run

    def killed(cfg: sft.Config):
        if Path(cfg.output_dir).name != "sft_b":
            return real_run(cfg)

        def on_step(step: int, row: dict) -> None:
            if step == 1:
                raise KeyboardInterrupt

        return real_run(cfg, on_step=on_step)

    monkeypatch.setattr(sft, "run", killed)


def test_real_toy_recipe_kill_in_b_edit_a_rerun_equals_a_clean_run_and_a_plain_rerun_resumes(
    tmp_path, monkeypatch
):
    real_run = sft.run
    # 1. killed in sft_b, rerun as it is: sft_b resumes its checkpoint and ends as an uninterrupted run
    clean = run.run(toy_recipe(tmp_path, "clean"))
    cut_in_sft_b(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run.run(toy_recipe(tmp_path, "resumed"))
    monkeypatch.setattr(sft, "run", real_run)
    resumed = run.run(toy_recipe(tmp_path, "resumed"))
    assert statuses(resumed) == [("sft_a", "skipped"), ("sft_b", "ran")]
    assert not list((tmp_path / "resumed").glob("*.stale-*"))
    assert [r["step"] for r in read_jsonl(tmp_path / "resumed" / "sft_b" / "metrics.jsonl")] == [1, 2]
    for key, value in model_weights(clean.steps[1].output_dir / "model").items():
        assert torch.equal(model_weights(resumed.steps[1].output_dir / "model")[key], value), key

    # 2. killed in sft_b, sft_a edited, rerun: sft_b must not resume a checkpoint trained on sft_a's old model
    cut_in_sft_b(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run.run(toy_recipe(tmp_path, "edited"))
    monkeypatch.setattr(sft, "run", real_run)
    edited = run.run(toy_recipe(tmp_path, "edited", seed_a=5))
    assert statuses(edited) == [("sft_a", "ran"), ("sft_b", "ran")]
    assert len(list((tmp_path / "edited").glob("sft_b.stale-*"))) == 1
    reference = run.run(toy_recipe(tmp_path, "reference", seed_a=5))
    got, want = (
        model_weights(edited.steps[1].output_dir / "model"),
        model_weights(reference.steps[1].output_dir / "model"),
    )
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
