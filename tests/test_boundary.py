"""The CLI boundary: every failure is one message, a documented exit code, and no traceback (issue 17).

Each test goes through the real ``cli.main`` and reads stderr: unexpected exceptions (exit 70, ``--debug``),
the pre-flight check of every path a config names, range checks of sizes, steps and rates, a disk that fills
up during a checkpoint save, and stages with nothing to read.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import typing

import pytest

from rewardmix import cli
from rewardmix.config import BUILTIN, ConfigError, builtin_configs, load_config
from rewardmix.stages import STAGES

SECRET = "sk-test0123456789abcdefghij"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with empty hub and datasets caches in tmp_path: no network, nothing cached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    return tmp_path


def run_cli(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("rewardmix: ")]


# ---------------------------------------------------------------------------------------------------------
# Unexpected exceptions: one line, exit 70; --debug / REWARDMIX_DEBUG=1 show the redacted traceback


def _boom(cfg):
    raise RuntimeError(f"boom with {SECRET} inside\nsecond line of detail")


def test_an_unexpected_exception_is_one_line_and_exit_70(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.setattr("rewardmix.stages.toy_ppo.run", _boom)
    code, err = run_cli(capsys, ["toy-ppo", "ppo.steps=1"])
    assert code == cli.EXIT_INTERNAL == 70
    assert "Traceback" not in err
    assert error_lines(err) == [
        "rewardmix: error: internal error: RuntimeError: boom with *** inside ... "
        "(run with --debug or REWARDMIX_DEBUG=1 for the traceback)"
    ]
    assert SECRET not in err


@pytest.mark.parametrize(
    "argv, env",
    [
        (["--debug", "toy-ppo", "ppo.steps=1"], None),
        (["toy-ppo", "--debug", "ppo.steps=1"], None),
        (["toy-ppo", "ppo.steps=1"], "1"),
    ],
    ids=["flag-before", "flag-after", "env"],
)
def test_debug_prints_the_redacted_traceback(capsys, monkeypatch, argv, env):
    monkeypatch.setattr("rewardmix.stages.toy_ppo.run", _boom)
    if env is None:
        monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.DEBUG_ENV, env)
    code, err = run_cli(capsys, argv)
    assert code == 70
    assert "Traceback (most recent call last)" in err
    assert "_boom" in err
    assert SECRET not in err and "***" in err
    assert err.rstrip().splitlines()[-1].startswith("rewardmix: error: internal error: RuntimeError")


def test_a_known_failure_keeps_its_exit_code_and_message_with_debug(capsys, monkeypatch, tmp_path):
    missing = tmp_path / "nope.jsonl"
    code, err = run_cli(capsys, ["--debug", "pairs", f"input={missing}", f"output_dir={tmp_path / 'o'}"])
    assert code == 1
    assert error_lines(err)[-1] == f"rewardmix: error: input: no such file {str(missing)!r} " + (
        "(a data file (or folder), builtin:<name> or hf:<dataset>)"
    )


def test_exit_codes_are_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code in cli.EXIT_CODES:
        assert re.search(rf"\b{code} ", out), code


# ---------------------------------------------------------------------------------------------------------
# Pre-flight: every named path checked before any model loads, the message naming the config key


def test_missing_model_folder_names_the_key(capsys, offline_hub):
    code, err = run_cli(capsys, ["sft", "model.name=/x/y", f"output_dir={offline_hub / 'o'}"])
    assert code == 1
    assert "Traceback" not in err
    assert error_lines(err) == [
        "rewardmix: error: model.name: no such folder '/x/y' (a model folder (config.json and safetensors "
        "weights), a hub id or an offline: name)"
    ]
    assert not (offline_hub / "o").exists()  # nothing was started


def test_hub_id_not_in_the_offline_cache(capsys, offline_hub):
    code, err = run_cli(capsys, ["ppo", "builtin:ppo", "model.name=someone/not-cached", "output_dir=x"])
    assert code == 1
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert line.startswith(
        "rewardmix: error: model.name: no such folder 'someone/not-cached', and as a hub id"
    )
    assert "not in the offline cache" in line and "HF_HUB_OFFLINE=1" in line


def test_hub_id_in_the_offline_cache_passes(offline_hub):
    from rewardmix import preflight

    snapshot = offline_hub / "hub-cache" / "models--someone--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    refs = offline_hub / "hub-cache" / "models--someone--cached" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc")
    assert preflight._check_model("model", "someone/cached") is None
    assert "offline cache" in preflight._check_model("model", "someone/other")


def test_pickle_only_weights_are_refused_with_how_to_convert(capsys, offline_hub):
    folder = offline_hub / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    code, err = run_cli(capsys, ["sft", f"model.name={folder}", f"output_dir={offline_hub / 'o'}"])
    assert code == 1
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert line.startswith(
        f"rewardmix: error: model.name: '{folder}' holds only pickled weights (pytorch_model.bin)"
    )
    assert "safetensors" in line and "save_pretrained" in line


def test_folder_without_config_json_is_not_a_model(capsys, offline_hub):
    (offline_hub / "empty").mkdir()
    code, err = run_cli(
        capsys, ["sample", f"model.path={offline_hub / 'empty'}", f"output_dir={offline_hub}/o"]
    )
    assert code == 1
    assert "model.path: " in err and "has no config.json" in err
    assert "Traceback" not in err


def test_offline_hub_dataset_names_the_key(capsys, offline_hub):
    code, err = run_cli(capsys, ["pairs", "input=hf:nobody/nothing:train", f"output_dir={offline_hub / 'o'}"])
    assert code == 1
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert line.startswith("rewardmix: error: input: hub dataset 'nobody/nothing' is not in the local caches")


def test_missing_reward_model_folder_in_a_list_item(capsys, offline_hub):
    code, err = run_cli(
        capsys,
        [
            "ppo",
            "builtin:ppo",
            "model.name=tiny",
            "data.prompts=builtin:toy",
            "reward.components[0].reward_model.path=/no/rm",
        ],
    )
    assert code == 1
    (line,) = error_lines(err)
    assert line.startswith(
        "rewardmix: error: reward.components[0].reward_model.path: no such folder '/no/rm'"
    )
    assert "Traceback" not in err


def test_evaluate_rm_with_nothing_at_its_default_model_path(capsys, offline_hub, monkeypatch):
    monkeypatch.chdir(offline_hub)
    code, err = run_cli(capsys, ["evaluate-rm"])
    assert code == 1
    assert error_lines(err) == [
        "rewardmix: error: model: no such folder 'runs/reward-model/model' (a reward-model folder, a hub id or an "
        "offline: name)"
    ]


def test_recipe_step_failure_keeps_the_step_exit_code_and_names_the_step(capsys, offline_hub, caplog):
    recipe = offline_hub / "recipe.yaml"
    recipe.write_text(
        "stage: run\n"
        f"output_dir: {offline_hub / 'recipe'}\n"
        "steps:\n"
        "  - name: tune\n"
        "    stage: sft\n"
        f"    config: {{phases: [{{data: {offline_hub / 'missing.jsonl'}}}]}}\n"
    )
    code, err = run_cli(capsys, ["run", str(recipe)])
    assert code == 1
    assert "Traceback" not in err
    assert error_lines(err)[-1] == (
        f"rewardmix: error: phases[0].data: no such file '{offline_hub / 'missing.jsonl'}' "
        "(a data file (or folder), builtin:<name> or hf:<dataset>)"
    )
    assert "step 1/1 tune (sft) failed" in caplog.text


# ---------------------------------------------------------------------------------------------------------
# Range checks: sizes, steps and rates, one place per dataclass, the error naming the key

SIZE_NAMES = re.compile(
    r"(batch_size|steps|epochs|max_new_tokens|samples_per_prompt|max_length|max_tokens|concurrency|"
    r"horizon|^r$|^alpha$|^limit$|max_prompt_tokens|keep_checkpoints|checkpoint_every|histogram_bins|"
    r"bootstrap_resamples|response_length|undersample_bins|undersample_total)"
)
RATE_NAMES = re.compile(r"(learning_rate|^timeout$)")
FRACTION_NAMES = re.compile(r"(_fraction$|_ratio$|^gamma$|^lam$|dropout$)")


def _leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], prefix + f.name
        args = typing.get_args(tp)
        if typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
            yield from _leaves(args[0], key + "[0].")
        elif dataclasses.is_dataclass(tp):
            yield from _leaves(tp, key + ".")
        elif any(dataclasses.is_dataclass(a) for a in args) and type(None) in args:
            continue  # an optional section (e.g. a component's reward_model): covered where it is required
        else:
            yield key, f.name, {a for a in (args or (tp,)) if a is not type(None)}


def _bad_values() -> list[tuple[str, str, str]]:
    cases = []
    for stage in STAGES:
        for key, name, types in _leaves(stage.load().Config):
            if types == {int} and SIZE_NAMES.search(name):
                cases.append((stage.name, key, "-1"))
            elif types == {float} and RATE_NAMES.search(name):
                cases.append((stage.name, key, "0"))
            elif types == {float} and FRACTION_NAMES.search(name):
                cases.append((stage.name, key, "1.5"))
    return cases


BAD_VALUES = _bad_values()


def test_the_range_sweep_covers_the_fields_the_issue_names():
    keys = {(s, k) for s, k, _ in BAD_VALUES}
    for expected in [
        ("ppo", "ppo.batch_size"),
        ("ppo", "ppo.learning_rate"),
        ("ppo", "generation.max_new_tokens"),
        ("ppo", "ppo.samples_per_prompt"),
        ("sft", "phases[0].epochs"),
        ("sft", "optim.warmup_ratio"),
        ("reward-model", "optim.epochs"),
        ("toy-ppo", "ppo.steps"),
        ("rationales", "teacher.max_tokens"),
    ]:
        assert expected in keys
    assert len(BAD_VALUES) > 80


@pytest.mark.parametrize("stage, key, value", BAD_VALUES, ids=[f"{s}:{k}={v}" for s, k, v in BAD_VALUES])
def test_sizes_steps_and_rates_out_of_range_are_config_errors(stage, key, value):
    base = f"{BUILTIN}{stage}" if stage in builtin_configs() else None
    cls = next(s for s in STAGES if s.name == stage).load().Config
    with pytest.raises(ConfigError) as e:
        load_config(cls, base, [f"{key}={value}"], stage=stage)
    assert key in str(e.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["toy-ppo", "ppo.steps=0"], "override 'ppo.steps=0': 'ppo.steps' must be >= 1, got 0"),
        (["toy-ppo", "ppo.minibatch_size=0"], "'ppo.minibatch_size' must be >= 1, got 0"),
        (["sft", "optim.learning_rate=-1e-4"], "'optim.learning_rate' must be > 0, got -0.0001"),
        (["sft", "phases[0].epochs=0"], "'phases[0].epochs' must be >= 1, got 0"),
        (["ppo", "builtin:ppo", "ppo.lam=1.5"], "'ppo.lam' must be in [0, 1], got 1.5"),
        (["ppo", "builtin:ppo", "ppo.kl.horizon=0"], "'ppo.kl.horizon' must be >= 1, got 0"),
        (["rank", "judge.concurrency=0"], "'judge.concurrency' must be >= 1, got 0"),
        (["evaluate", "generation.nlu_max_new_tokens=-5"], "'generation.nlu_max_new_tokens' must be >= 1"),
    ],
)
def test_range_errors_through_the_cli_exit_2_naming_the_key(capsys, argv, message):
    code, err = run_cli(capsys, argv)
    assert code == 2
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert message in line


def test_range_error_in_a_file_names_its_line(capsys, tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("stage: toy-ppo\nppo:\n  steps: 3\n  batch_size: -4\n")
    code, err = run_cli(capsys, ["toy-ppo", str(path)])
    assert code == 2
    assert error_lines(err) == [f"rewardmix: error: {path}:4: 'ppo.batch_size' must be >= 1, got -4"]


# ---------------------------------------------------------------------------------------------------------
# A disk that fills up during a checkpoint save


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_enospc_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    import torch

    from rewardmix.rundir import NoSpaceError
    from rewardmix.train import checkpoint

    state = {"w": torch.ones(3)}
    first = checkpoint.save_checkpoint(tmp_path, 1, trainable_state=state, rng=False)
    monkeypatch.setattr(checkpoint, "save_file", _no_space)
    with pytest.raises(NoSpaceError) as e:
        checkpoint.save_checkpoint(tmp_path, 2, trainable_state={"w": torch.zeros(3)}, rng=False)
    assert str(e.value) == (
        f"no space left on device while saving {checkpoint.checkpoint_path(tmp_path, 2)}; "
        "the previous checkpoint is intact"
    )
    assert checkpoint.list_checkpoints(tmp_path) == [first]
    assert torch.equal(checkpoint.load_checkpoint(first).trainable_state["w"], torch.ones(3))
    assert not list((tmp_path / checkpoint.CHECKPOINTS_DIR).glob(".tmp-*"))


def test_enospc_during_training_is_one_message_exit_1(capsys, tmp_path, monkeypatch):
    from rewardmix.train import checkpoint

    monkeypatch.setattr(checkpoint, "save_file", _no_space)
    out = tmp_path / "sft"
    code, err = run_cli(capsys, ["sft", "phases[0].max_steps=1", "lora.r=2", f"output_dir={out}"])
    assert code == 1
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert re.fullmatch(
        rf"rewardmix: error: no space left on device while saving {re.escape(str(out))}/checkpoints/step-\d+; "
        r"the previous checkpoint is intact",
        line,
    ), line


# ---------------------------------------------------------------------------------------------------------
# Stages with nothing to read; bad rows that used to be KeyErrors


def test_report_with_no_runs_names_the_key(capsys, tmp_path):
    code, err = run_cli(capsys, ["report", f"output_dir={tmp_path / 'r'}"])
    assert code == 2
    assert error_lines(err) == [
        "rewardmix: error: runs: nothing to report; give at least one run directory, e.g. `runs: [{path: runs/ppo}]`"
    ]


def test_report_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(
        capsys, ["report", f"runs=[{{path: {tmp_path / 'empty'}}}]", f"output_dir={tmp_path}/r"]
    )
    assert code == 1
    (line,) = error_lines(err)
    assert line.startswith(f"rewardmix: error: runs[0].path: {tmp_path / 'empty'} holds nothing to report")
    assert not (tmp_path / "r" / "report.html").exists()


def test_report_of_a_missing_run_folder(capsys, tmp_path):
    code, err = run_cli(
        capsys, ["report", f"runs=[{{path: {tmp_path / 'gone'}}}]", f"output_dir={tmp_path}/r"]
    )
    assert code == 1
    assert error_lines(err) == [f"rewardmix: error: runs[0].path: no such folder '{tmp_path / 'gone'}'"]


def test_evaluate_with_no_models_names_the_key(capsys, tmp_path):
    code, err = run_cli(capsys, ["evaluate", f"output_dir={tmp_path / 'e'}"])
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("rewardmix: error: models: nothing to evaluate")
    assert "Traceback" not in err


@pytest.mark.parametrize("drop, field", [("kind", "kind"), ("prompt", "prompt")])
def test_reward_model_pairs_without_a_required_field(capsys, tmp_path, drop, field):
    row = {"prompt": "q", "chosen": "good", "rejected": "bad", "kind": "rating"}
    del row[drop]
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    code, err = run_cli(capsys, ["reward-model", f"data.train={data}", f"output_dir={tmp_path / 'rm'}"])
    assert code == 1
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert line.startswith(f"rewardmix: error: {data}:1: field '{field}': missing")


def test_ppo_prompt_with_a_gold_label_outside_the_task_fails_before_training(capsys, tmp_path):
    prompts = tmp_path / "nlu.jsonl"
    rows = [
        {"question": "Review: a great film", "label": "positive", "task": "sst2"},
        {"question": "Review: dull", "label": "maybe", "task": "sst2"},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ppo"
    argv = ["ppo", "model.name=tiny", f"data.prompts={prompts}", f"output_dir={out}", "ppo.steps=2"]
    argv += ["reward.components=[{name: correct, type: label_correct, label_correct: {}}]"]
    code, err = run_cli(capsys, argv)
    assert code == 1
    assert "Traceback" not in err
    assert error_lines(err) == [
        f"rewardmix: error: data.prompts {prompts}: scorer 'correct': sample 1: gold label 'maybe' of task 'sst2' "
        "is not in ['negative', 'positive'] (sample N: the N-th prompt read, from 0)"
    ]
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip()


def test_a_hub_dataset_that_cannot_load_is_a_data_error(monkeypatch):
    import datasets

    from rewardmix.data.readers import DataError, load_hub_source

    def unreachable(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'nobody/nothing' on the Hub (LocalEntryNotFoundError)\nmore detail"
        )

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_hub_source("hf:nobody/nothing:train")
    assert str(e.value) == (
        "hf:nobody/nothing:train: cannot load this dataset (ConnectionError: Couldn't reach 'nobody/nothing' on "
        "the Hub (LocalEntryNotFoundError)); offline (HF_DATASETS_OFFLINE=1) only cached datasets load"
    )


def test_a_sweep_checks_every_runs_paths_before_the_first_starts(capsys, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "stage: ppo\nmodel: {name: tiny}\ndata: {prompts: builtin:toy}\n"
        "reward: {components: [{name: rm, type: reward_model, reward_model: {path: /no/rm}}]}\n"
    )
    argv = [
        "sweep",
        f"base={base}",
        f"output_dir={tmp_path / 'sweep'}",
        "key=ppo.kl.init_coef",
        "values=[0.1, 0.2]",
    ]
    code, err = run_cli(capsys, [*argv, "complement_key=null"])
    assert code == 1
    (line,) = error_lines(err)
    assert line.startswith(
        "rewardmix: error: sweep run init_coef_0.1: reward.components[0].reward_model.path: no such"
    )
    assert not list((tmp_path / "sweep").glob("init_coef_*"))
