"""The jobs page and the API docs in a real headless browser (Debian's chromium + chromium-driver).

A user signs in on the page, submits a job and watches it: the row reaches
SUCCESS on screen, and a MutationObserver records every value its progress
bar took, so "the progress moved" is what the page rendered, not a guess.
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


def _csp_errors(browser) -> list[str]:
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]


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
    assert _csp_errors(browser) == []


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
