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


def write_results(
    name: str, record: dict[str, Any], markdown: list[str], directory: Path = RESULTS
) -> tuple[Path, Path]:
    """Write ``<directory>/<name>.json`` and ``.md`` (default ``bench/results/``); returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    md_path.write_text("\n".join(markdown) + "\n")
    return json_path, md_path


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # transformers/peft/trl warnings about deprecated attributes are not ours; keep the output readable.
    for name in ("transformers", "peft", "trl", "accelerate", "datasets", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def alternate_runs(
    script: Path, systems: Sequence[str], options: dict[str, Any], workdir: Path, *, repeats: int, label: str
) -> dict[str, list[dict[str, Any]]]:
    """``repeats`` rounds of one fresh child per system, rotating who goes first each round (A B C, B C A, ...)."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for rep in range(repeats):
        order = [*systems[rep % len(systems) :], *systems[: rep % len(systems)]]
        for system in order:
            log.info("%s: %s, repeat %d/%d", label, system, rep + 1, repeats)
            runs[system].append(run_child(script, system, options, workdir))
    return runs


def summarize_runs(runs: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Medians over the runs of one system: time per update, samples/s, peak RSS, generation and phase times."""
    intervals = [median(r["update_intervals_s"]) for r in runs]
    generate = [median(r["phases_s"]["generate"]) for r in runs]
    out: dict[str, Any] = {
        "runs": len(runs),
        "update_s_median": median(intervals),
        "update_s_per_run": intervals,
        "samples_per_s": batch / median(intervals),
        "peak_rss_mb_median": median([r["peak_rss_mb"] for r in runs]),
        "peak_rss_mb_per_run": [r["peak_rss_mb"] for r in runs],
        "rss_after_load_mb_median": median([r["rss_after_load_mb"] for r in runs]),
        "generate_s_median": median(generate),
        "completion_length_mean": [r["completion_length_mean"] for r in runs],
    }
    phases = runs[0]["phases_s"].keys()
    out["phases_s_median"] = {p: median([median(r["phases_s"][p]) for r in runs]) for p in phases}
    return out


# ---------------------------------------------------------------------------------------------------------
# rewardmix vs TRL (ppo_vs_trl.py, grpo_vs_trl.py): the same base, reward models and instrumentation.
# Model code is imported inside the functions: the parent process never loads torch.

MODELS = {"tiny": "tiny", "smollm2": "offline:smollm2"}
"""Benchmark model name -> rewardmix ``model.name``."""
LORA_R = 16
"""LoRA rank of every adapter (alpha 2r, every linear layer, dropout 0)."""
REWARDMIX_PHASES = {
    "generate": "perf/generate_time",
    "reward": "perf/reward_time",
    "rollout_forward": "perf/forward_time",
    "ppo_update": "perf/update_time",
}
"""rewardmix's phases: the per-step timings its PPO stage logs (docs/metrics.md)."""


def load_base(model: str) -> tuple[Any, Any, str | None]:
    """(tokenizer, causal LM, folder or None for tiny): the very weights every system starts from."""
    from rewardmix.models import loading, tiny

    if model == "tiny":
        tokenizer = tiny.build_tiny_tokenizer()
        return tokenizer, tiny.build_tiny_causal_lm(tokenizer, seed=0), None  # seed 0 = the PPO stage's
    path = loading.resolve_model_path(MODELS[model])
    return loading.load_tokenizer(path), loading.load_causal_lm(path), path


def stop_ids(tokenizer: Any) -> list[int]:
    """The tokens that end a response (EOS, end of turn): suppressed, so every response has the full length."""
    from rewardmix.models.tokens import stop_token_ids

    return stop_token_ids(tokenizer)


def write_reward_roles(model: str, workdir: Path, seeds: dict[str, int]) -> None:
    """Write each reward model as a rewardmix LoRA role folder ``workdir/<name>``: an identity adapter (so the
    scores are the base's) and a linear scalar head drawn with its own seed, read at the last token."""
    from rewardmix.models.heads import ScalarHeadModel
    from rewardmix.models.lora import LoraSettings, add_adapters, save_adapter

    _, base, _ = load_base(model)
    peft = add_adapters(base, list(seeds), LoraSettings(r=LORA_R, alpha=2 * LORA_R))
    for name, seed in seeds.items():
        save_adapter(ScalarHeadModel(peft, role=name, seed=seed), name, workdir / name)


def trl_reward_model(base: Any, path: str | None, role_dir: Path, tokenizer: Any) -> Any:
    """The reward model of ``role_dir`` as TRL takes it: a separate sequence classifier with the base's weights
    and the rewardmix head's weights (the adapter is the identity, so the scores are the same function)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    if path is None:
        rm = LlamaForSequenceClassification(
            base.config.__class__(**{**base.config.to_dict(), "num_labels": 1})
        )
        rm.model.load_state_dict(base.model.state_dict())
    else:
        rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    head = load_file(str(role_dir / "head.safetensors"))
    with torch.no_grad():
        rm.score.weight.copy_(head["weight"])  # ScalarHeadModel's head bias is 0; TRL's score has none
    return rm.eval()


def trl_lora_config() -> Any:
    """TRL's policy adapter: the same LoRA as rewardmix's policy role."""
    from peft import LoraConfig

    return LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules="all-linear", lora_dropout=0.0)


def trl_trainer_kwargs(
    out: Path, *, batch: int, max_new_tokens: int, steps: int, tokenizer: Any, beta: float, lr: float
) -> dict[str, Any]:
    """The TRL trainer arguments every comparison shares: one optimizer step per update over the whole batch,
    full-length responses, plain sampling, float32 without gradient checkpointing (TRL's defaults are bf16 and
    checkpointing), dropout off, no logging or saving in between."""
    return {
        "output_dir": str(out),
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "disable_dropout": True,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "num_iterations": 1,
        "max_completion_length": max_new_tokens,
        "generation_kwargs": {"suppress_tokens": stop_ids(tokenizer)},
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "beta": beta,
        "learning_rate": lr,
        "max_steps": steps,
        "logging_steps": steps,
        "save_strategy": "no",
        "report_to": [],
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def trl_prompt_dataset(tokenizer: Any) -> Any:
    """The ``builtin:toy`` prompts as TRL gets them: a ``datasets.Dataset`` of chat-rendered ``prompt`` texts."""
    from datasets import Dataset

    from rewardmix.data.prompts import DataConfig, load_prompts

    prompts = [tokenizer.decode(p.input_ids) for p in load_prompts(DataConfig(), tokenizer)]
    return Dataset.from_dict({"prompt": prompts})


def trl_result(timer: Any, *, rss_after_load_mb: float, phases_s: dict[str, list[float]]) -> dict[str, Any]:
    """What a TRL child reports (the keys :func:`summarize_runs` reads), from its :func:`trl_timer`."""
    lengths = [row["completions/mean_length"] for row in timer.logs if "completions/mean_length" in row]
    return {
        "rss_after_load_mb": rss_after_load_mb,
        "peak_rss_mb": peak_rss_mb(),
        "update_intervals_s": intervals(timer.ends),
        "completion_length_mean": lengths[-1] if lengths else None,
        "phases_s": phases_s,
    }


def trl_timer() -> Any:
    """A TRL ``TrainerCallback`` keeping the time of every update's end (``ends``) and every logged row (``logs``)."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.logs: list[dict[str, float]] = []

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.ends.append(time.perf_counter())

        def on_log(self, *a: Any, logs: dict[str, float] | None = None, **k: Any) -> None:
            self.logs.append(dict(logs or {}))

    return Timer()


def time_calls(obj: Any, name: str) -> list[float]:
    """Wrap the method ``obj.<name>`` so that each call's seconds are appended to the returned list."""
    original = getattr(obj, name)
    times: list[float] = []

    def timed(*a: Any, **k: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            times.append(time.perf_counter() - started)

    setattr(obj, name, timed)
    return times


def intervals(ends: Sequence[float]) -> list[float]:
    """Seconds between consecutive update ends, without the first update (warm-up) and the last (rewardmix
    writes its final checkpoint there)."""
    return [b - a for a, b in zip(ends, ends[1:], strict=False)][:-1]


class RewardmixProbe:
    """Instruments one ``rewardmix.stages.ppo.run`` without wrapping its measured functions.

    Use as a context manager around the run and pass the instance as ``on_step``. It wraps
    ``roles.load_models`` once (stop tokens suppressed on the policy; the roles kept in ``models``) and
    ``roles.build_reward`` (the RSS once every role is loaded), and the loop's ``rollout`` only to keep a
    reference to the latest rollout batch (``trajectory``); all restored on exit. Per update it records the
    end time, the mean response length, the ``perf/*_time`` phases and the peak RSS so far.
    """

    def __init__(self) -> None:
        self.models: Any = None
        self.rss_after_load_mb: float | None = None
        self.ends: list[float] = []
        self.lengths: list[float] = []
        self.phases: dict[str, list[float]] = {name: [] for name in REWARDMIX_PHASES}
        self.peaks: list[float] = []  # peak RSS after each update: when the peak is reached
        self.trajectory: Any = None

    def __enter__(self) -> RewardmixProbe:
        import importlib

        from rewardmix.stages.ppo import roles

        loop = importlib.import_module("rewardmix.stages.ppo.loop")
        self._originals = roles.load_models, roles.build_reward, loop.rollout
        original_load, original_reward, original_rollout = self._originals

        def load_models(*a: Any, **k: Any) -> Any:
            models = original_load(*a, **k)
            # Every response exactly max_new_tokens long.
            models.policy.get_base_model().generation_config.suppress_tokens = stop_ids(models.tokenizer)
            self.models = models
            return models

        def build_reward(*a: Any, **k: Any) -> Any:
            reward = original_reward(*a, **k)
            self.rss_after_load_mb = rss_mb()
            return reward

        def rollout(*a: Any, **k: Any) -> Any:
            self.trajectory = original_rollout(*a, **k)
            return self.trajectory

        roles.load_models, roles.build_reward, loop.rollout = load_models, build_reward, rollout
        return self

    def __exit__(self, *exc: Any) -> None:
        import importlib

        from rewardmix.stages.ppo import roles

        loop = importlib.import_module("rewardmix.stages.ppo.loop")
        roles.load_models, roles.build_reward, loop.rollout = self._originals

    def __call__(self, step: int, row: dict[str, float]) -> None:
        self.ends.append(time.perf_counter())
        self.lengths.append(row["response/length_mean"])
        for name, key in REWARDMIX_PHASES.items():
            self.phases[name].append(row[key])
        self.peaks.append(round(peak_rss_mb()))

    def result(self) -> dict[str, Any]:
        """What a child reports (the keys :func:`summarize_runs` reads)."""
        return {
            "rss_after_load_mb": self.rss_after_load_mb,
            "peak_rss_mb": peak_rss_mb(),
            "update_intervals_s": intervals(self.ends),
            "completion_length_mean": sum(self.lengths) / len(self.lengths),
            "phases_s": {k: v[1:] for k, v in self.phases.items()},  # the first is the warm-up update
            "peak_rss_after_update_mb": self.peaks,
        }


def settings_for(args: Any, model: str, defaults: dict[str, dict[str, int]]) -> dict[str, int]:
    """The model's defaults, overridden by the command line's ``--batch`` etc. when given."""
    given = {k: getattr(args, k) for k in defaults[model] if getattr(args, k, None) is not None}
    return defaults[model] | given
