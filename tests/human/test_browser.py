"""The ranking page end to end in a real headless Chromium driven by Selenium, against the server on 127.0.0.1.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install_browser.sh``) and the ``selenium``
package; skipped with the reason when one is missing. Selenium Manager never runs: the browser and the
driver are given by path, and ``SE_OFFLINE`` forbids downloads anyway.

Flow: type the annotator name, rank prompt 1 with a tie, submit, see prompt 2; submit a ranking with a gap
and see the server's error on the page; rank prompt 2, see "done"; reload and stay done (resume). Then
import ``rankings.jsonl``: the stored ranks are exactly what the browser submitted, and the Borda points
per model follow from them through the key.
"""

from __future__ import annotations

import json
import shutil
from urllib.parse import parse_qs, urlsplit

import pytest

from rewardmix.human.aggregate import import_rankings
from rewardmix.human.export import export_tasks
from rewardmix.human.server import serving

pytest.importorskip("selenium", reason="selenium is not installed (pip install -c constraints.txt selenium)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "needs Debian's chromium and chromium-driver (run scripts/install_browser.sh)",
        allow_module_level=True,
    )

# Not marked slow: about 3 s here (Chromium start ~1 s, the flow ~2 s); mark it slow if it passes 5 s.

MODELS = ["model_p", "model_q", "model_r"]
PROMPTS = {"p1": "How do I boil an egg?", "p2": "Name a prime number."}


@pytest.fixture
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager must never download
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:  # e.g. a chromedriver that does not match the browser
        pytest.skip(f"cannot start headless Chromium: {exc.msg}")
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def test_rank_tie_submit_error_done_and_reimport(tmp_path, browser):
    # an evaluation directory: 3 models x 2 prompts, one open group
    gen = tmp_path / "gen"
    gen.mkdir()
    for i, m in enumerate(MODELS):
        rows = [
            {"id": pid, "prompt": text, "response": f"reply #{i} to {pid}"} for pid, text in PROMPTS.items()
        ]
        (gen / f"{m}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    he = tmp_path / "he"
    export_tasks(he, generations={m: gen / f"{m}.jsonl" for m in MODELS}, seed=11)
    key = {
        row["prompt_id"]: row["slots"] for row in map(json.loads, (he / "key.jsonl").read_text().splitlines())
    }

    wait = WebDriverWait(browser, 10, poll_frequency=0.05)

    def text_of(element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    def rank(ranks: dict[str, int | None]) -> None:
        for slot, value in ranks.items():
            select = Select(browser.find_element(By.ID, f"rank-{slot}"))
            select.select_by_value("" if value is None else str(value))
        browser.find_element(By.ID, "submit").click()

    with serving(he) as server:
        # 1. no name in the address: the page asks for it
        browser.get(server.url)
        name = wait.until(lambda d: d.find_element(By.ID, "annotator"))
        assert browser.find_element(By.CSS_SELECTOR, "label[for=annotator]").text == "Your annotator name"
        name.send_keys("alice")
        browser.find_element(By.ID, "start").click()

        # 2. prompt 1 with its three responses in the exported slot order; no model name anywhere
        wait.until(lambda d: text_of("prompt") == PROMPTS["p1"])
        assert text_of("progress") == "alice: 0 of 2 prompts ranked"
        for slot, model in key["p1"].items():
            assert text_of(f"text-{slot}") == f"reply #{MODELS.index(model)} to p1"
            label = browser.find_element(By.CSS_SELECTOR, f"label[for=rank-{slot}]")
            assert label.text == f"Rank of response {slot}:"
        assert not any(m in browser.page_source for m in MODELS)

        # 3. a tie (A = B = 1, C = 2), submit -> the page advances to prompt 2
        first = {"A": 1, "B": 1, "C": 2}
        rank(first)
        wait.until(lambda d: text_of("prompt") == PROMPTS["p2"])
        assert text_of("progress") == "alice: 1 of 2 prompts ranked"
        assert text_of("status") == "Saved your ranking of prompt p1."
        # a reload resumes as alice, with the session token still in the address
        query = parse_qs(urlsplit(browser.current_url).query)
        assert query == {"token": [server.token], "annotator": ["alice"]}

        # 4. a gap (1, 3, 3: no rank 2) -> the server's message is shown, the prompt stays
        rank({"A": 1, "B": 3, "C": 3})
        wait.until(lambda d: "no response has rank 2" in text_of("error"))
        assert browser.find_element(By.ID, "error").get_attribute("role") == "alert"
        assert text_of("prompt") == PROMPTS["p2"]

        # 5. a valid ranking of prompt 2 -> done
        second = {"A": 2, "B": 1, "C": 3}
        rank(second)
        wait.until(lambda d: d.find_element(By.ID, "done").is_displayed())
        assert not browser.find_element(By.ID, "task").is_displayed()
        assert text_of("error") == ""
        assert text_of("progress") == "alice: 2 of 2 prompts ranked"

        # 6. reload: the server resumes alice as done
        browser.refresh()
        wait.until(lambda d: d.find_element(By.ID, "done").is_displayed())

        # the only console errors are the browser's note on the one 400 answer (no CSP or script error)
        severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert len(severe) == 1 and "/api/rank" in severe[0] and "400" in severe[0], severe

    # 7. re-import: exactly the submitted ranks, by slot; then by model through the key
    stored = [json.loads(line) for line in (he / "rankings.jsonl").read_text().splitlines()]
    assert [(r["annotator"], r["prompt_id"], r["ranks"]) for r in stored] == [
        ("alice", "p1", first),
        ("alice", "p2", second),
    ]
    summary = import_rankings(he).summary
    by_model = {p["prompt_id"]: p["merged"] for p in summary["prompts"]}
    assert by_model == {
        pid: {key[pid][slot]: r for slot, r in ranks.items()}
        for pid, ranks in (("p1", first), ("p2", second))
    }
    # Borda, K = 3: p1 -> slots A, B tied first: (1 + 2/3)/2 = 5/6 each, C 1/3;
    #               p2 -> B 1, A 2/3, C 1/3; each model's mean over the two prompts
    p1_points = {"A": 5 / 6, "B": 5 / 6, "C": 1 / 3}
    p2_points = {"A": 2 / 3, "B": 1.0, "C": 1 / 3}
    expected = {m: 0.0 for m in MODELS}
    for pid, points in (("p1", p1_points), ("p2", p2_points)):
        for slot, pts in points.items():
            expected[key[pid][slot]] += pts / 2
    assert {m: p["mean"] for m, p in summary["points"].items()} == pytest.approx(expected, abs=1e-12)
