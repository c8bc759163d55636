"""The README's code is true: its combinator example registers and computes what it says."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from rewardmix.algos import combine

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_combinator_example(monkeypatch):
    text = README.read_text()
    section = text.split("## Adding a reward combinator", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.setattr(combine, "COMBINATORS", dict(combine.COMBINATORS))
    exec(compile(code, "README.md", "exec"), {})
    fn = combine.get_combinator("geometric")
    # geometric mean of (1, 4) = 2; of (2, 8) = 4
    out = fn(torch.tensor([[1.0, 4.0], [2.0, 8.0]], dtype=torch.float64))
    assert torch.allclose(out, torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert math.isclose(float(fn(torch.tensor([[0.0, 1.0]]))[0]), math.sqrt(1e-6), rel_tol=1e-5)


def test_readme_names_the_two_setup_commands_that_exist():
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, re.M)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


# Quickstart lines not run here, with the reason.
QUICKSTART_SKIPS = {
    "make demo": "installs the venv and runs the 18-minute demo (tests/stages/test_demo.py runs its chain small)",
    "rewardmix run recipes/": "a 16-minute recipe run (tests/test_recipes.py loads every recipe strictly)",
}


def quickstart_lines() -> list[str]:
    section = README.read_text().split("### Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_every_quickstart_line_runs_in_a_fresh_clone_without_shared(tmp_path):
    """Each line as written, from a copy of the repository's configs in a folder with no ``../shared``."""
    import shlex
    import shutil
    import subprocess
    import sys

    clone = tmp_path / "clone"
    clone.mkdir()
    for folder in ("configs", "recipes"):
        shutil.copytree(README.parent / folder, clone / folder)
    assert not (clone.parent / "shared").exists()  # the relative ../shared of a checkout is not there
    lines = quickstart_lines()
    assert len(lines) >= 6 and all(
        ".venv/bin/rewardmix" in line or line.startswith("make ") for line in lines
    )
    ran = []
    for line in lines:
        if any(key in line for key in QUICKSTART_SKIPS):
            continue
        words = shlex.split(line, comments=True)
        assert words[0] == ".venv/bin/rewardmix", line
        code = "import sys; from rewardmix.cli import main; sys.exit(main(sys.argv[1:]))"
        done = subprocess.run(
            [sys.executable, "-c", code, *words[1:], *(["cpu=true"] if words[1] in ("sft", "ppo") else [])],
            cwd=clone, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(README.parent / "src")},
        )  # fmt: skip
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        ran.append(words[1])
    assert ran == ["--help", "show-config", "sft", "ppo"]
    assert (clone / "runs/sft-smoke/model").is_dir() and (clone / "runs/grpo-smoke/summary.json").is_file()
