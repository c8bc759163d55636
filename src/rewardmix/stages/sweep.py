"""A one-key sweep over PPO runs (``rewardmix sweep``): the CRS weight sweep, or any other single setting.

What a run does, in order (the numbered steps of :func:`run`):

1. Prepare the run directory and read the base PPO config (a YAML file for ``rewardmix ppo``).
2. For each value of ``values``: copy the base config, apply the shared ``overrides``, set ``key`` to the value
   (and ``complement_key`` to ``1 - value``), point ``output_dir`` at ``<output_dir>/<name>`` and check the result
   strictly against the PPO config schema. Every run is checked before the first one starts.
3. Run the PPO stage once per value. A run whose ``summary.json`` already reports all its steps is not run
   again; a killed run resumes from its own checkpoints: rerunning the sweep continues where it stopped.
4. Write ``summary.json`` and ``summary.md``: per run, the last step's ``objective/score`` and ``objective/kl``
   and, averaged over the last ``summary_window`` steps, the score, the KL and every component's raw reward.

``key`` is a dotted path into the PPO config; list items are addressed by index, e.g.
``reward.components[0].weight`` or ``reward.combinator_params.threshold`` (the syntax of command-line
overrides: :func:`rewardmix.config.set_key` reads both). The CRS sweep (weights 0.25, 0.375,
0.5, 0.625, 0.75 on the preference reward, the rest on the absolute one, CRS §5.4) is::

    key: reward.components[0].weight
    complement_key: reward.components[1].weight
    values: [0.25, 0.375, 0.5, 0.625, 0.75]

with the base ``configs/ppo-crs.yaml`` (``combinator: weighted``, so the mix is exactly ``w * pref + (1 - w) *
abs``). ``configs/sweep-crs.yaml`` is that sweep.

Reference: CRS §5.4 ("five different weight proportions: 0.25, 0.375, 0.5, 0.625 and 0.75", 10% of the data
each), Table 10 and Figure 22 (win rates and objective KL by weight).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rewardmix import preflight
from rewardmix.config import ConfigError, apply_overrides, config_defaults, from_dict, load_yaml, parse_key
from rewardmix.config import set_key as _set_key
from rewardmix.markdown import md_cell, md_code
from rewardmix.rundir import atomic_write_text, config_changes, prepare_run_dir, read_jsonl, run_dir_scope
from rewardmix.stages import ppo

log = logging.getLogger(__name__)


@dataclass
class Config:
    base: str = "builtin:ppo-crs"
    """The PPO config every run starts from: a YAML file for ``rewardmix ppo``, or ``builtin:<name>``."""
    output_dir: str = "runs/sweep"
    """Sweep directory: one PPO run folder per value, summary.json and summary.md."""
    key: str = "reward.components[0].weight"
    """Dotted path of the swept setting; list items by index (``reward.components[0].weight``)."""
    values: list[float | str] = field(default_factory=lambda: [0.25, 0.375, 0.5, 0.625, 0.75])
    """The values ``key`` takes, one PPO run each (CRS §5.4: 0.25, 0.375, 0.5, 0.625, 0.75)."""
    complement_key: str | None = "reward.components[1].weight"
    """A second setting put to ``1 - value`` in each run (CRS: the absolute reward's weight); null: none."""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides applied to every run before ``key`` is set (e.g. ``ppo.steps=40``)."""
    names: list[str] | None = None
    """Run folder names, one per value; null: ``<last key part>_<value>`` (``weight_0.25``)."""
    summary_window: int = 5
    """Average the summary's metrics over the last N steps of each run."""

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("values: give at least one value")
        if self.names is not None and len(self.names) != len(self.values):
            raise ValueError(f"names: {len(self.names)} names for {len(self.values)} values")
        if self.summary_window < 1:
            raise ValueError("summary_window must be >= 1")
        for key in (self.key, self.complement_key):
            if key is not None:
                parse_key(key, label=f"sweep key {key!r}")


class SweepRun(NamedTuple):
    """One run of the sweep."""

    name: str
    value: float | str
    output_dir: Path
    summary: dict[str, float]
    """Final and last-window means of the score, the KL and each component's raw reward."""


class SweepResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    runs: list[SweepRun]
    summary_path: Path
    """``summary.json`` (``summary.md`` beside it)."""


def run(cfg: Config) -> SweepResult:
    """Run the PPO stage once per value and summarize; rerun the same config to resume.

    Args:
        cfg: The sweep config.

    Returns:
        A :class:`SweepResult`.
    """
    # step 1. run directory and the base config
    out = prepare_run_dir(cfg.output_dir, cfg, stage="sweep")
    base = load_yaml(cfg.base)
    file_stage = base.pop("stage", None)
    if file_stage not in (None, "ppo"):
        raise ConfigError(f"{cfg.base}: a sweep runs the ppo stage, this config is for {file_stage!r}")

    # step 2. one checked PPO config per value (all before the first run starts)
    names = cfg.names or [run_name(cfg.key, v) for v in cfg.values]
    configs = [
        build_run_config(cfg, base, value, out / name) for name, value in zip(names, cfg.values, strict=True)
    ]
    for name, ppo_cfg in zip(names, configs, strict=True):
        try:
            preflight.check(ppo_cfg, stage="ppo")  # every path of every run, before the first one starts
        except preflight.PreflightError as e:
            raise preflight.PreflightError(f"sweep run {name}: {e}") from None

    # step 3. run each (a finished run is kept; a killed one resumes from its checkpoints)
    runs = []
    for name, value, ppo_cfg in zip(names, cfg.values, configs, strict=True):
        run_dir = Path(ppo_cfg.output_dir)
        if is_finished(run_dir, ppo_cfg):
            log.info("sweep run %s (%s = %s) is finished; keeping it", name, cfg.key, value)
        else:
            log.info("sweep run %s: %s = %s", name, cfg.key, value)
            with run_dir_scope():  # its run-folder lock goes when it ends
                ppo.run(ppo_cfg)
        runs.append(SweepRun(name, value, run_dir, summarize_run(run_dir, window=cfg.summary_window)))

    # step 4. the summary table
    summary_path = out / "summary.json"
    rows = [{"name": r.name, cfg.key: r.value, **r.summary} for r in runs]
    atomic_write_text(summary_path, json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "summary.md", summary_markdown(cfg, runs))
    log.info("sweep done: %d runs; summary in %s", len(runs), summary_path)
    return SweepResult(out, runs, summary_path)


def run_name(key: str, value: float | str) -> str:
    """Default folder name: the key's last part and the value (``weight_0.25``)."""
    leaf = re.sub(r"\[\d+\]", "", key.split(".")[-1])
    return f"{leaf}_{value}".replace("/", "_")


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` in the base config ``data``; a list the base does not set comes from the PPO defaults.

    Raises:
        ConfigError: A list index out of range, or a part that is not a section.
    """
    _set_key(data, key, value, label=f"sweep key {key!r}", defaults=config_defaults(ppo.Config))


def build_run_config(cfg: Config, base: dict[str, Any], value: float | str, run_dir: Path) -> ppo.Config:
    """The PPO config of one run: base + shared overrides + ``key = value`` (+ complement), strictly checked."""
    data = copy.deepcopy(base)
    apply_overrides(data, list(cfg.overrides), defaults=config_defaults(ppo.Config))
    set_key(data, cfg.key, value)
    if cfg.complement_key is not None:
        if not isinstance(value, int | float):
            raise ConfigError(f"complement_key needs numeric values, got {value!r}")
        set_key(data, cfg.complement_key, 1.0 - float(value))
    data["output_dir"] = str(run_dir)
    source = f"{cfg.base} with {cfg.key}={value}"
    return from_dict(ppo.Config, data, source=source)


def is_finished(run_dir: Path, ppo_cfg: ppo.Config) -> bool:
    """Whether the run's summary.json exists and reports its configured steps (unknown steps: any summary),
    and it was trained with this config: a finished run of another config (the base or the overrides were
    edited) goes to ``ppo.run``, which refuses it naming the keys (``--restart`` sets it aside)."""
    path = run_dir / "summary.json"
    if not path.is_file() or config_changes(run_dir, ppo_cfg, "ppo"):
        return False
    done = json.loads(path.read_text()).get("global_step")
    return ppo_cfg.ppo.steps is None or done == ppo_cfg.ppo.steps


def summarize_run(run_dir: Path, *, window: int) -> dict[str, float]:
    """Final score and KL, and means over the last ``window`` steps of score, KL and each raw component."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    if not rows:
        return {}
    tail = rows[-window:]
    keys = ["objective/score", "objective/kl", "objective/rlhf_reward"]
    keys += sorted(k for k in rows[-1] if re.fullmatch(r"reward/[^/]+/raw", k))
    out: dict[str, float] = {"steps": float(rows[-1]["step"])}
    out["final/objective/score"] = _num(rows[-1].get("objective/score"))
    out["final/objective/kl"] = _num(rows[-1].get("objective/kl"))
    for key in keys:
        values = [_num(r.get(key)) for r in tail]
        finite = [v for v in values if math.isfinite(v)]
        out[f"mean/{key}"] = sum(finite) / len(finite) if finite else math.nan
    return out


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def summary_markdown(cfg: Config, runs: list[SweepRun]) -> str:
    """The summary as a Markdown table, one row per run."""
    columns = sorted({k for r in runs for k in r.summary if k != "steps"}, key=_column_order)
    header = ["run", cfg.key, "steps", *columns]
    lines = [
        f"# Sweep over {md_code(cfg.key)}"
        + (f" (and {md_code(cfg.complement_key)} = 1 - value)" if cfg.complement_key else ""),
        "",
        f"Base config: {md_code(cfg.base)}. `final/...`: last step; `mean/...`: mean over the last "
        f"{cfg.summary_window} steps.",
        "",
        "| " + " | ".join(md_cell(h) for h in header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in runs:
        cells = [md_cell(r.name), md_cell(r.value), f"{r.summary.get('steps', math.nan):.0f}"]
        cells += [f"{r.summary.get(c, math.nan):.4g}" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _column_order(key: str) -> tuple[int, str]:
    return (0 if key.startswith("final/") else 1, key)
