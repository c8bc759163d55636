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
    for path in shipped:
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
