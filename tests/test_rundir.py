"""Run folders are safe: foreign folders refused untouched, changed configs refused (or moved aside with
--restart), one run per folder (a lock with the owner's pid and host), ``~`` and ``$VAR`` expanded."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rewardmix import cli, rundir
from rewardmix.config import ConfigError, load_config
from rewardmix.rundir import LOCK_NAME, RunDirError, prepare_run_dir, run_dir_scope
from rewardmix.stages import pairs, sft

REPO = Path(__file__).resolve().parents[1]

TINY_SFT = [
    "cpu=true",
    "lora.enabled=false",
    "phases[0].max_steps=2",
    "optim.micro_batch_size=4",
    "logging.eval_every=0",
    "logging.sample_every=0",
    "logging.num_samples=0",
]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: file bytes, None for a folder."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))
    }


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Foreign folders


def test_a_folder_of_other_files_is_refused_and_left_byte_identical(tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(b"\x00precious")
    (folder / "config.yaml").write_text("my: own config\n")
    (folder / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = snapshot(folder)

    code, err = run_cli(capsys, "sft", f"output_dir={folder}", *TINY_SFT)

    assert code == 2
    assert f"rewardmix: error: output_dir {folder}: is not empty and holds no rewardmix run" in err
    assert "Traceback" not in err
    assert snapshot(folder) == before  # model/ kept, nothing overwritten, no lock file left behind


def test_another_stages_run_is_refused_and_a_file_is_not_a_folder(tmp_path):
    other = tmp_path / "pairs-run"
    prepare_run_dir(other, pairs.Config(input="x.jsonl"), stage="pairs")
    (other / LOCK_NAME).unlink()  # as if that run had ended
    before = snapshot(other)
    with pytest.raises(RunDirError, match=r"holds a 'pairs' run, not a 'sft' one; refusing"):
        prepare_run_dir(other, sft.Config(output_dir=str(other)), stage="sft", resumable=True)
    assert snapshot(other) == before

    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(RunDirError, match="exists and is not a folder"):
        prepare_run_dir(file, pairs.Config(), stage="pairs")
    assert file.read_text() == "x"


def test_an_empty_folder_and_a_rerun_of_a_non_training_stage_are_fine(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with run_dir_scope():
        prepare_run_dir(out, pairs.Config(input="a.jsonl"), stage="pairs")
    with run_dir_scope():  # a same-stage rerun with another config just writes its outputs again
        prepare_run_dir(out, pairs.Config(input="b.jsonl"), stage="pairs")
    assert "input: b.jsonl" in (out / "config.yaml").read_text()
    assert not (out / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------------------
# A changed config, and --restart


def test_a_changed_config_is_refused_a_logging_change_resumes_and_restart_moves_the_run_aside(
    tmp_path, capsys
):
    out = tmp_path / "run"
    assert run_cli(capsys, "sft", f"output_dir={out}", *TINY_SFT)[0] == 0
    trained = snapshot(out / "model")
    rows = (out / "metrics.jsonl").read_text()

    # another learning rate: refused, naming the key, nothing changed
    before = snapshot(out)
    code, err = run_cli(capsys, "sft", f"output_dir={out}", *TINY_SFT, "optim.learning_rate=0.001")
    assert code == 2
    assert "holds a 'sft' run with another config (optim.learning_rate: 0.0001 -> 0.001)" in err
    assert "--restart" in err and "Traceback" not in err
    assert snapshot(out) == before

    # logging cadences may change on resume (RESUMABLE_KEYS): it resumes, and trains no further
    assert run_cli(capsys, "sft", f"output_dir={out}", *TINY_SFT, "logging.checkpoint_every=7")[0] == 0
    assert snapshot(out / "model") == trained and (out / "metrics.jsonl").read_text() == rows

    # --restart: the old run is renamed beside it, byte for byte, and a new one trains with the new config
    old = snapshot(out)
    code, err = run_cli(
        capsys, "sft", "--restart", f"output_dir={out}", *TINY_SFT, "optim.learning_rate=0.001"
    )
    assert code == 0, err
    moved = list(tmp_path.glob("run.old-*"))
    assert len(moved) == 1
    assert snapshot(moved[0]) == {k: v for k, v in old.items() if k != LOCK_NAME}
    assert "learning_rate: 0.001" in (out / "config.yaml").read_text()
    assert snapshot(out / "model") != trained


def test_a_run_that_saved_nothing_yet_takes_the_new_config(tmp_path):
    out = tmp_path / "run"
    with run_dir_scope():
        prepare_run_dir(out, sft.Config(output_dir=str(out)), stage="sft", resumable=True)
    cfg = sft.Config(output_dir=str(out), seed=5)
    with run_dir_scope():  # no checkpoint, model or summary: nothing would be resumed
        prepare_run_dir(out, cfg, stage="sft", resumable=True)
    assert "seed: 5" in (out / "config.yaml").read_text()


def test_config_changes_ignore_resumable_keys_and_schema_only_keys(tmp_path):
    out = tmp_path / "run"
    with run_dir_scope():
        prepare_run_dir(out, sft.Config(output_dir=str(out)), stage="sft", resumable=True)
    cfg = sft.Config(output_dir=str(tmp_path / "." / "run"), cpu=True)
    cfg.logging.eval_every = 3
    cfg.model.gradient_checkpointing = True
    assert rundir.config_changes(out, cfg, "sft") == []
    # a key an older version did not write is not a change the user made
    text = (out / "config.yaml").read_text().replace("  trust_remote_code: false\n", "")
    (out / "config.yaml").write_text(text)
    assert rundir.config_changes(out, cfg, "sft") == []
    cfg.phases[0].max_steps = 9
    cfg.lora.r = 4
    assert rundir.config_changes(out, cfg, "sft") == ["lora.r: 16 -> 4", "phases[0].max_steps: null -> 9"]


# ---------------------------------------------------------------------------------------------------------
# One run per folder


HOLDER = textwrap.dedent(
    """
    import sys, time
    from rewardmix.rundir import prepare_run_dir
    from rewardmix.stages import pairs
    prepare_run_dir(sys.argv[1], pairs.Config(input="a.jsonl"), stage="pairs")
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_second_run_is_refused_while_the_first_lives_and_takes_over_once_it_was_killed(tmp_path, caplog):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        with pytest.raises(RunDirError) as refused:
            prepare_run_dir(out, pairs.Config(input="b.jsonl"), stage="pairs")
        message = str(refused.value)
        assert f"in use by a rewardmix pairs run (pid {holder.pid} on {socket.gethostname()}" in message
        assert snapshot(out) == before  # the other run's config and lock untouched
    finally:
        holder.kill()  # SIGKILL: no chance to remove its lock
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid

    with caplog.at_level(logging.WARNING, logger="rewardmix.rundir"), run_dir_scope():
        prepare_run_dir(out, pairs.Config(input="b.jsonl"), stage="pairs")
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pairs run pid {holder.pid}" in caplog.text
    assert not (out / LOCK_NAME).exists(), "released when the run ends"


def write_lock(folder: Path, **owner) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "stage": "sft", "started_at": "2026-01-01T00:00:00+00:00", **owner}
    (folder / LOCK_NAME).write_text(json.dumps(info))


def test_a_lock_file_naming_a_live_pid_or_another_host_is_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "live", pid=sleeper.pid)
        with pytest.raises(RunDirError, match=rf"in use by a rewardmix sft run \(pid {sleeper.pid} on "):
            prepare_run_dir(tmp_path / "live", sft.Config(), stage="sft", resumable=True)
        assert not (tmp_path / "live" / "config.yaml").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    write_lock(tmp_path / "remote", pid=1, host="elsewhere.invalid")
    with pytest.raises(
        RunDirError, match=r"on elsewhere\.invalid.*cannot tell whether that run still goes on"
    ):
        prepare_run_dir(tmp_path / "remote", sft.Config(), stage="sft")


def test_the_cli_releases_the_lock_when_the_stage_ends_or_fails(tmp_path, capsys):
    out, bad = tmp_path / "run", tmp_path / "bad.jsonl"
    bad.write_text('{"torn": \n')  # exists (pre-flight passes), but its first line is not JSON
    code, _ = run_cli(capsys, "pairs", f"input={bad}", f"output_dir={out}")
    assert code == 1  # the input is malformed: the stage failed after taking the folder
    assert (out / "config.yaml").exists() and not (out / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------------------
# ~ and $VAR


def test_home_and_variables_in_output_dir_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(sft.Config, None, ["output_dir=~/sft"])
    assert cfg.output_dir == str(tmp_path / "home" / "sft")
    assert load_config(sft.Config, None, ["output_dir=${RUNS}/a"]).output_dir == str(tmp_path / "runs" / "a")
    with run_dir_scope():
        out = prepare_run_dir("~/direct", pairs.Config(), stage="pairs")  # a config built in Python
    assert out == tmp_path / "home" / "direct" and (out / "config.yaml").exists()
    assert not (tmp_path / "~").exists()


def test_an_unset_variable_or_unknown_user_in_output_dir_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_17", raising=False)
    path = tmp_path / "sft.yaml"
    path.write_text("stage: sft\nseed: 1\noutput_dir: $NO_SUCH_VAR_17/x\n")
    with pytest.raises(
        ConfigError, match=rf"^{path}:3: key 'output_dir': environment variable \$NO_SUCH_VAR_17 "
    ):
        load_config(sft.Config, path)
    with pytest.raises(ConfigError, match=r"no home folder for ~no_such_user_17"):
        load_config(sft.Config, None, ["output_dir=~no_such_user_17/x"])


def test_restart_may_follow_the_recipe_file_and_moves_the_recipe_directory_aside(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stage: run\nsteps: []\n")
    out = tmp_path / "recipe-run"
    assert run_cli(capsys, "run", str(recipe), f"output_dir={out}")[0] == 0
    (out / "mine.txt").write_text("kept")
    code, err = run_cli(capsys, "run", str(recipe), "--restart", f"output_dir={out}")
    assert code == 0, err
    (moved,) = tmp_path.glob("recipe-run.old-*")
    assert (moved / "mine.txt").read_text() == "kept" and not (out / "mine.txt").exists()


def test_a_lone_tilde_is_yaml_null_and_the_error_says_how_to_write_home(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, "sft", "output_dir=~")
    assert code == 2
    assert "'output_dir' must be a string, got None" in err and "write ~/ for the home folder" in err
    assert list(tmp_path.iterdir()) == []
