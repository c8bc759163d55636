"""evaluate-rm: every number matches a hand computation on a scorer with known outputs; a real model loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rewardmix.config import ConfigError, load_config
from rewardmix.data.pairs import PreferencePair, write_pairs
from rewardmix.data.toy import toy_pairs
from rewardmix.rundir import read_jsonl
from rewardmix.stages import evaluate_rm as ev
from rewardmix.stages import reward_model as rm

REPO = Path(__file__).resolve().parents[2]


class TableScorer:
    """Scores an answer by looking it up: the outputs are known, so every metric can be worked out by hand."""

    def __init__(self, table: dict[str, float], score_transform: str | None = None) -> None:
        self.table = table
        self.calls: list[tuple[list, list]] = []
        if score_transform is not None:
            self.score_transform = score_transform

    def __call__(self, prompts, answers):
        self.calls.append((list(prompts), list(answers)))
        return [self.table[a] for a in answers]


def config(tmp_path: Path, **kwargs) -> ev.Config:
    return ev.Config(output_dir=str(tmp_path / "eval"), probes=None, **kwargs)


def test_pair_accuracy_overall_per_task_and_kind(tmp_path):
    pairs = [
        PreferencePair("q1", "a", "b", "label_sensitive", task="sst2"),  # 3 > 1: right
        PreferencePair("q2", "c", "d", "label_sensitive", task="sst2"),  # 0 < 2: wrong
        PreferencePair("q3", "e", "f", "label_sensitive", task="mrpc"),  # 5 = 5: tie, 1/2
        PreferencePair("q4", "g", "h", "rationale_sensitive", task="mrpc"),  # 2 > -1: right
    ]
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, pairs)
    scorer = TableScorer({"a": 3, "b": 1, "c": 0, "d": 2, "e": 5, "f": 5, "g": 2, "h": -1})
    result = ev.run(config(tmp_path, pairs=[str(path)]), scorer=scorer)
    m = result.metrics
    assert m["rm/accuracy"] == (1 + 0 + 0.5 + 1) / 4
    assert m["rm/accuracy/sst2"] == 0.5 and m["rm/accuracy/mrpc"] == 0.75
    assert m["rm/accuracy/kind/label_sensitive"] == pytest.approx(1.5 / 3)
    assert m["rm/accuracy/kind/rationale_sensitive"] == 1.0
    assert m["rm/margin_mean"] == (2 - 2 + 0 + 3) / 4
    assert m["rm/pairs"] == 4 and m["rm/pairs/sst2"] == 2
    assert scorer.calls[0][0] == ["q1", "q2", "q3", "q4"]  # each answer is scored with its own prompt
    saved = json.loads(result.eval_path.read_text())
    assert saved["rm/accuracy"] == m["rm/accuracy"]
    rows = read_jsonl(tmp_path / "eval" / "scores.jsonl")
    assert [(r["chosen_score"], r["rejected_score"]) for r in rows] == [(3, 1), (0, 2), (5, 5), (2, -1)]


@pytest.mark.parametrize("transform", ["identity", "sigmoid"])
def test_mse_and_mae_per_score_range(tmp_path, transform):
    targets = [0.1, 0.4, 0.5, 0.89, 0.9, 1.0]  # low, low (<= 0.4), mid, mid, high (>= 0.9), high
    predictions = [0.3, 0.4, 0.2, 0.89, 0.5, 1.0]
    texts = [f"r{i}" for i in range(len(targets))]
    # a scorer whose raw outputs become these predictions through the model's transform
    raw = (
        predictions
        if transform == "identity"
        else [math.log(p / (1 - p)) if p < 1 else 40.0 for p in predictions]
    )
    path = tmp_path / "ratings.jsonl"
    path.write_text(
        "".join(json.dumps({"response": t, "score": y}) + "\n" for t, y in zip(texts, targets, strict=True))
    )
    scorer = TableScorer(dict(zip(texts, raw, strict=True)), score_transform=transform)
    m = ev.run(config(tmp_path, ratings=str(path)), scorer=scorer).metrics
    # low: errors 0.2, 0 -> mse 0.02, mae 0.1; mid: 0.3, 0 -> 0.045, 0.15; high: 0.4, 0 -> 0.08, 0.2
    expected = {"low": (0.02, 0.1), "mid": (0.045, 0.15), "high": (0.08, 0.2)}
    for name, (mse, mae) in expected.items():
        assert m[f"rm/mse/{name}"] == pytest.approx(mse, abs=1e-9)
        assert m[f"rm/mae/{name}"] == pytest.approx(mae, abs=1e-9)
        assert m[f"rm/count/{name}"] == 2
    assert m["rm/mse"] == pytest.approx((0.04 + 0.09 + 0.16) / 6, abs=1e-9)
    assert m["rm/mae"] == pytest.approx(0.9 / 6, abs=1e-9)


def test_a_range_without_data_is_left_out():
    m = ev.rating_metrics([0.5, 0.6], [0.5, 0.7], ev.RangesConfig())
    assert "rm/mse/mid" in m and "rm/mse/low" not in m and "rm/mse/high" not in m


def test_probe_order_rate_and_mean_score_per_position(tmp_path):
    probes = [
        {"prompt": "p1", "responses": ["a1", "b1", "c1", "d1"], "positions": ["best", "bad", "irr", "meh"]},
        {"prompt": "p2", "responses": ["a2", "b2", "c2", "d2"], "positions": ["best", "bad", "irr", "meh"]},
        {"prompt": "p3", "responses": ["a3", "b3", "c3", "d3"], "positions": ["best", "bad", "irr", "meh"]},
    ]
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in probes))
    table = {
        **{"a1": 4, "b1": 3, "c1": 2, "d1": 1},  # in order
        **{"a2": 4, "b2": 2, "c2": 3, "d2": 1},  # bad < irrelevant: out of order, 5 of 6 pairs right
        **{"a3": 1, "b3": 1, "c3": 0, "d3": -1},  # a tie is not "in order", 5 of 6 pairs right
    }
    m = ev.run(
        ev.Config(output_dir=str(tmp_path / "eval"), probes=str(path)), scorer=TableScorer(table)
    ).metrics
    assert m["rm/probe_order_rate"] == pytest.approx(1 / 3)
    assert m["rm/probe_pair_accuracy"] == pytest.approx((6 + 5 + 5) / 18)
    assert m["rm/probe/mean_score/best"] == pytest.approx(3.0)
    assert m["rm/probe/mean_score/irr"] == pytest.approx(5 / 3)
    assert m["rm/probes"] == 3
    rows = read_jsonl(tmp_path / "eval" / "scores.jsonl")
    assert rows[1]["scores"] == {"best": 4, "bad": 2, "irr": 3, "meh": 1}


def test_shipped_probes_follow_crs_tables_24_to_27():
    probes = ev.read_probes(ev.BUILTIN_PROBES)
    assert len(probes) == 6
    assert all(p.positions == ("best", "bad", "irrelevant", "meaningless") for p in probes)
    prompts = {p.prompt for p in probes}
    assert {
        "Explain the importance of a balanced diet.",
        "Discuss the role of exercise in maintaining health.",
        "Explain the significance of renewable energy sources.",
        "Describe the effects of global warming.",
    } <= prompts


def test_score_distribution_quantiles_and_histogram(tmp_path):
    d = ev.distribution([1.0, 2.0, 3.0, 4.0, 5.0], quantiles=[0.0, 0.25, 0.5, 1.0], bins=4)
    assert d["quantiles"] == {"q00": 1.0, "q25": 2.0, "q50": 3.0, "q100": 5.0}
    assert d["mean"] == 3.0 and d["std"] == pytest.approx(math.sqrt(2.0))
    assert d["histogram"] == {"edges": [1.0, 2.0, 3.0, 4.0, 5.0], "counts": [1, 1, 1, 2]}
    single = ev.distribution([2.0, 2.0], quantiles=[0.5], bins=2)
    assert sum(single["histogram"]["counts"]) == 2


def test_bad_probe_and_rating_rows_name_the_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "x", "responses": ["only one"]}) + "\n")
    with pytest.raises(Exception, match=r"p.jsonl:1: field 'responses'"):
        ev.read_probes(str(path))
    ratings = tmp_path / "r.jsonl"
    ratings.write_text(json.dumps({"response": "x", "score": 2}) + "\n")
    with pytest.raises(Exception, match=r"r.jsonl:1: field 'score'"):
        ev.run(config(tmp_path, ratings=str(ratings)), scorer=TableScorer({"x": 0.0}))


def test_a_trained_model_is_scored_as_during_training(tmp_path):
    """End to end on a tiny reward model: evaluate-rm loads model/ and reproduces the stage's own scores."""
    train = tmp_path / "train.jsonl"
    write_pairs(train, toy_pairs(16, seed=3))
    cfg = rm.Config(output_dir=str(tmp_path / "rm"), cpu=True)
    cfg.lora.enabled = False
    cfg.data.train = str(train)
    cfg.data.eval = str(train)
    cfg.optim.max_steps = 1
    cfg.logging.num_samples = 0
    result = rm.run(cfg)
    m = ev.run(
        ev.Config(
            output_dir=str(tmp_path / "eval"), model=str(result.model_dir), pairs=[str(train)], cpu=True
        )
    ).metrics
    assert m["rm/accuracy"] == pytest.approx(result.eval_metrics["rm/accuracy"])
    assert m["rm/margin_mean"] == pytest.approx(result.eval_metrics["rm/margin_mean"], abs=1e-5)
    assert {
        "rm/probe_order_rate",
        "rm/score_distribution/probes",
        "rm/score_distribution/pairs/chosen",
    } <= set(m)
    assert torch.isfinite(torch.tensor(m["rm/probe/mean_score/best"]))


def test_shipped_config_loads_strictly(tmp_path):
    cfg = load_config(ev.Config, REPO / "configs" / "evaluate-rm.yaml", stage="evaluate-rm")
    assert cfg.probes == ev.BUILTIN_PROBES and cfg.ranges.low_max == 0.4 and cfg.ranges.high_min == 0.9
    with pytest.raises(ConfigError, match="histogram_binz"):
        load_config(ev.Config, None, ["histogram_binz=3"], stage="evaluate-rm")
    with pytest.raises(ConfigError, match="low_max"):
        load_config(ev.Config, None, ["ranges.low_max=0.95"], stage="evaluate-rm")
