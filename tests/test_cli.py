"""The CLI parses, resolves configs and dispatches; errors are one clear line and a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rewardmix import cli
from rewardmix.config import ConfigError
from rewardmix.stages import STAGES, get_stage

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_stages_in_pipeline_order(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    positions = [re.search(rf"^    {re.escape(s.name)}(\s|$)", out, re.M).start() for s in STAGES]
    assert positions == sorted(positions)
    assert "show-config" in out


def test_console_script_help_runs_in_a_fresh_process():
    exe = Path(sys.executable).with_name("rewardmix")
    if not exe.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert "stages (pipeline order)" in res.stdout


# Stages with a key that has no default (no hidden defaults: PPO must be told what to reward).
NO_DEFAULT = {"ppo": "reward.components"}


def test_every_stage_module_has_config_and_run():
    for stage in STAGES:
        module = stage.load()
        assert callable(module.run), stage.name
        if stage.name in NO_DEFAULT:
            with pytest.raises(ValueError, match=NO_DEFAULT[stage.name]):
                module.Config()
            continue
        module.Config()  # every other stage runs on defaults alone


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(KeyError) as err:
        get_stage("nope")
    assert f"known stages: {', '.join(s.name for s in STAGES)}" in str(err.value)


def test_show_config_prints_resolved_yaml(tmp_path, capsys):
    path = tmp_path / "toy.yaml"
    path.write_text("stage: toy-ppo\nppo:\n  steps: 3\n")
    assert cli.main(["show-config", str(path), "reward.threshold=2.5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["stage"] == "toy-ppo"
    assert shown["ppo"]["steps"] == 3
    assert shown["reward"]["threshold"] == 2.5
    assert shown["ppo"]["clip_range"] == 0.2  # defaults filled in


@pytest.mark.parametrize(
    ("args", "text", "needle"),
    [
        (["show-config", "{path}"], "ppo: {steps: 3}\n", "missing key 'stage'"),
        (["show-config", "{path}"], "stage: nope\n", "unknown stage 'nope'"),
        (["toy-ppo", "{path}"], "stage: toy-ppo\nppo:\n  stpes: 3\n", "demo.yaml:3: unknown key 'ppo.stpes'"),
        (["toy-ppo", "{path}"], "stage: sft\n", "for stage 'sft', not 'toy-ppo'"),
        (["toy-ppo", "{path}", "ppo.steps"], "stage: toy-ppo\n", "expected key.sub=value overrides"),
        (["toy-ppo", "ppo.steps=x"], "", "override 'ppo.steps=x': 'ppo.steps' must be an integer"),
        (["show-config", "{missing}"], "", "config file not found"),
        (["show-config", "sft"], "", "'sft' is a stage: its defaults: `rewardmix show-config --stage sft`"),
        (["ppo", "ppo-crs"], "", "ppo-crs: config file not found; did you mean builtin:ppo-crs"),
        (["show-config"], "", "show-config needs a config file, builtin:<name> or --stage <stage>"),
        (["show-config", "--stage", "sft", "{path}"], "stage: toy-ppo\n", "for stage 'toy-ppo', not 'sft'"),
        (
            ["toy-ppo", "--ppo.steps", "3"],
            "",
            "'--ppo.steps': overrides are written key=value, without dashes; did you mean ppo.steps=3?",
        ),
        (["toy-ppo", "{path}", "--ppo.steps=3"], "stage: toy-ppo\n", "did you mean ppo.steps=3?"),
    ],
)
def test_config_errors_exit_2_with_one_line(tmp_path, capsys, args, text, needle):
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    argv = [a.format(path=path, missing=tmp_path / "missing.yaml") for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rewardmix: error: ")
    assert needle in err
    assert "Traceback" not in err


def test_shipped_yaml_files_all_load():
    """Every YAML shipped in the repository loads strictly, so none goes stale.

    Stage configs resolve through the CLI; NLU task declarations through the task loader.
    """
    from rewardmix.data.tasks import load_task_specs

    shipped = [
        p
        for p in REPO.rglob("*.y*ml")
        # tests/ holds fixtures (the bad-input corpus has broken configs on purpose), not shipped files
        if not any(part.startswith(".") or part in ("runs", "tests") for part in p.relative_to(REPO).parts)
    ]
    assert any(p.parent.name == "configs" for p in shipped), "the repository ships at least the demo config"
    for path in {p.resolve(): p for p in shipped}.values():  # configs/*.yaml link to src/rewardmix/configs/
        if path.parent.name == "task_specs":
            assert load_task_specs(path, register=False), path
            continue
        if path.parent.name == "accelerate":  # `accelerate launch` configs: tests/distributed/test_configs.py
            continue
        stage, cfg = cli.resolve(None, path, [])
        assert type(cfg) is get_stage(stage).load().Config


def test_reference_doc_is_up_to_date():
    """docs/reference.md documents every command and config field; regenerate it when this fails."""
    from rewardmix.docgen import reference

    committed = (REPO / "docs" / "reference.md").read_text()
    assert committed == reference(), "run: python -m rewardmix.docgen > docs/reference.md"


def test_every_config_field_has_a_docstring():
    import dataclasses

    from rewardmix.docgen import field_docs

    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(value):
                walk(type(value))
            else:
                assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"

    for stage in STAGES:
        walk(stage.load().Config)


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise():
    """cli.main sets OMP_WAIT_POLICY=PASSIVE before torch loads, and keeps a value the user set."""
    import os
    import subprocess
    import sys

    script = (
        "import os\nfrom rewardmix import cli\ntry:\n    cli.main(['show-config'])\nexcept SystemExit:\n    pass\n"
        "import torch\nprint(os.environ.get('OMP_WAIT_POLICY'))"
    )

    def policy(env: dict[str, str]) -> str:
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.split()[-1]

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert policy(env) == "PASSIVE"
    assert policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_list_item_overrides_on_the_command_line(capsys):
    """``key[i].sub=value`` changes one item of a stage's list, from the file or from the defaults."""
    assert (
        cli.main(["show-config", str(REPO / "configs" / "ppo-crs.yaml"), "reward.components[1].weight=0.3"])
        == 0
    )
    shown = yaml.safe_load(capsys.readouterr().out)
    weights = [c["weight"] for c in shown["reward"]["components"]]
    shipped = [
        c["weight"]
        for c in yaml.safe_load((REPO / "configs" / "ppo-crs.yaml").read_text())["reward"]["components"]
    ]
    assert weights == [shipped[0], 0.3]
    _, cfg = cli.resolve("sft", None, ["phases[0].max_steps=2"])
    assert [p.max_steps for p in cfg.phases] == [2]
    assert cli.main(["sft", "phases[1].max_steps=2"]) == 2
    assert "override 'phases[1].max_steps=2': phases has 1 item, no item [1]" in capsys.readouterr().err


def test_repository_configs_are_the_packaged_builtin_ones():
    """One copy of each shipped config: configs/*.yaml and recipes/**/*.yaml link to the package's files."""
    from rewardmix.config import builtin_configs

    known = builtin_configs()
    in_repo = [*REPO.glob("configs/*.yaml"), *REPO.glob("recipes/**/*.yaml")]
    assert len(in_repo) == len(known)
    for path in in_repo:
        assert path.is_symlink(), f"{path} should link to src/rewardmix/ (one copy, shipped in the package)"
        assert path.resolve() == known[path.stem].resolve()
    # pyproject ships both folders in the wheel (package data).
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"configs/*.yaml"' in pyproject and '"recipes/*.yaml"' in pyproject


def test_config_file_names_are_stage_names():
    """A shipped config named after a stage is for that stage; no snake_case names beside kebab-case stages."""
    from rewardmix.config import builtin_configs, load_yaml

    names = {s.name for s in STAGES}
    for name, path in builtin_configs().items():
        assert "_" not in name, path
        if name in names:
            assert load_yaml(path)["stage"] == name, path
    assert {"reward-model", "evaluate-rm", "human-eval", "toy-ppo"} <= set(builtin_configs())


def test_builtin_configs_run_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["show-config", "builtin:ppo-crs", "ppo.steps=2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["stage"] == "ppo" and shown["ppo"]["steps"] == 2
    stage, cfg = cli.resolve("sweep", Path("builtin:sweep-crs"), [])
    assert cfg.base == "builtin:ppo-crs"  # a shipped config names its base by builtin name, not a repo path
    assert cli.main(["ppo", "builtin:nope"]) == 2
    assert "unknown builtin config" in capsys.readouterr().err


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_stage_help_lists_every_config_field_with_type_default_and_meaning(capsys):
    """``rewardmix <stage> --help`` shows each field's dotted key, type, default and docstring's first line."""
    from rewardmix.docgen import config_sections

    for stage in STAGES:
        out = _help(capsys, [stage.name, "--help"])
        fields = [
            d for _, section in config_sections(stage.load().Config) for d in section if d.kind != "section"
        ]
        assert fields, stage.name
        for d in fields:
            assert f"\n  {d.key}: {d.type} = " in out, (stage.name, d.key)
            assert d.summary in out, (stage.name, d.key)
        # the example is the stage's own, not a PPO override shown for every stage
        assert f"  rewardmix {stage.name} " in out and stage.example in out
        assert "such as ppo.learning_rate" not in out, stage.name
    toy = _help(capsys, ["toy-ppo", "--help"])
    assert "\n  ppo.clip_range: float = 0.2\n      " in toy
    assert "rewardmix toy-ppo builtin:toy-ppo ppo.steps=20" in toy  # a stage with a shipped config shows it


def test_stage_help_examples_resolve():
    """Every example override shown by ``--help`` is valid for its stage (with its shipped config if any)."""
    import shlex

    from rewardmix.config import builtin_configs

    for stage in STAGES:
        path = Path(f"builtin:{stage.name}") if stage.name in builtin_configs() else None
        name, cfg = cli.resolve(stage.name, path, shlex.split(stage.example))
        assert type(cfg) is stage.load().Config, name


def test_show_config_stage_prints_defaults_that_load_back(tmp_path, capsys):
    """``show-config --stage X`` prints X's defaults as YAML, ``stage:`` first, that load back unchanged."""
    for stage in STAGES:
        assert cli.main(["show-config", "--stage", stage.name]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"stage: {stage.name}\n"), stage.name
        path = tmp_path / f"{stage.name}.yaml"
        path.write_text(out)
        if (
            stage.name == "ppo"
        ):  # no default reward: the defaults say what to fill in, and do not run as they are
            assert (
                "# fill in before running: reward.components: PPO needs at least one reward component" in out
            )
            with pytest.raises(ConfigError, match="reward.components"):
                cli.resolve(None, path, [])
            continue
        name, cfg = cli.resolve(None, path, [])
        assert name == stage.name and cfg == stage.load().Config(), stage.name
    assert cli.main(["show-config", "--stage", "toy-ppo", "ppo.steps=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["ppo"]["steps"] == 3
    file = tmp_path / "mine.yaml"
    file.write_text("ppo:\n  steps: 4\n")  # no stage: key; --stage picks the schema
    assert cli.main(["show-config", "--stage", "toy-ppo", str(file), "seed=2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["stage"], shown["ppo"]["steps"], shown["seed"]) == ("toy-ppo", 4, 2)


def test_show_config_list_names_every_shipped_config(capsys):
    from rewardmix.config import builtin_configs, load_yaml

    assert cli.main(["show-config", "--list"]) == 0
    out = capsys.readouterr().out
    for name, path in builtin_configs().items():
        line = next(ln for ln in out.splitlines() if ln.startswith(f"builtin:{name} "))
        assert line.split()[1] == load_yaml(path)["stage"], line


def test_known_third_party_warnings_are_silenced_by_message_and_category_only():
    import warnings

    from rewardmix import cli

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.quiet_known_warnings()
        deprecated = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
        warnings.warn(deprecated, FutureWarning, stacklevel=1)  # silenced
        warnings.warn(deprecated, UserWarning, stacklevel=1)  # same text, other category: shown
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)  # shown
    assert [(type(w.message), str(w.message)[:20]) for w in caught] == [
        (UserWarning, deprecated[:20]),
        (FutureWarning, "something else is de"),
    ]


def test_a_cli_run_prints_no_known_deprecation_warning(tmp_path):
    # In a fresh process, as a user runs it: the tiny model's load goes through peft and transformers.
    rule = "reward.components=[{name: e, type: contains, contains: {substring: e}}]"
    args = ["ppo", "model.name=tiny", "data.prompts=builtin:toy", "ppo.steps=1", "ppo.batch_size=2"]
    args += ["ppo.minibatch_size=2", "ppo.micro_batch_size=2", "generation.max_new_tokens=2", rule]
    code = "import sys; from rewardmix.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code, *args, f"output_dir={tmp_path / 'run'}", "cpu=true"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "is_gradient_checkpointing" not in done.stderr and "Warning" not in done.stderr
