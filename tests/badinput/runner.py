"""Run the bad-input corpus through the real CLI and check how each input ended.

Shared by ``tests/badinput/test_corpus.py`` (one test per input) and ``bench/bad_input_report.py`` (the
Markdown table of every input and its ending). ``manifest.yaml`` describes each case; :func:`run_case` runs
``rewardmix.cli.main`` in this process with stderr and every log record captured; :func:`check_case` lists
what went against the expectation (empty = as expected).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rewardmix import cli
from tests.fake_llm import ScriptedServer, serve

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
MANIFEST = HERE / "manifest.yaml"
TRACEBACK = "Traceback (most recent call last)"
HUGE_LINE_BYTES = 2 << 20  # over the readers' 1 MiB line limit; made at run time, never committed
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
"""The environment of ``setup: offline`` cases (no hub downloads)."""
_RATIONALE_LABEL = re.compile(r'rationale for the answer "([^"]+)"')


@dataclass(frozen=True)
class Case:
    """One manifest entry (see the header of ``manifest.yaml``)."""

    file: str
    what: str
    command: tuple[str, ...]
    expect: str
    message: tuple[str, ...] = ()
    rows: int | None = None
    report: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    generate: str | None = None
    setup: str | None = None

    @property
    def id(self) -> str:
        return self.file


@dataclass
class Outcome:
    """What one CLI run did."""

    exit_code: int | None
    """``main``'s return value; None when it raised (which is a traceback)."""
    stderr: str
    log: str
    out_dir: Path
    read_name: str
    """The name of the file the stage read (the input, or its copy ``rankings.jsonl`` in a human-eval dir)."""
    raised: str | None = None
    """``repr`` of an exception that escaped ``main``."""
    seconds: float = 0.0

    @property
    def error_line(self) -> str:
        """The ``rewardmix: error: ...`` line, or ''."""
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("rewardmix: error:")]
        return lines[-1] if lines else ""


def load_manifest(path: Path = MANIFEST) -> list[Case]:
    """The cases of ``manifest.yaml``, checked for shape."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases = []
    for entry in data["cases"]:
        case = Case(
            file=entry["file"],
            what=entry["what"],
            command=tuple(entry["command"]),
            expect=entry["expect"],
            message=tuple(entry.get("message", ())),
            rows=entry.get("rows"),
            report=entry.get("report"),
            counts=dict(entry.get("counts", {})),
            generate=entry.get("generate"),
            setup=entry.get("setup"),
        )
        if case.expect not in ("error", "skip"):
            raise ValueError(f"{case.file}: expect must be error or skip")
        if case.expect == "error" and not case.message:
            raise ValueError(f"{case.file}: an error case needs message substrings")
        if case.expect == "skip" and (case.rows is None or not case.counts):
            raise ValueError(f"{case.file}: a skip case needs rows and counts")
        if case.generate is None and not (CORPUS / case.file).is_file():
            raise ValueError(f"{case.file}: not in {CORPUS}")
        cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------------------------
# What the commands need besides their input


def fake_llm_answer(body: dict[str, Any]) -> str:
    """A teacher that argues for the label it was asked about, and a judge that ranks answer 2 first."""
    prompt = body["messages"][-1]["content"]
    label = _RATIONALE_LABEL.search(prompt)
    if label is not None:
        return f"The wording clearly points to {label.group(1)}, as the tone shows."
    return "Answer 2 reads better.\n\nRanking: 2>1"


class Environment:
    """Lazily built helpers: the fake LLM server, a tiny reward model, exported human-eval tasks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stack = contextlib.ExitStack()
        self._server: ScriptedServer | None = None
        self._rm_model: Path | None = None
        self._count = 0

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def fresh_dir(self, name: str) -> Path:
        self._count += 1
        path = self.root / f"{self._count:03d}-{name}"
        path.mkdir(parents=True)
        return path

    @property
    def server(self) -> ScriptedServer:
        if self._server is None:
            self._server = self._stack.enter_context(serve(ScriptedServer(answer=fake_llm_answer)))
        return self._server

    @property
    def rm_model(self) -> Path:
        """A tiny reward model (one step on the built-in toy pairs), built once."""
        if self._rm_model is None:
            from rewardmix.stages import reward_model as rm

            cfg = rm.Config(output_dir=str(self.root / "rm-model"), cpu=True)
            cfg.lora.enabled = False
            cfg.optim.max_steps = 1
            cfg.logging.num_samples = 0
            self._rm_model = rm.run(cfg).model_dir
        return self._rm_model

    def human_dir(self, rankings: Path) -> Path:
        """Tasks exported for models a, b, c on prompts p1, p2 (open group 'all'); ``rankings`` copied in."""
        from rewardmix.stages import human_eval

        folder = self.fresh_dir("human")
        gens = folder.parent / f"{folder.name}-generations.jsonl"
        rows = [
            {"model": m, "id": f"p{i}", "prompt": f"prompt {i}", "response": f"{m} answers {i}"}
            for m in "abc"
            for i in (1, 2)
        ]
        gens.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        cfg = human_eval.Config(action="export", dir=str(folder))
        cfg.export.generations_file = str(gens)
        human_eval.run(cfg)
        shutil.copyfile(rankings, folder / "rankings.jsonl")
        return folder


def input_path(case: Case, env: Environment) -> Path:
    """The file the command reads: the corpus file, or one made now (huge line, missing file, folder)."""
    if case.generate is None:
        return CORPUS / case.file
    path = env.fresh_dir("generated") / case.file
    if case.generate == "huge_line":
        record = {
            "question": "Movie review: a long one. What sentiment?",
            "gold_label": "positive",
            "wrong_label": "negative",
            "wrong_rationale": "It is panned.",
            "task": "sst2",
        }
        good = [json.dumps({**record, "gold_rationale": f"Praised {i}."}) for i in (1, 3)]
        huge = json.dumps({**record, "gold_rationale": "x" * HUGE_LINE_BYTES})
        path.write_text(f"{good[0]}\n{huge}\n{good[1]}\n", encoding="utf-8")
    elif case.generate == "directory":
        path.mkdir()
    elif case.generate == "pickle_model":
        path.mkdir()
        (path / "config.json").write_text('{"model_type": "llama"}\n', encoding="utf-8")
        (path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # a pickle, never to be loaded
    elif case.generate != "missing":
        raise ValueError(f"{case.file}: unknown generate {case.generate!r}")
    return path


def command(case: Case, env: Environment, path: Path, out: Path) -> tuple[list[str], Path]:
    """The CLI arguments with the placeholders filled in, and the folder the stage writes to."""
    values = {"{file}": str(path), "{out}": str(out)}
    if case.setup == "server":
        values["{server}"] = env.server.url
    if case.setup == "rm_model":
        values["{rm_model}"] = str(env.rm_model)
    if case.setup == "human_dir":
        out = env.human_dir(path)  # import writes its summary beside the exported tasks
        values["{human_dir}"] = str(out)
    argv = []
    for arg in case.command:
        for key, value in values.items():
            arg = arg.replace(key, value)
        if re.search(r"\{(file|out|server|rm_model|human_dir)\}", arg):
            raise ValueError(f"{case.file}: unfilled placeholder in {arg!r} (missing setup?)")
        argv.append(arg)
    return argv, out


# ---------------------------------------------------------------------------------------------------------
# Running and checking


@contextlib.contextmanager
def _captured_logs() -> Iterator[io.StringIO]:
    """Every log record of the run, formatted, whatever the root logger's level was."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_case(case: Case, env: Environment) -> Outcome:
    """Run one case through ``rewardmix.cli.main`` in this process."""
    path = input_path(case, env)
    argv, out = command(case, env, path, env.fresh_dir("out"))
    stderr = io.StringIO()
    raised = None
    started = time.perf_counter()
    variables = OFFLINE if case.setup == "offline" else {}
    with _environ(variables), _captured_logs() as logs, contextlib.redirect_stderr(stderr):
        try:
            code: int | None = cli.main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
        except BaseException as e:  # noqa: BLE001 - an escaped exception is exactly what we look for
            code, raised = None, repr(e)
    read_name = "rankings.jsonl" if case.setup == "human_dir" else path.name
    seconds = time.perf_counter() - started
    return Outcome(code, stderr.getvalue(), logs.getvalue(), out, read_name, raised, seconds)


def lookup(out_dir: Path, spec: str) -> Any:
    """The value at ``"file:dotted.key"`` in a JSON file of ``out_dir`` (an empty key: the whole file)."""
    name, _, dotted = spec.partition(":")
    value: Any = json.loads((out_dir / name).read_text(encoding="utf-8"))
    for part in filter(None, dotted.split(".")):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def read_counts(report: dict[str, Any]) -> tuple[int, int, int, list[int]]:
    """``(rows_in, rows_out, skipped, skipped_lines)`` of a reader's report or the human-eval import summary."""
    if "rows_in" in report:  # rewardmix.data.readers.ReadReport.to_dict()
        lines = [s["line"] for s in report["skipped"]]
        return report["rows_in"], report["rows_out"], report["n_skipped"], lines
    # human-eval import: lines_in = rankings used + replaced by a later line + skipped
    rows_out = report["rankings_used"] + report["replaced"]
    return report["lines_in"], rows_out, report["skipped"], report["skipped_lines"]


def check_case(case: Case, outcome: Outcome) -> list[str]:
    """What went against the expectation; empty when the input ended as the manifest says."""
    problems = []
    text = outcome.stderr + outcome.log
    if outcome.raised is not None:
        problems.append(f"an exception escaped the CLI: {outcome.raised}")
    if TRACEBACK in text:
        problems.append("a traceback was printed")
    if case.expect == "error":
        if not outcome.exit_code:
            problems.append(f"expected a non-zero exit, got {outcome.exit_code}")
        for piece in case.message:
            if piece not in outcome.error_line:
                problems.append(f"{piece!r} not in the error message {outcome.error_line!r}")
        return problems
    if outcome.exit_code != 0:
        return [*problems, f"expected exit 0, got {outcome.exit_code}: {outcome.error_line}"]
    for spec, expected in case.counts.items():
        try:
            got = lookup(outcome.out_dir, spec)
        except (OSError, KeyError, IndexError, ValueError) as e:
            problems.append(f"{spec}: cannot read it ({e!r})")
            continue
        if got != expected:
            problems.append(f"{spec} = {got!r}, expected {expected!r}")
    if case.report is not None:
        rows_in, rows_out, skipped, lines = read_counts(lookup(outcome.out_dir, case.report))
        if rows_in != case.rows:
            problems.append(f"the read report counts {rows_in} rows in, the file has {case.rows}")
        if rows_out + skipped != rows_in:
            problems.append(f"silent loss: {rows_out} out + {skipped} skipped != {rows_in} in")
        for line in lines:
            if f"{outcome.read_name}:{line}:" not in outcome.log:
                problems.append(f"skipped line {line} is not in the log")
    return problems


def describe(case: Case, outcome: Outcome) -> str:
    """How the input ended, in one line (for the report table)."""
    if case.expect == "error" or outcome.exit_code:
        return f"exit {outcome.exit_code}: `{outcome.error_line.removeprefix('rewardmix: error: ')}`"
    counts = ", ".join(f"{spec.split(':')[1] or spec} = {v}" for spec, v in case.counts.items())
    skips = [ln.split(": ", 2)[-1] for ln in outcome.log.splitlines() if "skipping bad" in ln]
    dropped = [ln.split(": ", 1)[-1] for ln in outcome.log.splitlines() if "skipped" in ln and "ties" in ln]
    dropped += [ln.split(": ", 1)[-1] for ln in outcome.log.splitlines() if "items dropped" in ln]
    logged = "; ".join(f"`{line}`" for line in [*skips, *dropped][:2])
    return f"exit 0, counted skip: {counts}" + (f"; logged {logged}" if logged else "")


def new_environment() -> tuple[Environment, Path]:
    """An environment in a fresh temporary folder (the caller removes it)."""
    root = Path(tempfile.mkdtemp(prefix="rewardmix-badinput-"))
    return Environment(root), root
