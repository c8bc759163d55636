"""Every input of the bad-input corpus, run through the CLI, ends as manifest.yaml says (issue 9, item 2).

An ``error`` input: non-zero exit, one ``rewardmix: error:`` line naming file, line and field, no traceback.
A ``skip`` input: exit 0, the bad rows counted in the stage's read report / stats and logged by line, and no
row lost (rows out + skipped == rows in the file). A few inputs also go through a real subprocess, to prove
the exit code and the clean stderr of the installed entry point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.badinput import runner

CASES = runner.load_manifest()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env():
    environment, root = runner.new_environment()
    with environment:
        yield environment
    shutil.rmtree(root, ignore_errors=True)


def test_the_corpus_is_big_and_varied():
    """At least 150 inputs (issue 17), both endings present, every stage that reads user files covered."""
    assert len(CASES) >= 150
    endings = Counter(c.expect for c in CASES)
    assert endings["error"] >= 30 and endings["skip"] >= 10
    stages = {c.command[0] for c in CASES}
    assert {
        "combine",
        "oasst",
        "ratings",
        "split",
        "rationales",
        "sample",
        "rank",
        "pairs",
        "sft",
        "reward-model",
        "evaluate-rm",
        "ppo",
        "evaluate",
        "human-eval",
        "report",
        "run",
    } <= stages
    # configs go through every entry point that loads one
    assert sum(c.file.startswith("config-") for c in CASES) >= 12
    # every human-eval import format, and the cases that run offline or on a pickled model
    formats = {a.split("=", 1)[1] for c in CASES for a in c.command if a.startswith("import_format=")}
    assert {"argilla", "labelstudio", "csv"} <= formats
    assert {"offline"} <= {c.setup for c in CASES} and {"pickle_model"} <= {c.generate for c in CASES}
    # every committed corpus file is in the manifest, and no committed file is huge
    listed = {c.file for c in CASES}
    for path in runner.CORPUS.iterdir():
        assert path.name in listed, f"{path.name} is not in manifest.yaml"
        assert path.stat().st_size < 100_000, path.name


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_cleanly(case, env):
    outcome = runner.run_case(case, env)
    problems = runner.check_case(case, outcome)
    assert not problems, "\n".join(
        [*problems, "stderr:", outcome.stderr[-2000:], "log:", outcome.log[-2000:]]
    )


@pytest.mark.slow  # a fresh interpreter importing torch: seconds each on a busy machine
@pytest.mark.parametrize("name", ["pairs-torn-line.jsonl", "pairs-trailing-garbage.jsonl"])
def test_exit_code_of_the_real_process(name, tmp_path):
    """The console entry point itself: exit status, one clean error line, no traceback."""
    case = next(c for c in CASES if c.file == name)
    argv = [
        a.replace("{file}", str(runner.CORPUS / case.file)).replace("{out}", str(tmp_path / "out"))
        for a in case.command
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "rewardmix.cli", *argv], capture_output=True, text=True, timeout=120, env=env
    )
    output = proc.stdout + proc.stderr
    assert runner.TRACEBACK not in output
    if case.expect == "error":
        assert proc.returncode != 0
        error = [ln for ln in proc.stderr.splitlines() if ln.startswith("rewardmix: error:")]
        assert len(error) == 1 and all(piece in error[0] for piece in case.message), proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert f"{case.file}:2:" in proc.stderr  # the skipped line, logged to the console
