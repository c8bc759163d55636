"""PNG plots for reports: training curves (one axis or side-by-side panels), win-rate heatmap, win/tie/lose
bars, reward histograms, scatter.

Every function takes plain numbers and returns the PNG file's bytes. Figures are drawn with matplotlib's
object API on the Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): no ``pyplot``, no global
figure state, never a display, safe in threads and on headless machines.

Reference: CRS Figs. 20-23 (reward and KL over steps), 21 and 26 (response length), 24 (reward
distributions), 27 (reward vs length); RLLR Fig. 4 (win / tie / lose); CRS Tables 10, 16, 23 (win rates
with their uncertainty, drawn as a heatmap).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["heatmap", "histograms", "line_panels", "line_plot", "scatter", "win_tie_lose_bars"]

_DPI = 100
_SIZE = (7.0, 4.2)  # inches -> 700 x 420 pixels


def _new_figure(size: tuple[float, float] = _SIZE) -> Figure:
    fig = Figure(figsize=size, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    ylabel: str,
    xlabel: str = "step",
) -> bytes:
    """One line per series: ``{label: (steps, values)}``; ``None``/NaN values leave gaps.

    Reference:
        CRS Figs. 20-23, 26 (mean reward, objective KL and response length over PPO steps).
    """
    if not series:
        raise ValueError("line_plot needs at least one series")
    fig = _new_figure()
    _draw_lines(fig.add_subplot(), series, title=title, ylabel=ylabel, xlabel=xlabel)
    return _png(fig)


def line_panels(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    *,
    title: str,
    xlabel: str = "step",
) -> bytes:
    """Side-by-side panels, each with its own y axis: ``{panel title: {label: (steps, values)}}``.

    For quantities on different scales in one figure (a combined score, raw and normalized components).

    Reference:
        CRS Figs. 20 and 23 (reward per component over PPO steps).
    """
    if not panels or not all(panels.values()):
        raise ValueError("line_panels needs at least one panel, each with at least one series")
    fig = _new_figure((max(_SIZE[0], 4.2 * len(panels)), _SIZE[1]))
    for i, (name, series) in enumerate(panels.items(), start=1):
        _draw_lines(fig.add_subplot(1, len(panels), i), series, title=name, ylabel=name, xlabel=xlabel)
    fig.suptitle(title)
    return _png(fig)


def _draw_lines(
    ax: Axes,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    ylabel: str,
    xlabel: str,
) -> None:
    for label, (steps, values) in series.items():
        ys = [float("nan") if v is None else float(v) for v in values]
        ax.plot(
            list(steps), ys, label=label, linewidth=1.5, marker="o" if len(ys) < 20 else None, markersize=3
        )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def heatmap(
    models: Sequence[str],
    rates: Sequence[Sequence[float | None]],
    half_widths: Sequence[Sequence[float | None]],
    *,
    title: str = "Win rate (row vs column)",
) -> bytes:
    """Win-rate matrix as a heatmap, each cell annotated ``66.0%`` over ``±9.3`` (95% CI half-width, points).

    Args:
        models: Row and column labels, shape (M,).
        rates: (M, M) win rates of the row model against the column model; ``None`` on the diagonal and
            where a pair has no judgments (drawn blank).
        half_widths: (M, M) 95% CI half-widths (fractions), same layout.
        title: The plot title.

    Reference:
        CRS Tables 10 and 16 (win rates), Table 23 and Eq. 7.1 (their standard errors).
    """
    m = len(models)
    grid = [[float("nan") if v is None else float(v) for v in row] for row in rates]
    side = max(4.0, 1.1 * m + 2.0)
    fig = _new_figure((side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="win rate")
    ax.set_xticks(range(m), labels=list(models), rotation=30, ha="right")
    ax.set_yticks(range(m), labels=list(models))
    ax.set_xlabel("column model (vs)")
    ax.set_ylabel("row model")
    for i in range(m):
        for j in range(m):
            value = grid[i][j]
            if math.isnan(value):
                ax.text(j, i, "-", ha="center", va="center", color="grey")
                continue
            half = half_widths[i][j]
            text = f"{100 * value:.1f}%" + (f"\n±{100 * half:.1f}" if half is not None else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="black")
    ax.set_title(title)
    return _png(fig)


def win_tie_lose_bars(shares: Mapping[str, tuple[float, float, float]], *, baseline: str) -> bytes:
    """Horizontal stacked bars of win / tie / lose shares against ``baseline``, one bar per model.

    Reference:
        RLLR Fig. 4.
    """
    if not shares:
        raise ValueError("win_tie_lose_bars needs at least one model")
    names = list(shares)
    fig = _new_figure((7.0, max(2.5, 0.6 * len(names) + 1.5)))
    ax = fig.add_subplot()
    left = [0.0] * len(names)
    for k, (label, color) in enumerate((("win", "#2e7d32"), ("tie", "#9e9e9e"), ("lose", "#c62828"))):
        widths = [shares[n][k] for n in names]
        ax.barh(names, widths, left=left, color=color, label=label)
        for y, (x0, w) in enumerate(zip(left, widths, strict=True)):
            if w >= 0.06:
                ax.text(x0 + w / 2, y, f"{100 * w:.0f}%", ha="center", va="center", color="white", fontsize=9)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(f"share of prompts against {baseline}")
    ax.invert_yaxis()
    # Below the axis, so it never hides a bar.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize="small", ncol=3, frameon=False)
    ax.set_title(f"Win / tie / lose against {baseline}")
    return _png(fig)


def histograms(
    hists: Mapping[str, tuple[Sequence[float], Sequence[int]]], *, title: str, xlabel: str = "reward score"
) -> bytes:
    """Overlaid step histograms: ``{label: (edges (K+1,), counts (K,))}``.

    Reference:
        CRS Fig. 24 (distributions of the reward scores).
    """
    if not hists:
        raise ValueError("histograms needs at least one histogram")
    fig = _new_figure()
    ax = fig.add_subplot()
    for label, (edges, counts) in hists.items():
        if len(edges) != len(counts) + 1:
            raise ValueError(f"histogram {label!r}: {len(edges)} edges for {len(counts)} counts")
        ax.stairs(list(counts), list(edges), label=label, fill=len(hists) == 1, alpha=0.8, linewidth=1.5)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("responses")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def scatter(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str = "response length (characters)",
    ylabel: str = "reward score",
) -> bytes:
    """One marker colour per group: ``{label: (x, y)}``.

    Reference:
        CRS Fig. 27 (reward score vs response length).
    """
    if not points:
        raise ValueError("scatter needs at least one group")
    fig = _new_figure()
    ax = fig.add_subplot()
    for label, (xs, ys) in points.items():
        ax.scatter(list(xs), list(ys), label=label, s=14, alpha=0.7)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)
