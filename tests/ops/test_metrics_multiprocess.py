"""/metrics under real gunicorn with two workers: counts from both processes add up."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from api.metrics import FLUSH_SECONDS
from tests.support.environment import process_environment
from tests.support.metrics import scrape_headers, value
from tests.support.processes import free_port, running_server


def _get(url: str) -> int:
    # A fresh connection per request, so the kernel spreads them over both workers.
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
        return response.status


GUNICORN = [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "api.wsgi:app"]


def _web_env(port: int, **extra: str) -> dict[str, str]:
    env = {**process_environment(), "PORT": str(port), "WEB_CONCURRENCY": "2", "LOG_LEVEL": "INFO"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {**env, "LOG_FORMAT": "json", **extra}


@pytest.fixture
def gunicorn(database_url: str, tmp_path: Path):
    """gunicorn.conf.py as deployed, two workers, a configured PROMETHEUS_MULTIPROC_DIR."""
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    # A stale file from an earlier run: gunicorn must clear it at start.
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")
    env = _web_env(port, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    log_path = tmp_path / "gunicorn.log"
    with running_server(
        GUNICORN, env=env, log_path=log_path, port=port, start_timeout=60, ready_path="/readyz"
    ):
        yield f"http://127.0.0.1:{port}", metrics_dir, log_path


def _private_metrics_dir(log_path: Path) -> Path:
    """The directory gunicorn chose for itself, as its start-up line names it."""
    for line in log_path.read_text().splitlines():
        if "prometheus multiprocess directory" in line:
            return Path(json.loads(line)["message"].rpartition(": ")[2])
    raise AssertionError(
        f"gunicorn did not say which metrics directory it uses:\n{log_path.read_text()}"
    )


def _served_by(metrics_dir: Path) -> set[str]:
    """Worker pids that have written histogram samples (one file per process)."""
    return {path.stem.rpartition("_")[2] for path in metrics_dir.glob("histogram_*.db")}


def test_metrics_from_two_gunicorn_workers_add_up(gunicorn):
    base, metrics_dir, _log = gunicorn
    assert not (metrics_dir / "counter_999999.db").exists()
    _two_workers_add_up(base, metrics_dir)


def test_the_procfile_web_line_alone_aggregates_workers(database_url: str, tmp_path: Path):
    """No PROMETHEUS_MULTIPROC_DIR at all (a platform running the Procfile line as written)."""
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with running_server(
        GUNICORN, env=_web_env(port), log_path=log_path, port=port, ready_path="/readyz"
    ):
        metrics_dir = _private_metrics_dir(log_path)
        assert metrics_dir.is_dir()
        _two_workers_add_up(f"http://127.0.0.1:{port}", metrics_dir)
    # A clean stop removes the private directory again.
    assert not metrics_dir.exists()


def _two_workers_add_up(base: str, metrics_dir: Path) -> None:
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    with urllib.request.urlopen(_scrape_request(base), timeout=10) as response:
        before = value(
            response.read().decode(), "conveyor_http_request_duration_seconds_count", **labels
        )

    sent = 0
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Keep sending until both workers have served some (bounded in time):
        # on a loaded machine the kernel may hand one worker hundreds in a row.
        while time.monotonic() < deadline and (sent < 40 or len(_served_by(metrics_dir)) < 2):
            statuses = list(pool.map(_get, [f"{base}/healthz"] * 20))
            assert statuses == [200] * 20
            sent += 20
    assert len(_served_by(metrics_dir)) >= 2, "every request landed on one worker"

    # Whichever worker answers the scrape, it reports the sum over both: its
    # own requests folded at the scrape, the other's within FLUSH_SECONDS.
    deadline = time.monotonic() + 10 * FLUSH_SECONDS
    counted = before
    while counted - before != sent and time.monotonic() < deadline:
        time.sleep(FLUSH_SECONDS / 4)
        counted = value(_scrape(base), "conveyor_http_request_duration_seconds_count", **labels)
    assert counted - before == sent
    for _ in range(4):
        text = _scrape(base)
        counted = value(text, "conveyor_http_request_duration_seconds_count", **labels)
        assert counted - before == sent  # exact, and stays so: nothing counted twice
        # livesum over both workers' pools (pool_size 10 each)
        assert value(text, "conveyor_db_pool_size", pool="main") == 20


def test_stopping_workers_fold_their_last_requests(database_url: str, tmp_path: Path):
    """Requests served just before a stop are in the shared files afterwards (worker_exit)."""
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = _web_env(port, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    log_path = tmp_path / "gunicorn.log"
    base = f"http://127.0.0.1:{port}"
    with running_server(
        GUNICORN, env=env, log_path=log_path, port=port, start_timeout=60, ready_path="/readyz"
    ):
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(_get, [f"{base}/healthz"] * 60))
        assert statuses == [200] * 60
    # Stopped (SIGTERM) at once, most likely before any periodic flush: what
    # the files hold now is what each worker folded on its way out.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    text = generate_latest(registry).decode()
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    assert value(text, "conveyor_http_request_duration_seconds_count", **labels) == 60


def _scrape_request(base: str) -> urllib.request.Request:
    return urllib.request.Request(f"{base}/metrics", headers=scrape_headers())


def _scrape(base: str) -> str:
    with urllib.request.urlopen(_scrape_request(base), timeout=10) as response:
        return response.read().decode()


def test_gunicorn_and_app_write_only_json_lines(gunicorn):
    base, _metrics_dir, log_path = gunicorn
    assert _get(f"{base}/healthz?probe=json") == 200
    deadline = time.monotonic() + 10
    while "/healthz" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    loggers = {record["logger"] for record in records}
    assert {"gunicorn.error", "conveyor.access"} <= loggers  # arbiter and app alike
    access = [r for r in records if r["logger"] == "conveyor.access"]
    # The fixture's readiness probes (/readyz) are logged too.
    assert {r["route"] for r in access} <= {"/healthz", "/readyz"}
    assert [r["status"] for r in access if r["route"] == "/healthz"] == [200]
    assert "gunicorn.access" not in loggers  # conveyor.access is the one access line
