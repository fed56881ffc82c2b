"""`make bench`, live views: from the worker writing a job's end to the CLI and the page seeing it.

For each way of following a job, one sample at a time: a job row and its
STARTED document (the domain's own calls, no broker), a follower that has
seen STARTED, then the worker's terminal write (`StatusStore.write`, the
call a worker makes) and the time until the follower has the SUCCESS
document. The followers are the CLI's client (`ConveyorClient.wait`, what
`conveyor watch` and `--wait` run) through web's port (held streams,
api/held_streams.py), through the events process's port, and polling (its
`Retry-After` pace); and the jobs page in headless Chromium through web's
port, when chromium, chromedriver and selenium are installed.
Standalone: `python -m bench.run --only live`.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence

from bench.event_streams import create_jobs, events_argv
from bench.report import Figure
from bench.stack import Processes, free_port, gunicorn_argv, wait_http

SECTION = "Live views (a job's end, written by a worker, seen by a follower)"
SAMPLES = 60
PAGE_SAMPLES = 30
PASSWORD = "bench-live-password"
BOUND = 30.0  # seconds one sample may take before the run gives up on it


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _figure(name: str, delays: list[float], note: str, samples: int) -> Figure:
    if len(delays) < samples:
        note = f"{note}; {samples - len(delays)} of {samples} not seen within {BOUND:g} s"
    return Figure(
        SECTION,
        name,
        float(len(delays)),
        unit="samples",
        p50_ms=statistics.median(delays) * 1000 if delays else None,
        p99_ms=_percentile(delays, 0.99) * 1000 if delays else None,
        note=note,
    )


def _user(settings) -> tuple[int, str, str]:
    """A user of the run: (id, username, bearer token), through the domain."""
    from shared import accounts
    from shared.resources import Resources

    res = Resources.build(settings)
    try:
        with res.sessions.begin() as session:
            name = f"bench_live_{time.monotonic_ns() % 10**8}"
            user = accounts.register(session, res.hasher, name, PASSWORD, settings.default_currency)
            token = accounts.issue_token(settings.signing_key, user, settings.token_ttl_seconds)
            return user.id, name, token
    finally:
        res.close()


def _finished(status: dict) -> dict:
    from shared.jobs import isoformat, utcnow

    return {**status, "state": "SUCCESS", "progress": 100, "message": "done",
            "result": {"transaction_ids": [0], "count": 1, "balance": 1},
            "updated_at": isoformat(utcnow())}  # fmt: skip


def follow_with_client(res, base: str, events_url: str, token: str, owner_id: int,
                       jobs: list[dict], *, stream: bool = True) -> list[float]:  # fmt: skip
    """Seconds from each terminal write to `ConveyorClient.wait` having it (one job at a time)."""
    from client import ConveyorClient, ConveyorError

    delays = []
    with ConveyorClient(base, token, events_url=events_url) as api:
        for status in jobs:
            started, ended = threading.Event(), threading.Event()
            seen: list[float] = []

            def update(document: dict, started=started, ended=ended, seen=seen) -> None:
                if document["state"] == "STARTED":
                    started.set()
                elif document["state"] == "SUCCESS" and not ended.is_set():
                    seen.append(time.perf_counter())
                    ended.set()

            def follow(task_id=status["task_id"], update=update) -> None:
                # Not seen within BOUND: counted as missed by the figure.
                with contextlib.suppress(ConveyorError):
                    api.wait(task_id, BOUND, on_update=update, stream=stream)

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            if not started.wait(BOUND):
                raise RuntimeError(f"the follower never saw {status['task_id']} STARTED")
            written = time.perf_counter()
            res.statuses.write(owner_id, _finished(status))
            follower.join(BOUND)
            if seen:
                delays.append(seen[0] - written)
            time.sleep(0.05)
    return delays


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


def page_available() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


def follow_with_page(res, base: str, username: str, owner_id: int,
                     jobs: list[dict]) -> list[float]:  # fmt: skip
    """Seconds from each terminal write to the jobs page (headless Chromium) rendering it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    delays = []
    try:
        driver.get(f"{base}/")
        driver.find_element(By.ID, "username").send_keys(username)
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "signin-button").click()
        wait = WebDriverWait(driver, BOUND, poll_frequency=0.01)
        wait.until(lambda d: d.find_element(By.ID, "live-mode").text == "live")
        driver.execute_script(RECORD_STATES)

        def seen(task_id: str, state: str) -> Callable[[object], float | None]:
            def check(_driver: object) -> float | None:
                for found, shown, at in driver.execute_script("return window.statesSeen"):
                    if found == task_id and shown == state:
                        return at
                return None

            return check

        for status in jobs:
            res.statuses.write(owner_id, {**status, "state": "STARTED", "message": "started"})
            wait.until(seen(status["task_id"], "STARTED"))
            written_ms = time.time() * 1000  # the page's Date.now() reads the same clock
            res.statuses.write(owner_id, _finished(status))
            shown_ms = wait.until(seen(status["task_id"], "SUCCESS"))
            delays.append(max(0.0, shown_ms - written_ms) / 1000)
            time.sleep(0.05)
    finally:
        driver.quit()
    return delays


def measure(settings, env: dict[str, str], procs: Processes, base: str) -> list[Figure]:
    """The figures: the client through web, through events, polling; the page through web."""
    from shared.resources import Resources

    owner_id, username, token = _user(settings)
    port = free_port()
    procs.start("events-live", events_argv(port, 1000), env)
    events = f"http://127.0.0.1:{port}"
    wait_http(f"{events}/healthz", check=lambda: procs.check_alive("events-live"))
    # For comparison: web as it was, streams replayed and closed (retry: 2000).
    port = free_port()
    before = {**env, "WEB_STREAM_HOLD_SECONDS": "0", "WEB_CONCURRENCY": "1"}
    procs.start("web-unheld", gunicorn_argv("api.wsgi:app", port), before)
    unheld = f"http://127.0.0.1:{port}"
    wait_http(f"{unheld}/healthz", check=lambda: procs.check_alive("web-unheld"))
    res = Resources.build(settings)
    figures = []
    try:
        ways = [
            ("CLI client, stream on web's port", base, True,
             "`conveyor watch` / `--wait` as run by default: web holds the stream"),
            ("CLI client, stream on the events port", events, True,
             "CONVEYOR_EVENTS_URL, or a balancer routing stream paths to events"),
            ("CLI client, polling (`--poll`)", base, False,
             "GET /tasks/{id} at the server's Retry-After (1 s while running)"),
            ("CLI client, web not holding streams (as before)", unheld, True,
             "WEB_STREAM_HOLD_SECONDS=0: replay and close, the client back after 2 s"),
        ]  # fmt: skip
        for name, url, stream, note in ways:
            count = SAMPLES if stream and url != unheld else SAMPLES // 6
            jobs = create_jobs(settings, owner_id, count)  # each with its STARTED document
            api = unheld if url == unheld else base
            delays = follow_with_client(res, api, url, token, owner_id, jobs, stream=stream)
            figures.append(_figure(name, delays, note, count))
        if page_available():
            jobs = create_jobs(settings, owner_id, PAGE_SAMPLES)
            delays = follow_with_page(res, base, username, owner_id, jobs)
            note = "EventSource on GET /events; the MutationObserver's Date.now()"
            name = "jobs page (Chromium), stream on web's port"
            figures.append(_figure(name, delays, note, PAGE_SAMPLES))
        else:
            missing = "not measured: chromium, chromedriver or selenium missing"
            figures.append(Figure(SECTION, "jobs page (Chromium)", None, "samples", note=missing))
    finally:
        res.close()
        procs.stop("events-live")
        procs.stop("web-unheld")
    return figures


NOTES = [
    "Live views: one job at a time, 60 samples per way (10 when polling or on a web that "
    "does not hold streams, 30 for the page). "
    "The delay runs from just before the worker's terminal write (`StatusStore.write`: the "
    "SUCCESS document and its event in one Lua call) to the follower having the SUCCESS "
    "document: the client's `on_update` (what the CLI's bar draws; the CLI then reads the "
    "stored result once more before printing), or the page's MutationObserver seeing the row "
    "change. web holds a stream on a blocking read of the job's own log "
    "(WEB_STREAM_HOLD_SECONDS, 20); before, it replayed and closed and the client came back "
    "after `retry: 2000`, which is what made every live view lag about 2 s.",
]
