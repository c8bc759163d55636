"""Security checks (issue 9, item 5): no unsafe deserialization, no remote code by default, keys never leak.

(a) Static: an AST walk over ``src/rewardmix`` finds every ``torch.load`` (must pass ``weights_only=True``),
    ``torch.save`` (only optimizer/scheduler/RNG state in train/checkpoint.py, never a model's weights),
    model ``from_pretrained`` (safetensors only), pickle-family imports (none), YAML loading (safe loaders
    only) and ``trust_remote_code`` (default False in every signature, config dataclass and shipped YAML).
(b) A run: ``rationales`` against the fake OpenAI-compatible server (which must receive the key), then
    ``pairs``, in real subprocesses with the key in the environment and a server that echoes the key back in
    answers and error bodies. Every file of both run directories (configs, run_info.json, logs, outputs, the
    SQLite cache and its journal) and everything printed must be free of the key. A key pasted into a config
    (as a field, in base_url, or in place of the variable name) is refused without being repeated.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rewardmix import cli
from rewardmix.config import from_dict
from rewardmix.llm.config import LLMConfig

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "rewardmix"
SOURCES = sorted(SRC.rglob("*.py"))
KEY = "sk-test-SECRET123" + "x7Qz9LmN4pR8vT2w"  # OpenAI-shaped
TEAM_KEY = "team-" + "Kf83jdQ0aPzz71Lm"  # not sk-shaped: only the environment-value rule can catch it


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


@functools.cache
def _parsed() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"), str(path))) for path in SOURCES]


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for an attribute chain of names, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _dotted(n.func) == name]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


# ---------------------------------------------------------------------------------------------------------
# (a) static checks


def test_the_walk_sees_the_package():
    """Guard against a vacuous pass: the walk finds the known call sites."""
    trees = _parsed()
    assert len(trees) > 50
    assert sum(len(_calls(t, "torch.load")) for _, t in trees) >= 1
    assert sum(len(_calls(t, "yaml.load")) for _, t in trees) >= 1
    assert sum(len(_calls(t, "torch.save")) for _, t in trees) >= 1


def test_torch_load_only_with_weights_only_true():
    bad = [
        _where(path, call)
        for path, tree in _parsed()
        for call in _calls(tree, "torch.load")
        if not _is_true(_keyword(call, "weights_only"))
    ]
    assert not bad, f"torch.load without weights_only=True: {bad}"
    aliased = [
        _where(path, node)
        for path, tree in _parsed()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module == "torch"
        and any(a.name == "load" for a in node.names)
    ]
    assert not aliased, f"'from torch import load' hides the call from this check: {aliased}"


def test_no_pickle_family_deserialization():
    banned = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
    bad = []
    for path, tree in _parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bad += [_where(path, node) for a in node.names if a.name.split(".")[0] in banned]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in banned:
                bad.append(_where(path, node))
            elif isinstance(node, ast.Call) and _dotted(node.func) in {"numpy.load", "np.load"}:
                if not (
                    isinstance(_keyword(node, "allow_pickle"), ast.Constant) and not node.keywords[0].value
                ):
                    bad.append(_where(path, node))  # np.load must not allow pickles either
    assert not bad, f"pickle-family deserialization: {bad}"


def _resolve_loader(module, node: ast.expr):
    """The loader class (or a loader built by a factory) named by a ``Loader=`` argument, at run time."""
    if isinstance(node, ast.Attribute) and _dotted(node.value) == "yaml":
        return getattr(yaml, node.attr)
    if isinstance(node, ast.Name):
        return getattr(module, node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        factory = getattr(module, node.func.id)(*["<security-test>" for _ in node.args])
        return factory(io.StringIO("a: 1\n"))  # a loader instance
    raise AssertionError(f"cannot resolve Loader={ast.unparse(node)}")


def test_yaml_is_loaded_with_safe_loaders_only():
    unsafe_names = {"Loader", "FullLoader", "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader"}
    unsafe_calls = {"yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"}
    problems, checked = [], 0
    for path, tree in _parsed():
        module = None
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _dotted(node.value) == "yaml"
                and node.attr in unsafe_names
            ):
                problems.append(f"{_where(path, node)}: yaml.{node.attr}")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name in unsafe_calls:
                problems.append(f"{_where(path, node)}: {name}")
            if name in {"yaml.load", "yaml.load_all"}:
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None:
                    problems.append(f"{_where(path, node)}: {name} without Loader=")
                    continue
                module = module or importlib.import_module(_module_name(path))
                resolved = _resolve_loader(module, loader)
                safe = (
                    issubclass(resolved, yaml.SafeLoader)
                    if isinstance(resolved, type)
                    else isinstance(resolved, yaml.SafeLoader)
                )
                checked += 1
                if not safe:
                    problems.append(f"{_where(path, node)}: {name} with {ast.unparse(loader)}")
    assert checked >= 1 and not problems, problems


def test_weights_are_written_through_safetensors_only():
    """torch.save only in train/checkpoint.py, and there only for optimizer, scheduler and RNG state."""
    saves = [(path, call) for path, tree in _parsed() for call in _calls(tree, "torch.save")]
    assert {path.relative_to(SRC).as_posix() for path, _ in saves} == {"train/checkpoint.py"}
    tree = ast.parse((SRC / "train" / "checkpoint.py").read_text(encoding="utf-8"))
    wrappers = {
        f.name
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef) and any(_dotted(c.func) == "torch.save" for c in _calls_in(f))
    }
    assert wrappers == {"_torch_save"}
    allowed = {
        "optimizer.state_dict()",
        "scheduler.state_dict()",
        "capture_rng() if rng is True else dict(rng)",
    }
    saved = {ast.unparse(call.args[0]) for call in _calls(tree, "_torch_save")}
    assert saved and saved <= allowed, saved
    # the trainable weights of a checkpoint go through safetensors' save_file
    assert _calls(tree, "save_file")


def _sets_use_safetensors(func: ast.FunctionDef) -> bool:
    """Whether ``func`` assigns ``<dict>["use_safetensors"] = True``."""
    return any(
        isinstance(n, ast.Assign)
        and _is_true(n.value)
        and any(
            isinstance(t, ast.Subscript)
            and isinstance(t.slice, ast.Constant)
            and t.slice.value == "use_safetensors"
            for t in n.targets
        )
        for n in ast.walk(func)
    )


def _calls_in(node: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call)]


def test_models_are_loaded_from_safetensors_only():
    """Every transformers model ``from_pretrained`` passes use_safetensors=True (or reads a GGUF file)."""
    model_classes = ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")
    problems, seen = [], 0
    for path, tree in _parsed():
        functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
        for func in functions.values():
            for call in _calls_in(func):
                if _dotted(call.func) not in {f"{c}.from_pretrained" for c in model_classes}:
                    continue
                seen += 1
                ok = _is_true(_keyword(call, "use_safetensors"))
                for spread in [k.value for k in call.keywords if k.arg is None]:
                    # **kwargs built in this function, or **helper(...) of this module: it must set the flag
                    origin = func
                    if isinstance(spread, ast.Call) and isinstance(spread.func, ast.Name):
                        origin = functions.get(spread.func.id, func)
                    ok = ok or _sets_use_safetensors(origin)
                if not ok:
                    problems.append(_where(path, call))
    assert seen >= 3 and not problems, f"from_pretrained without use_safetensors=True: {problems}"


def test_trust_remote_code_is_off_by_default_everywhere():
    problems = []
    for path, tree in _parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                positional = args.posonlyargs + args.args
                with_default = [a.arg for a in positional][len(positional) - len(args.defaults) :]
                defaults = dict(zip(with_default, args.defaults, strict=True))
                kw_defaults = zip(args.kwonlyargs, args.kw_defaults, strict=True)
                defaults.update({a.arg: d for a, d in kw_defaults if d is not None})
                default = defaults.get("trust_remote_code")
                if default is not None and not (isinstance(default, ast.Constant) and default.value is False):
                    problems.append(f"{_where(path, node)}: default {ast.unparse(default)}")
            if (
                isinstance(node, ast.AnnAssign)
                and _dotted(node.target) == "trust_remote_code"
                and not (isinstance(node.value, ast.Constant) and node.value.value is False)
            ):
                problems.append(
                    f"{_where(path, node)}: field default {ast.unparse(node.value) if node.value else None}"
                )
            if isinstance(node, ast.Call) and _is_true(_keyword(node, "trust_remote_code")):
                problems.append(f"{_where(path, node)}: trust_remote_code=True passed")
    # every dataclass (config sections included) with such a field defaults it to False
    fields = 0
    for path in SOURCES:
        module = importlib.import_module(_module_name(path))
        for obj in vars(module).values():
            if dataclasses.is_dataclass(obj) and isinstance(obj, type) and obj.__module__ == module.__name__:
                for f in dataclasses.fields(obj):
                    if f.name == "trust_remote_code":
                        fields += 1
                        if f.default is not False:
                            problems.append(
                                f"{obj.__module__}.{obj.__name__}.trust_remote_code = {f.default!r}"
                            )
    # and no shipped YAML turns it on
    shipped = [p for p in (REPO / "configs").rglob("*.y*ml")] + list(
        (SRC / "data" / "task_specs").glob("*.yaml")
    )
    for path in shipped:
        for value in _values_of(yaml.safe_load(path.read_text(encoding="utf-8")), "trust_remote_code"):
            if value is not False:
                problems.append(f"{path.relative_to(REPO)}: trust_remote_code: {value!r}")
    assert fields >= 5 and shipped and not problems, problems


def _values_of(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _values_of(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _values_of(v, key)


# ---------------------------------------------------------------------------------------------------------
# (b) the key never leaves the environment


def _run_cli(mode: str, args: list[str], variable: str, key: str, monkeypatch) -> tuple[int, str]:
    """Run the CLI with the key in the environment; returns the exit code and everything it printed or logged.

    ``process``: a real ``python -m rewardmix.cli`` (its own logging set-up, stdout and stderr captured).
    ``in-process``: ``cli.main`` here, with stderr and every log record captured by a root handler, which
    the CLI equips with its redaction filter as it does its own console handler.
    """
    if mode == "process":
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), variable: key}
        proc = subprocess.run(
            [sys.executable, "-m", "rewardmix.cli", "-v", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        return proc.returncode, proc.stdout + proc.stderr
    monkeypatch.setenv(variable, key)
    buffer, stderr = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(buffer)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stderr):
            code = cli.main(["-v", *args])
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    return code, stderr.getvalue() + buffer.getvalue()


def _files_with(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [
        str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()
    ]


@pytest.mark.parametrize(
    ("mode", "variable", "key"),
    [
        pytest.param("process", "OPENAI_API_KEY", KEY, marks=pytest.mark.slow),  # fresh interpreters: slow
        ("in-process", "RMX_TEAM_KEY", TEAM_KEY),
    ],
)
def test_a_run_never_writes_or_prints_the_key(tmp_path, chat_server, monkeypatch, mode, variable, key):
    data = tmp_path / "sst2.tsv"
    data.write_text("sentence\tlabel\na joyous ride\t1\nflat and dull\t0\nwarm and funny\t1\n")

    def teacher(body):
        label = body["messages"][-1]["content"].split('rationale for the answer "')[1].split('"')[0]
        return f"The wording clearly points to {label}."

    chat_server.answer = teacher
    # The server leaks the key back: an error body quoting the Authorization header (logged as a retry),
    # an answer repeating it (written to outputs and the cache), a rejected request quoting it (recorded).
    chat_server.faults.extend(
        [
            ("status", 500, {}, "upstream saw {auth}"),
            "echo_auth",
            ("status", 400, {}, "bad request from {auth}"),
        ]
    )
    rat, pairs = tmp_path / "rationales", tmp_path / "pairs"
    teacher_args = [
        "teacher.backend=openai",
        f"teacher.base_url={chat_server.url}",
        "teacher.model=fake",
        f"teacher.api_key_env={variable}",
        "teacher.concurrency=1",
        "teacher.max_retries=2",
    ]
    rationales = ["rationales", "task=sst2", f"data={data}", f"output_dir={rat}", *teacher_args]
    code, first = _run_cli(mode, rationales, variable, key, monkeypatch)
    assert code == 0, first[-3000:]
    code, second = _run_cli(
        mode,
        ["pairs", f"input={rat / 'rationales.jsonl'}", f"output_dir={pairs}"],
        variable,
        key,
        monkeypatch,
    )
    assert code == 0, second[-3000:]

    # the server did get the key, as a bearer token, on every request
    assert chat_server.count == 7  # 6 teacher calls + the retried 500
    assert set(chat_server.auth_headers) == {f"Bearer {key}"}
    # ... and the leaks it sent back were there to be redacted (so this test can fail)
    assert (rat / "teacher_outputs.jsonl").read_text().count("***") >= 2
    assert "bad request from Bearer ***" in (rat / "stats.json").read_text()
    assert "upstream saw Bearer ***" in first
    # nowhere: configs, run_info.json, outputs, stats, failures, the SQLite cache and journal, the log
    written = {p.name for p in [*rat.rglob("*"), *pairs.rglob("*")] if p.is_file()}
    assert {
        "config.yaml",
        "run_info.json",
        "llm_cache.sqlite",
        "teacher_outputs.jsonl",
        "train.jsonl",
    } <= written
    assert _files_with(tmp_path, key) == []
    assert key not in first + second


def _config_error(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def test_a_key_pasted_into_a_config_is_refused_and_not_repeated(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    base = ["rationales", "task=sst2", f"output_dir={tmp_path / 'out'}", "teacher.backend=openai"]
    pasted = [
        f"teacher.api_key={KEY}",  # no such field: an unknown key, echoed only redacted
        f"teacher.base_url=http://127.0.0.1:9/v1?api_key={KEY}",
        f"teacher.base_url=http://user:{KEY}@127.0.0.1:9/v1",
        f"teacher.api_key_env={KEY}",  # the key where its variable's name belongs
    ]
    for override in pasted:
        err = _config_error([*base, override], capsys)
        assert "rewardmix: error:" in err and KEY not in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # the same in a YAML file
    config = tmp_path / "rationales.yaml"
    config.write_text(f"stage: rationales\nteacher:\n  backend: openai\n  api_key: {KEY}\n")
    err = _config_error(["rationales", str(config)], capsys)
    assert "unknown key 'teacher.api_key'" in err and KEY not in err
    # LLMConfig itself, whatever builds it
    for fields in ({"base_url": f"https://api.example.com/v1?key={KEY}"}, {"api_key_env": KEY}):
        with pytest.raises(Exception) as info:
            from_dict(LLMConfig, fields)
        assert KEY not in str(info.value)


def test_saved_config_and_run_info_are_redacted(tmp_path, monkeypatch):
    """A key in a free-text field or on the command line is replaced by *** in config.yaml and run_info.json."""
    from rewardmix.rundir import prepare_run_dir
    from rewardmix.stages import sft

    monkeypatch.setenv("OPENAI_API_KEY", TEAM_KEY)
    cfg = sft.Config(output_dir=str(tmp_path))
    cfg.examples.system_prompt = f"You are helpful. (my key is {TEAM_KEY})"
    prepare_run_dir(tmp_path, cfg, stage="sft", argv=["rewardmix", "sft", f"x={KEY}"])
    assert _files_with(tmp_path, TEAM_KEY) == [] and _files_with(tmp_path, KEY) == []
    assert "my key is ***" in (tmp_path / "config.yaml").read_text()
    assert json.loads((tmp_path / "run_info.json").read_text())["command"][-1] == "x=***"
