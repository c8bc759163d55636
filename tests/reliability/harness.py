"""Kill-and-resume harness: SIGKILL real ``rewardmix`` CLI runs at random points, rerun them, compare.

For each long stage (``sft``, ``reward-model``, ``ppo`` on the tiny in-memory Llama; ``rationales`` against the
fake OpenAI-compatible server of ``tests/fake_llm.py``) the harness

1. runs the stage's config once without interruption: the reference;
2. runs the same config in another directory as a subprocess (``python -m rewardmix.cli <stage> cfg.yaml``),
   sends it SIGKILL at a random point, checks what the kill left on disk, and reruns the very same command;
   a chain does this several times (a resumed run is killed again) and then lets the last launch finish;
3. compares the finished chain with the reference.

Kill points (drawn with a seeded ``random.Random``; the moment itself depends on timing):

- ``startup``: a random delay after launch (imports, model building, data loading, the first steps);
- ``row``: once the progress file (``metrics.jsonl``; ``teacher_outputs.jsonl`` for rationales) reaches a
  random step / row count, plus a random delay of up to one step: anywhere inside a step, an evaluation, a
  sample table or a checkpoint save;
- ``save``: once a random step is reached, at the first moment a checkpoint is being written (a
  ``checkpoints/.tmp-step-*`` folder exists): the kill lands inside ``save_checkpoint``;
- ``final``: after the last step's row, with a random delay: inside the final model save.

After each kill: the newest ``step-*`` checkpoint verifies its checksums, and no file of any checkpoint has
content that disagrees with its manifest (older folders may be half-deleted by pruning, never half-written).
In one chain per training stage the newest checkpoint is then corrupted on purpose: the rerun must warn
("skipping checkpoint ...") and resume from the previous one.

What must equal the reference at the end:

- training stages: every ``*.safetensors`` tensor of the saved model folders (``model/``, ``adapter/``,
  ``value/``) and of the checkpoints kept, at most ``WEIGHT_ATOL`` apart (0: bitwise; see below);
  ``metrics.jsonl`` has each step exactly once with the reference's values (``perf/*`` timings excepted);
  ``samples.jsonl`` has the same rows, none twice;
- rationales: ``teacher_outputs.jsonl`` has every id once with the reference's text, ``rationales.jsonl`` the
  same records; and the server was not paid twice beyond the calls in flight at the kills: requests sent
  more than once <= sum over kills of (requests received by the server during that launch minus answers
  stored in the cache during it).

Why bitwise (``WEIGHT_ATOL = 0``): reference and resumed runs execute on the same machine, with the same
binary, one intra-op thread (``OMP_NUM_THREADS=1``) and deterministic CPU kernels; a resume that restores
weights, optimizer, schedule, random state and data position performs the very same floating-point
operations in the same order. Any difference, even 1e-9, means some state was not restored.

Usage (from the repository root):

    .venv/bin/python -m tests.reliability.harness --trials 24     # writes bench/results/kill_resume.{json,md}
    .venv/bin/python bench/kill_resume.py --trials 24             # the same

The pytest entry is ``tests/reliability/test_kill_resume.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
STAGE_NAMES = ("sft", "reward-model", "ppo", "rationales")
WEIGHT_ATOL = 0.0
"""Largest absolute difference allowed between a resumed run's tensors and the reference's (see above)."""
LAUNCH_TIMEOUT_S = 600.0
POLL_S = 0.001

log = logging.getLogger("tests.reliability.harness")

KillKind = Literal["startup", "row", "save", "final"]


# ---------------------------------------------------------------------------------------------------------
# The stage configs: tiny, a few seconds each, with every piece of state a resume must restore


def sft_config(out: Path, work: Path, server_url: str | None) -> dict[str, Any]:
    """Two phases (a phase boundary to resume across), LoRA dropout on (the RNG must be restored)."""
    return {
        "stage": "sft",
        "output_dir": str(out),
        "seed": 0,
        "cpu": True,
        "model": {"name": "tiny"},
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1},
        "phases": [
            {"name": "pre", "data": "builtin:toy", "max_steps": 12, "eval_fraction": 0.1},
            # 66 rows / 4 per step = 17 steps per epoch: 24 steps cross an epoch boundary
            {"name": "main", "data": "builtin:toy", "epochs": 2, "max_steps": 24, "learning_rate": 5.0e-4},
        ],
        "optim": {
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1.0e-3,
            "warmup_ratio": 0.1,
        },
        "logging": {
            "eval_every": 4,
            "sample_every": 6,
            "num_samples": 1,
            "max_new_tokens": 4,
            "checkpoint_every": 3,
            "keep_checkpoints": 2,
        },
    }


def reward_model_config(out: Path, work: Path, server_url: str | None) -> dict[str, Any]:
    """Pairwise RM with dropout left on (RNG), a warm-up + cosine schedule, evaluations and sample tables."""
    return {
        "stage": "reward-model",
        "output_dir": str(out),
        "seed": 0,
        "cpu": True,
        "model": {"name": "tiny", "disable_dropout": False, "max_length": 128, "min_prompt_tokens": 16},
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": "builtin:toy", "eval_fraction": 0.2},
        "optim": {
            "micro_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1.0e-3,
            "epochs": 4,
            "warmup_ratio": 0.1,
        },
        "logging": {"eval_every": 5, "num_samples": 2, "checkpoint_every": 3, "keep_checkpoints": 2},
    }


def ppo_config(out: Path, work: Path, server_url: str | None) -> dict[str, Any]:
    """Sampling (RNG), an adaptive KL controller and running reward normalization: all state to restore."""
    return {
        "stage": "ppo",
        "output_dir": str(out),
        "seed": 0,
        "cpu": True,
        "model": {"name": "tiny"},
        "lora": {"enabled": True, "r": 4, "alpha": 8},
        "generation": {"max_new_tokens": 6},
        "ppo": {
            "steps": 16,
            "batch_size": 4,
            "minibatch_size": 2,
            "micro_batch_size": 1,
            "ppo_epochs": 2,
            "learning_rate": 1.0e-3,
            "kl": {"kind": "adaptive", "init_coef": 0.2, "target": 0.01, "horizon": 10},
        },
        "reward": {
            "components": [
                {
                    "name": "e_count",
                    "type": "contains",
                    "contains": {"substring": "e", "mode": "count"},
                    "normalize": "running",
                }
            ],
            "combinator": "sum",
        },
        "logging": {"sample_every": 4, "num_samples": 2, "checkpoint_every": 2, "keep_checkpoints": 2},
    }


RATIONALE_EXAMPLES = 60
RATIONALE_CONCURRENCY = 4
SERVER_LATENCY_S = (0.02, 0.06)
_WORDS = "bright dull warm cold funny tired joyous flat sharp slow clever lazy".split()


def rationales_config(out: Path, work: Path, server_url: str | None) -> dict[str, Any]:
    """SST-2 rows from a generated TSV, teacher = the fake server, 4 calls in flight."""
    data = work / "sst2.tsv"
    if not data.exists():
        rows = [
            f"a {_WORDS[i % 12]} and {_WORDS[(i // 12) % 12]} film number {i}\t{i % 2}"
            for i in range(RATIONALE_EXAMPLES)
        ]
        data.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return {
        "stage": "rationales",
        "output_dir": str(out),
        "task": "sst2",
        "data": str(data),
        "seed": 0,
        "teacher": {
            "backend": "openai",
            "base_url": server_url,
            "model": "fake",
            "max_retries": 2,
            "timeout": 20.0,
            "concurrency": RATIONALE_CONCURRENCY,
        },
    }


@dataclass(frozen=True)
class StageCase:
    """One stage under test."""

    name: str
    """CLI stage name."""
    build: Callable[[Path, Path, str | None], dict[str, Any]]
    """``build(output_dir, work_dir, server_url)`` -> the YAML config as a dict."""
    progress_file: str
    """The file whose rows mark progress."""
    kinds: tuple[KillKind, ...]
    """Kill points drawn for this stage."""

    @property
    def training(self) -> bool:
        return self.name != "rationales"


CASES = {
    "sft": StageCase("sft", sft_config, "metrics.jsonl", ("startup", "row", "row", "save", "final")),
    "reward-model": StageCase(
        "reward-model", reward_model_config, "metrics.jsonl", ("startup", "row", "row", "save", "final")
    ),
    "ppo": StageCase("ppo", ppo_config, "metrics.jsonl", ("startup", "row", "row", "save", "final")),
    "rationales": StageCase(
        "rationales", rationales_config, "teacher_outputs.jsonl", ("startup", "row", "row")
    ),
}


# ---------------------------------------------------------------------------------------------------------
# The fake teacher: deterministic answers, some latency, a request log


LABEL_MARK = 'rationale for the answer "'


def teacher_answer(body: dict[str, Any]) -> str:
    """Argue for whatever label the prompt asks about (deterministic in the request)."""
    prompt = body["messages"][-1]["content"]
    start = prompt.find(LABEL_MARK)
    label = prompt[start + len(LABEL_MARK) :].split('"', 1)[0] if start >= 0 else "?"
    return f"The wording clearly points to {label}, as the tone shows."


class SlowTeacher:
    """``ScriptedServer.answer``: sleeps a seeded random latency (so a kill finds calls in flight)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        with self._lock:
            delay = self._rng.uniform(*SERVER_LATENCY_S)
        time.sleep(delay)
        return teacher_answer(body)


@contextmanager
def teacher_server(seed: int = 0) -> Iterator[Any]:
    """The fake OpenAI-compatible server of ``tests/fake_llm.py`` with :class:`SlowTeacher` answers."""
    from tests.fake_llm import serve

    with serve() as state:
        state.answer = SlowTeacher(seed)
        yield state


# ---------------------------------------------------------------------------------------------------------
# Launching, watching, killing


def write_config(case: StageCase, out: Path, work: Path, server_url: str | None) -> Path:
    """The stage's YAML config for ``out``, written beside it."""
    path = out.parent / f"{out.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(case.build(out, work, server_url), sort_keys=False), encoding="utf-8")
    return path


def launch(stage: str, config: Path, log_path: Path) -> subprocess.Popen:
    """``python -m rewardmix.cli <stage> <config>`` with one intra-op thread, output to ``log_path``."""
    env = dict(os.environ)
    # One thread: the same floating-point reduction order in every run, and no thrashing on busy cores.
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("OPENAI_API_KEY", None)  # the fake server needs none; nothing to leak into the logs
    handle = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "rewardmix.cli", stage, str(config)],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        handle.close()  # the child has its own descriptor


def read_progress(path: Path, *, training: bool) -> int:
    """Training: the largest ``step`` in complete lines of ``metrics.jsonl``; else complete lines."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    lines = [line for line in data.split(b"\n")[:-1] if line.strip()]  # [-1]: empty or a torn tail
    if not training:
        return len(lines)
    best = 0
    for line in lines:
        try:
            best = max(best, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue
    return best


def checkpoint_in_progress(out: Path) -> bool:
    """A ``save_checkpoint`` is running: its temporary folder exists."""
    try:
        return any(entry.name.startswith(".tmp-step-") for entry in os.scandir(out / "checkpoints"))
    except FileNotFoundError:
        return False


@dataclass
class KillPoint:
    """Where to kill a launch (see the module docstring)."""

    kind: KillKind
    target: int = 0
    """Progress (step or row) to reach before arming; unused for ``startup``."""
    delay_s: float = 0.0
    """Delay after arming (after launch for ``startup``)."""


@dataclass
class LaunchOutcome:
    """What one launch did."""

    killed: bool
    returncode: int | None
    wall_s: float
    progress_at_kill: int | None = None
    mid_save: bool = False


def run_and_kill(
    case: StageCase, config: Path, out: Path, point: KillPoint | None, log_path: Path
) -> LaunchOutcome:
    """Launch the stage and SIGKILL it at ``point`` (``None``: let it finish)."""
    progress_path = out / case.progress_file
    started = time.monotonic()
    proc = launch(case.name, config, log_path)
    armed_at: float | None = None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > LAUNCH_TIMEOUT_S:
                raise TimeoutError(f"{case.name}: launch ran over {LAUNCH_TIMEOUT_S} s; see {log_path}")
            fire = False
            if point is not None and point.kind == "startup":
                fire = now - started >= point.delay_s
            elif point is not None and read_progress(progress_path, training=case.training) >= point.target:
                armed_at = armed_at if armed_at is not None else now
                if point.kind == "save":
                    # the first save after the target; kill anyway if none comes within two seconds
                    fire = checkpoint_in_progress(out) or now - armed_at > 2.0
                else:
                    fire = now - armed_at >= point.delay_s
            if fire:
                mid_save = checkpoint_in_progress(out)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return LaunchOutcome(
                    killed=True,
                    returncode=proc.returncode,
                    wall_s=time.monotonic() - started,
                    progress_at_kill=read_progress(progress_path, training=case.training),
                    mid_save=mid_save,
                )
            time.sleep(POLL_S)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    return LaunchOutcome(killed=False, returncode=proc.returncode, wall_s=time.monotonic() - started)


def draw_kill_point(
    rng: random.Random,
    kind: KillKind,
    *,
    progress: int,
    total: int,
    later: int = 0,
    max_delay_s: float = 5.0,
) -> KillPoint:
    """A kill point of ``kind`` for a launch that starts at ``progress`` of ``total``.

    ``later``: how many more ``row``/``save`` kills the chain still has after this one; the target is drawn
    from the first ``1 / (later + 1)`` of what is left, so that a chain's kills spread over the whole run.
    ``max_delay_s``: the longest ``startup`` delay (less than a whole run takes, or it would kill nothing).
    """
    if kind == "startup":
        return KillPoint("startup", delay_s=rng.uniform(min(0.5, max_delay_s / 2), max_delay_s))
    if kind == "final":
        return KillPoint("final", target=total, delay_s=rng.uniform(0.0, 0.08))
    low = max(min(progress + 1, total - 1), 1)
    high = max(low, progress + max(1, (total - 1 - progress) // (later + 1)))
    target = rng.randint(low, min(high, max(total - 1, 1)))
    return KillPoint(kind, target=target, delay_s=rng.uniform(0.0, 0.05) if kind == "row" else 0.0)


# ---------------------------------------------------------------------------------------------------------
# What a kill leaves behind


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CheckpointScan:
    """The checkpoint folder right after a kill."""

    steps: list[int] = field(default_factory=list)
    """``step-N`` folders present."""
    newest_valid: int | None = None
    """The step the loader resumes from (None: no checkpoint verifies)."""
    newest_present: int | None = None
    torn_files: list[str] = field(default_factory=list)
    """Files whose content disagrees with their manifest entry: a half-written checkpoint (must be empty)."""
    pruning_leftovers: list[int] = field(default_factory=list)
    """Older folders with files missing: a deletion cut short (harmless, never loaded)."""
    temp_folders: int = 0
    """``.tmp-step-*`` folders of an interrupted save (removed by the next save)."""


def scan_checkpoints(out: Path) -> CheckpointScan:
    """Check every checkpoint after a kill; see :class:`CheckpointScan`."""
    from rewardmix.train.checkpoint import CheckpointError, list_checkpoints, load_latest_checkpoint

    scan = CheckpointScan()
    root = out / "checkpoints"
    if root.is_dir():
        scan.temp_folders = sum(1 for p in root.iterdir() if p.name.startswith(".tmp-step-"))
    for folder in list_checkpoints(out):
        step = int(folder.name.split("-")[1])
        scan.steps.append(step)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            scan.pruning_leftovers.append(step)
            continue
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
        missing = False
        for name, meta in files.items():
            file = folder / name
            if not file.is_file():
                missing = True
            elif file.stat().st_size != meta["bytes"] or sha256_file(file) != meta["sha256"]:
                scan.torn_files.append(str(file.relative_to(out)))
        if missing:
            scan.pruning_leftovers.append(step)
    scan.newest_present = scan.steps[-1] if scan.steps else None
    logging.disable(logging.WARNING)  # the loader's own warnings about leftovers are expected here
    try:
        checkpoint = load_latest_checkpoint(out)
    except CheckpointError:  # pragma: no cover - load_latest_checkpoint skips bad ones
        checkpoint = None
    finally:
        logging.disable(logging.NOTSET)
    scan.newest_valid = checkpoint.step if checkpoint is not None else None
    return scan


def corrupt_newest_checkpoint(out: Path) -> str | None:
    """Flip one byte of the newest checkpoint's weights; returns its folder name (None: no checkpoint)."""
    from rewardmix.train.checkpoint import list_checkpoints

    folders = list_checkpoints(out)
    if not folders:
        return None
    target = folders[-1] / "trainable.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    return folders[-1].name


# ---------------------------------------------------------------------------------------------------------
# Comparing a finished run with the reference


def _tensor_files(run: Path) -> dict[str, Path]:
    """Relative path -> file for every safetensors file a comparison covers."""
    files = {}
    for path in sorted(run.rglob("*.safetensors")):
        rel = path.relative_to(run)
        if rel.parts[0] == "checkpoints" and rel.parts[1].startswith("."):
            continue  # a temporary folder, not a checkpoint
        files[str(rel)] = path
    return files


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _is_timing(key: str) -> bool:
    return key.startswith("perf/")


def compare_training_runs(reference: Path, run: Path) -> dict[str, Any]:
    """Weights, metrics rows and sample rows of ``run`` against ``reference``."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {"problems": []}
    problems: list[str] = out["problems"]
    # weights: the saved model folders and the checkpoints kept
    ref_files, run_files = _tensor_files(reference), _tensor_files(run)
    if set(ref_files) != set(run_files):
        problems.append(f"tensor files differ: {sorted(set(ref_files) ^ set(run_files))}")
    max_diff, tensors = 0.0, 0
    for rel in sorted(set(ref_files) & set(run_files)):
        a, b = load_file(str(ref_files[rel])), load_file(str(run_files[rel]))
        if a.keys() != b.keys():
            problems.append(f"{rel}: tensor names differ")
            continue
        for name in a:
            tensors += 1
            if a[name].shape != b[name].shape:
                problems.append(f"{rel}:{name}: shape {tuple(b[name].shape)} != {tuple(a[name].shape)}")
                continue
            max_diff = max(
                max_diff, float((a[name].double() - b[name].double()).abs().max()) if a[name].numel() else 0.0
            )
    out["tensor_files"] = len(ref_files)
    out["tensors"] = tensors
    out["max_weight_diff"] = max_diff
    if max_diff > WEIGHT_ATOL:
        problems.append(f"weights differ by up to {max_diff:.3g} (allowed {WEIGHT_ATOL})")
    # metrics: every step once, the reference's values
    ref_rows, run_rows = _jsonl_rows(reference / "metrics.jsonl"), _jsonl_rows(run / "metrics.jsonl")
    counts = Counter(r["step"] for r in run_rows)
    ref_steps = [r["step"] for r in ref_rows]
    out["metrics_rows"] = len(run_rows)
    out["metrics_duplicated"] = sum(c - 1 for c in counts.values() if c > 1)
    out["metrics_missing"] = len(set(ref_steps) - set(counts))
    out["metrics_extra"] = len(set(counts) - set(ref_steps))
    if [r["step"] for r in run_rows] != ref_steps:
        problems.append(f"metrics steps {[r['step'] for r in run_rows]} != reference {ref_steps}")
    by_step = {r["step"]: r for r in run_rows}
    max_metric_diff, mismatched = 0.0, []
    for ref_row in ref_rows:
        row = by_step.get(ref_row["step"])
        if row is None:
            continue
        keys = {k for k in ref_row if not _is_timing(k)}
        if keys != {k for k in row if not _is_timing(k)}:
            mismatched.append(f"step {ref_row['step']}: keys differ")
            continue
        for key in keys:
            x, y = ref_row[key], row[key]
            if isinstance(x, int | float) and isinstance(y, int | float):
                max_metric_diff = max(max_metric_diff, abs(float(x) - float(y)))
                if x != y:
                    mismatched.append(f"step {ref_row['step']} {key}: {y} != {x}")
            elif x != y:
                mismatched.append(f"step {ref_row['step']} {key}: {y!r} != {x!r}")
    out["max_metric_diff"] = max_metric_diff
    if mismatched:
        problems.append(f"{len(mismatched)} metric values differ, e.g. {mismatched[:3]}")
    # sample tables: the same rows, none twice
    ref_samples = Counter(json.dumps(r, sort_keys=True) for r in _jsonl_rows(reference / "samples.jsonl"))
    run_samples = Counter(json.dumps(r, sort_keys=True) for r in _jsonl_rows(run / "samples.jsonl"))
    out["sample_rows"] = sum(run_samples.values())
    out["samples_duplicated"] = sum(c - 1 for c in run_samples.values() if c > 1)
    if ref_samples != run_samples:
        problems.append(
            f"samples.jsonl differs: {sum((run_samples - ref_samples).values())} extra rows, "
            f"{sum((ref_samples - run_samples).values())} missing"
        )
    ref_summary = json.loads((reference / "summary.json").read_text())
    run_summary = json.loads((run / "summary.json").read_text())
    if ref_summary.get("global_step") != run_summary.get("global_step"):
        problems.append(
            f"summary global_step {run_summary.get('global_step')} != {ref_summary.get('global_step')}"
        )
    return out


def compare_rationale_runs(reference: Path, run: Path) -> dict[str, Any]:
    """Teacher outputs and rationale records of ``run`` against ``reference``."""
    out: dict[str, Any] = {"problems": []}
    problems: list[str] = out["problems"]
    ref_rows, run_rows = (
        _jsonl_rows(reference / "teacher_outputs.jsonl"),
        _jsonl_rows(run / "teacher_outputs.jsonl"),
    )
    counts = Counter(r["id"] for r in run_rows)
    ref_ids = {r["id"] for r in ref_rows}
    out["outputs"] = len(run_rows)
    out["outputs_duplicated"] = sum(c - 1 for c in counts.values() if c > 1)
    out["outputs_missing"] = len(ref_ids - set(counts))
    out["outputs_extra"] = len(set(counts) - ref_ids)
    ref_text = {r["id"]: (r["key"], r["text"]) for r in ref_rows}
    run_text = {r["id"]: (r["key"], r["text"]) for r in run_rows}
    differing = sorted(i for i in ref_text.keys() & run_text.keys() if ref_text[i] != run_text[i])
    if out["outputs_duplicated"] or out["outputs_missing"] or out["outputs_extra"] or differing:
        problems.append(
            f"teacher outputs: {out['outputs_duplicated']} duplicated, {out['outputs_missing']} missing, "
            f"{out['outputs_extra']} extra, {len(differing)} with other text"
        )
    ref_records = _jsonl_rows(reference / "rationales.jsonl")
    run_records = _jsonl_rows(run / "rationales.jsonl")
    out["records"] = len(run_records)
    if sorted(json.dumps(r, sort_keys=True) for r in ref_records) != sorted(
        json.dumps(r, sort_keys=True) for r in run_records
    ):
        problems.append("rationales.jsonl differs from the reference")
    return out


# ---------------------------------------------------------------------------------------------------------
# Trials


@dataclass
class Trial:
    """One kill followed by a resume."""

    stage: str
    chain: int
    kind: KillKind
    target: int
    delay_s: float
    killed_after_s: float
    progress_at_kill: int
    total: int
    mid_save: bool
    checkpoint_steps: list[int] = field(default_factory=list)
    resumed_from: int | None = None
    torn_files: int = 0
    pruning_leftovers: int = 0
    temp_folders: int = 0
    corrupted: str | None = None
    corruption_detected: bool | None = None
    torn_output_line: bool = False
    server_received: int = 0
    server_answers_stored: int = 0

    @property
    def in_flight(self) -> int:
        """Requests the server got in this launch whose answer was not stored: may be asked again."""
        return self.server_received - self.server_answers_stored


@dataclass
class StageReport:
    """Every trial of one stage and how its chains compared with the reference."""

    stage: str
    total: int
    trials: list[Trial] = field(default_factory=list)
    missed: int = 0
    """Launches that finished before their kill point fired (not counted as trials)."""
    corrupted: int = 0
    """Newest checkpoints corrupted on purpose after a kill."""
    chains: list[dict[str, Any]] = field(default_factory=list)
    reference_wall_s: float = 0.0
    requests_unique: int | None = None
    """Distinct teacher requests, summed over the chains (each chain asks every request of the task)."""
    requests_total: int | None = None
    """Teacher requests received, summed over the chains."""

    @property
    def problems(self) -> list[str]:
        found = [f"chain {i}: {p}" for i, c in enumerate(self.chains) for p in c["problems"]]
        for t in self.trials:
            if t.torn_files:
                found.append(f"chain {t.chain}: kill left {t.torn_files} half-written checkpoint files")
            if t.checkpoint_steps and t.resumed_from != t.checkpoint_steps[-1] and not t.corrupted:
                found.append(
                    f"chain {t.chain}: newest checkpoint step-{t.checkpoint_steps[-1]} does not verify"
                )
            if t.corrupted and not t.corruption_detected:
                found.append(f"chain {t.chain}: corrupted {t.corrupted} was not reported on resume")
        if self.requests_total is not None:
            paid_twice = self.requests_total - (self.requests_unique or 0)
            allowed = sum(t.in_flight for t in self.trials)
            if paid_twice > allowed:
                found.append(
                    f"{paid_twice} requests paid twice, more than the {allowed} in flight at the kills"
                )
        return found

    def summary(self) -> dict[str, Any]:
        kinds = Counter(t.kind for t in self.trials)
        out: dict[str, Any] = {
            "stage": self.stage,
            "trials": len(self.trials),
            "kill_kinds": dict(kinds),
            "kills_mid_checkpoint_save": sum(t.mid_save for t in self.trials),
            "missed_kill_points": self.missed,
            "chains": len(self.chains),
            "resumed_ok": sum(1 for t in self.trials if not self._trial_problem(t))
            if not any(c["problems"] for c in self.chains)
            else 0,
            "problems": self.problems,
        }
        if self.stage == "rationales":
            out["outputs_duplicated"] = sum(c.get("outputs_duplicated", 0) for c in self.chains)
            out["outputs_missing"] = sum(c.get("outputs_missing", 0) for c in self.chains)
            out["requests_unique"] = self.requests_unique
            out["requests_total"] = self.requests_total
            out["requests_paid_twice"] = (self.requests_total or 0) - (self.requests_unique or 0)
            out["requests_in_flight_at_kills"] = sum(t.in_flight for t in self.trials)
            out["torn_output_lines_repaired"] = sum(t.torn_output_line for t in self.trials)
        else:
            out["max_weight_diff"] = max((c["max_weight_diff"] for c in self.chains), default=None)
            out["max_metric_diff"] = max((c["max_metric_diff"] for c in self.chains), default=None)
            out["metrics_rows_duplicated"] = sum(c["metrics_duplicated"] for c in self.chains)
            out["metrics_rows_missing"] = sum(c["metrics_missing"] for c in self.chains)
            out["samples_duplicated"] = sum(c["samples_duplicated"] for c in self.chains)
            out["half_written_checkpoint_files"] = sum(t.torn_files for t in self.trials)
            out["interrupted_saves_left_tmp"] = sum(1 for t in self.trials if t.temp_folders)
            out["pruning_leftovers_seen"] = sum(1 for t in self.trials if t.pruning_leftovers)
            out["corrupted_checkpoints_detected"] = sum(bool(t.corruption_detected) for t in self.trials)
        return out

    def _trial_problem(self, t: Trial) -> bool:
        return bool(t.torn_files) or (bool(t.corrupted) and not t.corruption_detected)


def total_progress(case: StageCase, reference: Path) -> int:
    """Steps (training) or output rows (rationales) of the finished reference."""
    return read_progress(reference / case.progress_file, training=case.training)


def run_reference(case: StageCase, work: Path, server: Any = None) -> tuple[Path, float]:
    """The uninterrupted run; returns its directory and wall time."""
    out = work / "reference"
    config = write_config(case, out, work, server.url if server is not None else None)
    outcome = run_and_kill(case, config, out, None, work / "reference.log")
    if outcome.returncode != 0:
        raise RuntimeError(
            f"{case.name}: reference run failed ({outcome.returncode}); see {work / 'reference.log'}"
        )
    return out, outcome.wall_s


def run_chain(
    case: StageCase,
    work: Path,
    chain: int,
    kinds: list[KillKind],
    rng: random.Random,
    report: StageReport,
    *,
    reference: Path,
    corrupt: bool = False,
    server: Any = None,
) -> None:
    """Kill a run at one point per entry of ``kinds`` (resuming in between), finish it, compare it."""
    out = work / f"chain{chain}"
    config = write_config(case, out, work, server.url if server is not None else None)
    log_path = work / f"chain{chain}.log"
    cache_path = out / "llm_cache.sqlite"
    received_before = server.count if server is not None else 0
    pending_corruption: Trial | None = None
    for i, kind in enumerate(kinds):
        later = sum(1 for k in kinds[i + 1 :] if k in ("row", "save"))
        # rows a killed launch logged past its checkpoint stay in the file until the rerun truncates them:
        # a kill point must lie beyond them, or it would fire during start-up
        progress = max(
            _resume_point(case, out), read_progress(out / case.progress_file, training=case.training)
        )
        if kind in ("row", "save") and progress >= report.total - 1:
            kind = "final"  # no step left before the last one to aim at
        if kind == "final" and progress >= report.total:
            kind = "startup"  # the last row is there already (an earlier kill hit the final save)
        point = draw_kill_point(
            rng,
            kind,
            progress=progress,
            total=report.total,
            later=later,
            max_delay_s=min(5.0, 0.6 * report.reference_wall_s),
        )
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        stored_before = _cache_entries(cache_path) if server is not None else 0
        count_before = server.count if server is not None else 0
        outcome = run_and_kill(case, config, out, point, log_path)
        if pending_corruption is not None:  # the launch after a corruption: did it warn?
            pending_corruption.corruption_detected = _warned_about(
                log_path, log_offset, pending_corruption.corrupted
            )
            pending_corruption = None
        if not outcome.killed:
            report.missed += 1
            if outcome.returncode != 0:
                raise RuntimeError(
                    f"{case.name} chain {chain}: launch failed ({outcome.returncode}); see {log_path}"
                )
            break  # the run finished before the kill point: nothing left to kill in this chain
        trial = Trial(
            stage=case.name,
            chain=chain,
            kind=point.kind,
            target=point.target,
            delay_s=round(point.delay_s, 4),
            killed_after_s=round(outcome.wall_s, 3),
            progress_at_kill=outcome.progress_at_kill or 0,
            total=report.total,
            mid_save=outcome.mid_save,
        )
        if case.training:
            scan = scan_checkpoints(out)
            trial.checkpoint_steps = scan.steps
            trial.resumed_from = scan.newest_valid
            trial.torn_files = len(scan.torn_files)
            trial.pruning_leftovers = len(scan.pruning_leftovers)
            trial.temp_folders = scan.temp_folders
            # corrupt the newest checkpoint once a previous one exists to fall back to
            if corrupt and not report.corrupted and len(set(scan.steps) - set(scan.pruning_leftovers)) >= 2:
                trial.corrupted = corrupt_newest_checkpoint(out)
                pending_corruption = trial
                report.corrupted += 1
        else:
            tail = (out / case.progress_file).read_bytes() if (out / case.progress_file).exists() else b""
            trial.torn_output_line = bool(tail) and not tail.endswith(b"\n")
            trial.server_received = server.count - count_before
            trial.server_answers_stored = _cache_entries(cache_path) - stored_before
        report.trials.append(trial)
        log.info(
            "%s chain %d: killed (%s, target %d) after %.2f s at progress %d/%d%s",
            case.name,
            chain,
            point.kind,
            point.target,
            outcome.wall_s,
            trial.progress_at_kill,
            report.total,
            " during a checkpoint save" if outcome.mid_save else "",
        )
    # the last launch runs to the end
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    outcome = run_and_kill(case, config, out, None, log_path)
    if outcome.returncode != 0:
        raise RuntimeError(
            f"{case.name} chain {chain}: final launch failed ({outcome.returncode}); see {log_path}"
        )
    if pending_corruption is not None:
        pending_corruption.corruption_detected = _warned_about(
            log_path, log_offset, pending_corruption.corrupted
        )
    result = (
        compare_training_runs(reference, out) if case.training else compare_rationale_runs(reference, out)
    )
    result["launches"] = len(kinds) + 1
    report.chains.append(result)
    if server is not None:
        bodies = [json.dumps(b, sort_keys=True) for b in server.requests[received_before:]]
        result["requests_total"], result["requests_unique"] = len(bodies), len(set(bodies))
        report.requests_total = (report.requests_total or 0) + len(bodies)
        report.requests_unique = (report.requests_unique or 0) + len(set(bodies))


def _resume_point(case: StageCase, out: Path) -> int:
    """Where the next launch starts: the newest valid checkpoint's step, or the output rows so far."""
    if case.training:
        from rewardmix.train.checkpoint import list_checkpoints

        steps = [int(p.name.split("-")[1]) for p in list_checkpoints(out)]
        return max(steps, default=0)
    return read_progress(out / case.progress_file, training=False)


def _cache_entries(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=30.0)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    except sqlite3.OperationalError:  # the table is created by the first launch
        return 0
    finally:
        conn.close()


def _warned_about(log_path: Path, offset: int, folder: str | None) -> bool:
    with log_path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    return folder is not None and "skipping checkpoint" in text and folder in text


def plan_kinds(case: StageCase, kills: int, rng: random.Random, per_chain: int = 3) -> list[list[KillKind]]:
    """Kill kinds for ``kills`` trials in chains of ``per_chain``: every kind of the stage at least once
    when there are enough kills, startup kills first in their chain, ``final`` kills last."""
    kinds = [case.kinds[i % len(case.kinds)] for i in range(kills)]
    rng.shuffle(kinds)
    chains = [kinds[i : i + per_chain] for i in range(0, len(kinds), per_chain)]
    order = {"startup": 0, "row": 1, "save": 1, "final": 2}
    return [sorted(chain, key=lambda k: order[k]) for chain in chains]


def run_stage(
    name: str, work: Path, *, kills: int, seed: int = 0, per_chain: int = 3, max_extra_chains: int = 3
) -> StageReport:
    """Reference run, then chains of kills until ``kills`` trials happened; see the module docstring.

    A kill point that a launch finishes before is retried in an extra chain (at most ``max_extra_chains``).
    """
    case = CASES[name]
    rng = random.Random(f"{seed}:{name}")
    work.mkdir(parents=True, exist_ok=True)
    with teacher_server(seed) if not case.training else _no_server() as server:
        reference, wall = run_reference(case, work, server)
        report = StageReport(
            stage=name, total=total_progress(case, reference), reference_wall_s=round(wall, 2)
        )
        if server is not None:
            bodies = [json.dumps(b, sort_keys=True) for b in server.requests]
            if len(bodies) != len(set(bodies)):
                raise RuntimeError("the reference run itself asked the same request twice")
        plans = plan_kinds(case, kills, rng, per_chain)
        chain = 0
        while plans:
            kinds = plans.pop(0)
            before = len(report.trials)
            run_chain(
                case,
                work,
                chain,
                kinds,
                rng,
                report,
                reference=reference,
                corrupt=case.training,
                server=server,
            )
            chain += 1
            short = len(kinds) - (len(report.trials) - before)
            if short > 0 and max_extra_chains > 0:
                plans.append(["row"] * short)
                max_extra_chains -= 1
    return report


@contextmanager
def _no_server() -> Iterator[None]:
    yield None


# ---------------------------------------------------------------------------------------------------------
# Report files


def write_results(
    reports: list[StageReport], path_json: Path, *, seed: int, wall_s: float, command: str
) -> dict[str, Any]:
    """``kill_resume.json`` (every trial) and ``kill_resume.md`` (the table) beside it."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {
        "command": command,
        "seed": seed,
        "weight_atol": WEIGHT_ATOL,
        "wall_s": round(wall_s, 1),
        "load_average_at_end": [round(x, 2) for x in load] if load else None,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "trials": sum(len(r.trials) for r in reports),
        "stages": {r.stage: r.summary() for r in reports},
        "trial_details": [asdict(t) for r in reports for t in r.trials],
    }
    path_json.parent.mkdir(parents=True, exist_ok=True)
    path_json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    path_json.with_suffix(".md").write_text(markdown_table(result), encoding="utf-8")
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The results as a Markdown section."""
    lines = [
        "# Kill and resume (SIGKILL at random points, rerun the same command)",
        "",
        f"Command: `{result['command']}`; {result['trials']} trials, wall {result['wall_s']} s, load average at the "
        f"end {result['load_average_at_end']}, {result['machine']['cpus']} CPUs.",
        "",
        "| stage | trials (kinds) | killed mid-save | resumed OK | max weight diff | metric rows dup / missing "
        "| outputs dup / missing | LLM requests: paid twice / distinct (in flight at kills) "
        "| corrupt checkpoint detected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["stages"].values():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["kill_kinds"].items()))
        training = "max_weight_diff" in s
        lines.append(
            "| {stage} | {n} ({kinds}) | {mid} | {ok}/{n} | {wd} | {md} | {od} | {paid} | {corrupt} |".format(
                stage=s["stage"],
                n=s["trials"],
                kinds=kinds,
                mid=s["kills_mid_checkpoint_save"] if training else "-",
                ok=s["resumed_ok"],
                wd=f"{s['max_weight_diff']:.1g}" if training else "-",
                md=f"{s['metrics_rows_duplicated']} / {s['metrics_rows_missing']}" if training else "-",
                od="-" if training else f"{s['outputs_duplicated']} / {s['outputs_missing']}",
                paid="-"
                if training
                else f"{s['requests_paid_twice']} / {s['requests_unique']} ({s['requests_in_flight_at_kills']})",
                corrupt=s["corrupted_checkpoints_detected"] if training else "-",
            )
        )
    problems = [p for s in result["stages"].values() for p in s["problems"]]
    lines += [
        "",
        "Problems: " + ("none" if not problems else "; ".join(problems)),
        "",
        "Kill kinds: `startup` a random delay after launch; `row` a random step (or output row) plus up to one "
        "step; `save` the first checkpoint save after a random step; `final` after the last step, in the final "
        "model save. Each chain of kills ends with a launch that runs to the end; it is then compared with an "
        "uninterrupted run of the same config. Max weight diff: largest absolute difference over every tensor of "
        "the saved model folders and kept checkpoints (0 = bitwise equal). Metric rows: steps logged twice / "
        "missing in metrics.jsonl (values compared too, `perf/*` timings excepted). Requests paid twice: teacher "
        "requests the fake server received more than once; in flight: requests it received during a killed "
        "launch whose answer was not yet stored in the cache. Corrupt checkpoint: after one kill the newest "
        "checkpoint had a byte flipped; the rerun warned and resumed from the previous one. Every trial: "
        "`kill_resume.json`.",
        "",
    ]
    return "\n".join(lines)


def trials_per_stage(trials: int) -> dict[str, int]:
    """``trials`` split over the four stages as evenly as possible."""
    base, extra = divmod(trials, len(STAGE_NAMES))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(STAGE_NAMES)}


def main(argv: list[str] | None = None, *, prog: str = "python -m tests.reliability.harness") -> int:
    """Run the trials and write the result files; exit status 1 when a problem was found."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials", type=int, default=24, help="kill trials over the four stages (default 24)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", nargs="+", choices=STAGE_NAMES, default=list(STAGE_NAMES))
    parser.add_argument("--out", type=Path, default=RESULTS / "kill_resume.json")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    split = trials_per_stage(args.trials)
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    started = time.monotonic()
    reports = []
    try:
        for name in args.stages:
            reports.append(run_stage(name, work / name, kills=split[name], seed=args.seed))
    finally:
        if args.keep:
            print(f"run directories kept in {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    command = " ".join([prog, *argv])
    result = write_results(
        reports, args.out, seed=args.seed, wall_s=time.monotonic() - started, command=command
    )
    print(markdown_table(result))
    return 1 if any(s["problems"] for s in result["stages"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
