"""``rewardmix report``: one HTML page (self-contained) and one Markdown page for a run or a comparison of runs.

What a run does, in order (the numbered steps of :func:`run`):

1. Read each run directory: ``config.yaml`` / ``run_info.json`` (what ran, from which commit),
   ``metrics.jsonl`` (training curves), ``eval.json`` and ``rm_scores.jsonl`` (written by ``rewardmix
   evaluate``; an ``eval.json`` of ``rewardmix evaluate-rm`` contributes its accuracy and score distributions).
   The report opens with the results: per task, each model's accuracy ± SE and the paired McNemar tests
   between every two models (``eval/paired/...``), and each evaluate-rm run's pair accuracy ± SE.
2. Training curves over ``step`` (CRS Figs. 20-23, 26): one figure per run with the score it optimizes
   (``objective/score``) and each reward component, raw and normalized (``reward/<name>/raw``,
   ``/normalized``), in side-by-side panels; KL (``objective/kl``) and response length
   (``response/length_mean``, else ``response/length``) with every run on the same axes; each stage's losses
   (``loss/*``) on their own axes, one plot per stage and key (runs of the same stage overlaid).
3. Per evaluated run: the NLU table (RLLR Table 4), win-rate matrix with its heatmap (CI half-widths in the
   cells; CRS Tables 10, 16, 23), win / tie / lose against the baseline (RLLR Fig. 4), breakdowns by dataset
   and category (CRS Tables 15, 20-22), reward-model agreement (CRS Tables 12-14, 18-19), reward histograms
   (CRS Fig. 24) and reward vs length scatter plots (CRS Fig. 27).
4. Write ``report.html`` (PNG images embedded as base64 data URIs: the file is self-contained) and
   ``report.md`` (images saved in ``figures/`` beside it and referenced).

Every section is written when its data exists; when it does not, the section says so in one line (e.g.
"no ``objective/kl`` in any ``metrics.jsonl``"), so a missing plot is never mistaken for a broken report.

Reference: SPEC §8 ("a report per run: tables plus plots (PNG) in one HTML or Markdown file").
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from rewardmix.config import ConfigError
from rewardmix.data.readers import DataError
from rewardmix.evaluation import tables as tb
from rewardmix.markdown import md_text
from rewardmix.rundir import atomic_write_bytes, atomic_write_text, prepare_run_dir, read_jsonl

log = logging.getLogger(__name__)

_REWARD_KEY = re.compile(r"^reward/(.+)/raw$")
_NORMALIZED_KEY = re.compile(r"^reward/(.+)/normalized$")


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclass
class RunEntry:
    preflight_paths: ClassVar[dict[str, str]] = {"path": "folder"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    path: str
    """A run directory (training run, ``rewardmix evaluate`` or ``evaluate-rm`` output)."""
    name: str = ""
    """Label in legends and headings; empty: the folder's name."""


@dataclass
class Config:
    runs: list[RunEntry] = field(default_factory=list)
    """The runs to report on: one for a run report, several for a comparison (curves share their axes)."""
    output_dir: str = "runs/report"
    """Where report.html, report.md and figures/ are written."""
    title: str = "rewardmix report"
    """Title of both pages."""
    smoothing: int = 1
    """Moving-average window over steps for the training curves (1: raw values)."""
    max_scatter_points: int = 5000
    """Points per model in a reward vs length scatter plot (the first N; all of them in the statistics)."""
    gold_component: str | None = None
    """A reward component the training runs logged as the gold standard (e.g. a ``monitor: true`` gold reward
    model): one figure plots it, and every other reward component, against sqrt(objective/kl) for every run:
    the over-optimization curve of Gao et al. 2022. Null: no such figure."""

    def __post_init__(self) -> None:
        if self.smoothing < 1 or self.max_scatter_points < 1:
            raise ValueError("smoothing and max_scatter_points must be >= 1")


class ReportResult(NamedTuple):
    """What :func:`run` leaves behind."""

    output_dir: Path
    html_path: Path
    markdown_path: Path
    figures: list[Path]
    """The PNG files of ``figures/`` (the same images are embedded in the HTML)."""


# ---------------------------------------------------------------------------------------------------------
# Blocks: the report's content, rendered twice (HTML, Markdown)


class Heading(NamedTuple):
    level: int
    text: str


class Text(NamedTuple):
    text: str
    note: bool = False
    """A "not available" note (styled apart in HTML, a quote in Markdown)."""


class TableBlock(NamedTuple):
    table: tb.Table
    level: int = 4
    """Heading level of the table's title."""


class Image(NamedTuple):
    name: str
    """File name in ``figures/`` (``.png``)."""
    png: bytes
    caption: str


Block = Heading | Text | TableBlock | Image


class RunData(NamedTuple):
    """What one run directory holds."""

    name: str
    path: Path
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    eval: dict[str, Any] | None
    rm_scores: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------------------
# The stage


def run(cfg: Config) -> ReportResult:
    """Write the report of ``cfg.runs``.

    Returns:
        A :class:`ReportResult`.
    """
    # step 1. read the runs
    if not cfg.runs:
        raise ConfigError(
            "runs: nothing to report; give at least one run directory, e.g. `runs: [{path: runs/ppo}]`"
        )
    runs = [read_run(entry) for entry in cfg.runs]
    for i, r in enumerate(runs):
        if not (r.info or r.metrics or r.eval is not None or r.rm_scores):
            raise DataError(
                f"runs[{i}].path: {r.path} holds nothing to report (no {', '.join(RUN_FILES)}); "
                f"is it the output_dir of a rewardmix run?"
            )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"runs: two runs have the same name {names}; set 'name' for each")
    out = prepare_run_dir(cfg.output_dir, cfg, stage="report")

    # step 2. the results first, then the runs and their training curves
    blocks: list[Block] = [Heading(1, cfg.title), *results_blocks(runs), *overview_blocks(runs)]
    blocks += curve_blocks(runs, cfg.smoothing)
    if cfg.gold_component is not None:
        blocks += overoptimization_blocks(runs, cfg.gold_component, cfg.smoothing)

    # step 3. evaluation tables and plots, per evaluated run
    evaluated = [r for r in runs if r.eval is not None]
    if not evaluated:
        blocks += [
            Heading(2, "Evaluation"),
            Text("No eval.json in any run: run `rewardmix evaluate` first.", True),
        ]
    for r in evaluated:
        blocks += evaluation_blocks(r, len(evaluated) > 1, cfg.max_scatter_points)

    # step 4. write report.html (self-contained) and report.md (+ figures/)
    figures = []
    for block in blocks:
        if isinstance(block, Image):
            path = out / "figures" / block.name
            atomic_write_bytes(path, block.png)
            figures.append(path)
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write_text(html_path, render_html(blocks, cfg.title))
    atomic_write_text(md_path, render_markdown(blocks))
    log.info("report: %d runs -> %s (%d figures)", len(runs), html_path, len(figures))
    return ReportResult(out, html_path, md_path, figures)


# ---------------------------------------------------------------------------------------------------------
# Step 1: reading runs


RUN_FILES = ("run_info.json", "metrics.jsonl", "eval.json", "rm_scores.jsonl")
"""What :func:`read_run` reads from a run directory (each may be absent, not all)."""


def read_run(entry: RunEntry) -> RunData:
    """Read what a run directory holds; missing files are simply absent."""
    path = Path(entry.path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    info: dict[str, Any] = {}
    if (path / "run_info.json").is_file():
        info = json.loads((path / "run_info.json").read_text(encoding="utf-8"))
    metrics = read_jsonl(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    ev = (
        json.loads((path / "eval.json").read_text(encoding="utf-8"))
        if (path / "eval.json").is_file()
        else None
    )
    if ev is not None and not isinstance(ev, dict):
        raise ValueError(f"{path / 'eval.json'}: expected a JSON object of metric keys")
    rm_scores = read_jsonl(path / "rm_scores.jsonl") if (path / "rm_scores.jsonl").is_file() else []
    return RunData(entry.name or path.resolve().name, path, info, metrics, ev, rm_scores)


def results_blocks(runs: Sequence[RunData]) -> list[Block]:
    """The opening "Results" section: accuracy ± SE and McNemar tests per evaluated run, reward-model accuracy."""
    blocks: list[Block] = [Heading(2, "Results")]
    evaluated = [r for r in runs if r.eval is not None]
    for r in evaluated:
        suffix = f": {r.name}" if len(evaluated) > 1 else ""
        ev = r.eval or {}
        blocks += [
            TableBlock(t, level=3)
            for t in (
                tb.accuracy_table(ev, f"Accuracy ± SE{suffix}"),
                tb.mcnemar_table(ev, f"Paired tests (McNemar){suffix}"),
            )
            if t is not None
        ]
    rm = tb.rm_accuracy_table({r.name: r.eval for r in evaluated if r.eval is not None})
    blocks += [TableBlock(rm, level=3)] if rm is not None else []
    if len(blocks) == 1:
        blocks.append(
            Text("No results: no eval.json with NLU accuracy or reward-model accuracy in any run.", True)
        )
    return blocks


def overview_blocks(runs: Sequence[RunData]) -> list[Block]:
    """A table of the runs: stage, commit, start time, what each holds."""
    rows = []
    for r in runs:
        holds = [
            what
            for what, present in (
                ("metrics.jsonl", bool(r.metrics)),
                ("eval.json", r.eval is not None),
                ("rm_scores.jsonl", bool(r.rm_scores)),
            )
            if present
        ]
        rows.append(
            [
                r.name,
                str(r.path),
                str(r.info.get("stage", "?")),
                str(r.info.get("git_commit", "?"))[:12],
                str(r.info.get("started_at", "?")),
                ", ".join(holds) or "nothing to report",
            ]
        )
    generated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    table = tb.Table("Runs", ["Run", "Directory", "Stage", "Commit", "Started", "Data"], rows)
    return [Text(f"Generated {generated}."), TableBlock(table, level=2)]


# ---------------------------------------------------------------------------------------------------------
# Step 2: training curves


def series_of(
    runs: Sequence[RunData], key: str | re.Pattern[str], smoothing: int = 1
) -> dict[str, tuple[list[float], list[float]]]:
    """``{label: (steps, values)}`` of a metric key (or every key a pattern matches) across runs.

    A step logged twice (a resumed run) keeps its last value. Labels: the run name for a key; a pattern's
    first group (the reward component) for a pattern, as ``<run>: <component>`` when several runs have curves.
    """
    out: dict[str, tuple[list[float], list[float]]] = {}
    several = sum(bool(r.metrics) for r in runs) > 1  # runs without curves (an evaluation) do not count
    for r in runs:
        by_label: dict[str, dict[float, float]] = defaultdict(dict)
        for row in r.metrics:
            if "step" not in row:
                continue
            for k, v in row.items():
                if not isinstance(v, int | float) or isinstance(v, bool):
                    continue
                if isinstance(key, re.Pattern):
                    match = key.match(k)
                    if match is None:
                        continue
                    label = f"{r.name}: {match.group(1)}" if several else match.group(1)
                elif k == key:
                    label = r.name
                else:
                    continue
                by_label[label][float(row["step"])] = float(v)
        for label in sorted(by_label):
            points = sorted(by_label[label].items())
            out[label] = ([s for s, _ in points], _smooth([v for _, v in points], smoothing))
    return out


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (the first points average what there is)."""
    if window <= 1:
        return values
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def curve_blocks(runs: Sequence[RunData], smoothing: int) -> list[Block]:
    """The training-curve section: score and reward components per run, then one plot per quantity (losses:
    per stage), or a note naming the missing key."""
    from rewardmix.evaluation.plots import line_panels, line_plot

    blocks: list[Block] = [Heading(2, "Training curves")]
    if not any(r.metrics for r in runs):
        return blocks + [Text("No metrics.jsonl in any run: no training curves.", True)]
    averaged = f" (moving average of {smoothing})" if smoothing > 1 else ""

    blocks.append(Heading(3, "Score and reward components"))
    for r in runs:
        score = series_of([r], "objective/score", smoothing)
        panels = {
            "objective/score": {"objective/score": score[r.name]} if score else {},
            "raw": series_of([r], _REWARD_KEY, smoothing),
            "normalized": series_of([r], _NORMALIZED_KEY, smoothing),
        }
        panels = {name: series for name, series in panels.items() if series}
        if panels:
            png = line_panels(panels, title=r.name)
            caption = (
                f"{r.name}: objective/score and reward/<component>/raw, /normalized over steps{averaged}"
            )
            blocks.append(Image(f"reward_{_slug(r.name)}.png", png, caption))
    if not isinstance(blocks[-1], Image):
        blocks.append(
            Text(
                "Not available: no objective/score or reward/<name>/raw, /normalized in any metrics.jsonl.",
                True,
            )
        )

    length_key = (
        "response/length_mean"
        if any("response/length_mean" in row for r in runs for row in r.metrics)
        else "response/length"
    )
    specs: list[tuple[str, str, str, Sequence[RunData], str]] = [
        ("KL", "objective_kl", "objective/kl", runs, "no objective/kl"),
        (
            "Response length",
            "response_length",
            length_key,
            runs,
            "no response/length_mean or response/length",
        ),
    ]
    by_stage: dict[str, list[RunData]] = defaultdict(list)
    for r in runs:
        by_stage[_stage(r)].append(r)
    for stage, group in by_stage.items():  # a stage's losses never share an axis with another stage's
        keys = sorted({k for r in group for row in r.metrics for k in row if k.startswith("loss/")})
        for k in keys:
            name = k.removeprefix("loss/")
            specs.append((f"Loss: {name} ({stage})", f"loss_{_slug(stage)}_{_slug(name)}", k, group, ""))
    for title, slug, key, group, missing in specs:
        blocks.append(Heading(3, title))
        series = series_of(group, key, smoothing)
        if not series:
            blocks.append(Text(f"Not available: {missing} in any metrics.jsonl.", True))
            continue
        png = line_plot(series, title=title, ylabel=key)
        blocks.append(Image(f"{slug}.png", png, f"{title} over optimizer steps{averaged}"))
    return blocks


def overoptimization_series(
    runs: Sequence[RunData], gold: str, smoothing: int = 1
) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{"gold": {run: (sqrt_kl, values)}, "proxies": {"<run>: <component>": (sqrt_kl, values)}}``: every
    training run's raw reward components against the square root of its KL to the initial policy, in step
    order (a resumed step keeps its last value); components that are not ``gold`` are the proxies."""
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {"gold": {}, "proxies": {}}
    for r in runs:
        kl = series_of([r], "objective/kl", smoothing).get(r.name)
        if kl is None:
            continue
        x_of = {step: math.sqrt(max(value, 0.0)) for step, value in zip(*kl, strict=True)}  # sqrt(KL), nats
        for component, (steps, values) in series_of([r], _REWARD_KEY, smoothing).items():
            points = [(x_of[s], v) for s, v in zip(steps, values, strict=True) if s in x_of]
            series = ([x for x, _ in points], [v for _, v in points])
            if component == gold:
                panels["gold"][r.name] = series
            else:
                panels["proxies"][f"{r.name}: {component}"] = series
    return panels


def overoptimization_blocks(runs: Sequence[RunData], gold: str, smoothing: int) -> list[Block]:
    """Gold and proxy rewards against sqrt(KL), every run on one figure (Gao et al. 2022, Fig. 1)."""
    from rewardmix.evaluation.plots import line_panels

    blocks: list[Block] = [Heading(3, f"Over-optimization: {gold} and the proxies against sqrt(KL)")]
    panels = overoptimization_series(runs, gold, smoothing)
    if not panels["gold"]:
        return blocks + [Text(f"Not available: no run logged both objective/kl and reward/{gold}/raw.", True)]
    panels = {name: series for name, series in panels.items() if series}
    png = line_panels(
        {f"reward/{gold}/raw (gold)" if n == "gold" else "proxies (raw)": s for n, s in panels.items()},
        title="Reward against sqrt(KL to the initial policy)",
        xlabel="sqrt(objective/kl)",
    )
    caption = (
        f"Each training run's gold reward ({gold}) and proxy rewards (raw, batch means) against the square root of "
        "its KL to the initial policy (nats per response), step by step: a proxy that keeps rising while the gold "
        "reward falls is over-optimized (Gao et al. 2022)."
    )
    return blocks + [Image("overoptimization.png", png, caption)]


def _stage(r: RunData) -> str:
    """The stage that wrote a run (``run_info.json``); the run's name when unknown, so it stands alone."""
    return str(r.info.get("stage") or r.name)


# ---------------------------------------------------------------------------------------------------------
# Step 3: evaluation


def evaluation_blocks(r: RunData, several: bool, max_points: int) -> list[Block]:
    """NLU, win-rate and reward-model sections of one evaluated run."""
    from rewardmix.evaluation import plots

    ev = r.eval or {}
    prefix = _slug(r.name) + "_" if several else ""
    blocks: list[Block] = [Heading(2, f"Evaluation: {r.name}")]

    # NLU
    blocks.append(Heading(3, "NLU tasks"))
    nlu = [t for t in (tb.nlu_table(ev), tb.unparseable_table(ev), tb.paired_table(ev)) if t is not None]
    blocks += [TableBlock(t) for t in nlu] or [Text("Not available: no NLU tasks were evaluated.", True)]

    # win rates
    blocks.append(Heading(3, "Win rates"))
    matrix = tb.win_rate_table(ev)
    if matrix is None:
        blocks.append(
            Text("Not available: no judged comparisons (needs win_rate.prompts and 2+ models).", True)
        )
    else:
        models = ev["eval/models"]
        rates = [[ev.get(f"eval/win_rate/{a}/{b}") if a != b else None for b in models] for a in models]
        halves = [[_half_width(ev, "eval/win_rate", a, b) for b in models] for a in models]
        blocks += [
            TableBlock(matrix),
            Image(
                f"{prefix}win_rate_heatmap.png",
                plots.heatmap(models, rates, halves),
                "Win rate, row vs column, ± 95% CI",
            ),
        ]
        shares = tb.vs_baseline_table(ev)
        if shares is not None:
            baseline = ev["eval/baseline"]
            bars = {
                m: tuple(ev[f"eval/vs_baseline/{m}/{k}"] for k in ("win", "tie", "lose"))
                for m in models
                if f"eval/vs_baseline/{m}/win" in ev
            }
            png = plots.win_tie_lose_bars(bars, baseline=baseline)  # type: ignore[arg-type]
            blocks += [
                TableBlock(shares),
                Image(f"{prefix}vs_baseline.png", png, f"Win / tie / lose vs {baseline}"),
            ]
        else:
            blocks.append(Text("Win / tie / lose shares: not available (no win_rate.baseline).", True))
        breakdowns = [
            t
            for t in (
                tb.breakdown_table(ev, "dataset"),
                tb.breakdown_table(ev, "category"),
                *tb.dataset_category_tables(ev),
            )
            if t is not None
        ]
        blocks += [TableBlock(t) for t in breakdowns] or [
            Text("Breakdowns: not available (the prompts have no dataset / category fields).", True)
        ]

    # reward models
    blocks.append(Heading(3, "Reward models"))
    rm_tables = [
        t
        for t in (
            tb.rm_agreement_table(ev),
            *tb.rm_pair_tables(ev),
            tb.rm_length_table(ev),
            tb.rm_distribution_table(ev),
        )
        if t is not None
    ]
    hists = histogram_images(ev, prefix)
    scatters = scatter_images(r.rm_scores, prefix, max_points)
    if not (rm_tables or hists or scatters):
        blocks.append(Text("Not available: no reward models were evaluated.", True))
    blocks += [TableBlock(t) for t in rm_tables]
    blocks += [Heading(4, "Reward histograms"), *hists] if hists else []
    blocks += [Heading(4, "Reward vs response length"), *scatters] if scatters else []
    if rm_tables and not scatters:
        blocks.append(Text("Reward vs length scatter: not available (no rm_scores.jsonl).", True))
    other = tb.other_metrics_table(ev)
    blocks += [Heading(3, "Other metrics"), TableBlock(other)] if other is not None else []
    return blocks


def _half_width(ev: Mapping[str, Any], prefix: str, a: str, b: str) -> float | None:
    low, high = ev.get(f"{prefix}/{a}/{b}/ci_low"), ev.get(f"{prefix}/{a}/{b}/ci_high")
    return (high - low) / 2.0 if low is not None and high is not None else None


def histogram_images(ev: Mapping[str, Any], prefix: str) -> list[Image]:
    """One histogram figure per reward model (a line per model), plus one for evaluate-rm's distributions."""
    from rewardmix.evaluation.plots import histograms

    groups: dict[str, dict[str, tuple[list[float], list[int]]]] = defaultdict(dict)
    for label, dist in tb.distributions(ev):
        group, _, part = label.partition(": ") if ": " in label else ("evaluate-rm", "", label)
        groups[group][part] = (dist["histogram"]["edges"], dist["histogram"]["counts"])
    images = []
    for group, hists in groups.items():
        per_model = {k: v for k, v in hists.items() if k != "all"} or hists  # the pooled one only if alone
        png = histograms(per_model, title=f"Reward scores: {group}")
        images.append(
            Image(f"{prefix}reward_hist_{_slug(group)}.png", png, f"Distribution of {group}'s scores")
        )
    return images


def scatter_images(rows: Sequence[Mapping[str, Any]], prefix: str, max_points: int) -> list[Image]:
    """One reward vs length scatter per reward model, a colour per evaluated model."""
    from rewardmix.evaluation.plots import scatter

    points: dict[str, dict[str, tuple[list[float], list[float]]]] = defaultdict(dict)
    for row in rows:
        xs, ys = points[row["reward_model"]].setdefault(row["model"], ([], []))
        if len(xs) < max_points:
            xs.append(float(row["length"]))
            ys.append(float(row["score"]))
    return [
        Image(f"{prefix}reward_vs_length_{_slug(rm)}.png", scatter(groups, title=f"{rm}: reward vs length"),
              f"{rm}: score of each answer against its length in characters")
        for rm, groups in points.items()
    ]  # fmt: skip


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


# ---------------------------------------------------------------------------------------------------------
# Step 4: rendering

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
p.note { color: #8a6d3b; background: #fcf8e3; padding: 0.4em 0.8em; border-left: 4px solid #e0c36c; }
p.caption, figcaption { color: #555; font-size: 0.85em; }
figure { margin: 0.5em 0 1.5em 0; }
img { max-width: 100%; }
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    """A self-contained HTML page: images embedded as base64 ``data:image/png`` URIs."""
    esc = html.escape
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(
                f'<p class="note">{esc(block.text)}</p>' if block.note else f"<p>{esc(block.text)}</p>"
            )
        elif isinstance(block, TableBlock):
            parts.append(tb.to_html(block.table, level=block.level))
        else:
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.caption)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def render_markdown(blocks: Sequence[Block]) -> str:
    """Markdown with the images referenced in ``figures/``; every text escaped (:mod:`rewardmix.markdown`)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {md_text(block.text)}\n")
        elif isinstance(block, Text):
            parts.append(f"> {md_text(block.text)}\n" if block.note else f"{md_text(block.text)}\n")
        elif isinstance(block, TableBlock):
            parts.append(tb.to_markdown(block.table, level=block.level))
        else:
            alt = md_text(block.caption).replace("[", "\\[").replace("]", "\\]")
            parts.append(f"![{alt}](figures/{block.name})\n")
    return "\n".join(parts)
