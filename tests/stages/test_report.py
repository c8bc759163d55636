"""``rewardmix report``: every section for a tiny run, numbers from eval.json in the tables, PNGs that render."""

from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from rewardmix.config import ConfigError, from_dict, load_config
from rewardmix.stages import evaluate, report
from tests.stages.test_evaluate import fake_factory, inputs, judge, length_scorer, scripted_config  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


class Page(HTMLParser):
    """Headings, images, table cells and notes of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.images: list[str] = []
        self.cells: list[str] = []
        self.notes: list[str] = []
        self._open: str | None = None
        self._buf = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("h1", "h2", "h3", "h4", "td") or (tag == "p" and attrs.get("class") == "note"):
            self._open, self._buf = ("note" if tag == "p" else tag), ""

    def handle_data(self, data):
        if self._open:
            self._buf += data

    def handle_endtag(self, tag):
        if self._open and (tag == self._open or (self._open == "note" and tag == "p")):
            if self._open == "td":
                self.cells.append(self._buf)
            elif self._open == "note":
                self.notes.append(self._buf)
            else:
                self.headings.append((self._open, self._buf))
            self._open = None


def write_training_run(folder: Path, *, kl: bool = True, steps: int = 6, stage: str = "ppo") -> Path:
    folder.mkdir(parents=True)
    (folder / "run_info.json").write_text(
        json.dumps({"stage": stage, "git_commit": "abc123", "started_at": "t"})
    )
    rows = []
    for s in range(1, steps + 1):
        if stage != "ppo":  # SFT and reward-model runs log a training loss only
            rows.append({"step": s, "loss/train": 2.0 / s})
            continue
        row = {"step": s, "objective/score": 0.02 * s, "reward/rm_label/raw": 0.1 * s, "reward/length/raw": -0.05 * s,
               "reward/rm_label/normalized": 0.5 * s, "reward/length/normalized": -0.5 * s,
               "response/length_mean": 40 + s, "loss/policy": 1.0 / s}  # fmt: skip
        if kl:
            row["objective/kl"] = 0.01 * s * s
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def contains(cells: list[str], run: list[str]) -> bool:
    """Whether ``run`` appears as consecutive table cells."""
    return any(cells[i : i + len(run)] == run for i in range(len(cells)))


def assert_png_renders(data: bytes) -> None:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size[0] >= 400 and image.size[1] >= 250
    assert max(ImageStat.Stat(image.convert("RGB")).var) > 0  # not blank


@pytest.fixture
def evaluated(tmp_path, inputs, chat_server):  # noqa: F811
    chat_server.answer = judge("rllr")
    cfg = scripted_config(tmp_path, inputs, chat_server)
    return evaluate.run(cfg, generator_factory=fake_factory([]), scorer_factory=length_scorer)


def test_report_has_every_section_for_a_tiny_run(tmp_path, evaluated):
    train = write_training_run(tmp_path / "ppo")
    cfg = from_dict(
        report.Config,
        {
            "runs": [
                {"path": str(train), "name": "ppo"},
                {"path": str(evaluated.output_dir), "name": "eval"},
            ],
            "output_dir": str(tmp_path / "report"),
        },
    )
    res = report.run(cfg)
    page = Page(res.html_path.read_text())
    titles = [text for _, text in page.headings]
    for needed in ("Results", "Accuracy ± SE", "Paired tests (McNemar)", "Paired accuracy differences (same items)",
                   "Training curves", "Score and reward components", "KL", "Response length", "Loss: policy (ppo)",
                   "Evaluation: eval", "NLU tasks", "Win rates", "Reward models", "Reward histograms",
                   "Reward vs response length", "NLU results (RLLR Table 4)", "Win rates (row vs column)",
                   "Win / tie / lose against sft (RLLR Fig. 4)", "Win rates by dataset", "Win rates by category",
                   "Reward-model agreement", "Reward vs response length", "Reward distributions"):  # fmt: skip
        assert needed in titles, needed
    assert page.notes == []  # every section has its data
    assert page.headings[:2] == [("h1", "rewardmix report"), ("h2", "Results")]  # the report opens with them
    assert titles.index("Paired tests (McNemar)") < titles.index("Runs") < titles.index("Training curves")

    # Results block, from the written eval.json. SST-2 accuracy ± sqrt(p (1 - p) / 4): sft 50 ± 25,
    # rlhf 75 ± 21.65, rllr 100 ± 0; STS-B shows Pearson r. McNemar on the same items: sft vs rllr has
    # b = 0, c = 2 -> p = 2 / 2^2 = 0.5; sft vs rlhf and rlhf vs rllr have c = 1 -> p = 1.
    written = json.loads(evaluated.eval_path.read_text())
    for m, se in (("sft", 25.0), ("rlhf", math.sqrt(0.75 * 0.25 / 4) * 100), ("rllr", 0.0)):
        acc = 100 * written[f"eval/{m}/sst2/accuracy"]
        r = 100 * written[f"eval/{m}/stsb/pearson"]
        assert contains(page.cells, [m, f"{acc:.2f} ± {se:.2f}", f"r = {r:.2f}"])
    assert "75.00 ± 21.65" in page.cells and "SST-2 (n=4)" in res.html_path.read_text()
    for a, b, cell in (("sft", "rlhf", "-25.00, p = 1.000"), ("sft", "rllr", "-50.00, p = 0.500"),
                       ("rlhf", "rllr", "-25.00, p = 1.000")):  # fmt: skip
        key = f"eval/paired/sst2/{a}/{b}"
        assert cell == f"{100 * written[key + '/diff']:+.2f}, p = {written[key + '/mcnemar_p']:.3f}"
        assert contains(page.cells, [f"{a} vs {b}", cell])
    # the full paired table in the evaluation section: SE, CI, McNemar and bootstrap p
    boot = f"{written['eval/paired/sst2/sft/rllr/bootstrap_p']:.3f}"
    assert contains(page.cells, ["SST-2", "sft", "rllr", "4", "50.00", "100.00", "-50.00 ± 28.87"])
    assert contains(page.cells, ["-50.00 ± 28.87", "[-106.58, +6.58]", "0.500", boot])

    # 4 curves + heatmap + win/tie/lose bars + a histogram and a scatter per reward model (len, neg) = 10
    assert len(page.images) == 10 == len(res.figures)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")  # self-contained
        assert_png_renders(base64.b64decode(src.split(",", 1)[1]))

    # Numbers in the tables are those of eval.json.
    ev = evaluated.metrics
    assert f"{100 * ev['eval/sft/sst2/accuracy']:.2f}" == "50.00" and "50.00" in page.cells
    assert f"{100 * ev['eval/sft/stsb/pearson']:.2f}" in page.cells
    half = 1.96 * math.sqrt(0.375 * 0.625 / 4)
    assert f"62.5% ± {100 * half:.1f} (n=4)" in page.cells  # rlhf vs sft
    assert f"37.5% ± {100 * half:.1f} (n=4)" in page.cells  # the mirrored cell
    assert f"{100 * ev['eval/rm/len/judge_agreement']:.1f}% (n=9)" in page.cells  # 77.8%
    # RLLR Fig. 4 row: rlhf against sft wins 2, ties 1, loses 1 of 4
    assert contains(page.cells, ["rlhf", "50.0%", "25.0%", "25.0%", "4"])
    # CRS Table 22 layout for rlhf vs sft, wins / judged per category (rows) and dataset (koala, oasst):
    # Creative = p1 (oasst, tie) and p3 (koala, rlhf won); Reasoning = p0 (oasst, rlhf won) and p2 (koala, sft won)
    assert contains(page.cells, ["Creative", "1/1", "0/1", "Reasoning", "0/1", "1/1"])

    # The Markdown page references the same figures, saved beside it.
    md = res.markdown_path.read_text()
    for path in res.figures:
        assert f"](figures/{path.name})" in md and path.is_file()
        assert_png_renders(path.read_bytes())
    assert "| sft | 50.00 |" in md


def test_missing_data_gets_a_clear_note(tmp_path):
    train = write_training_run(tmp_path / "sft", kl=False)
    res = report.run(
        from_dict(report.Config, {"runs": [{"path": str(train)}], "output_dir": str(tmp_path / "r")})
    )
    page = Page(res.html_path.read_text())
    assert any("objective/kl" in n for n in page.notes)
    assert any("No eval.json" in n for n in page.notes)
    assert len(page.images) == 3  # reward, response length, loss; no KL
    assert any("No results" in n for n in page.notes)
    md = res.markdown_path.read_text()
    assert "> Not available: no objective/kl in any metrics.jsonl." in md


def test_comparison_overlays_runs(tmp_path):
    a, b = write_training_run(tmp_path / "a"), write_training_run(tmp_path / "b", steps=3)
    series = report.series_of([report.read_run(report.RunEntry(str(a))), report.read_run(report.RunEntry(str(b)))],
                              "objective/kl")  # fmt: skip
    assert list(series) == ["a", "b"] and series["b"][0] == [1.0, 2.0, 3.0]
    rewards = report.series_of([report.read_run(report.RunEntry(str(a), "A"))], report._REWARD_KEY)
    assert sorted(rewards) == ["length", "rm_label"] and rewards["rm_label"][1][0] == pytest.approx(0.1)
    both = [report.read_run(report.RunEntry(str(a))), report.read_run(report.RunEntry(str(b)))]
    assert sorted(report.series_of(both, report._REWARD_KEY)) == [
        "a: length",
        "a: rm_label",
        "b: length",
        "b: rm_label",
    ]
    assert report._smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]  # trailing mean of 2
    res = report.run(from_dict(report.Config, {"runs": [{"path": str(a)}, {"path": str(b)}],
                                               "output_dir": str(tmp_path / "r")}))  # fmt: skip
    # a score / reward figure per run, then KL, length and the shared PPO loss with both runs
    assert len(Page(res.html_path.read_text()).images) == 5
    assert sorted(p.name for p in res.figures if p.name.startswith("reward_")) == [
        "reward_a.png",
        "reward_b.png",
    ]


def test_reward_panels_per_run_and_losses_per_stage(tmp_path, monkeypatch):
    from rewardmix.evaluation import plots

    drawn: dict[str, list] = {}
    real_plot, real_panels = plots.line_plot, plots.line_panels

    def line_plot(series, *, title, ylabel, xlabel="step"):
        drawn[title] = sorted(series)
        return real_plot(series, title=title, ylabel=ylabel, xlabel=xlabel)

    def line_panels(panels, *, title, xlabel="step"):
        drawn[f"panels {title}"] = {name: sorted(series) for name, series in panels.items()}
        return real_panels(panels, title=title, xlabel=xlabel)

    monkeypatch.setattr(plots, "line_plot", line_plot)
    monkeypatch.setattr(plots, "line_panels", line_panels)
    runs = [write_training_run(tmp_path / "ppo"), write_training_run(tmp_path / "sft", stage="sft"),
            write_training_run(tmp_path / "rm", stage="reward-model")]  # fmt: skip
    cfg = {"runs": [{"path": str(r)} for r in runs], "output_dir": str(tmp_path / "r")}
    res = report.run(from_dict(report.Config, cfg))
    # One figure for the PPO run: its score, and each component raw and normalized, on three axes.
    assert drawn["panels ppo"] == {
        "objective/score": ["objective/score"],
        "raw": ["length", "rm_label"],
        "normalized": ["length", "rm_label"],
    }
    assert "panels sft" not in drawn and "panels rm" not in drawn  # no reward keys in those runs
    # SFT and reward-model runs both log loss/train: one axis each, never shared.
    assert drawn["Loss: train (sft)"] == ["sft"] and drawn["Loss: train (reward-model)"] == ["rm"]
    assert drawn["Loss: policy (ppo)"] == ["ppo"]
    names = {p.name for p in res.figures}
    assert {
        "reward_ppo.png",
        "loss_sft_train.png",
        "loss_reward-model_train.png",
        "loss_ppo_policy.png",
    } <= names
    for path in res.figures:
        assert_png_renders(path.read_bytes())


def test_overoptimization_curve_puts_gold_and_proxies_against_sqrt_kl(tmp_path):
    # write_training_run: objective/kl = 0.01 s^2 -> sqrt(KL) = 0.1 s; rm_label raw 0.1 s, length raw -0.05 s
    a, b = write_training_run(tmp_path / "a"), write_training_run(tmp_path / "b", steps=3)
    runs = [report.read_run(report.RunEntry(str(a))), report.read_run(report.RunEntry(str(b)))]
    panels = report.overoptimization_series(runs, "rm_label")
    assert sorted(panels["gold"]) == ["a", "b"] and sorted(panels["proxies"]) == ["a: length", "b: length"]
    xs, ys = panels["gold"]["b"]
    assert xs == pytest.approx([0.1, 0.2, 0.3]) and ys == pytest.approx([0.1, 0.2, 0.3])
    assert panels["proxies"]["a: length"][1][0] == pytest.approx(-0.05)
    cfg = {
        "runs": [{"path": str(a)}, {"path": str(b)}],
        "output_dir": str(tmp_path / "r"),
        "gold_component": "rm_label",
    }
    res = report.run(from_dict(report.Config, cfg))
    figure = next(p for p in res.figures if p.name == "overoptimization.png")
    assert_png_renders(figure.read_bytes())
    missing = {**cfg, "output_dir": str(tmp_path / "r2"), "gold_component": "gold"}
    md = report.run(from_dict(report.Config, missing)).markdown_path.read_text()
    assert "Not available: no run logged both objective/kl and reward/gold/raw." in md


def test_bad_runs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.run(from_dict(report.Config, {"runs": [{"path": str(tmp_path / "nope")}]}))
    a = write_training_run(tmp_path / "x" / "run")
    b = write_training_run(tmp_path / "y" / "run")
    with pytest.raises(ValueError, match="same name"):
        report.run(from_dict(report.Config, {"runs": [{"path": str(a)}, {"path": str(b)}]}))


def test_shipped_config_loads_strictly(tmp_path):
    cfg = load_config(report.Config, REPO / "configs" / "report.yaml", stage="report")
    assert cfg.runs and cfg.smoothing >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "report.yaml").read_text() + "smooth: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'smooth'"):
        load_config(report.Config, bad, stage="report")


def test_evaluate_rm_output_contributes_distributions_and_metrics(tmp_path):
    from rewardmix.evaluation.rewards import distribution

    run_dir = tmp_path / "evaluate-rm"
    run_dir.mkdir()
    ev = {
        "rm/accuracy": 0.9,
        "rm/pairs": 20,
        "rm/accuracy/sst2": 0.75,
        "rm/pairs/sst2": 4,
        "rm/accuracy/kind/label": 0.5,  # no pair count per kind: not in the results
        "rm/score_distribution/pairs/chosen": distribution([1.0, 2.0, 2.5, 3.0], bins=4),
        "rm/score_distribution/pairs/rejected": distribution([-1.0, 0.0, 0.5], bins=4),
    }
    (run_dir / "eval.json").write_text(json.dumps(ev))
    res = report.run(
        from_dict(report.Config, {"runs": [{"path": str(run_dir)}], "output_dir": str(tmp_path / "r")})
    )
    page = Page(res.html_path.read_text())
    assert contains(page.cells, ["rm/accuracy", "0.9000"]) and contains(page.cells, ["rm/pairs", "20.0000"])
    # Results: accuracy ± sqrt(p (1 - p) / n): 0.9 of 20 -> 90.00 ± 6.71; 0.75 of 4 -> 75.00 ± 21.65
    assert page.headings[1:3] == [("h2", "Results"), ("h3", "Reward-model accuracy")]
    name = run_dir.name
    assert contains(page.cells, [name, "all", "20", "90.00 ± 6.71", name, "sst2", "4", "75.00 ± 21.65"])
    assert not contains(page.cells, [name, "kind/label"])
    assert contains(page.cells, ["pairs/chosen", "4", "2.125"])  # count 4, mean (1 + 2 + 2.5 + 3) / 4
    assert len(page.images) == 1  # one histogram figure with both sources
    assert_png_renders(base64.b64decode(page.images[0].split(",", 1)[1]))
    assert any("no NLU tasks" in n for n in page.notes) and any(
        "no judged comparisons" in n for n in page.notes
    )


def test_p_values_are_formatted_without_rounding_to_zero():
    from rewardmix.evaluation.tables import fmt_p

    # three decimals down to 0.001; smaller values in scientific notation, so a tiny p never shows as 0.000
    assert [fmt_p(v) for v in (1.0, 0.5, 0.0312, 0.001, 2.1e-05, 0.0, None, float("nan"))] == [
        "1.000", "0.500", "0.031", "0.001", "2.1e-05", "0.000", "n/a", "n/a",
    ]  # fmt: skip
