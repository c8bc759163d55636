"""Shared helpers of the benchmarks: machine info, one fresh subprocess per measurement, medians, result files.

Every benchmark script runs from the repository root (``.venv/bin/python bench/<name>.py``); Python puts
``bench/`` on ``sys.path``, so ``import benchlib`` finds this file.

Why fresh subprocesses: peak resident memory (``ru_maxrss``) only ever grows within a process, so each
measured run gets its own process and reports its own peak. Why medians of alternating runs: the benchmark
machine has 2 cores shared with other jobs; running the compared systems in turn (A B A B ...) spreads load
changes over both, and the median ignores the odd slow run.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

log = logging.getLogger("bench")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size of this process, MiB (from /proc, no dependency)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, library versions, torch threads, load, date, commit."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads_per_run": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("torch", "transformers", "peft", "accelerate", "trl", "rewardmix")
        },
        "git_commit": _git_commit(),
        # Other jobs on the 2 shared cores slow every run down; the load average says how busy it was.
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def finish_machine_info(info: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end of the benchmark."""
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return info


def machine_lines(info: dict[str, Any]) -> list[str]:
    """Markdown lines describing the machine."""
    v = info["versions"]
    return [
        f"- date: {info['date_utc']}; git commit {info['git_commit']}",
        f"- machine: {info['cpu']}, {info['cpu_count']} cores, {info['platform']}, Python {info['python']}",
        f"- torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, accelerate {v['accelerate']}, "
        f"trl {v['trl']}; {info['torch_threads_per_run']} torch thread(s) per run",
        f"- load average (1, 5, 15 min) at start {info['load_average_start']}, at end "
        f"{info.get('load_average_end')} (other jobs shared the cores: prefer the ratios)",
    ]


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def run_child(script: Path, child: str, options: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run ``script --child <child>`` in a fresh Python process; return the JSON it wrote, plus its wall time.

    ``options`` become ``--key value`` arguments (``--key`` alone for True); the child writes its result to
    ``--out-json``.
    """
    out = workdir / f"{child}-{time.monotonic_ns()}.json"
    command = [sys.executable, str(script), "--child", child, "--out-json", str(out)]
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            command.append(flag)
        elif value is not None and value is not False:
            command += [flag, str(value)]
    started = time.perf_counter()
    # No progress bars (tqdm reads TQDM_DISABLE) or library warnings in the benchmark's output.
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    subprocess.run(command, check=True, env=env)
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - started
    return result


def child_main(children: dict[str, Callable[[Any], dict[str, Any]]], args: Any) -> None:
    """Body of a child process: run ``children[args.child]`` and write its JSON result to ``args.out_json``."""
    import torch

    torch.set_num_threads(args.threads)
    result = children[args.child](args)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    Path(args.out_json).write_text(json.dumps(result, indent=2, default=float))


def write_results(name: str, record: dict[str, Any], markdown: list[str]) -> tuple[Path, Path]:
    """Write ``bench/results/<name>.json`` and ``.md``; returns both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    md_path.write_text("\n".join(markdown) + "\n")
    return json_path, md_path


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # transformers/peft/trl warnings about deprecated attributes are not ours; keep the output readable.
    for name in ("transformers", "peft", "trl", "accelerate", "datasets", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
