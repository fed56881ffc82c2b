"""A real prefork worker: Celery's own logs are JSON, task metrics add up across children."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.environment import process_environment
from tests.support.metrics import value
from tests.support.processes import free_port, running_server


@pytest.fixture
def prefork_worker(settings, tmp_path: Path):
    """`celery worker -P prefork -c 2` on a private queue, exporter on a free port."""
    queue = f"obs-{uuid.uuid4().hex[:8]}"
    port = free_port()
    log_path = tmp_path / "worker.log"
    env = {
        **process_environment(),
        "WORKER_METRICS_PORT": str(port),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        # Inherited from a web process, this must be ignored: the worker keeps its own.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "web-dir-not-for-workers"),
    }
    argv = [
        str(Path(sys.executable).parent / "celery"),
        "-A",
        "workers.app",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    with running_server(argv, env=env, log_path=log_path):
        yield queue, f"http://127.0.0.1:{port}/metrics", log_path


def _scrape(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, "worker exporter never answered"
            time.sleep(0.2)


def test_prefork_worker_logs_json_and_exports_summed_task_metrics(prefork_worker, celery_app):
    queue, url, log_path = prefork_worker
    deadline = time.monotonic() + 60
    _scrape(url, deadline)
    results = [celery_app.send_task("system.ping", queue=queue) for _ in range(6)]
    assert [result.get(timeout=60) for result in results] == ["pong"] * 6

    # Whichever child ran each ping, the exporter in the parent sums them all. Celery
    # stores the result before it sends task_success, so the last count may trail
    # result.get() by a moment: scrape until it settles, then demand exact sums.
    names = (
        "conveyor_task_succeeded_total",
        "conveyor_task_started_total",
        "conveyor_task_runtime_seconds_count",
        "conveyor_task_queue_wait_seconds_count",
    )
    text = _scrape(url, deadline)
    while time.monotonic() < deadline and any(
        value(text, name, task="system.ping") < 6 for name in names
    ):
        time.sleep(0.1)
        text = _scrape(url, deadline)
    assert value(text, "conveyor_task_succeeded_total", task="system.ping") == 6
    assert value(text, "conveyor_task_started_total", task="system.ping") == 6
    assert value(text, "conveyor_task_runtime_seconds_count", task="system.ping") == 6
    assert value(text, "conveyor_task_queue_wait_seconds_count", task="system.ping") == 6

    lines = log_path.read_text().splitlines()
    # Celery's own format ("[2026-... INFO/MainProcess] ...") and banner must not appear;
    # only a root-user warning printed before logging starts may precede the JSON.
    assert not [line for line in lines if line.startswith(("[", " -------------- "))]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert all({"timestamp", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["logger"].startswith("celery") for r in records)
    ids = {result.id for result in results}
    succeeded = [r for r in records if r["message"] == "task finished" and r["task_id"] in ids]
    assert len(succeeded) == 6
    assert all(r["job_kind"] == "system.ping" for r in succeeded)
