"""Import files as spreadsheet and annotation tools write them: a leading UTF-8 byte-order mark (BOM) is
accepted everywhere; annotator names are compared in NFC, exactly (never stripped to ASCII); bytes that are
not UTF-8 are a bad line named by file and line, never replaced (that merged names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardmix.data.readers import DataError
from rewardmix.human.aggregate import import_rankings
from rewardmix.human.export import check_groups, check_name, export_tasks
from rewardmix.human.formats import import_tool_rankings
from tests.human.test_import_formats import (
    ARGILLA_EXPECTED,
    CSV_TEXT,
    argilla_v1,
    argilla_v2,
    exported,
    ls_tasks,
    points,
)

BOM = b"\xef\xbb\xbf"
NFC, NFD = "Jos\u00e9", "Jose\u0301"  # the same name, é as one code point or as e + combining accent


def export(folder: Path) -> Path:
    """Tasks for models x, y, z on prompts p1, p2 (one open group)."""
    gen = folder.parent / f"{folder.name}-gen.jsonl"
    rows = [
        {"model": m, "id": p, "prompt": p, "response": f"{m} on {p}"} for m in "xyz" for p in ("p1", "p2")
    ]
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    export_tasks(folder, generations_file=gen)
    return folder


@pytest.mark.parametrize(
    ("name", "fmt", "content"),
    [
        ("argilla-v1.json", "argilla", lambda: json.dumps(argilla_v1())),
        ("argilla-v2.json", "argilla", lambda: json.dumps(argilla_v2())),
        ("argilla.jsonl", "argilla", lambda: "".join(json.dumps(r) + "\n" for r in argilla_v1())),
    ],
)
def test_a_leading_bom_is_accepted(tmp_path, name, fmt, content):
    plain, marked = tmp_path / f"plain-{name}", tmp_path / name
    plain.write_text(content(), encoding="utf-8")
    marked.write_bytes(BOM + content().encode("utf-8"))
    expected = import_tool_rankings(tmp_path / "he-plain", plain, fmt).summary
    got = import_tool_rankings(tmp_path / "he", marked, fmt, on_bad_row="error").summary
    assert got["read"]["skipped"] == 0 and points(got) == points(expected)
    assert points(got) == pytest.approx(ARGILLA_EXPECTED, abs=1e-12)  # (CSV: utf-8-sig already)


def test_a_leading_bom_in_a_labelstudio_export_and_in_rankings_jsonl(tmp_path):
    (tmp_path / "ls").mkdir()
    directory, slot = exported(tmp_path / "ls")
    path = tmp_path / "labelstudio.json"
    path.write_bytes(BOM + json.dumps(ls_tasks(slot)).encode())
    s = import_tool_rankings(directory, path, "labelstudio").summary
    assert s["read"]["skipped"] == 0 and points(s) == pytest.approx({"m1": 3 / 4, "m2": 3 / 4, "m3": 1 / 2})

    he = export(tmp_path / "he")
    line = {"annotator": "a", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}}
    (he / "rankings.jsonl").write_bytes(BOM + json.dumps(line).encode() + b"\n")
    s = import_rankings(he).summary  # on_bad_row="error": the first line must not be a bad line
    assert s["read"]["rankings_used"] == 1 and s["groups"]["all"]["annotators"] == ["a"]


def test_names_are_compared_in_nfc_and_exactly(tmp_path):
    he = export(tmp_path / "he")
    lines = [
        {"annotator": NFC, "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}},
        {"annotator": NFD, "group": "all", "prompt_id": "p1", "ranks": {"A": 3, "B": 2, "C": 1}},  # replaces
        {"annotator": "Jose", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}},
        {"annotator": "Zoë", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}},
        {"annotator": "Zoé", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}},
    ]
    (he / "rankings.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    s = import_rankings(he).summary
    assert s["read"]["replaced"] == 1 and s["read"]["rankings_used"] == 4
    assert s["groups"]["all"]["annotators"] == sorted([NFC, "Jose", "Zoë", "Zoé"])

    # CSV: the same rule (José's ranking of p2 typed in NFD is still José's)
    rows = [(NFC, "p1"), (NFD, "p2"), ("Jose", "p1")]
    csv = "prompt_id,annotator,response_id,rank\n" + "".join(
        f"{pid},{name},{rid},{rank}\n" for name, pid in rows for rid, rank in (("m1", 1), ("m2", 2))
    )
    (tmp_path / "r.csv").write_text(csv, encoding="utf-8")
    s = import_tool_rankings(tmp_path / "he-csv", tmp_path / "r.csv", "csv").summary
    assert s["groups"]["all"]["annotators"] == ["Jose", NFC] and s["groups"]["all"]["rankings"] == 3


def test_bytes_that_are_not_utf8_are_a_bad_line_not_a_merged_name(tmp_path):
    he = export(tmp_path / "he")
    good = json.dumps(
        {"annotator": "a", "group": "all", "prompt_id": "p1", "ranks": {"A": 1, "B": 2, "C": 3}}
    )
    # "José" and "Josè" saved as Latin-1: with the bad bytes replaced both became "Jos\ufffd", one annotator
    latin = [good.replace('"a"', f'"{n}"').encode("latin-1") for n in ("Jos\u00e9", "Jos\u00e8")]
    (he / "rankings.jsonl").write_bytes(b"\n".join([good.encode(), *latin]) + b"\n")
    with pytest.raises(DataError, match=r"rankings\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 19\)"):
        import_rankings(he)
    s = import_rankings(he, on_bad_row="skip").summary
    assert s["read"]["skipped_lines"] == [2, 3] and s["groups"]["all"]["annotators"] == ["a"]

    csv = CSV_TEXT.encode() + "p1,Jos\u00e9,m1,1\np1,Jos\u00e9,m2,2\n".encode("latin-1")
    (tmp_path / "r.csv").write_bytes(csv)
    with pytest.raises(DataError, match=r"r\.csv:8: field 'annotator': not valid UTF-8"):
        import_tool_rankings(tmp_path / "he-csv", tmp_path / "r.csv", "csv")
    path = tmp_path / "a.json"
    path.write_bytes(json.dumps(argilla_v1()).replace("u1", "J\u00f6").encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.json:1: not valid UTF-8 \(byte 0xf6"):
        import_tool_rankings(tmp_path / "he-a", path, "argilla")


def test_check_name_normalizes_and_refuses():
    assert check_name(NFD, "annotator") == NFC
    assert check_groups({"g": [NFD, "b"]}) == {"g": [NFC, "b"]}
    with pytest.raises(ValueError, match="in two groups"):
        check_groups({"g1": [NFC], "g2": [NFD]})  # one annotator, typed twice
    for bad, why in [
        ("a\x00b", "U\\+0000"),
        ("a\u2028b", "U\\+2028"),
        ("a\ud800", "U\\+D800"),
        ("a\u202eb", "U\\+202E"),
        ("x" * 101, "longer than 100"),
        (" a", "surrounding whitespace"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_name(bad, "annotator")
