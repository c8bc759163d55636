"""Write the fixtures of ``tests/reliability/test_old_checkpoints.py``: runs killed before the restructuring.

Issue 14 restructures the three training stages without changing behaviour; one of its checks is that a
run directory written by the old code, killed mid-run, resumes under the new code and ends as it would have.
This script froze that old state. It was run once, on commit ``fbb9141`` (the last commit before the
restructuring: "recipe repro profile: oracle with 1 seed ..."), with torch 2.13.0+cpu, from the repository root:

    PYTHONPATH=src OMP_NUM_THREADS=1 python -m tests.reliability.old_checkpoints.make_fixtures

Do not rerun it on a later commit: the fixtures would then record the new code and test nothing. (Rerun it
only on purpose, on the commit whose checkpoints you want to keep readable, and say so in the commit.)

For each of ``sft``, ``reward-model`` and ``ppo``, with the kill/resume harness's config of that stage
(``tests/reliability/harness.py``: the tiny in-memory Llama, a LoRA adapter, dropout / sampling / adaptive KL /
running normalization, every piece of state a resume must restore), it

1. runs the stage in this process and stops it with ``KeyboardInterrupt`` from ``on_step`` right after step
   ``KILL_AFTER[stage]``, one step past the newest checkpoint (``checkpoint_step``): what a SIGKILL leaves,
   including the metrics and sample rows of the lost step, which the resumed run must drop and redo;
2. copies that run directory to ``<stage>/run/`` (checkpoints, ``config.yaml``, ``run_info.json``,
   ``metrics.jsonl``, ``samples.jsonl``, ``data_report.json``), with the run directory's absolute path replaced
   by ``__RUN_DIR__`` and the repository's by nothing (no path of this machine in the fixtures); checkpoint files
   hold no path and are copied byte for byte (their manifest checksums them);
3. writes ``<stage>/input.yaml``: the config the command ran with (``output_dir: __RUN_DIR__``);
4. resumes a copy of the killed run to the end and records how it ended: ``<stage>/expected/tensors.safetensors``
   (every tensor of the saved model folders, named ``<file>::<tensor>``), ``<stage>/expected/metrics.jsonl``
   (the final metrics rows) and ``<stage>/fixture.json`` (steps, checkpoints and sample rows at the kill and
   at the end, the commit);
5. checks that this resumed run equals an uninterrupted run of the same config bitwise (tensors and metric
   values, ``perf/*`` timings aside), so the fixture records a correct resume, not a bug.

The input data are the built-in toy rows (``builtin:toy``) and the tiny model is built from the seed, so the
fixtures need no other file. Everything together is about 1.1 MB.

The reward models a finished run saves (``reward_model_final/``, read by ``evaluate-rm`` and reward components)
come from the sibling script ``make_rm_fixtures.py``, on the same commit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PLACEHOLDER = "__RUN_DIR__"
STAGES = ("sft", "reward-model", "ppo")
KILL_AFTER = {"sft": 19, "reward-model": 22, "ppo": 9}
"""The step after which each run is stopped. Checkpoints every 3 / 3 / 2 steps, so the newest one is at
18 (SFT: mid-way through the second phase, mid-epoch), 21 (reward model: mid-epoch 3 of 4) and 8 (PPO)."""
TEXT_SUFFIXES = (".yaml", ".json", ".jsonl")
MODEL_FOLDERS = ("model", "adapter", "value")

log = logging.getLogger("make_fixtures")


class Killed(KeyboardInterrupt):
    """Raised from ``on_step`` to stop a run right after a step, as a kill would."""


def harness_config(stage: str) -> dict[str, Any]:
    """The kill/resume harness's config of ``stage``, with the output_dir placeholder."""
    from tests.reliability import harness

    return harness.CASES[stage].build(Path(PLACEHOLDER), Path(PLACEHOLDER), None)


def run_stage(stage: str, config: dict[str, Any], out: Path, *, kill_after: int | None = None) -> None:
    """Run ``stage`` with ``config`` in ``out`` as the CLI would (YAML, strict loading); optionally stop it."""
    from rewardmix.config import load_config
    from rewardmix.stages import get_stage

    path = out.parent / f"{out.name}.yaml"
    text = yaml.safe_dump(config, sort_keys=False).replace(PLACEHOLDER, str(out))
    path.write_text(text, encoding="utf-8")
    module = get_stage(stage).load()
    cfg = load_config(module.Config, path, stage=stage)

    def on_step(step: int, row: dict[str, float]) -> None:
        if step == kill_after:
            raise Killed(f"stopped after step {step}")

    if kill_after is None:
        module.run(cfg)
        return
    try:
        module.run(cfg, on_step=on_step)
    except Killed:
        return
    raise RuntimeError(f"{stage}: the run ended before step {kill_after}")


def checkpoint_steps(run: Path) -> list[int]:
    """Steps of the ``checkpoints/step-N`` folders, oldest first."""
    root = run / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.iterdir() if p.name.startswith("step-"))


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def model_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the saved model folders, named ``<file relative to run>::<tensor>``."""
    tensors = {}
    for folder in MODEL_FOLDERS:
        for path in sorted((run / folder).rglob("*.safetensors")):
            for name, tensor in load_file(str(path)).items():
                tensors[f"{path.relative_to(run).as_posix()}::{name}"] = tensor.contiguous()
    return tensors


def scrub(run: Path, absolute: str) -> None:
    """Replace ``absolute`` (the run dir) and the repository path in the run's text files (not checkpoints)."""
    for path in run.rglob("*"):
        rel = path.relative_to(run)
        if not path.is_file() or rel.parts[0] == "checkpoints" or path.suffix not in TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8")
        text = text.replace(absolute, PLACEHOLDER).replace(str(REPO) + os.sep, "").replace(str(REPO), ".")
        path.write_text(text, encoding="utf-8")
    leftovers = [
        str(p.relative_to(run))
        for p in run.rglob("*")
        if p.is_file() and any(s in p.read_bytes() for s in (str(REPO).encode(), b"/tmp/", b"/home/"))
    ]
    if leftovers:
        raise RuntimeError(f"absolute paths left in {leftovers}")


def without_timings(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in metrics]


def make(stage: str, work: Path, commit: str) -> dict[str, Any]:
    """Steps 1-5 of the module docstring for one stage; returns its ``fixture.json``."""
    config = harness_config(stage)
    kill_after = KILL_AFTER[stage]

    # step 1. run to a kill right after step kill_after
    killed = work / "killed"
    run_stage(stage, config, killed, kill_after=kill_after)
    at_kill = checkpoint_steps(killed)
    if not at_kill or at_kill[-1] >= kill_after:
        raise RuntimeError(f"{stage}: newest checkpoint {at_kill} is not before the kill at {kill_after}")

    # step 2. the killed run directory, paths replaced
    target = HERE / stage
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(killed, target / "run")
    scrub(target / "run", str(killed))

    # step 3. the config the command ran with
    (target / "input.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    # step 4. resume a copy to the end and record how it ended
    resumed = work / "resumed"
    shutil.copytree(killed, resumed)
    run_stage(stage, config, resumed)
    (target / "expected").mkdir()
    tensors = model_tensors(resumed)
    save_file(tensors, str(target / "expected" / "tensors.safetensors"), metadata={"commit": commit})
    shutil.copyfile(resumed / "metrics.jsonl", target / "expected" / "metrics.jsonl")
    scrub(target / "expected", str(resumed))
    summary = json.loads((resumed / "summary.json").read_text(encoding="utf-8"))

    # step 5. the resumed run must equal an uninterrupted one, or the fixture would record a bug
    straight = work / "straight"
    run_stage(stage, config, straight)
    reference = model_tensors(straight)
    if reference.keys() != tensors.keys() or not all(torch.equal(reference[k], tensors[k]) for k in tensors):
        raise RuntimeError(f"{stage}: the resumed run's tensors differ from the uninterrupted run's")
    if without_timings(rows(resumed / "metrics.jsonl")) != without_timings(rows(straight / "metrics.jsonl")):
        raise RuntimeError(f"{stage}: the resumed run's metrics differ from the uninterrupted run's")

    def sample_steps(run: Path) -> dict[str, int]:
        path = run / "samples.jsonl"
        counts = Counter(r["step"] for r in rows(path)) if path.exists() else Counter()
        return {str(step): n for step, n in sorted(counts.items())}

    final_rows = rows(resumed / "metrics.jsonl")
    return {
        "stage": stage,
        "commit": commit,
        "torch": torch.__version__,
        "killed_after_step": kill_after,
        "checkpoint_step": at_kill[-1],
        "checkpoints_at_kill": at_kill,
        "metrics_steps_at_kill": [r["step"] for r in rows(killed / "metrics.jsonl")],
        "sample_rows_at_kill": sample_steps(killed),
        "final_step": summary["global_step"],
        "final_checkpoints": checkpoint_steps(resumed),
        "final_metrics_steps": [r["step"] for r in final_rows],
        "final_sample_rows": sample_steps(resumed),
        "tensors": len(tensors),
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # as tests/conftest.py and the harness: one reduction order
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    if dirty:
        raise SystemExit(f"src/ has uncommitted changes; the fixtures must come from one commit:\n{dirty}")
    for stage in STAGES:
        with tempfile.TemporaryDirectory(prefix=f"old-ckpt-{stage}-") as work:
            meta = make(stage, Path(work), commit)
        text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()) + "\n}\n"
        (HERE / stage / "fixture.json").write_text(text, encoding="utf-8")
        print(f"{stage}: killed after step {meta['killed_after_step']}, checkpoint {meta['checkpoint_step']}")
    size = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"fixtures: {size / 1e6:.2f} MB in {HERE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
