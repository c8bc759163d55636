"""The ``rewardmix`` command: parse arguments, load the config, set up logging, call ``stages.<x>.run(cfg)``.

rewardmix <stage> [CONFIG.yaml] [key.sub=value ...]
rewardmix show-config CONFIG.yaml [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from rewardmix import __version__
from rewardmix.config import ConfigError, load_config, load_yaml, to_yaml
from rewardmix.data.readers import DataError
from rewardmix.llm.client import LLMError
from rewardmix.redact import install_redaction, redact
from rewardmix.stages import STAGES, get_stage

log = logging.getLogger("rewardmix")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardmix",
        description="RL fine-tuning of language models from several reward signals at once.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stages run in the order listed. Every stage takes an optional YAML config and key.sub=value "
        "overrides;\n`rewardmix show-config FILE` prints what a config resolves to.",
    )
    parser.add_argument("--version", action="version", version=f"rewardmix {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="stages (pipeline order)")
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        _add_config_args(p)
    p = sub.add_parser(
        "show-config",
        help="print the resolved config of a YAML file (its `stage:` key picks the schema)",
        description="Print the resolved config: defaults filled in, overrides applied, types checked.",
    )
    _add_config_args(p, required=True)
    return parser


def _add_config_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument(
        "args",
        nargs="+" if required else "*",
        metavar="CONFIG.yaml | key.sub=value",
        help="a YAML config (first) and/or overrides such as ppo.learning_rate=1e-5",
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
    if stage_name is None:
        file_stage = load_yaml(path).get("stage") if path is not None else None
        if file_stage is None:
            raise ConfigError(f"{path}: missing key 'stage' (which stage this config is for)")
        stage_name = str(file_stage)
    try:
        stage = get_stage(stage_name)
    except KeyError as e:
        raise ConfigError(f"{path}: {e.args[0]}") from None
    return stage_name, load_config(stage.load().Config, path, overrides, stage=stage_name)


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
    quiet_known_warnings()
    if "torch" not in sys.modules:  # OpenMP reads these when torch loads; too late once it is loaded
        for key, value in OMP_DEFAULTS.items():
            os.environ.setdefault(key, value)
    parser = build_parser()
    ns = parser.parse_args(argv)
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
    try:
        path, overrides = split_config_args(ns.args)
        if ns.command == "show-config":
            stage_name, cfg = resolve(None, path, overrides)
            sys.stdout.write(f"stage: {stage_name}\n{to_yaml(cfg)}")
            return 0
        stage_name, cfg = resolve(ns.command, path, overrides)
        get_stage(stage_name).load().run(cfg)
    except ConfigError as e:
        # redact: an override such as teacher.base_url=...?key=sk-... is echoed in the message.
        print(f"rewardmix: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except DataError as e:
        # Bad input data: the message names file, line and field; a traceback would only hide it.
        print(f"rewardmix: error: {redact(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:
        # A named input that is missing, a folder or unreadable; other OS errors keep their traceback.
        if e.filename is None and not isinstance(e, FileNotFoundError):
            raise
        where = f"{e.filename}: {e.strerror or 'cannot read'}" if e.filename else str(e)
        print(f"rewardmix: error: {redact(where)}", file=sys.stderr)
        return 1
    except LLMError as e:
        # A fatal teacher/judge error (401, 403, 404): finished items are kept, a rerun resumes.
        print(f"rewardmix: error: {e}", file=sys.stderr)
        return 1
    except FloatingPointError as e:
        # NaN/inf in a reward, loss or gradient: the message names the culprit; no weight took it in.
        print(f"rewardmix: error: {redact(str(e))}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("rewardmix: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
