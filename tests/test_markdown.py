"""Markdown escaping (:mod:`rewardmix.markdown`) and every Markdown writer that uses it: a model response or
name holding HTML (``<script>``, ``<img onerror>``) stays text, and ``|`` or a line break cannot split a row."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from rewardmix.evaluation import tables as tb
from rewardmix.human.aggregate import import_rankings
from rewardmix.human.export import export_tasks
from rewardmix.markdown import md_cell, md_code, md_text
from rewardmix.stages import report, sweep

SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(1)">'
RESPONSE = f"Sure! {SCRIPT} a | b\nnext line & {IMG}"


def cells_of(row: str) -> list[str]:
    """The cells of a GitHub table row: split on pipes not escaped by a backslash (as GFM does)."""
    assert row.startswith("| ") and row.endswith(" |"), row
    return re.split(r"(?<!\\) \| ", row[2:-2])


def assert_no_raw_html(text: str) -> None:
    assert "<" not in text, text  # no tag can open without one


def assert_tables_hold(text: str) -> None:
    """Every row of every table has as many cells as the table's header."""
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
        elif line.startswith("| "):  # (the |---| separator row is skipped)
            if header is None:
                header = len(cells_of(line))
            assert len(cells_of(line)) == header, line


def test_helpers_escape_html_pipes_and_newlines():
    # & first, so an entity in the input stays visible as typed: "&lt;" is shown as "&lt;", not "<"
    assert md_text("a <b> & &lt;") == "a &lt;b&gt; &amp; &amp;lt;"
    assert md_text("two\nlines\r\nand\u2028three") == "two lines and three"
    assert md_cell(RESPONSE) == (
        "Sure! &lt;script&gt;alert(1)&lt;/script&gt; a \\| b next line &amp; "
        '&lt;img src=x onerror="alert(1)"&gt;'
    )
    assert md_cell("back\\slash|pipe") == "back\\\\slash\\|pipe"  # "\|" in the input cannot undo the escape
    assert md_code("plain") == "`plain`"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`edge") == "`` `edge ``"
    assert md_code("x|y", cell=True) == "`x\\|y`"


@given(st.text())
def test_a_cell_is_one_cell_and_holds_no_html(text):
    row = f"| {md_cell(text)} | end |"
    assert "\n" not in row and "\r" not in row
    assert_no_raw_html(row)
    # every pipe inside the cell is escaped by an odd number of backslashes: the row has exactly two cells
    assert len(re.findall(r"(?<!\\)(?:\\\\)*\|", row)) == 3


def test_tables_md_keeps_a_response_as_text():
    # e.g. a breakdown by category, whose names come from the prompts file (user text)
    table = tb.Table("Win rates " + SCRIPT, ["Category", "m1 vs m2"], [[RESPONSE, "50%"]], IMG)
    text = tb.tables_markdown([table], title=f"Evaluation {SCRIPT}")
    assert_no_raw_html(text)
    assert_tables_hold(text)
    row = next(line for line in text.splitlines() if line.startswith("| Sure"))
    assert "&lt;script&gt;" in row and "next line" in row  # the newline did not end the row


def test_report_md_keeps_html_as_text(tmp_path):
    blocks = [
        report.Heading(2, f"Evaluation: {SCRIPT}"),
        report.Text(RESPONSE),
        report.Text(IMG, note=True),
        report.TableBlock(tb.Table("t", ["model", "response"], [["m|1", RESPONSE]])),
        report.Image("a.png", b"", f"caption ]({IMG}) [x"),
    ]
    text = report.render_markdown(blocks)
    assert_no_raw_html(text)
    row = next(line for line in text.splitlines() if line.startswith("| m\\|"))
    assert cells_of(row) == ["m\\|1", md_cell(RESPONSE)]
    assert_tables_hold(text)
    image = next(line for line in text.splitlines() if line.startswith("!["))
    # the alt text holds no unescaped bracket: the caption cannot close the link or open another one
    assert re.fullmatch(r"!\[(?:[^\[\]\\]|\\.)*\]\(figures/a\.png\)", image), image


def test_human_eval_md_escapes_model_and_annotator_names(tmp_path):
    models = [SCRIPT, "b|c"]
    gen = tmp_path / "gen.jsonl"
    gen.write_text(
        "".join(
            json.dumps({"model": m, "id": "p1", "prompt": "q", "response": RESPONSE}) + "\n" for m in models
        )
    )
    he = tmp_path / "he"
    export_tasks(he, generations_file=gen)
    line = {"annotator": "x|<b>y</b>", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2}}
    (he / "rankings.jsonl").write_text(json.dumps(line) + "\n")
    md = import_rankings(he).md_path.read_text()
    assert_no_raw_html(md)
    assert_tables_hold(md)
    assert "| x\\|&lt;b&gt;y&lt;/b&gt; |" in md  # the annotator, in the coverage table


def test_sweep_summary_md_escapes_run_names(tmp_path):
    cfg = sweep.Config(key="ppo.kl_coef", values=[0.1], complement_key=None)
    runs = [sweep.SweepRun(f"run|{SCRIPT}", "0.1", tmp_path, {"steps": 2, "final/objective/score": 1.0})]
    text = sweep.summary_markdown(cfg, runs)
    assert_no_raw_html(text)
    assert_tables_hold(text)
