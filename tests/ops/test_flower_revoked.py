"""A job cancelled before it ran ends REVOKED in Celery's own state too: Flower, metrics, logs.

A real Flower (started as the Procfile starts it) watches a private stack's
prefork worker. Jobs are cancelled through the API while no worker consumes
their queue; then the worker starts consuming it and meets them. Flower's
API must show those tasks REVOKED (never SUCCESS, also after later events),
the worker's task metrics count them revoked, and its "task finished" lines
say REVOKED; the job the owner did not cancel runs and shows SUCCESS.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support.accounts import register_and_login
from tests.support.processes import free_port, running_server
from tests.support.stacks import private_stack
from workers.factory import create_celery_app

pytestmark = pytest.mark.integration

CREDENTIALS = "ops:flower-revoked-test"
CREDIT = {"type": "credit", "amount": 100}
BOUND = 60  # seconds any one thing below may take on a busy machine before we give up


def _flower(port: int, path: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    token = base64.b64encode(CREDENTIALS.encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _until(check, what: str):
    deadline = time.monotonic() + BOUND
    while True:
        answer = check()
        if answer:
            return answer
        assert time.monotonic() < deadline, f"{what}: not within {BOUND} s"
        time.sleep(0.2)


def _flower_state(port: int, task_id: str) -> str | None:
    status, info = _flower(port, f"/api/task/info/{task_id}")
    return info.get("state") if status == 200 else None


def test_a_cancelled_job_is_revoked_in_flower_metrics_and_logs(settings, redis_client, tmp_path):
    with private_stack(settings, redis_client, tmp_path) as stack:
        flower_port, metrics_port = free_port(), free_port()
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "flower",
                f"--port={flower_port}", "--address=127.0.0.1"]  # fmt: skip
        env = {**stack.env, "FLOWER_BASIC_AUTH": CREDENTIALS}
        with running_server(argv, env=env, log_path=tmp_path / "flower.log", port=flower_port):
            # A worker on another queue first: Flower turns its task events on.
            stack.env["WORKER_METRICS_PORT"] = str(metrics_port)
            stack.start_worker("worker", queues="maintenance", concurrency=1)
            worker_log = tmp_path / "worker.log"
            _until(lambda: "enabled by remote" in worker_log.read_text(), "events turned on")

            client = stack.client
            _, headers = register_and_login(client, f"flower_{time.monotonic_ns()}")
            cancelled = [
                client.post("/api/v1/transactions", json=CREDIT, headers=headers),
                client.post("/api/v1/transactions/random", json={"count": 2}, headers=headers),
            ]
            cancelled_ids = [answer.get_json()["task_id"] for answer in cancelled]
            for task_id in cancelled_ids:
                revoked = client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
                assert revoked.get_json()["state"] == "REVOKED"
            kept = client.post("/api/v1/transactions", json=CREDIT, headers=headers)
            kept_id = kept.get_json()["task_id"]

            celery = create_celery_app(stack.settings)
            try:
                assert celery.control.add_consumer("ledger", reply=True, timeout=10)
                for task_id in cancelled_ids:
                    _until(lambda t=task_id: _flower_state(flower_port, t) == "REVOKED", task_id)
                _until(lambda: _flower_state(flower_port, kept_id) == "SUCCESS", kept_id)
                # One more job after all of that: once Flower has its SUCCESS, any event
                # the worker sent for the cancelled ones earlier has reached Flower too.
                last = client.post("/api/v1/transactions", json=CREDIT, headers=headers)
                last_id = last.get_json()["task_id"]
                _until(lambda: _flower_state(flower_port, last_id) == "SUCCESS", last_id)
            finally:
                celery.close()
            assert [_flower_state(flower_port, t) for t in cancelled_ids] == ["REVOKED"] * 2
            _, succeeded = _flower(flower_port, "/api/tasks?state=SUCCESS")
            assert set(cancelled_ids).isdisjoint(succeeded)
            assert {kept_id, last_id} <= set(succeeded)

            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as scrape:
                metrics = scrape.read().decode()
            for name in ("ledger.transaction", "ledger.random"):
                assert f'conveyor_task_revoked_total{{task="{name}"}} 1.0' in metrics, name
            assert 'conveyor_task_succeeded_total{task="ledger.random"}' not in metrics

            finished = {}
            for line in worker_log.read_text().splitlines():
                if '"task finished"' in line:
                    record = json.loads(line)
                    finished.setdefault(record["task_id"], []).append(record["state"])
            for task_id in cancelled_ids:
                assert finished[task_id][-1] == "REVOKED", finished[task_id]
                assert "SUCCESS" not in finished[task_id]
            assert finished[kept_id] == ["SUCCESS"]
            assert not re.search(rf"{cancelled_ids[1]}\] succeeded", worker_log.read_text())
