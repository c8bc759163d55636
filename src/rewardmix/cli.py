"""The ``rewardmix`` command: parse arguments, load the config, set up logging, call ``stages.<x>.run(cfg)``.

rewardmix <stage> [CONFIG.yaml | builtin:<name>] [key.sub=value | key[i].sub=value ...]
rewardmix <stage> --restart [...]               move the run in output_dir aside (<dir>.old-<time>), start afresh
rewardmix <stage> --help                        the stage's config fields: key, type, default, meaning
rewardmix show-config CONFIG.yaml [key.sub=value ...]
rewardmix show-config --stage <stage> [...]     a stage's defaults as YAML, ready to edit
rewardmix show-config --list                    the configs shipped in the package (builtin:<name>)
rewardmix --debug <stage> ...                   on failure, also print the (redacted) traceback

Every failure ends in one line ``rewardmix: error: <what is wrong>`` on stderr (secrets redacted), no
traceback, and one of the exit codes of :data:`EXIT_CODES`. ``--debug`` (before or after the stage name) or
``REWARDMIX_DEBUG=1`` adds the redacted traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from rewardmix import __version__, preflight
from rewardmix.config import (
    BUILTIN,
    ConfigError,
    builtin_configs,
    config_path,
    load_config,
    load_yaml,
    to_yaml,
)
from rewardmix.data.readers import DataError
from rewardmix.llm.client import LLMError
from rewardmix.preflight import PreflightError
from rewardmix.redact import install_excepthooks, install_redaction, redact
from rewardmix.rundir import NoSpaceError, restarting, run_dir_scope
from rewardmix.stages import STAGES, Stage, get_stage

log = logging.getLogger("rewardmix")

EXIT_CODES = {
    0: "done",
    1: "bad input data, a missing or unreadable file or model, a fatal LLM endpoint error, a disk full, a "
    "missing package",
    2: "config or command-line error (the message names the file:line or override and the key)",
    3: "NaN/inf in a reward, loss or gradient",
    70: "internal error: a bug in rewardmix or a library (run with --debug for the traceback)",
    130: "interrupted (run the same command again to resume)",
}
"""The CLI's exit codes and what each means (README, ``rewardmix --help``)."""
EXIT_INTERNAL = 70
DEBUG_ENV = "REWARDMIX_DEBUG"
"""Environment variable that turns ``--debug`` on (``1``, ``true`` or ``yes``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardmix",
        description="RL fine-tuning of language models from several reward signals at once.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stages run in the order listed. Every stage takes an optional YAML config (a file or\n"
        "builtin:<name>) and key.sub=value overrides (list items: key[i].sub=value).\n"
        "  rewardmix <stage> --help               the stage's config fields: key, type, default, meaning\n"
        "  rewardmix show-config --stage <stage>  its defaults as YAML, ready to edit\n"
        "  rewardmix show-config --list           the configs shipped in the package (builtin:<name>)\n"
        "  rewardmix show-config FILE             what a config resolves to\n"
        "  rewardmix <stage> --restart ...        move the run in output_dir aside and start afresh\n"
        "A stage writes only into an absent or empty output_dir or a run of the same stage (exit code 2\n"
        "otherwise), one run per folder at a time; ~ and $VAR in output_dir are expanded.\n\n"
        "exit codes: " + "; ".join(f"{code} {what.split(' (')[0]}" for code, what in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"rewardmix {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"on failure, also print the (redacted) traceback (or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="<command>", title="stages (pipeline order)", parser_class=_StageParser
    )
    for stage in STAGES:
        p = sub.add_parser(
            stage.name,
            help=stage.help,
            description=stage.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.stage = stage
        _add_config_args(p)
        p.add_argument(
            "--restart",
            action="store_true",
            help="start afresh: an existing run of this stage in output_dir (a recipe: in its directory and its "
            "steps' directories) is renamed to <dir>.old-<UTC time>, never deleted. Without it a run resumes, "
            "and a finished or checkpointed training run (sft, reward-model, ppo) whose config changed is "
            "refused (exit code 2)",
        )
    p = sub.add_parser(
        "show-config",
        help="print a resolved config (a file, builtin:<name>, or a stage's defaults); --list: the shipped ones",
        description="Print the resolved config as YAML: defaults filled in, overrides applied, types checked. "
        "The file's `stage:` key picks the schema; with --stage and no file, the stage's defaults.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  rewardmix show-config --stage ppo > my-ppo.yaml     # every PPO field with its default, to edit\n"
        "  rewardmix show-config builtin:ppo-crs ppo.steps=10  # a shipped config, one value changed\n"
        "  rewardmix show-config --list                        # the shipped configs (builtin:<name>)",
    )
    p.add_argument("--stage", metavar="STAGE", help="the stage whose config to print (no file: its defaults)")
    p.add_argument("--list", action="store_true", help="list the configs shipped in the package and exit")
    _add_config_args(p)
    return parser


class _StageParser(argparse.ArgumentParser):
    """A subcommand parser; a stage's ``--help`` ends with examples and every field of its config."""

    stage: Stage | None = None

    def format_help(self) -> str:
        text = super().format_help()
        return text if self.stage is None else f"{text}\n{stage_help(self.stage)}"


def stage_help(stage: Stage) -> str:
    """Examples and the stage's config fields (key: type = default, then the docstring's first line).

    The stage module is imported here, only when its ``--help`` is asked for, so ``rewardmix --help`` stays fast.
    """
    from rewardmix.docgen import config_sections  # docgen imports this module

    name = stage.name
    config = f"{BUILTIN}{name}" if name in builtin_configs() else "my.yaml"
    lines = [
        "examples:",
        f"  rewardmix {name} {config} {stage.example}",
        f"  rewardmix show-config --stage {name} > my.yaml   # every field below as YAML, ready to edit",
        f"  rewardmix {name} my.yaml",
        "",
        "config fields (key: type = default; docs/reference.md has the full text):",
    ]
    for _, fields in config_sections(stage.load().Config):
        for d in fields:
            if d.kind == "section":
                continue
            default = "required" if d.default is None else _shorten(d.default, 60)
            lines.append(f"  {d.key}: {d.type} = {default}")
            if d.summary:
                more = " ..." if len(d.summary.split()) < len(d.doc.split()) else ""
                lines.append(f"      {d.summary}{more}")
    return "\n".join(lines) + "\n"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _add_config_args(p: argparse.ArgumentParser) -> None:
    # --debug is accepted after the stage name too; SUPPRESS keeps a global --debug when it is not given here
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument(
        "args",
        nargs="*",
        metavar="CONFIG.yaml | key.sub=value",
        help="a YAML config or builtin:<name> (first), then key.sub=value overrides (list items: key[i].sub=value)",
    )


def split_config_args(args: list[str]) -> tuple[Path | None, list[str]]:
    """The first argument without '=' is the config file; the rest are overrides."""
    if args and "=" not in args[0]:
        path, overrides = Path(args[0]), args[1:]
    else:
        path, overrides = None, list(args)
    stray = [a for a in overrides if "=" not in a]
    if stray:
        raise ConfigError(f"expected key.sub=value overrides after the config file, got {stray[0]!r}")
    return path, overrides


def resolve(stage_name: str | None, path: Path | None, overrides: list[str]) -> tuple[str, Any]:
    """Pick the stage (given, or the file's ``stage:`` key) and build its typed config."""
    if path is not None:
        _check_config_exists(path)
    if stage_name is None:
        file_stage = load_yaml(path).get("stage") if path is not None else None
        if file_stage is None:
            raise ConfigError(f"{path}: missing key 'stage' (which stage this config is for)")
        stage_name = str(file_stage)
    try:
        stage = get_stage(stage_name)
    except KeyError as e:
        raise ConfigError(f"{path}: {e.args[0]}" if path is not None else e.args[0]) from None
    return stage_name, load_config(stage.load().Config, path, overrides, stage=stage_name)


def _check_config_exists(path: Path) -> None:
    """A missing config named like a stage or a shipped config is an error that says what was meant."""
    if config_path(path).exists() or str(path).startswith(BUILTIN):
        return
    name, shipped = str(path), builtin_configs()
    if name in {s.name for s in STAGES}:
        also = f", its shipped config: {BUILTIN}{name}" if name in shipped else ""
        raise ConfigError(
            f"{name}: config file not found; {name!r} is a stage: its defaults: "
            f"`rewardmix show-config --stage {name}`{also}"
        )
    if name in shipped:
        raise ConfigError(f"{name}: config file not found; did you mean {BUILTIN}{name} (a shipped config)?")


def show_config(ns: argparse.Namespace) -> int:
    """``rewardmix show-config``: a resolved config as YAML (``stage:`` first), or ``--list``."""
    if ns.list:
        sys.stdout.write(list_configs())
        return 0
    path, overrides = split_config_args(ns.args)
    if path is None and ns.stage is None:
        raise ConfigError(
            "show-config needs a config file, builtin:<name> or --stage <stage> "
            "(`rewardmix show-config --list` lists the shipped configs)"
        )
    try:
        stage_name, cfg = resolve(ns.stage, path, overrides)
    except ConfigError as e:
        if path is not None or overrides or ns.stage is None:
            raise
        # A stage whose defaults are not runnable (PPO has no default reward): print them, saying what to fill in.
        stage_name, cfg = ns.stage, unchecked_defaults(get_stage(ns.stage).load().Config)
        message = str(e).removeprefix("<defaults>: config: ")
        sys.stdout.write(f"stage: {stage_name}\n# fill in before running: {message}\n{to_yaml(cfg)}")
        return 0
    sys.stdout.write(f"stage: {stage_name}\n{to_yaml(cfg)}")
    return 0


def unchecked_defaults(cls: type) -> Any:
    """An instance of the config dataclass ``cls`` holding its defaults, its own checks skipped (its sections are
    built and checked as usual): what ``show-config --stage`` prints for a stage with a required section."""
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        object.__setattr__(obj, f.name, value)
    return obj


def list_configs() -> str:
    """One line per shipped config: ``builtin:<name>``, its stage, and the first line of its header."""
    rows = []
    for name, path in builtin_configs().items():
        stage = str(load_yaml(path).get("stage", "?"))
        header = next((ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "")
        rows.append((f"{BUILTIN}{name}", stage, header.lstrip("# ").strip()))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'config':<{width}}{'stage':<14}what it is"]
    lines += [f"{n:<{width}}{s:<14}{_shorten(h, 90)}" for n, s, h in rows]
    lines += [
        "",
        "Run one: rewardmix <stage> builtin:<name> [key.sub=value ...]; see it resolved: "
        "rewardmix show-config builtin:<name>.",
    ]
    return "\n".join(lines) + "\n"


def option_hint(extra: list[str], argv: list[str]) -> str:
    """The error for arguments argparse did not know; ``--key value`` gets "did you mean key=value?".

    Args:
        extra: The arguments argparse did not know.
        argv: The whole command line (argparse may have taken the ``value`` of ``--key value`` as the config).
    """
    option = next((a for a in extra if a.startswith("--") and len(a) > 2), None)
    if option is None:
        return f"unrecognized arguments: {shlex.join(extra)}"
    key = option[2:]
    if "=" not in key:
        i = argv.index(option)
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else "VALUE"
        key = f"{key}={value}"
    return f"unrecognized option {option!r}: overrides are written key=value, without dashes; did you mean {key}?"


OMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment defaults set before torch loads (a variable already set is left alone). OpenMP threads that wait
passively cost ~12% on an idle 2-core CPU, but on a busy one spinning threads made SmolLM2 generation ~20x
slower (5.6 vs 69 tokens/s, measured 2026-11-25 at load ~3)."""


KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`is_gradient_checkpointing` is deprecated",
        FutureWarning,
        "transformers 5.x deprecates an attribute that peft reads on every model load; not ours to fix",
    ),
)
"""Third-party deprecation warnings every run would print, silenced by message (a regex matched at the start)
and category only: (message, category, why). Any other warning still shows."""


def quiet_known_warnings() -> None:
    """Silence :data:`KNOWN_WARNINGS` in this process (the CLI calls it once, at start)."""
    for message, category, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def main(argv: list[str] | None = None) -> int:
    """Run one ``rewardmix`` command; returns its exit code (:data:`EXIT_CODES`), never raises but SystemExit."""
    quiet_known_warnings()
    install_excepthooks()  # an uncaught exception's traceback is printed redacted (no API key in it)
    if "torch" not in sys.modules:  # OpenMP reads these when torch loads; too late once it is loaded
        for key, value in OMP_DEFAULTS.items():
            os.environ.setdefault(key, value)
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if hasattr(
        ns, "restart"
    ):  # `run R.yaml --restart key=value`: the arguments after the flag are the stage's too
        ns.args += [a for a in extra if not a.startswith("-")]
        extra = [a for a in extra if a.startswith("-")]
    if extra:
        hint = option_hint(extra, sys.argv[1:] if argv is None else argv)
        print(f"rewardmix: error: {redact(hint)}", file=sys.stderr)
        return 2
    if ns.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for handler in logging.getLogger().handlers:
        # API keys never reach the console or log files, whichever logger a record comes from.
        install_redaction(handler)
    debug = bool(getattr(ns, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip().lower() in (
        "1",
        "true",
        "yes",
    )
    try:
        if ns.command == "show-config":
            return show_config(ns)
        path, overrides = split_config_args(ns.args)
        stage_name, cfg = resolve(ns.command, path, overrides)
        preflight.check(cfg, stage=stage_name)  # every named model, adapter and data path, before any loads
        # the run folder's lock is released when the stage ends, however it ends
        with run_dir_scope(), restarting(ns.restart):
            get_stage(stage_name).load().run(cfg)
    except SystemExit:
        raise
    except BaseException as e:  # the one place a failure becomes a message and an exit code
        code, message = describe_failure(e)
        if debug:
            sys.stderr.write(redact("".join(traceback.format_exception(type(e), e, e.__traceback__))))
        print(f"rewardmix: {redact(message)}", file=sys.stderr)
        return code
    return 0


def describe_failure(e: BaseException) -> tuple[int, str]:
    """The exit code (:data:`EXIT_CODES`) and the one-line message (without the ``rewardmix: `` prefix, not yet
    redacted) for an exception that ended a command."""
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted; run the same command again to resume"
    if isinstance(e, ConfigError):
        return 2, f"error: {e}"
    if isinstance(e, DataError | LLMError | PreflightError):
        # Bad input data names file, line and field; a path in the config names its key; an LLM endpoint
        # error says what the server answered (finished items are kept, a rerun resumes).
        return 1, f"error: {e}"
    if isinstance(e, FloatingPointError):
        # NaN/inf in a reward, loss or gradient: the message names the culprit; no weight took it in.
        return 3, f"error: {e}"
    if isinstance(e, OSError):
        # A named input that is missing, a folder or unreadable; a disk full (NoSpaceError names what was
        # being saved); any other error of the operating system, with its reason.
        if isinstance(e, NoSpaceError) or (e.filename is None and e.strerror is None):
            return 1, f"error: {_one_line(str(e))}"
        where = f"{e.filename}: " if e.filename else ""
        return 1, f"error: {where}{e.strerror or _one_line(str(e)) or 'cannot read'}"
    if isinstance(e, ImportError):
        return 1, f"error: a required package is missing: {_one_line(str(e))} (see README, Install)"
    return EXIT_INTERNAL, (
        f"error: internal error: {type(e).__name__}: {_one_line(str(e))} "
        f"(run with --debug or {DEBUG_ENV}=1 for the traceback)"
    )


def _one_line(text: str, limit: int = 500) -> str:
    """The first non-empty line of ``text`` (with "..." when more followed), at most ``limit`` characters."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[0] + (" ..." if len(lines) > 1 else "")
    return _shorten(line, limit)


if __name__ == "__main__":
    raise SystemExit(main())
