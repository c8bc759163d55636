"""Tables of an evaluation, built from its ``eval.json``, rendered as Markdown or HTML.

``rewardmix evaluate`` writes ``tables.md`` with :func:`eval_tables` + :func:`to_markdown`, and ``rewardmix
report`` puts the same tables into its HTML and Markdown pages, so both show the same numbers. A table whose
data is absent from ``eval.json`` is simply not built; :func:`eval_tables` says which groups are missing.

Keys read (written by :mod:`rewardmix.stages.evaluate`; see its module docstring for the full list):
``eval/models``, ``eval/tasks``, ``eval/task_info``, ``eval/<model>/<task>/<metric>``, ``eval/<model>/avg``,
``eval/paired/<task>/<a>/<b>/<field>``,
``eval/win_rate/<a>/<b>[/<field>]``, ``eval/win_rate_by_dataset/...``, ``eval/win_rate_by_category/...``,
``eval/win_rate_by_dataset_category/...``, ``eval/vs_baseline/<model>/{win,tie,lose,n}``, ``eval/rm/<rm>/...``.

Reference: RLLR Table 4 and Fig. 4; CRS Tables 10-16, 18-23.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rewardmix.algos.stats import standard_error
from rewardmix.evaluation.winrate import model_pairs
from rewardmix.markdown import md_cell, md_text

__all__ = [
    "Table",
    "accuracy_table",
    "eval_tables",
    "fmt_p",
    "fmt_pct",
    "mcnemar_table",
    "nlu_table",
    "other_metrics_table",
    "paired_table",
    "rm_accuracy_table",
    "to_html",
    "to_markdown",
    "win_rate_table",
]


class Table(NamedTuple):
    """A titled table of strings."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    """A sentence under the table: what the numbers are and which paper table they mirror."""


def fmt_pct(value: Any, digits: int = 1) -> str:
    """``0.6612 -> "66.1%"``; missing or undefined -> ``"n/a"``."""
    if not _is_number(value):
        return "n/a"
    return f"{100.0 * float(value):.{digits}f}%"


def fmt_p(value: Any) -> str:
    """A p-value: ``0.0312 -> "0.031"``, ``2.1e-05 -> "2.1e-05"``; missing -> ``"n/a"``."""
    if not _is_number(value):
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 or value == 0 else f"{value:.1e}"


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _is_number(value) else "n/a"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------------------
# NLU


def nlu_table(ev: Mapping[str, Any]) -> Table | None:
    """RLLR Table 4: rows = models, columns = tasks + AVG., in percent with two decimals."""
    models, tasks = ev.get("eval/models") or [], ev.get("eval/tasks") or []
    if not models or not tasks:
        return None
    info = ev.get("eval/task_info") or {}
    headers = ["Model"] + [info.get(t, {}).get("display_name", t) for t in tasks] + ["AVG."]
    rows = []
    for m in models:
        cells = [_metric_cell(ev, m, t, info) for t in tasks]
        avg = ev.get(f"eval/{m}/avg")
        rows.append([m, *cells, f"{100.0 * avg:.2f}" if _is_number(avg) else "n/a"])
    return Table(
        "NLU results (RLLR Table 4)",
        headers,
        rows,
        "Accuracy x 100 per task (Pearson r x 100 for STS-B); AVG. is the mean of the task columns.",
    )


def _metric_cell(ev: Mapping[str, Any], model: str, task: str, info: Mapping[str, Any]) -> str:
    metric = info.get(task, {}).get("metric", "accuracy")
    value = ev.get(f"eval/{model}/{task}/{metric}")
    return f"{100.0 * value:.2f}" if _is_number(value) else "n/a"


def unparseable_table(ev: Mapping[str, Any]) -> Table | None:
    """Share of answers without a readable label, per model and task."""
    models, tasks = ev.get("eval/models") or [], ev.get("eval/tasks") or []
    if not models or not tasks:
        return None
    info = ev.get("eval/task_info") or {}
    headers = ["Model"] + [info.get(t, {}).get("display_name", t) for t in tasks]
    rows = [[m] + [fmt_pct(ev.get(f"eval/{m}/{t}/unparseable_rate")) for t in tasks] for m in models]
    return Table(
        "Unparseable answers",
        headers,
        rows,
        "Answers with no label after 'The answer is' (counted wrong; the scale midpoint under Pearson).",
    )


def _pm_se(p: float, n: float) -> str:
    """``"75.00 ± 21.65"``: a proportion and its SE (CRS Eq. 7.1), both x 100."""
    return f"{100.0 * p:.2f} ± {100.0 * standard_error(p, int(n)):.2f}"


def accuracy_table(ev: Mapping[str, Any], title: str = "Accuracy ± SE") -> Table | None:
    """Rows = models, columns = tasks: accuracy ± its standard error; Pearson r for STS-B."""
    models, tasks = ev.get("eval/models") or [], ev.get("eval/tasks") or []
    if not models or not tasks:
        return None
    info = ev.get("eval/task_info") or {}
    headers = ["Model"]
    for t in tasks:
        n = ev.get(f"eval/{models[0]}/{t}/n")
        headers.append(info.get(t, {}).get("display_name", t) + (f" (n={int(n)})" if _is_number(n) else ""))
    rows = []
    for m in models:
        row = [m]
        for t in tasks:
            acc, n, r = (ev.get(f"eval/{m}/{t}/{k}") for k in ("accuracy", "n", "pearson"))
            if _is_number(acc) and _is_number(n) and n >= 1:
                row.append(_pm_se(acc, n))
            else:
                row.append(f"r = {100.0 * r:.2f}" if _is_number(r) else "n/a")
        rows.append(row)
    return Table(
        title,
        headers,
        rows,
        "Accuracy x 100 ± its standard error sqrt(p (1 - p) / n) (CRS Eq. 7.1) over the n items of each task "
        "(unparseable = wrong); Pearson r x 100 for STS-B (no SE).",
    )


def mcnemar_table(ev: Mapping[str, Any], title: str = "Paired tests (McNemar)") -> Table | None:
    """Rows = model pairs, columns = accuracy tasks: the accuracy difference and its exact McNemar p-value."""
    models, info = ev.get("eval/models") or [], ev.get("eval/task_info") or {}
    pairs = model_pairs(models)
    tasks = [
        t for t in ev.get("eval/tasks") or [] if any(f"eval/paired/{t}/{a}/{b}/n" in ev for a, b in pairs)
    ]
    if not tasks:
        return None
    rows = []
    for a, b in pairs:
        cells = []
        for t in tasks:
            key = f"eval/paired/{t}/{a}/{b}"
            cells.append(
                f"{100.0 * ev[key + '/diff']:+.2f}, p = {fmt_p(ev[key + '/mcnemar_p'])}"
                if f"{key}/n" in ev
                else "-"
            )
        rows.append([f"{a} vs {b}", *cells])
    return Table(
        title,
        ["Pair (A vs B)", *[info.get(t, {}).get("display_name", t) for t in tasks]],
        rows,
        "Accuracy of A minus accuracy of B in points, on the same items, with the exact two-sided McNemar "
        "p-value; every pair of models, A listed before B.",
    )


def rm_accuracy_table(evs: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Pairwise accuracy ± SE of ``rewardmix evaluate-rm`` runs (``rm/accuracy``), overall and per task.

    Args:
        evs: ``run name -> eval.json``; runs without ``rm/accuracy`` are skipped.
    """
    rows = []
    for run, ev in evs.items():
        for key in (
            "rm/accuracy",
            *sorted(k for k in ev if k.startswith("rm/accuracy/") and "/kind/" not in k),
        ):
            part = key.removeprefix("rm/accuracy").strip("/") or "all"
            acc, n = ev.get(key), ev.get(key.replace("rm/accuracy", "rm/pairs", 1))
            if _is_number(acc) and _is_number(n) and n >= 1:
                rows.append([run, part, str(int(n)), _pm_se(acc, n)])
    if not rows:
        return None
    return Table(
        "Reward-model accuracy",
        ["Run", "Pairs", "n", "Accuracy ± SE"],
        rows,
        "Share of held-out pairs whose chosen answer the reward model scores higher (a tie counts 1/2), x 100, "
        "± sqrt(p (1 - p) / n) (RLLR Tables 5, 9).",
    )


def paired_table(ev: Mapping[str, Any]) -> Table | None:
    """Every pair of models on the same items of each accuracy task: difference ± paired SE, CI, p-values."""
    models, tasks = ev.get("eval/models") or [], ev.get("eval/tasks") or []
    info = ev.get("eval/task_info") or {}
    rows = []
    for t in tasks:
        for a, b in model_pairs(models):
            key = f"eval/paired/{t}/{a}/{b}"
            if f"{key}/n" not in ev:
                continue
            rows.append(
                [
                    info.get(t, {}).get("display_name", t), a, b, str(int(ev[f"{key}/n"])),
                    f"{100.0 * ev[f'{key}/acc_a']:.2f}", f"{100.0 * ev[f'{key}/acc_b']:.2f}",
                    f"{100.0 * ev[f'{key}/diff']:+.2f} ± {100.0 * ev[f'{key}/diff_se']:.2f}",
                    f"[{100.0 * ev[f'{key}/ci_low']:+.2f}, {100.0 * ev[f'{key}/ci_high']:+.2f}]",
                    fmt_p(ev[f"{key}/mcnemar_p"]), fmt_p(ev.get(f"{key}/bootstrap_p")),
                ]
            )  # fmt: skip
    if not rows:
        return None
    return Table(
        "Paired accuracy differences (same items)",
        ["Task", "A", "B", "n", "Acc A", "Acc B", "Diff ± SE", "95% CI", "McNemar p", "Bootstrap p"],
        rows,
        "Accuracy x 100 of A and B on the same items (unparseable = wrong); Diff = A - B in points ± its paired "
        "SE, 95% CI = Diff ± 1.96 SE; exact two-sided McNemar p on the items only one model got right; paired "
        "bootstrap p (0.000: no resample crossed 0).",
    )


# ---------------------------------------------------------------------------------------------------------
# Win rates


def win_rate_cell(ev: Mapping[str, Any], prefix: str, a: str, b: str) -> str:
    """``"66.0% ± 9.3 (n=100)"``: the rate, the half-width of its 95% interval, the comparisons."""
    rate = ev.get(f"{prefix}/{a}/{b}")
    if not _is_number(rate):
        return ""
    half = (ev[f"{prefix}/{a}/{b}/ci_high"] - ev[f"{prefix}/{a}/{b}/ci_low"]) / 2.0
    return f"{100.0 * rate:.1f}% ± {100.0 * half:.1f} (n={int(ev[f'{prefix}/{a}/{b}/n'])})"


def win_rate_table(
    ev: Mapping[str, Any], prefix: str = "eval/win_rate", title: str = "", *, by: str = "the judge prefers"
) -> Table | None:
    """CRS Tables 10, 16: the win rate of the row model against the column model, ± the 95% CI half-width."""
    models = ev.get("eval/models") or []
    if not any(f"{prefix}/{a}/{b}" in ev for a in models for b in models):
        return None
    rows = [[a] + [("-" if a == b else win_rate_cell(ev, prefix, a, b)) for b in models] for a in models]
    return Table(
        title or "Win rates (row vs column)",
        ["Model (vs)", *models],
        rows,
        f"Share of prompts where {by} the row model's answer (a tie counts 1/2), ± 1.96 SE "
        "(CRS Eq. 7.1), n judged prompts.",
    )


def vs_baseline_table(ev: Mapping[str, Any]) -> Table | None:
    """RLLR Fig. 4 as numbers: win / tie / lose shares of each model against the baseline."""
    baseline, models = ev.get("eval/baseline"), ev.get("eval/models") or []
    rows = [
        [
            m,
            fmt_pct(ev[f"eval/vs_baseline/{m}/win"]),
            fmt_pct(ev[f"eval/vs_baseline/{m}/tie"]),
            fmt_pct(ev[f"eval/vs_baseline/{m}/lose"]),
            str(int(ev[f"eval/vs_baseline/{m}/n"])),
        ]
        for m in models
        if f"eval/vs_baseline/{m}/win" in ev
    ]
    if not baseline or not rows:
        return None
    return Table(
        f"Win / tie / lose against {baseline} (RLLR Fig. 4)",
        ["Model", "Win", "Tie", "Lose", "n"],
        rows,
        f"Shares of the judged prompts where each model's answer beats, ties or loses to {baseline}'s.",
    )


def _pairs_shown(ev: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Model pairs for breakdown tables: each model against the baseline if there is one, else every pair."""
    models, baseline = ev.get("eval/models") or [], ev.get("eval/baseline")
    if baseline in models:
        return [(m, baseline) for m in models if m != baseline]
    return model_pairs(models)


def breakdown_table(ev: Mapping[str, Any], by: str) -> Table | None:
    """CRS Tables 15, 20, 21: rows = groups (datasets or categories), columns = model pairs."""
    groups = ev.get(f"eval/{'datasets' if by == 'dataset' else 'categories'}") or []
    prefix = f"eval/win_rate_by_{by}"
    pairs = _pairs_shown(ev)
    if not groups or not any(f"{prefix}/{g}/{a}/{b}" in ev for g in groups for a, b in pairs):
        return None
    rows = [[g] + [win_rate_cell(ev, f"{prefix}/{g}", a, b) or "-" for a, b in pairs] for g in groups]
    return Table(
        f"Win rates by {by}",
        [by.capitalize(), *[f"{a} vs {b}" for a, b in pairs]],
        rows,
        f"Win rate of the first model of each pair on the prompts of each {by}, ± 95% CI half-width.",
    )


def dataset_category_tables(ev: Mapping[str, Any]) -> list[Table]:
    """CRS Tables 22, 30, 31: per model pair, wins / judged prompts per category (rows) and dataset (columns)."""
    datasets, categories = ev.get("eval/datasets") or [], ev.get("eval/categories") or []
    prefix = "eval/win_rate_by_dataset_category"
    tables = []
    for a, b in _pairs_shown(ev):
        if not any(f"{prefix}/{d}/{c}/{a}/{b}" in ev for d in datasets for c in categories):
            continue
        rows = []
        for c in categories:
            cells = []
            for d in datasets:
                key = f"{prefix}/{d}/{c}/{a}/{b}"
                cells.append(f"{int(ev[key + '/wins'])}/{int(ev[key + '/n'])}" if key in ev else "-")
            rows.append([c, *cells])
        tables.append(
            Table(
                f"Wins of {a} against {b} by category and dataset",
                ["Category", *datasets],
                rows,
                f"Prompts {a} won / prompts judged (ties not counted as wins), as CRS Table 22.",
            )
        )
    return tables


# ---------------------------------------------------------------------------------------------------------
# Reward models


def rm_agreement_table(ev: Mapping[str, Any]) -> Table | None:
    """CRS Tables 12-14: agreement of each reward model with the judge (overall, per dataset) and humans."""
    rms, datasets = ev.get("eval/reward_models") or [], ev.get("eval/datasets") or []
    if not rms:
        return None
    has_human = any(f"eval/rm/{r}/human_agreement" in ev for r in rms)
    headers = ["Reward model", "Judge (all)", *[f"Judge: {d}" for d in datasets]]
    headers += ["Humans"] if has_human else []
    rows = []
    for r in rms:
        row = [r, _agreement_cell(ev, f"eval/rm/{r}/judge_agreement")]
        row += [_agreement_cell(ev, f"eval/rm/{r}/judge_agreement_by_dataset/{d}") for d in datasets]
        row += [_agreement_cell(ev, f"eval/rm/{r}/human_agreement")] if has_human else []
        rows.append(row)
    if all(cell == "n/a" for row in rows for cell in row[1:]):
        return None
    return Table(
        "Reward-model agreement",
        headers,
        rows,
        "Share of the judge's (or humans') non-tie preferences where the reward model scores the preferred "
        "answer higher (equal scores count 1/2); n comparisons in brackets.",
    )


def gold_table(ev: Mapping[str, Any]) -> Table | None:
    """The gold-reward-model protocol: each model's mean gold score ± SE, and each proxy's agreement with it."""
    gold, models = ev.get("eval/gold_reward_model"), ev.get("eval/models") or []
    if gold is None:
        return None
    rows = [
        [
            m,
            f"{_fmt(ev.get(f'eval/gold/{m}/mean'))} ± {_fmt(ev.get(f'eval/gold/{m}/se'))}",
            str(ev.get(f"eval/gold/{m}/n", "")),
        ]
        for m in models
    ]
    proxies = [r for r in ev.get("eval/reward_models") or [] if f"eval/rm/{r}/gold_agreement" in ev]
    rows += [[f"{r} (agreement)", _agreement_cell(ev, f"eval/rm/{r}/gold_agreement"), ""] for r in proxies]
    return Table(
        f"Gold reward model ({gold})",
        ["Model", "Gold score ± SE", "n"],
        rows,
        "Mean gold score of each model's answers to the win-rate prompts ± its standard error over prompts "
        "(Gao et al. 2022: a reward model trained on data no proxy saw stands in for human judgement); "
        "'(agreement)' rows: share of the non-tie gold comparisons a proxy reward model orders the same way.",
    )


def _agreement_cell(ev: Mapping[str, Any], key: str) -> str:
    value = ev.get(key)
    return f"{fmt_pct(value)} (n={int(ev.get(key + '/n', 0))})" if _is_number(value) else "n/a"


def rm_pair_tables(ev: Mapping[str, Any]) -> list[Table]:
    """CRS Tables 13, 18, 19: agreement with the judge on one model pair's comparisons, per dataset."""
    rms, datasets = ev.get("eval/reward_models") or [], ev.get("eval/datasets") or []
    tables = []
    for a, b in model_pairs(ev.get("eval/models") or []):
        prefix = f"judge_agreement_by_pair/{a}/{b}"
        if not any(f"eval/rm/{r}/{prefix}" in ev for r in rms):
            continue
        headers = ["Reward model", "All", *datasets]
        rows = [
            [r, _agreement_cell(ev, f"eval/rm/{r}/{prefix}")]
            + [
                _agreement_cell(ev, f"eval/rm/{r}/judge_agreement_by_pair_dataset/{a}/{b}/{d}")
                for d in datasets
            ]
            for r in rms
        ]
        tables.append(
            Table(
                f"Reward-model agreement with the judge on {a} vs {b}",
                headers,
                rows,
                "As CRS Tables 13, 18, 19.",
            )
        )
    return tables


def rm_length_table(ev: Mapping[str, Any]) -> Table | None:
    """CRS Fig. 27 as numbers: correlation of each reward model's scores with response length."""
    rms = [r for r in ev.get("eval/reward_models") or [] if f"eval/rm/{r}/length_n" in ev]
    if not rms:
        return None
    rows = [
        [
            r,
            _fmt(ev.get(f"eval/rm/{r}/length_pearson")),
            _fmt(ev.get(f"eval/rm/{r}/length_spearman")),
            str(int(ev[f"eval/rm/{r}/length_n"])),
        ]
        for r in rms
    ]
    return Table(
        "Reward vs response length",
        ["Reward model", "Pearson r", "Spearman rho", "n"],
        rows,
        "Correlation between each response's score and its length in characters (CRS Fig. 27).",
    )


def rm_distribution_table(ev: Mapping[str, Any]) -> Table | None:
    """CRS Fig. 24 as numbers: count, mean, std and quantiles of every score distribution in ``eval.json``."""
    rows = []
    quantile_names: list[str] = []
    for name, dist in distributions(ev):
        quantile_names = quantile_names or list(dist.get("quantiles", {}))
        rows.append(
            [name, str(dist["count"]), _fmt(dist["mean"]), _fmt(dist["std"]), _fmt(dist["min"])]
            + [_fmt(dist.get("quantiles", {}).get(q)) for q in quantile_names]
            + [_fmt(dist["max"])]
        )
    if not rows:
        return None
    return Table(
        "Reward distributions",
        ["Scores", "count", "mean", "std", "min", *quantile_names, "max"],
        rows,
        "Raw reward-model scores (CRS Fig. 24).",
    )


def distributions(ev: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every score distribution in ``eval.json``: ``eval/rm/<rm>/score_distribution[/<model>]`` and, from
    ``rewardmix evaluate-rm``, ``rm/score_distribution/<source>``; as ``(label, distribution)``."""
    out = []
    for key, value in ev.items():
        if not isinstance(value, Mapping) or "histogram" not in value:
            continue
        if key.startswith("eval/rm/") and "/score_distribution" in key:
            rm, _, rest = key[len("eval/rm/") :].partition("/score_distribution")
            out.append((f"{rm}: {rest.strip('/') or 'all'}", value))
        elif key.startswith("rm/score_distribution/"):
            out.append((key[len("rm/score_distribution/") :], value))
    return out


def other_metrics_table(ev: Mapping[str, Any]) -> Table | None:
    """Scalar metrics outside ``eval/`` (e.g. ``rm/accuracy`` of ``rewardmix evaluate-rm``), one per row."""
    rows = [
        [key, _fmt(value, 4)]
        for key, value in sorted(ev.items())
        if not key.startswith("eval/") and _is_number(value)
    ]
    if not rows:
        return None
    return Table(
        "Other metrics", ["Key", "Value"], rows, "Scalar keys of eval.json not shown in the tables above."
    )


# ---------------------------------------------------------------------------------------------------------
# All tables and rendering


def eval_tables(ev: Mapping[str, Any]) -> list[Table]:
    """Every table ``eval.json`` has data for, in reading order."""
    tables: list[Table | None] = [
        nlu_table(ev),
        unparseable_table(ev),
        paired_table(ev),
        win_rate_table(ev),
        gold_table(ev),
        win_rate_table(
            ev,
            "eval/gold_win_rate",
            "Gold win rates (row vs column)",
            by="the gold reward model scores higher",
        ),
        vs_baseline_table(ev),
        breakdown_table(ev, "dataset"),
        breakdown_table(ev, "category"),
        *dataset_category_tables(ev),
        rm_agreement_table(ev),
        *rm_pair_tables(ev),
        rm_length_table(ev),
        rm_distribution_table(ev),
        other_metrics_table(ev),
    ]
    return [t for t in tables if t is not None]


def to_markdown(table: Table, level: int = 2) -> str:
    """The table as GitHub Markdown, under a heading of ``level`` (every text escaped: :mod:`rewardmix.markdown`)."""
    lines = [f"{'#' * level} {md_text(table.title)}", ""]
    lines.append("| " + " | ".join(md_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", md_text(table.caption)]
    return "\n".join(lines) + "\n"


def to_html(table: Table, level: int = 3) -> str:
    """The table as an HTML ``<table>`` under an ``<h{level}>`` heading (every text escaped)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    caption = f'<p class="caption">{esc(table.caption)}</p>' if table.caption else ""
    return (
        f"<h{level}>{esc(table.title)}</h{level}>\n<table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>\n{caption}\n"
    )


def tables_markdown(tables: Sequence[Table], title: str = "Evaluation") -> str:
    """A Markdown document with every table."""
    parts = [f"# {md_text(title)}\n"] + [to_markdown(t) for t in tables]
    if not tables:
        parts.append("No results to tabulate.\n")
    return "\n".join(parts)
