"""The pages in real headless Chromium (Debian's chromium + chromedriver, driven by Selenium): sign in, vote
on a pair with the mouse and with a key, rank four by dragging (with a tie), see the leaderboard update,
open the admin page. Screenshots of every page go to $ARENA_SCREENSHOTS (default: the test's tmp dir)."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("selenium")
pytest.importorskip("uvicorn")

from arena_helpers import make_arena, request, server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs the system chromium and chromedriver (apt-get install chromium chromium-driver)"),
    pytest.mark.slow,
]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(condition, timeout=20.0, what="condition"):
    """Poll ``condition`` until it is truthy; elements replaced by the page meanwhile are looked up again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def vote_count(base):
    return request("GET", base + "/api/health")[1]["votes"]


def test_vote_rank_and_leaderboard_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = Path(os.environ.get("ARENA_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    tokens = make_arena(url, tmp_path)
    with server(url, "--seed", "0") as (base, _):
        # sign in
        browser.get(base + "/")
        browser.find_element(By.ID, "token").send_keys(tokens["alice"])
        browser.save_screenshot(str(shots / "login.png"))
        browser.find_element(By.ID, "sign-in").click()
        wait_for(lambda: browser.current_url.endswith("/vote"), what="the vote page")

        # a pair, side by side: click "A is better" with a rationale
        side_a = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#side-a .body").text, what="a task")
        side_b = browser.find_element(By.CSS_SELECTOR, "#side-b .body").text
        assert side_a and side_b and side_a != side_b
        a_item = browser.find_element(By.ID, "side-a").get_attribute("data-item")
        browser.find_element(By.ID, "rationale").send_keys("A answers <directly>")
        browser.save_screenshot(str(shots / "vote_pair.png"))
        browser.find_element(By.ID, "choose-a").click()
        wait_for(lambda: vote_count(base) == 1, what="the first vote")
        # keyboard: the right arrow says B is better
        wait_for(lambda: "Saved" in browser.find_element(By.ID, "status").text, what="the next task")
        b_item = browser.find_element(By.ID, "side-b").get_attribute("data-item")
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        wait_for(lambda: vote_count(base) == 2, what="the keyboard vote")

        # rank four by dragging: drag the last card onto the first row (a tie), then the first to the bottom gap
        browser.get(base + "/vote?k=4")
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#groups .chip")) == 4, what="four cards")
        chips = browser.find_elements(By.CSS_SELECTOR, "#groups .chip")
        order = [chip.get_attribute("data-item") for chip in chips]
        rows = browser.find_elements(By.CSS_SELECTOR, "#groups .group")
        ActionChains(browser).click_and_hold(chips[3]).move_to_element(rows[0]).pause(0.2) \
            .move_by_offset(5, 5).pause(0.2).release().perform()
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#groups .group")) == 3, what="a tie row")
        first = browser.find_element(By.CSS_SELECTOR, f'#groups .chip[data-item="{order[1]}"]')
        bottom_gap = browser.find_elements(By.CSS_SELECTOR, "#groups .gap")[-1]
        ActionChains(browser).click_and_hold(first).move_to_element(bottom_gap).pause(0.2) \
            .move_by_offset(0, 2).pause(0.2).release().perform()
        browser.save_screenshot(str(shots / "vote_rank4.png"))
        groups = [[chip.get_attribute("data-item") for chip in row.find_elements(By.CSS_SELECTOR, ".chip")]
                  for row in browser.find_elements(By.CSS_SELECTOR, "#groups .group")]
        assert groups == [[order[0], order[3]], [order[2]], [order[1]]]
        browser.find_element(By.ID, "submit-ranking").click()
        wait_for(lambda: vote_count(base) == 3, what="the ranking vote")

        # what the server stored is what was shown
        status, text = request("GET", base + "/api/export", tokens["admin"])
        records = [json.loads(line) for line in text.splitlines()]
        assert records[0]["ranks"][records[0]["candidates"].index(a_item)] == 0
        assert records[0]["meta"]["comment"] == "A answers <directly>"
        assert records[1]["ranks"][records[1]["candidates"].index(b_item)] == 0
        ranked = dict(zip(records[2]["candidates"], records[2]["ranks"]))
        assert ranked == {order[0]: 0, order[3]: 0, order[2]: 1, order[1]: 2}
        assert records[2]["annotator"] == "alice"

        # the leaderboard page updates by itself when new votes arrive
        browser.get(base + "/leaderboard")
        assert wait_for(lambda: browser.find_element(By.ID, "board-meta").text).startswith("3 votes")
        for v in range(3):
            request("POST", base + "/api/votes", tokens["bob"],
                    {"prompt": None, "candidates": ["model-c", "model-a"], "ranks": [0, 1], "request_id": f"b{v}"})
        wait_for(lambda: browser.find_element(By.ID, "board-meta").text.startswith("6 votes"), timeout=20,
                 what="the live leaderboard")
        widths = wait_for(lambda: [float(bar.get_attribute("width"))
                                   for bar in browser.find_elements(By.CSS_SELECTOR, "#board svg rect.ci")])
        assert len(widths) == 4 and all(width > 0 for width in widths)
        browser.save_screenshot(str(shots / "leaderboard.png"))

        # the admin page (rationale escaped, shown as text)
        browser.delete_all_cookies()
        browser.get(base + "/")
        browser.find_element(By.ID, "token").send_keys(tokens["admin"])
        browser.find_element(By.ID, "sign-in").click()
        wait_for(lambda: browser.current_url.endswith("/admin"), what="the admin page")
        assert "A answers <directly>" in browser.find_element(By.ID, "comments").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#annotators tbody tr")
        assert [row.find_elements(By.TAG_NAME, "td")[2].text for row in rows] == ["0", "3", "3"]
        browser.save_screenshot(str(shots / "admin.png"))
