"""Strict YAML -> dataclass loading: every bad value names file, line and key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from rewardmix.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    load_yaml,
    parse_override,
    to_dict,
    to_yaml,
)


@dataclass
class Inner:
    lr: float = 1e-3
    mode: Literal["sum", "weighted"] = "sum"
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5])


@dataclass
class Outer:
    name: str
    steps: int = 10
    flag: bool = False
    target: float | None = None
    inner: Inner = field(default_factory=Inner)
    tags: dict[str, int] = field(default_factory=dict)
    pair: tuple[int, str] = (1, "a")

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError("steps must be >= 0")


@dataclass
class Phase:
    max_steps: int = 1
    lr: float = 0.1


@dataclass
class Phased:
    phases: list[Phase] = field(default_factory=lambda: [Phase(), Phase(max_steps=5)])
    inner: Inner = field(default_factory=Inner)
    steps: int = 10


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_full_round_trip(tmp_path):
    path = write(
        tmp_path,
        "name: x\nsteps: 3\nflag: true\ntarget: 6\ninner:\n  lr: 1e-5\n  mode: weighted\n  weights: [1, 2]\n"
        "tags: {a: 1}\npair: [2, b]\n",
    )
    cfg = load_config(Outer, path)
    # YAML 1.1 reads "1e-5" as a string and "6" as an int; both must become floats.
    assert cfg == Outer(
        name="x",
        steps=3,
        flag=True,
        target=6.0,
        inner=Inner(1e-5, "weighted", [1.0, 2.0]),
        tags={"a": 1},
        pair=(2, "b"),
    )
    assert isinstance(cfg.target, float) and isinstance(cfg.inner.weights[0], float)
    # The resolved YAML loads back to the same config.
    again = write(tmp_path, to_yaml(cfg))
    assert load_config(Outer, again) == cfg


def test_defaults_fill_in(tmp_path):
    cfg = load_config(Outer, write(tmp_path, "name: x\n"))
    assert cfg.inner == Inner() and cfg.steps == 10


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\nsteps: 3\nstesp: 4\n", "cfg.yaml:3: unknown key 'stesp'"),
        ("name: x\ninner:\n  lr: 1\n  mdoe: sum\n", "cfg.yaml:4: unknown key 'inner.mdoe'"),
        ("name: x\nsteps: three\n", "cfg.yaml:2: 'steps' must be an integer, got 'three'"),
        ("name: x\nsteps: 2.5\n", "cfg.yaml:2: 'steps' must be an integer"),
        ("name: x\nflag: 1\n", "cfg.yaml:2: 'flag' must be true or false"),
        ("name: x\ninner:\n  mode: product\n", "cfg.yaml:3: 'inner.mode' must be one of 'sum', 'weighted'"),
        ("name: x\ninner:\n  weights: [1, a]\n", "cfg.yaml:3: 'inner.weights[1]' must be a number"),
        ("name: x\ninner: 3\n", "cfg.yaml:2: 'inner' must be a mapping"),
        ("name: x\ntarget: nan\n", "'target' must be a finite number"),
        ("name: x\npair: [1]\n", "'pair' must be a list of 2 items"),
        ("steps: 1\n", "missing required key 'name'"),
        ("name: x\nsteps: -1\n", "steps must be >= 0"),
        ("name: x\nname: y\n", "cfg.yaml:2: duplicate key 'name'"),
        ("name: [unclosed\n", "cfg.yaml:2: invalid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
    ],
)
def test_bad_values_name_file_line_and_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, write(tmp_path, text))
    assert needle in str(err.value)


def test_unknown_key_lists_known_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"known keys here: flag, inner, name, pair, steps, tags, target"):
        load_config(Outer, write(tmp_path, "name: x\nbogus: 1\n"))


def test_yaml_is_loaded_safely(tmp_path):
    # A python object tag must not be constructed (yaml.load with an unsafe loader would run it).
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Outer, write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n"))


def test_overrides_are_typed_and_checked(tmp_path):
    path = write(tmp_path, "name: x\ninner:\n  lr: 0.1\n")
    cfg = load_config(Outer, path, ["inner.lr=1e-4", "steps=7", "inner.weights=[0.25, 0.75]", "target=null"])
    assert (
        cfg.inner.lr == 1e-4 and cfg.steps == 7 and cfg.inner.weights == [0.25, 0.75] and cfg.target is None
    )
    # A new section is created by an override.
    assert load_config(Outer, None, ["name=z", "tags.b=2"]).tags == {"b": 2}
    with pytest.raises(ConfigError, match=r"override 'inner\.lrr=1'.*unknown key 'inner\.lrr'"):
        load_config(Outer, path, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match=r"override 'steps=many': 'steps' must be an integer"):
        load_config(Outer, path, ["steps=many"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(Outer, path, ["name.sub=1"])


def test_overrides_address_list_items_by_index(tmp_path):
    # A list the file does not set comes from the defaults: one item changes, the others are kept.
    cfg = load_config(Phased, None, ["phases[1].max_steps=2", "inner.weights[0]=0.9"])
    assert cfg.phases == [Phase(), Phase(max_steps=2)]
    assert cfg.inner.weights == [0.9, 0.5]
    # A list the file sets is the one changed (its single item, not the two defaults).
    path = write(tmp_path, "phases:\n  - max_steps: 3\n")
    assert load_config(Phased, path, ["phases[0].lr=0.5"]).phases == [Phase(max_steps=3, lr=0.5)]
    # Required fields elsewhere (Outer.name) do not stop the defaults from supplying a list.
    assert load_config(Outer, None, ["name=x", "inner.weights[1]=2"]).inner.weights == [0.5, 2.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("phases[2].max_steps=1", r"override 'phases\[2\]\.max_steps=1': phases has 2 items, no item \[2\]"),
        (
            "phases[0].max_stpes=2",
            r"override 'phases\[0\]\.max_stpes=2': unknown key 'phases\[0\]\.max_stpes'; "
            r"did you mean 'phases\[0\]\.max_steps'\?",
        ),
        (
            "phases[0].max_steps=x",
            r"override 'phases\[0\]\.max_steps=x': 'phases\[0\]\.max_steps' must be an integer",
        ),
        ("steps[0]=1", r"override 'steps\[0\]=1': steps is not a list"),
        (
            "inner.weights.a=1",
            r"override 'inner\.weights\.a=1': inner\.weights is a list \(address its items",
        ),
        ("phases[x].lr=1", r"override 'phases\[x\]\.lr=1': cannot read part 'phases\[x\]'"),
        ("inner.lr[0]=1", r"override 'inner\.lr\[0\]=1': inner\.lr is not a list"),
    ],
)
def test_list_item_override_errors_name_the_override(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Phased, None, [override])


def test_parse_override():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b[0][2].c=x") == (["a", "b", 0, 2, "c"], "x")
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=") == (["a"], "")
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError):
        parse_override("a..b=1")


def test_apply_overrides_on_plain_dict():
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2", "c=true"]) == {"a": {"b": 2}, "c": True}


def test_stage_key_must_match(tmp_path):
    path = write(tmp_path, "stage: sft\nname: x\n")
    assert load_config(Outer, path, stage="sft").name == "x"
    with pytest.raises(ConfigError, match="for stage 'sft', not 'demo'"):
        load_config(Outer, path, stage="demo")


def test_from_dict_and_to_dict_are_inverse():
    cfg = Outer(name="n", tags={"k": 3})
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_non_scalar_key_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cfg.yaml:1: a key must be a plain name"):
        load_config(Outer, write(tmp_path, "? [a, b]\n: 1\n"))


def test_yaml_merge_keys_override_and_aliases_are_not_shared(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "base: &b {ppo: {steps: 8, lr: 1.0}, seed: 0}\n"
        "other: {<<: *b, seed: 1}\n"  # a written key overrides a merged one
        "alias: *b\n"
    )
    data = load_yaml(path)
    assert data["other"] == {"ppo": {"steps": 8, "lr": 1.0}, "seed": 1}
    data["other"]["ppo"]["steps"] = 2  # a stage mutating one step's config leaves the others alone
    assert data["base"]["ppo"]["steps"] == 8 and data["alias"]["ppo"]["steps"] == 8
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match=r"merge.yaml:2: duplicate key 'a'"):
        load_yaml(path)
    path.write_text("b: &b {x: 1}\nc: {<<: *b, y: 2, y: 3}\n")
    with pytest.raises(ConfigError, match="duplicate key 'y'"):
        load_yaml(path)


def test_yaml_merge_of_a_mapping_that_merges_keeps_its_overrides(tmp_path):
    # PyYAML's own flattening gives `c` the reward of `a` here: the recipe's seed copies of an RL step
    # (`{<<: *ppo_rllr, seed: 1}`, where ppo_rllr = `{<<: *ppo, reward: ...}`) trained on the wrong reward.
    path = tmp_path / "nested.yaml"
    path.write_text(
        "a: &a {x: 1, reward: A}\n"
        "b: &b\n  <<: *a\n  reward: B\n"
        "c: {<<: *b, seed: 1}\n"
        "d: {<<: [*b, *a]}\n"  # among merged mappings the first wins
        "e: {<<: [*a, *b]}\n"
    )
    data = load_yaml(path)
    assert data["c"] == {"x": 1, "reward": "B", "seed": 1}
    assert data["d"]["reward"] == "B" and data["e"]["reward"] == "A"
    assert data["b"].lines == {"x": 1, "reward": 4} and data["c"].lines["reward"] == 4
    path.write_text("a: &a [1, 2]\nb: {<<: *a}\n")
    with pytest.raises(ConfigError, match=r"nested.yaml:2: `<<` merges mappings only"):
        load_yaml(path)


def test_builtin_configs_resolve_from_the_package(tmp_path, monkeypatch):
    from rewardmix.config import builtin_configs, config_path

    monkeypatch.chdir(tmp_path)  # any directory: the files come from the installed package
    known = builtin_configs()
    assert {"ppo", "grpo-crs", "reward-model", "rllr-sentiment", "crs-sentiment"} <= set(known)
    assert config_path("builtin:ppo") == known["ppo"]
    assert known["ppo"].parent.name == "configs" and known["rllr-sentiment"].parent.name == "recipes"
    assert load_yaml("builtin:ppo")["stage"] == "ppo"
    assert config_path("plain/file.yaml") == Path("plain/file.yaml")
    with pytest.raises(
        ConfigError, match=r"builtin:ppo-crz: unknown builtin config; did you mean builtin:ppo-crs\?"
    ):
        config_path("builtin:ppo-crz")


def test_errors_in_a_builtin_config_name_its_file_and_line():
    from rewardmix.config import builtin_configs

    with pytest.raises(ConfigError) as err:
        load_config(Outer, "builtin:toy-ppo")
    assert str(err.value).startswith(f"{builtin_configs()['toy-ppo']}:")


NON_FINITE = [
    "nan", "NaN", "+nan", "-nan", ".nan", ".NaN", "inf", "+inf", "-inf", ".inf", "+.inf", "-.Inf",
    "Infinity", "+infinity", "-Infinity", "1e999", "-1e999", "1e400", "1.0e+400", "1" + "0" * 400,
]  # fmt: skip


@pytest.mark.parametrize("spelling", NON_FINITE)
def test_non_finite_floats_in_a_file_are_refused_naming_line_and_key(tmp_path, spelling):
    for text, needle in [
        (f"name: x\ninner:\n  lr: {spelling}\n", "cfg.yaml:3: 'inner.lr' must be a finite number"),
        (f"name: x\ntarget: {spelling}\n", "cfg.yaml:2: 'target' must be a finite number"),
        (
            f"name: x\ninner:\n  weights: [0.5, {spelling}]\n",
            "cfg.yaml:3: 'inner.weights[1]' must be a finite",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(Outer, write(tmp_path, text))
        assert needle in str(err.value), text
    with pytest.raises(ConfigError) as err:
        load_config(Phased, write(tmp_path, f"phases:\n  - max_steps: 2\n    lr: {spelling}\n"))
    assert "cfg.yaml:3: 'phases[0].lr' must be a finite number" in str(err.value)


@pytest.mark.parametrize("spelling", NON_FINITE)
def test_non_finite_floats_in_overrides_are_refused_naming_the_override(tmp_path, spelling):
    path = write(tmp_path, "name: x\n")
    for override, key in [
        (f"inner.lr={spelling}", "inner.lr"),
        (f"target={spelling}", "target"),
        (f"inner.weights=[0.5, {spelling}]", "inner.weights[1]"),
        (f"inner.weights[0]={spelling}", "inner.weights[0]"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(Outer, path, [override])
        assert f"override {override!r}: {key!r} must be a finite number" in str(err.value)


def test_finite_floats_at_the_edge_still_load(tmp_path):
    cfg = load_config(Outer, write(tmp_path, "name: x\ntarget: 1e308\ninner:\n  lr: -1.5e-300\n"))
    assert cfg.target == 1e308 and cfg.inner.lr == -1.5e-300
    assert load_config(Outer, write(tmp_path, "name: x\n"), ["target=1" + "0" * 300]).target == 1e300


def _alias_bomb(kind: str, width: int = 10, depth: int = 10) -> str:
    """About 1 KB of YAML whose aliases, nested ``depth`` deep, expand to ``width ** depth`` values."""
    lines = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, depth):
        if kind == "list":
            lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
        else:
            lines.append(f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(width)) + "}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind", ["list", "mapping"])
def test_yaml_alias_bomb_is_refused_quickly(tmp_path, kind):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(kind))
    assert path.stat().st_size < 1500
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert time.perf_counter() - start < 2
    # the first line whose value grows too big: 10^5 x's in 11,111 lists (and 11,110 keys), 4 aliases deep
    size = {"list": "111,111", "mapping": "122,221"}[kind]
    assert str(err.value).startswith(
        f"{path}:5: YAML aliases expand to more than 100,000 values here ({size}, aliases nested 4 deep)"
    )
    # an override is read with the same bound
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^override 'inner.weights=.*': YAML aliases expand to more than"):
        parse_override("inner.weights=" + _alias_bomb("list").replace("\n", ", ").join("{}"))
    assert time.perf_counter() - start < 2


def test_legitimate_aliases_and_merges_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(_alias_bomb("mapping", width=4, depth=4) + "base: &b {lr: 0.5}\nuse: {<<: *b, seed: 1}\n")
    data = load_yaml(path)
    assert data["l3"]["k0"]["k3"]["k1"] == ["x"] * 4 and data["use"] == {"lr": 0.5, "seed": 1}
    from rewardmix.config import builtin_configs

    for name in builtin_configs():
        assert isinstance(load_yaml(f"builtin:{name}"), dict)
