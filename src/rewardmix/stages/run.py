"""A recipe (``rewardmix run RECIPE.yaml``): several stages chained in order, resumable as a whole.

What a run does, in order (the numbered steps of :func:`run`):

1. Prepare the recipe directory (``output_dir``) and read ``recipe_state.json``, the record of finished steps.
2. For each step, in order: fill in its ``output_dir`` (``<output_dir>/<step name>`` unless given), replace
   ``${steps.<name>.output_dir}`` references to earlier steps, and check the result strictly against the
   stage's ``Config``. Every step is checked before the first one starts, so a typo in the last step costs
   nothing.
3. Skip the leading steps that ``recipe_state.json`` records as done with the same resolved config (its
   SHA-256). From the first step that is not done, or whose config changed, every step runs again: a later
   step's inputs may have changed with it. A step that was finished before is rerun in a fresh directory
   (the old one is renamed ``<dir>.stale-<time>``, never deleted).
4. Before a step starts, record what it starts from: its inputs hash (its resolved config and the finished
   run of every earlier step it may read). A step cut off by a kill resumes from its own checkpoints only when
   that hash is unchanged; if its config or an earlier step's output changed since (an earlier step edited
   and rerun), its unfinished run is renamed ``<dir>.stale-<time>`` with a warning and it starts clean.
5. After each step, record it as done in ``recipe_state.json`` (written atomically). Each step runs with its
   own run-folder lock, released when it ends.

A recipe wires one step's outputs to the next step's inputs with references in string values::

    steps:
      - name: rationales
        stage: rationales
        config: {...}
      - name: pairs
        stage: pairs
        config:
          input: ${steps.rationales.output_dir}/rationales.jsonl

A recipe may define named *profiles*: the same chain at another size (a CPU demo, a reduced run). A profile
gives the recipe another ``output_dir``, deep-merges overrides into named steps' configs, and may drop steps
(no later step may then refer to a dropped one)::

    profiles:
      small:
        output_dir: runs/my-recipe-small
        drop: [ppo_rlhf]
        steps:
          sft: {phases: [{data: ..., max_steps: 20}]}   # mappings merge key by key; lists and values replace
          rm_label: {optim: {max_steps: 10}}

and ``rewardmix run RECIPE.yaml profile=small`` runs it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from rewardmix import preflight
from rewardmix.config import ConfigError, from_dict, to_dict
from rewardmix.rundir import atomic_write_text, move_aside, prepare_run_dir, run_dir_scope, run_dir_stage
from rewardmix.stages import get_stage

log = logging.getLogger(__name__)

STATE_FILE = "recipe_state.json"
NOT_A_STEP = ("run", "demo")
"""Stages a recipe step may not name: a recipe inside a recipe, and the self-contained demo."""

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_STEP_OUTPUT = re.compile(r"^steps\.(?P<name>[^.]+)\.output_dir$")


@dataclass
class StepConfig:
    name: str
    """Unique step name: the key of its record in ``recipe_state.json`` and of ``${steps.<name>.output_dir}``."""
    stage: str
    """The stage this step runs (any stage of ``rewardmix --help`` except ``run`` and ``demo``)."""
    config: Any = field(default_factory=dict)
    """The stage's config, as in its own YAML file (no ``stage:`` key); checked strictly against the stage's
    ``Config``. ``output_dir`` defaults to ``<recipe output_dir>/<name>``."""

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ValueError(f"step name {self.name!r}: use letters, digits, '_' and '-'")
        if self.stage in NOT_A_STEP:
            raise ValueError(f"step {self.name!r}: stage {self.stage!r} cannot be a recipe step")
        try:
            get_stage(self.stage)
        except KeyError as e:
            raise ValueError(f"step {self.name!r}: {e.args[0]}") from None
        if not isinstance(self.config, dict):
            raise ValueError(
                f"step {self.name!r}: config must be a mapping, got {type(self.config).__name__}"
            )


@dataclass
class ProfileConfig:
    output_dir: str | None = None
    """Recipe directory under this profile (null: the recipe's ``output_dir``). Give each profile its own, so
    a small run never sets aside the steps of a full one."""
    drop: list[str] = field(default_factory=list)
    """Steps left out under this profile; a remaining step that refers to one is an error."""
    steps: dict[str, Any] = field(default_factory=dict)
    """Step name -> overrides of that step's config: mappings are merged key by key, any other value
    (lists included) replaces the recipe's."""
    insert_after: dict[str, list[StepConfig]] = field(default_factory=dict)
    """Step name -> steps this profile adds right after it (new names; e.g. more policies of a sweep). They
    may refer to any earlier step; ``steps`` and ``drop`` apply to the recipe's own steps only."""


@dataclass
class Config:
    output_dir: str = "runs/recipe"
    """Recipe directory: config.yaml, recipe_state.json and, by default, one run directory per step."""
    steps: list[StepConfig] = field(default_factory=list)
    """The stages to run, in order; each has ``name``, ``stage`` and ``config`` (the stage's own config).
    Empty (the default): nothing to run."""
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    """Named variants of the recipe (e.g. ``small`` for a CPU run): see :class:`ProfileConfig`."""
    profile: str | None = None
    """The profile to run (``rewardmix run RECIPE.yaml profile=small``); null: the recipe as written."""

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"steps: duplicate step name(s) {', '.join(duplicates)}")
        if self.profile is not None and self.profile not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none defined"
            raise ValueError(f"profile {self.profile!r} is not defined in profiles (known: {known})")
        for pname, prof in self.profiles.items():
            for key, listed in (("drop", prof.drop), ("steps", list(prof.steps))):
                unknown = sorted(set(listed) - set(names))
                if unknown:
                    raise ValueError(f"profiles.{pname}.{key}: unknown step(s) {', '.join(unknown)}")
            for step, overrides in prof.steps.items():
                if not isinstance(overrides, dict):
                    raise ValueError(f"profiles.{pname}.steps.{step}: must be a mapping of config overrides")
            both = sorted(set(prof.drop) & set(prof.steps))
            if both:
                raise ValueError(f"profiles.{pname}: step(s) {', '.join(both)} both dropped and overridden")
            unknown = sorted(set(prof.insert_after) - (set(names) - set(prof.drop)))
            if unknown:
                raise ValueError(
                    f"profiles.{pname}.insert_after: unknown or dropped step(s) {', '.join(unknown)}"
                )
            added = [s.name for steps in prof.insert_after.values() for s in steps]
            clash = sorted({n for n in added if n in names or added.count(n) > 1})
            if clash:
                raise ValueError(
                    f"profiles.{pname}.insert_after: step name(s) {', '.join(clash)} already used"
                )

    @property
    def run_dir(self) -> str:
        """The recipe directory of the selected profile."""
        prof = self.profiles.get(self.profile) if self.profile else None
        return prof.output_dir if prof is not None and prof.output_dir else self.output_dir


class ResolvedStep(NamedTuple):
    """A step checked against its stage's schema, ready to run."""

    name: str
    stage: str
    config: Any
    """The stage's typed ``Config``."""
    config_sha256: str
    """SHA-256 of the stage name and its resolved config: what makes a recorded step current."""


class StepOutcome(NamedTuple):
    """What happened to one step in this run."""

    name: str
    stage: str
    status: Literal["ran", "skipped"]
    output_dir: Path
    result: Any
    """What the stage's ``run`` returned; None for a skipped step."""
    seconds: float | None = None
    """Wall time of the step in this run (None for a skipped step; ``recipe_state.json`` keeps the time of
    the run that finished it)."""


class RecipeResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    steps: list[StepOutcome]
    state_path: Path
    """``recipe_state.json``."""


def run(cfg: Config) -> RecipeResult:
    """Run the recipe's steps in order; rerun the same recipe to skip finished steps and resume a cut one.

    Args:
        cfg: The recipe.

    Returns:
        A :class:`RecipeResult` with one :class:`StepOutcome` per step.
    """
    # step 1. recipe directory (the profile's, when one is selected) and the record of finished steps
    out = prepare_run_dir(cfg.run_dir, cfg, stage="run")
    state_path = out / STATE_FILE
    state = read_state(state_path)

    # step 2. every step checked before the first one starts
    resolved = resolve_steps(cfg)

    # step 3. skip the current prefix, run the rest
    first_stale = next(
        (i for i, s in enumerate(resolved) if not is_done(state, s)),
        len(resolved),
    )
    # A step recorded as done whose config (or an earlier step) changed holds a finished run that the stage
    # would resume as "already done": move it aside so the step trains afresh. A step with no done record was
    # cut off: step 4 resumes it, or sets it aside when it started from other inputs. The records go before
    # anything runs, so a kill from here on never leaves a step marked done on top of stale inputs.
    for step in resolved[first_stale:]:
        if state["steps"].pop(step.name, None) is not None and Path(step.config.output_dir).exists():
            target = move_aside(step.config.output_dir, stage=step.stage, tag="stale")
            log.warning(
                "%s was finished with an older config or older inputs; moved it to %s",
                step.config.output_dir,
                target,
            )
    write_state(state_path, state)
    outcomes = []
    started_records = state.setdefault("started", {})
    for i, step in enumerate(resolved):
        output_dir = Path(step.config.output_dir)
        if i < first_stale:
            log.info("step %d/%d %s (%s): skipped, already done", i + 1, len(resolved), step.name, step.stage)
            outcomes.append(StepOutcome(step.name, step.stage, "skipped", output_dir, None))
            continue
        # step 4. unfinished work started from other inputs is set aside; then record what this step starts from
        inputs = inputs_sha256(step, resolved[:i], state)
        record = started_records.get(step.name)
        # no record (a state from before these records): stale when an earlier step ran again in this run
        stale = record.get("inputs_sha256") != inputs if isinstance(record, dict) else i > first_stale
        if stale and run_dir_stage(output_dir) == step.stage:
            target = move_aside(output_dir, stage=step.stage, tag="stale")
            log.warning(
                "step %s: its unfinished run in %s started from another config or from other outputs of "
                "earlier steps; moved it to %s, the step starts afresh",
                step.name,
                output_dir,
                target,
            )
        started_records[step.name] = {
            "inputs_sha256": inputs,
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_state(state_path, state)
        log.info("step %d/%d %s (%s): running in %s", i + 1, len(resolved), step.name, step.stage, output_dir)
        started = time.perf_counter()
        try:
            # its inputs exist only now (an earlier step made them): checked as `rewardmix <stage>` checks them
            preflight.check(step.config, stage=step.stage)
            with run_dir_scope():  # the step's run-folder lock goes when it ends
                result = get_stage(step.stage).load().run(step.config)
        except Exception:
            # the CLI prints the step's own message and exit code; this line says which step it was
            log.error(
                "step %d/%d %s (%s) failed; finished steps are kept: fix it and run the same command to resume",
                *(i + 1, len(resolved), step.name, step.stage),
            )
            raise
        seconds = time.perf_counter() - started

        # step 5. record it as done
        state["steps"][step.name] = {
            "stage": step.stage,
            "config_sha256": step.config_sha256,
            "inputs_sha256": inputs,
            "run_id": uuid.uuid4().hex,
            "output_dir": str(output_dir),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
        }
        started_records.pop(step.name, None)
        write_state(state_path, state)
        log.info("step %d/%d %s done in %.0f s", i + 1, len(resolved), step.name, seconds)
        outcomes.append(StepOutcome(step.name, step.stage, "ran", output_dir, result, seconds))

    if not outcomes:
        log.warning("the recipe has no steps; nothing to run")
    ran = sum(o.status == "ran" for o in outcomes)
    log.info("recipe done: %d step(s) ran, %d skipped; state in %s", ran, len(outcomes) - ran, state_path)
    return RecipeResult(out, outcomes, state_path)


def resolve_steps(cfg: Config) -> list[ResolvedStep]:
    """Each step's stage config: profile applied, default ``output_dir``, references replaced, checked strictly.

    Raises:
        ConfigError: naming the step and the key, for an unknown reference or a value the stage rejects.
    """
    resolved: list[ResolvedStep] = []
    output_dirs: dict[str, str] = {}
    prof = cfg.profiles[cfg.profile] if cfg.profile else ProfileConfig()
    ordered = []
    for step in cfg.steps:
        if step.name not in prof.drop:
            ordered += [step, *prof.insert_after.get(step.name, [])]
    for i, step in enumerate(ordered):
        source = f"recipe step {step.name!r}" + (f" (profile {cfg.profile!r})" if cfg.profile else "")
        data = copy.deepcopy(step.config)  # a copy keeps the YAML line numbers of the original
        data = merge_overrides(data, prof.steps.get(step.name, {}))
        data.setdefault("output_dir", str(Path(cfg.run_dir) / step.name))
        data = resolve_references(data, output_dirs, source=source)
        stage_cfg = from_dict(get_stage(step.stage).load().Config, data, source=source)
        output_dirs[step.name] = str(stage_cfg.output_dir)
        resolved.append(ResolvedStep(step.name, step.stage, stage_cfg, config_sha256(step.stage, stage_cfg)))
        log.debug("recipe step %d %s: config %s", i, step.name, resolved[-1].config_sha256[:12])
    return resolved


def merge_overrides(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in: mappings key by key (recursively), anything else replaced."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = merge_overrides(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def resolve_references(data: Any, output_dirs: dict[str, str], *, source: str, key: str = "") -> Any:
    """Replace ``${steps.<name>.output_dir}`` in every string of ``data`` (nested mappings and lists).

    Args:
        data: A step's config mapping, or a value inside it.
        output_dirs: The run directory of each earlier step, by step name.
        source: Where the mapping came from, for error messages.
        key: The dotted key of ``data`` (for error messages).

    Raises:
        ConfigError: ``<source>:<line>: key '<key>': unknown reference ${...}``.
    """
    if isinstance(data, dict):
        for k in list(data):
            data[k] = _resolve_value(data, k, output_dirs, source=source, key=f"{key}.{k}" if key else str(k))
        return data
    if isinstance(data, list):
        # items go through _resolve_value too, so a string item (pairs: ["${steps.x.output_dir}/a.jsonl"]) is replaced
        return [
            _resolve_value(data, j, output_dirs, source=source, key=f"{key}[{j}]") for j in range(len(data))
        ]
    return data


def _resolve_value(parent: dict | list, k: Any, output_dirs: dict[str, str], *, source: str, key: str) -> Any:
    value = parent[k]
    if not isinstance(value, str):
        return resolve_references(value, output_dirs, source=source, key=key)

    def substitute(match: re.Match[str]) -> str:
        ref = _STEP_OUTPUT.match(match.group(1).strip())
        if ref is None or ref.group("name") not in output_dirs:
            line = (getattr(parent, "lines", None) or {}).get(str(k))
            where = f"{source}:{line}" if line else source
            earlier = ", ".join(output_dirs) or "none"
            raise ConfigError(
                f"{where}: key {key!r}: unknown reference {match.group(0)} "
                f"(use ${{steps.<name>.output_dir}} with an earlier step; earlier steps: {earlier})"
            )
        return output_dirs[ref.group("name")]

    return _REFERENCE.sub(substitute, value)


def config_sha256(stage: str, stage_cfg: Any) -> str:
    """SHA-256 of the stage name and the resolved config (defaults filled in, keys sorted)."""
    text = json.dumps({"stage": stage, "config": to_dict(stage_cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_state(path: Path) -> dict[str, Any]:
    """``recipe_state.json``, or an empty record when there is none yet."""
    if not path.exists():
        return {"steps": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e.msg}); delete it to rerun every step") from None
    if not isinstance(state, dict) or not isinstance(state.get("steps"), dict):
        raise ConfigError(f"{path}: not a recipe state (expected {{'steps': {{...}}}}); delete it to rerun")
    return state


def write_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def inputs_sha256(step: ResolvedStep, earlier: list[ResolvedStep], state: dict[str, Any]) -> str:
    """SHA-256 of what a step starts from: its resolved config and the finished run of every earlier step.

    Each earlier step counts by its recorded config and run id (its finish time in records older than run
    ids), so an earlier step that ran again, with the same config or not, makes another hash.
    """
    upstream = []
    for s in earlier:
        record = state["steps"].get(s.name) or {}
        upstream.append(
            [s.name, record.get("config_sha256"), record.get("run_id") or record.get("finished_at")]
        )
    text = json.dumps({"config": step.config_sha256, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_done(state: dict[str, Any], step: ResolvedStep) -> bool:
    """The step is recorded as finished with exactly this stage and config."""
    record = state["steps"].get(step.name)
    return isinstance(record, dict) and record.get("config_sha256") == step.config_sha256
