"""The composite reward: hand computations per combinator, normalization, clipping, order, strict configs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from rewardmix.algos.combine import COMBINATORS, calibrate, register_combinator
from rewardmix.config import ConfigError, from_dict, load_config
from rewardmix.scoring import (
    SCORER_TYPES,
    ComponentConfig,
    CompositeConfig,
    CompositeReward,
    ContainsConfig,
    ContainsScorer,
    ScoringBatch,
    register_scorer_type,
)


class FakeScorer:
    """Returns fixed scores, one list per call, in order (the last one repeats)."""

    def __init__(self, name: str, *calls: list[float]) -> None:
        self.name = name
        self.calls = [torch.tensor(c, dtype=torch.float32) for c in calls]
        self.n = 0

    def score(self, batch: ScoringBatch) -> torch.Tensor:
        out = self.calls[min(self.n, len(self.calls) - 1)]
        self.n += 1
        assert out.shape == (len(batch),)
        return out.clone()


def _batch(n: int) -> ScoringBatch:
    return ScoringBatch(prompts=["p"] * n, responses=[f"r{i}" for i in range(n)])


def _cfg(components: list[dict], combinator: str = "sum", **params: float) -> CompositeConfig:
    return from_dict(
        CompositeConfig,
        {"components": components, "combinator": combinator, "combinator_params": dict(params)},
    )


def _fake_component(name: str, **extra) -> dict:
    # A registered type (contains) whose scorer the test replaces with a FakeScorer.
    return {"name": name, "type": "contains", "contains": {"substring": "x"}, **extra}


def _composite(components, scorers, combinator="sum", **params) -> CompositeReward:
    return CompositeReward(_cfg(components, combinator, **params), scorers=scorers)


def _close(actual: torch.Tensor, expected: list[float], atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------------------
# Combinators, by hand


def test_sum_by_hand():
    # [1, 2] + [3, -1] = [4, 1]
    reward = _composite(
        [_fake_component("a"), _fake_component("b")],
        {"a": FakeScorer("a", [1.0, 2.0]), "b": FakeScorer("b", [3.0, -1.0])},
    )
    out = reward(_batch(2))
    _close(out.scores, [4.0, 1.0])
    _close(out.raw["a"], [1.0, 2.0])
    _close(out.normalized["b"], [3.0, -1.0])


def test_weighted_crs_w_025_by_hand():
    # CRS combined reward w * pref + (1 - w) * abs with w = 0.25:
    # row 0: 0.25 * 2 + 0.75 * 4 = 3.5; row 1: 0.25 * -4 + 0.75 * 0 = -1
    reward = _composite(
        [_fake_component("pref", weight=0.25), _fake_component("abs", weight=0.75)],
        {"pref": FakeScorer("pref", [2.0, -4.0]), "abs": FakeScorer("abs", [4.0, 0.0])},
        combinator="weighted",
    )
    _close(reward(_batch(2)).scores, [3.5, -1.0])


def test_weighted_normalizes_weights_unless_told_not_to():
    # weights [1, 3] -> [0.25, 0.75]: 0.25 * 2 + 0.75 * 4 = 3.5; without normalizing: 1 * 2 + 3 * 4 = 14
    comps = [_fake_component("pref", weight=1.0), _fake_component("abs", weight=3.0)]
    scorers = {"pref": FakeScorer("pref", [2.0]), "abs": FakeScorer("abs", [4.0])}
    _close(_composite(comps, scorers, combinator="weighted")(_batch(1)).scores, [3.5])
    plain = _composite(comps, scorers, combinator="weighted", normalize=False)
    _close(plain(_batch(1)).scores, [14.0])


def test_threshold_rllr_eq4_below_and_above_lambda():
    # RLLR Eq. 4, λ = 1.5: r1 + r2 if r1 < λ else λ + r2
    # row 0: r1 = 1 < 1.5 -> 1 + 0.5 = 1.5; row 1: r1 = 3 >= 1.5 -> 1.5 + 0.25 = 1.75;
    # row 2: r1 = 1.5 (at λ, both branches agree) -> 1.5 - 1 = 0.5
    reward = _composite(
        [_fake_component("r1"), _fake_component("r2")],
        {"r1": FakeScorer("r1", [1.0, 3.0, 1.5]), "r2": FakeScorer("r2", [0.5, 0.25, -1.0])},
        combinator="threshold",
        threshold=1.5,
    )
    _close(reward(_batch(3)).scores, [1.5, 1.75, 0.5])


def test_min_by_hand():
    reward = _composite(
        [_fake_component("a"), _fake_component("b")],
        {"a": FakeScorer("a", [1.0, 2.0]), "b": FakeScorer("b", [5.0, -3.0])},
        combinator="min",
    )
    _close(reward(_batch(2)).scores, [1.0, -3.0])


def test_component_order_is_config_order():
    # threshold caps the FIRST component: swapping the order changes the result.
    scorers = {"big": FakeScorer("big", [10.0]), "small": FakeScorer("small", [0.5])}
    first_big = _composite(
        [_fake_component("big"), _fake_component("small")], scorers, "threshold", threshold=1.0
    )
    first_small = _composite(
        [_fake_component("small"), _fake_component("big")], scorers, "threshold", threshold=1.0
    )
    out_big, out_small = first_big(_batch(1)), first_small(_batch(1))
    _close(out_big.scores, [1.5])  # min(10, 1) + 0.5
    _close(out_small.scores, [10.5])  # min(0.5, 1) + 10
    assert first_small.names == ["small", "big"] and list(out_small.raw) == ["small", "big"]
    _close(out_small.stacked[0], [0.5, 10.0])


def test_user_registered_combinator_by_name():
    @register_combinator("test_product")
    def product(scores: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return scale * scores.prod(dim=-1)

    try:
        reward = _composite(
            [_fake_component("a"), _fake_component("b")],
            {"a": FakeScorer("a", [2.0, 3.0]), "b": FakeScorer("b", [4.0, -1.0])},
            combinator="test_product",
            scale=0.5,
        )
        _close(reward(_batch(2)).scores, [4.0, -1.5])  # 0.5 * 2 * 4, 0.5 * 3 * -1
    finally:
        COMBINATORS.pop("test_product")


# ---------------------------------------------------------------------------------------------------------
# Normalization and clipping


def _manual_running(seen: list[float], x: list[float]) -> list[float]:
    values = torch.tensor(seen, dtype=torch.float64)
    mean, std = values.mean(), values.var(correction=0).sqrt()
    return ((torch.tensor(x, dtype=torch.float64) - mean) / (std + 1e-8)).tolist()


BATCHES = [[1.0, 2.0, 4.0], [-3.0, 0.5, 8.0], [2.0, 2.0, -1.0], [0.0, 10.0, 3.0]]


def test_running_normalization_equals_manual_after_each_update():
    reward = _composite(
        [_fake_component("a", normalize="running"), _fake_component("b")],
        {"a": FakeScorer("a", *BATCHES), "b": FakeScorer("b", [0.0, 0.0, 0.0])},
    )
    seen: list[float] = []
    for x in BATCHES:
        seen += x
        out = reward(_batch(3))
        expected = _manual_running(seen, x)  # stats include this batch: updated, then applied
        _close(out.normalized["a"], expected, atol=1e-6)
        _close(out.raw["a"], x)
        _close(out.scores, expected, atol=1e-6)  # b is 0
    metrics = reward.metrics()
    assert metrics["reward/a/running_mean"] == pytest.approx(sum(seen) / len(seen), abs=1e-12)


def test_update_stats_false_applies_without_updating():
    reward = _composite([_fake_component("a", normalize="running")], {"a": FakeScorer("a", *BATCHES)})
    reward(_batch(3))
    before = reward.state_dict()
    out = reward(_batch(3), update_stats=False)
    assert reward.state_dict() == before
    _close(out.normalized["a"], _manual_running(BATCHES[0], BATCHES[1]))
    fresh = _composite([_fake_component("a", normalize="running")], {"a": FakeScorer("a", [1.0])})
    with pytest.raises(ValueError, match="no running statistics"):
        fresh(_batch(1), update_stats=False)


def test_resume_from_state_dict_continues_identically():
    comps = [_fake_component("a", normalize="running", clip=1.0), _fake_component("b", normalize="running")]
    b_batches = [[x * 2 - 1 for x in xs] for xs in BATCHES]

    def make(skip: int) -> CompositeReward:
        return _composite(
            comps,
            {"a": FakeScorer("a", *BATCHES[skip:]), "b": FakeScorer("b", *b_batches[skip:])},
            combinator="threshold",
            threshold=0.5,
        )

    uninterrupted = make(0)
    straight = [uninterrupted(_batch(3)) for _ in BATCHES]

    first = make(0)
    for _ in BATCHES[:2]:
        first(_batch(3))
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = make(2)
    resumed.load_state_dict(state)
    for expected in straight[2:]:
        out = resumed(_batch(3))
        assert torch.equal(out.scores, expected.scores)
        assert all(torch.equal(out.normalized[k], expected.normalized[k]) for k in ("a", "b"))
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_group_normalization_z_scores_each_component_within_its_prompts_answers():
    # two prompts x K=2 answers; a 0/1 rule and a logit on another scale end up on the same +-0.707 scale
    comps = [_fake_component("rule", normalize="group"), _fake_component("rm", normalize="group")]
    scorers = {
        "rule": FakeScorer("rule", [0.0, 1.0, 1.0, 1.0]),
        "rm": FakeScorer("rm", [10.0, 30.0, -1.0, -3.0]),
    }
    reward = CompositeReward(_cfg(comps), scorers=scorers, group_size=2)
    out = reward(_batch(4))
    z = 1 / math.sqrt(2)  # (x - mean) / unbiased std of two values
    _close(out.normalized["rule"], [-z, z, 0.0, 0.0], atol=1e-5)
    _close(out.normalized["rm"], [-z, z, z, -z], atol=1e-5)
    _close(out.scores, [-2 * z, 2 * z, z, -z], atol=1e-5)
    with pytest.raises(ValueError, match="K >= 2"):
        CompositeReward(_cfg(comps), scorers=scorers)


def test_constrained_multiplier_follows_dual_ascent_and_resumes_exactly():
    comps = [_fake_component("label", target=1.0), _fake_component("quality")]
    label = [[3.0, 3.0], [2.0, 2.0], [0.0, 0.0], [0.0, 2.0]]
    quality = [[0.5, 1.5]] * 4

    def make(skip: int) -> CompositeReward:
        return _composite(
            comps,
            {"label": FakeScorer("label", *label[skip:]), "quality": FakeScorer("quality", *quality[skip:])},
            combinator="constrained",
            multiplier_lr=0.25,
            multiplier_kp=0.0,  # plain dual ascent: the multiplier is the integral
        )

    reward = make(0)
    # batch 1: mu = 0 -> the sum; then mu <- max(0, 0 + 0.25 * (3 - 1)) = 0.5
    _close(reward(_batch(2)).scores, [3.5, 4.5])
    assert reward.metrics()["reward/label/multiplier"] == 0.0
    assert reward.metrics()["reward/label/constraint_gap"] == 2.0
    # batch 2: combined with mu = 0.5: 0.5 * 2 + q; then mu <- 0.5 + 0.25 * (2 - 1) = 0.75
    _close(reward(_batch(2)).scores, [1.5, 2.5])
    assert reward.metrics()["reward/label/multiplier"] == 0.5
    # batch 3 below target: mu <- max(0, 0.75 + 0.25 * (0 - 1)) = 0.5
    reward(_batch(2))
    assert reward.state_dict()["multipliers"] == {"label": 0.5}
    assert "reward/quality/multiplier" not in reward.metrics()
    # evaluation (update_stats False) combines with the multiplier but does not move it
    reward(_batch(2), update_stats=False)
    assert reward.state_dict()["multipliers"] == {"label": 0.5}

    first = make(0)
    first(_batch(2))
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = make(1)
    resumed.load_state_dict(state)
    straight = make(0)
    straight(_batch(2))
    for _ in range(3):
        assert torch.equal(resumed(_batch(2)).scores, straight(_batch(2)).scores)
    assert resumed.state_dict() == straight.state_dict()
    # a checkpoint of another combinator has no multipliers: refused, naming them
    plain = _composite(
        [_fake_component("label"), _fake_component("quality")],
        {"label": FakeScorer("label", [1.0, 1.0]), "quality": FakeScorer("quality", [1.0, 1.0])},
    )
    with pytest.raises(ValueError, match="multipliers"):
        resumed.load_state_dict(plain.state_dict())


def test_monitor_components_are_scored_and_logged_but_not_combined():
    comps = [
        _fake_component("a", weight=0.25),
        _fake_component("gold", monitor=True),
        _fake_component("b", weight=0.75),
    ]
    scorers = {
        "a": FakeScorer("a", [4.0, 0.0]),
        "gold": FakeScorer("gold", [100.0, -100.0]),
        "b": FakeScorer("b", [0.0, 4.0]),
    }
    reward = _composite(comps, scorers, combinator="weighted")
    out = reward(_batch(2))
    _close(out.scores, [1.0, 3.0])  # 0.25 * a + 0.75 * b: the weights of a and b only, gold left out
    assert out.stacked.shape == (2, 2)
    _close(out.raw["gold"], [100.0, -100.0])
    assert reward.metrics()["reward/gold/raw"] == 0.0  # its mean, logged like any component
    assert "reward/gold/raw" in out.rows()[0]
    # threshold caps the first combined component, whatever monitors come before it
    capped = _composite(
        [_fake_component("gold", monitor=True), _fake_component("a"), _fake_component("b")],
        {
            "gold": FakeScorer("gold", [9.0, 9.0]),
            "a": FakeScorer("a", [4.0, 0.0]),
            "b": FakeScorer("b", [1.0, 1.0]),
        },
        combinator="threshold",
        threshold=2.0,
    )
    _close(capped(_batch(2)).scores, [3.0, 1.0])
    with pytest.raises(ConfigError, match="every component is a monitor"):
        _cfg([_fake_component("gold", monitor=True)])
    with pytest.raises(ConfigError, match="cannot be capped"):
        _cfg([_fake_component("a"), _fake_component("gold", monitor=True, target=1.0)], "constrained")


def test_load_state_dict_rejects_other_components():
    reward = _composite([_fake_component("a", normalize="running")], {"a": FakeScorer("a", [1.0])})
    other = _composite([_fake_component("b", normalize="running")], {"b": FakeScorer("b", [1.0])})
    with pytest.raises(ValueError, match="differ"):
        reward.load_state_dict(other.state_dict())


def test_reference_calibration():
    reference = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, population std sqrt(1.25)
    x = [2.5, 5.0, 0.0]
    reward = _composite(
        [_fake_component("a", normalize="reference"), _fake_component("b")],
        {"a": FakeScorer("a", reference, x, x), "b": FakeScorer("b", [0.0, 0.0, 0.0])},
    )
    stats = reward.calibrate_reference(_batch(4))
    assert stats["a"]["mean"] == pytest.approx(2.5) and stats["a"]["std"] == pytest.approx(math.sqrt(1.25))
    assert "b" not in stats  # only reference components are calibrated
    out = reward(_batch(3))
    expected = [(v - 2.5) / math.sqrt(1.25) for v in x]
    _close(out.normalized["a"], expected)
    _close(out.normalized["a"], calibrate(torch.tensor(x), reference=torch.tensor(reference)).tolist())
    _close(out.raw["a"], x)
    # The statistics are fixed: scoring again gives the same values (no running update).
    _close(reward(_batch(3)).normalized["a"], expected)


def test_reference_errors():
    reward = _composite([_fake_component("a", normalize="reference")], {"a": FakeScorer("a", [1.0, 1.0])})
    with pytest.raises(ValueError, match="calibrate_reference"):
        reward(_batch(2))
    with pytest.raises(ValueError, match="zero spread"):
        reward.calibrate_reference(_batch(2))


def test_clip_after_normalization_symmetric():
    reward = _composite(
        [_fake_component("a", clip=1.0), _fake_component("b")],
        {"a": FakeScorer("a", [-3.0, 0.5, 2.0]), "b": FakeScorer("b", [0.0, 0.0, 0.0])},
    )
    out = reward(_batch(3))
    _close(out.normalized["a"], [-1.0, 0.5, 1.0])
    _close(out.raw["a"], [-3.0, 0.5, 2.0])  # raw keeps the scorer's values
    _close(out.scores, [-1.0, 0.5, 1.0])
    assert reward.metrics()["reward/a/clipfrac"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------------------
# Metrics and per-sample rows


def test_metrics_and_rows():
    reward = _composite(
        [_fake_component("a"), _fake_component("b")],
        {"a": FakeScorer("a", [1.0, 3.0]), "b": FakeScorer("b", [0.0, 2.0])},
    )
    assert reward.metrics() == {}
    out = reward(_batch(2))
    metrics = reward.metrics()
    assert metrics["reward/a/raw"] == pytest.approx(2.0) and metrics["reward/a/raw_std"] == pytest.approx(1.0)
    assert metrics["reward/b/normalized"] == pytest.approx(1.0)
    assert metrics["reward/combined"] == pytest.approx(3.0)  # mean of [1, 5]
    assert metrics["reward/combined_std"] == pytest.approx(2.0)
    assert set(metrics) == {
        f"reward/{n}/{k}{s}" for n in "ab" for k in ("raw", "normalized") for s in ("", "_std")
    } | {"reward/combined", "reward/combined_std"}
    rows = out.rows()
    assert rows[1] == {
        "reward/combined": 5.0,
        "reward/a/raw": 3.0,
        "reward/a/normalized": 3.0,
        "reward/b/raw": 2.0,
        "reward/b/normalized": 2.0,
    }


def test_scorer_errors_name_the_component():
    class Bad:
        name = "a"

        def score(self, batch):
            return torch.zeros(len(batch) + 1)

    reward = _composite([_fake_component("a")], {"a": Bad()})
    with pytest.raises(ValueError, match="scorer 'a' must return shape"):
        reward(_batch(2))
    with pytest.raises(ValueError, match="unknown components"):
        _composite([_fake_component("a")], {"zzz": FakeScorer("zzz", [1.0])})
    with pytest.raises(ValueError, match="at least one component"):
        CompositeReward(CompositeConfig())


# ---------------------------------------------------------------------------------------------------------
# Built from config, end to end (rule scorers)


def test_rule_components_built_from_yaml(tmp_path):
    path = tmp_path / "reward.yaml"
    path.write_text(
        "components:\n"
        "  - name: correct\n"
        "    type: label_correct\n"
        "    label_correct: {task: sst2, unparseable: -1.0}\n"
        "  - name: fmt\n"
        "    type: format\n"
        "    format: {}\n"
        "  - name: short\n"
        "    type: length_penalty\n"
        "    length_penalty: {target: 30, unit: chars, slope: 0.1}\n"
        "combinator: threshold\n"
        "combinator_params: {threshold: 0.5}\n"
    )
    cfg = load_config(CompositeConfig, path)
    reward = CompositeReward(cfg)
    responses = ["The answer is: positive", "Long rationale here.\n\nThe answer is: negative", "no idea"]
    batch = ScoringBatch(prompts=["q"] * 3, responses=responses, meta=[{"label": "positive"}] * 3)
    out = reward(batch)
    # correct: [1, 0, -1]; fmt: [1, 1, 0]; short: 23 chars -> 0, 20 + 2 + 23 = 45 -> -0.1 * 15, 7 -> 0
    # threshold 0.5: min(correct, 0.5) + fmt + short = [0.5 + 1, 0 + 1 - 1.5, -1 + 0] = [1.5, -0.5, -1]
    _close(out.raw["correct"], [1.0, 0.0, -1.0])
    _close(out.raw["short"], [0.0, -1.5, 0.0])
    _close(out.scores, [1.5, -0.5, -1.0])


def test_user_registered_scorer_type_reads_params():
    @dataclass
    class KeywordConfig:
        word: str
        """Word to reward."""
        bonus: float = 2.0
        """Score when present."""

    @register_scorer_type("test_keyword", KeywordConfig)
    def build(component, params, context):
        inner = ContainsScorer(ContainsConfig(substring=params.word), name=component.name)

        class Scaled:
            name = component.name

            def score(self, batch):
                return params.bonus * inner.score(batch)

        return Scaled()

    try:
        cfg = _cfg([{"name": "kw", "type": "test_keyword", "params": {"word": "hello"}}])
        out = CompositeReward(cfg)(ScoringBatch(prompts=["q", "q"], responses=["hello there", "bye"]))
        _close(out.scores, [2.0, 0.0])
        with pytest.raises(ConfigError, match="params.wrod"):
            _cfg([{"name": "kw", "type": "test_keyword", "params": {"wrod": "hello"}}])
        with pytest.raises(ConfigError, match="needs its 'params' section"):
            _cfg([{"name": "kw", "type": "test_keyword", "contains": {"substring": "x"}}])
    finally:
        SCORER_TYPES.pop("test_keyword")


# ---------------------------------------------------------------------------------------------------------
# Strict configs


@pytest.mark.parametrize(
    ("components", "combinator", "params", "message"),
    [
        (
            [{"name": "a", "type": "nope", "format": {}}],
            "sum",
            {},
            r"components\[0\].*'type': unknown scorer type 'nope'",
        ),
        (
            [{"name": "a", "type": "format"}],
            "sum",
            {},
            r"components\[0\].*type 'format' needs its 'format' section",
        ),
        (
            [{"name": "a", "type": "format", "format": {}, "contains": {"substring": "x"}}],
            "sum",
            {},
            r"components\[0\].*section\(s\) \['contains'\] do not belong to type 'format'",
        ),
        (
            [{"name": "a", "type": "format", "contains": {"substring": "x"}}],
            "sum",
            {},
            r"needs its 'format' section.*got \['contains'\]",
        ),
        (
            [{"name": "a", "type": "format", "format": {"patern": "x"}}],
            "sum",
            {},
            r"unknown key 'components\[0\]\.format\.patern'",
        ),
        (
            [{"name": "a", "type": "format", "format": {}, "output": "bounded"}],
            "sum",
            {},
            "'output' applies to reward_model",
        ),
        (
            [{"name": "a", "type": "format", "format": {}, "normalize": "zscore"}],
            "sum",
            {},
            r"components\[0\]\.normalize",
        ),
        (
            [{"name": "a", "type": "format", "format": {}, "clip": -1}],
            "sum",
            {},
            "'clip' must be a positive number",
        ),
        ([{"name": "a/b", "type": "format", "format": {}}], "sum", {}, "'name'"),
        (
            [{"name": "a", "type": "format", "format": {}}] * 2,
            "sum",
            {},
            r"duplicate component names \['a'\]",
        ),
        ([{"name": "a", "type": "format", "format": {}}], "mean", {}, "'combinator': unknown 'mean'"),
        (
            [{"name": "a", "type": "format", "format": {}}, {"name": "b", "type": "format", "format": {}}],
            "threshold",
            {},
            "'combinator_params'.*threshold",
        ),
        ([{"name": "a", "type": "format", "format": {}}], "threshold", {"threshold": 1.0}, "C=1"),
        (
            [{"name": "a", "type": "format", "format": {}, "weight": 0.0}],
            "weighted",
            {},
            "'combinator_params'.*sum to zero",
        ),
        (
            [{"name": "a", "type": "format", "format": {}}],
            "constrained",
            {},
            "give at least one component a target",
        ),
        (
            [{"name": "a", "type": "format", "format": {}, "target": 1.0}],
            "sum",
            {},
            "'target' is read by combinator 'constrained' only",
        ),
        (
            [{"name": "a", "type": "format", "format": {}, "target": 1.0}],
            "constrained",
            {"multiplier_lr": 0.0},
            "multiplier_lr > 0",
        ),
        (
            [{"name": "a", "type": "format", "format": {}, "target": 1.0}],
            "constrained",
            {"threshold": 1.0},
            r"\['threshold'\] unknown to combinator 'constrained'",
        ),
    ],
)
def test_strict_config_errors_name_the_key(components, combinator, params, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(components, combinator, **params)


def test_config_round_trips_and_every_field_has_a_docstring():
    import dataclasses

    from rewardmix.config import to_dict
    from rewardmix.docgen import field_docs
    from rewardmix.scoring import (
        FormatConfig,
        LabelCorrectConfig,
        LengthPenaltyConfig,
        RewardModelParams,
    )

    cfg = _cfg([{"name": "a", "type": "format", "format": {"pattern": "x"}, "clip": 4}], "sum")
    assert from_dict(CompositeConfig, to_dict(cfg)) == cfg
    classes = (
        CompositeConfig,
        ComponentConfig,
        RewardModelParams,
        LabelCorrectConfig,
        LengthPenaltyConfig,
        FormatConfig,
        ContainsConfig,
    )
    for cls in classes:
        assert set(field_docs(cls)) == {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_importing_scoring_pulls_in_no_transformers():
    probe = (
        "import sys, rewardmix.scoring, rewardmix.scoring.reward_model\n"
        "print(','.join(m for m in ('transformers', 'peft') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""
