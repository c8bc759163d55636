"""Every plot renders a real PNG: it opens, has the expected size, and is not blank."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageStat

from rewardmix.evaluation import plots


def open_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def assert_not_blank(image: Image.Image) -> None:
    # A blank canvas has zero variance in every channel; a drawn figure has lines, text, colours.
    assert max(ImageStat.Stat(image).var) > 0
    assert len(image.getcolors(maxcolors=1 << 20)) > 20


def test_line_plot():
    png = plots.line_plot({"run a": ([0, 1, 2, 3], [0.1, 0.5, None, 0.9]), "run b": ([0, 2], [1.0, 0.2])},
                          title="KL", ylabel="objective/kl")  # fmt: skip
    image = open_png(png)
    assert image.size == (700, 420)
    assert_not_blank(image)


def test_line_panels_render_side_by_side():
    score = {"objective/score": ([1, 2, 3], [0.1, 0.4, 0.6])}
    raw = {"rm": ([1, 2, 3], [-3.0, -1.0, 2.0]), "length": ([1, 2, 3], [120.0, 80.0, 60.0])}
    one = open_png(plots.line_panels({"score": score}, title="run"))
    three = open_png(plots.line_panels({"score": score, "raw": raw, "normalized": raw}, title="run"))
    assert one.size == (700, 420) and three.size == (1260, 420)  # 4.2 inches per panel, at least 7
    assert_not_blank(three)
    with pytest.raises(ValueError, match="at least one panel"):
        plots.line_panels({"score": {}}, title="x")


def test_heatmap_colours_follow_the_rates():
    models = ["sft", "rlhf", "rllr"]
    rates = [[None, 0.1, 0.9], [0.9, None, 0.5], [0.1, 0.5, None]]
    halves = [[None, 0.05, 0.05], [0.05, None, 0.1], [0.05, 0.1, None]]
    image = open_png(plots.heatmap(models, rates, halves))
    assert image.size[0] >= 500 and image.size[1] >= 400
    assert_not_blank(image)
    # RdYlGn: high rates are drawn green, low ones red. The colour bar holds both either way, so compare
    # the same matrix drawn with high and with low off-diagonal rates: the cells must change colour.
    high = [[None if v is None else 0.95 for v in row] for row in rates]
    low = [[None if v is None else 0.05 for v in row] for row in rates]

    def count(img, test):
        return sum(n for n, c in img.getcolors(maxcolors=1 << 20) if test(*c))

    def green(r, g, b):
        return g > 100 and r < 80

    def red(r, g, b):
        return r > 150 and g < 80

    img_high, img_low = (
        open_png(plots.heatmap(models, high, halves)),
        open_png(plots.heatmap(models, low, halves)),
    )
    assert count(img_high, green) > count(img_low, green) + 5000
    assert count(img_low, red) > count(img_high, red) + 5000


def test_win_tie_lose_bars_histograms_scatter():
    bars = open_png(
        plots.win_tie_lose_bars({"rlhf": (0.39, 0.36, 0.25), "rllr": (0.3, 0.4, 0.3)}, baseline="sft")
    )
    hist = open_png(
        plots.histograms({"a": ([0, 1, 2, 3], [1, 5, 2]), "b": ([0, 1, 2, 3], [3, 0, 4])}, title="RM")
    )
    dots = open_png(plots.scatter({"sft": ([10, 20, 30], [0.1, 0.3, 0.2])}, title="reward vs length"))
    for image in (bars, hist, dots):
        assert image.size[0] >= 600 and image.size[1] >= 250
        assert_not_blank(image)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        plots.line_plot({}, title="x", ylabel="y")
    with pytest.raises(ValueError, match="edges"):
        plots.histograms({"a": ([0, 1], [1, 2])}, title="x")
