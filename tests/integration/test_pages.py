"""The jobs page and the API docs in a real headless browser (Debian's chromium + chromium-driver).

A user signs in on the page, submits a job and watches it: the row reaches
SUCCESS on screen, and a MutationObserver records every value its progress
bar took, so "the progress moved" is what the page rendered, not a guess.
Each finished job shows its result (the balance, the text, the cards, the
image); a job's end reaches the page on the stream it already had open (web
holds streams, api/held_streams.py); and the browser's console stays clean.
"""

from __future__ import annotations

import shutil
import uuid

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from client import ConveyorClient
from shared.jobs import create_job, isoformat, utcnow
from tests.support.accounts import PASSWORD

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# The page's own bound: a job of ten postings finishes well within it.
WAIT_SECONDS = 30

RECORD_PROGRESS = """
window.progressSeen = {};
new MutationObserver((records) => {
  for (const record of records) {
    const row = record.target.closest("tr");
    if (!row || record.attributeName !== "value") continue;
    const value = Number(record.target.getAttribute("value"));
    (window.progressSeen[row.dataset.taskId] ||= []).push(value);
  }
}).observe(document.querySelector("#jobs tbody"),
           {subtree: true, attributes: true, attributeFilter: ["value"]});
"""


@pytest.fixture
def server(served):
    return served


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM and CHROMEDRIVER, "install chromium and chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


RECORD_STATES = """
window.statesSeen = [];
new MutationObserver((records) => {
  for (const record of records) {
    const row = record.target;
    if (record.attributeName !== "data-state" || !row.dataset.taskId) continue;
    window.statesSeen.push([row.dataset.taskId, row.dataset.state, Date.now()]);
  }
}).observe(document.querySelector("#jobs tbody"),
           {subtree: true, attributes: true, attributeFilter: ["data-state"]});
"""


def _csp_errors(browser) -> list[str]:
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]


def _console_errors(browser) -> list[str]:
    """What the page logged as errors since the last look (a 404 for a file, a script error)."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def _signed_in(server, browser) -> tuple[int, str]:
    """A new account, signed in on a freshly loaded page; (user id, bearer token)."""
    name = f"page_{uuid.uuid4().hex[:8]}"
    with ConveyorClient(server.url) as api:
        user_id = api.register(name, PASSWORD)["id"]
        token = api.login(name, PASSWORD)["access_token"]
    browser.get(f"{server.url}/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "username").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "signin-button").click()
    wait = WebDriverWait(browser, WAIT_SECONDS)
    wait.until(lambda b: b.find_element(By.ID, "live-mode").text == "live")
    return user_id, token


def _result(browser, task_id: str):
    return WebDriverWait(browser, WAIT_SECONDS).until(
        lambda b: b.find_element(By.CSS_SELECTOR, f'tr.result[data-result-for="{task_id}"]')
    )


def test_a_job_submitted_in_the_page_reaches_success_with_moving_progress(server, browser):
    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "username").send_keys(f"page_{uuid.uuid4().hex[:8]}")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "register-button").click()
    wait = WebDriverWait(browser, WAIT_SECONDS)
    wait.until(lambda b: b.find_element(By.ID, "app").is_displayed())
    browser.execute_script(RECORD_PROGRESS)
    count = browser.find_element(By.ID, "random-count")
    count.clear()
    count.send_keys("10")
    browser.find_element(By.ID, "submit-random").click()
    row = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#jobs tbody tr[data-task-id]"))
    task_id = row.get_attribute("data-task-id")
    wait.until(lambda _b: row.get_attribute("data-state") in ("SUCCESS", "FAILURE", "REVOKED"))
    assert row.get_attribute("data-state") == "SUCCESS"
    assert row.find_element(By.CSS_SELECTOR, "td.state").text == "SUCCESS"
    assert row.find_element(By.CSS_SELECTOR, ".percent").text == "100%"
    seen = browser.execute_script("return window.progressSeen[arguments[0]] || []", task_id)
    assert seen[-1] == 100 and seen == sorted(seen), seen
    assert any(0 < value < 100 for value in seen), f"no intermediate progress rendered: {seen}"
    mode = browser.find_element(By.ID, "live-mode").text
    assert mode in ("live", "polling")
    result = _result(browser, task_id)
    assert result.text.startswith("10 transactions posted; balance ")
    assert _console_errors(browser) == []


def test_each_finished_job_shows_its_result(server, browser):
    _, token = _signed_in(server, browser)
    browser.find_element(By.ID, "submit-credit").click()  # 500, the form's default
    browser.find_element(By.ID, "submit-ai").click()  # a presentation of 5 cards
    with ConveyorClient(server.url, token) as api:
        text = api.submit("ai", {"kind": "text", "prompt": "Queues smooth out bursts of work",
                                 "options": {"operation": "summarize"}})["task_id"]  # fmt: skip
        image = api.submit("ai", {"kind": "image", "prompt": "a conveyor belt"})["task_id"]
        listed = {item["kind"]: item["task_id"] for item in api.jobs()["items"]}
    credit, deck = listed["ledger.transaction"], listed["ai.presentation"]
    assert _result(browser, credit).text.startswith("Balance 500 (minor units) after transaction")
    cards = _result(browser, deck).find_elements(By.CSS_SELECTOR, "ol.cards > li")
    assert len(cards) == 5 and all(card.find_element(By.TAG_NAME, "strong").text for card in cards)
    summary = _result(browser, text).find_element(By.CSS_SELECTOR, "p.ai-text").text
    assert summary and "offline" in _result(browser, text).text
    picture = _result(browser, image).find_element(By.CSS_SELECTOR, "img.ai-image")
    assert picture.get_attribute("src").startswith("data:image/svg+xml")
    assert browser.execute_script("return arguments[0].naturalWidth", picture) > 0
    assert _console_errors(browser) == []


def test_the_page_sees_a_jobs_end_on_the_stream_it_already_had_open(server, browser):
    user_id, _token = _signed_in(server, browser)
    browser.execute_script(RECORD_STATES)
    web_log = server.log_dir / "web.log"

    def streams_opened() -> int:
        return web_log.read_text().count('"path": "/api/v1/events"')

    res = server.resources
    with res.autocommit_engine.connect() as conn:
        job = create_job(
            conn, owner_id=user_id, kind="ledger.random", params={"count": 1}, ttl_seconds=3600
        ).status
    # What a worker writes, one step at a time; the page only listens.
    res.statuses.write(user_id, {**job, "state": "STARTED", "message": "started"})
    wait = WebDriverWait(browser, WAIT_SECONDS)

    def seen() -> list[str]:
        rows = browser.execute_script("return window.statesSeen")
        return [state for task_id, state, _at in rows if task_id == job["task_id"]]

    wait.until(lambda _b: seen() == ["STARTED"])
    before = streams_opened()
    done = {**job, "state": "SUCCESS", "progress": 100, "message": "done",
            "result": {"transaction_ids": [1], "count": 1, "balance": 42},
            "updated_at": isoformat(utcnow())}  # fmt: skip
    assert res.statuses.write(user_id, done)
    wait.until(lambda _b: seen() == ["STARTED", "SUCCESS"])
    # Live: the end came on the stream the page had open, no reconnect in between.
    assert streams_opened() == before >= 1
    assert _result(browser, job["task_id"]).text.startswith("1 transactions posted; balance 42")
    assert _console_errors(browser) == []


def test_the_api_docs_render_from_the_shipped_bundle_under_their_own_csp(server, browser):
    browser.get(f"{server.url}/api/v1/docs")
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) > 10
    )
    assert "/api/v1/webhooks" in browser.page_source
    assert _csp_errors(browser) == []
    docs = httpx.get(f"{server.url}/api/v1/docs")
    api = httpx.get(f"{server.url}/api/v1/tasks")
    assert "style-src 'self' 'unsafe-inline'" in docs.headers["content-security-policy"]
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    for response in (docs, httpx.get(f"{server.url}/")):
        assert "<script>" not in response.text  # no inline script: none is allowed
