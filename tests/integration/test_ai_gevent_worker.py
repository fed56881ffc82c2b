"""The `worker_ai` shape for real: a `celery worker -P gevent` subprocess, a slow upstream."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from infra.settings import ROOT
from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest, Scripted
from tests.support.environment import process_environment
from tests.support.polling import wait_for_state
from tests.support.processes import running_server

pytestmark = pytest.mark.integration

API_KEY = f"sk-gevent-test-{uuid.uuid4().hex}"
JOBS = 30
# Over 100 (the worker's concurrency), spread so no user nears MAX_INFLIGHT_JOBS.
BURST = 300


def _worker_env(settings, upstream: FakeOpenAIServer) -> dict[str, str]:
    return {
        **process_environment(),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CONVEYOR_REDIS_PREFIX": settings.redis_key_prefix,
        "AI_PROVIDER": "openai",
        "AI_BASE_URL": upstream.base_url,
        "AI_API_KEY": API_KEY,
        "AI_TIMEOUT_SECONDS": "10",
        "LOG_LEVEL": "INFO",
    }


class SlowUpstream(FakeOpenAIServer):
    """Every answer takes a second, like a busy model (and no script to steal from)."""

    def default(self, request: RecordedRequest) -> Scripted:
        return Scripted(delay=1.0, content="slow but fine")


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    server = SlowUpstream(api_key=API_KEY).start()
    try:
        yield server
    finally:
        server.close()


def test_psycopg2_waits_cooperatively_only_under_gevent(settings, upstream):
    probe = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import workers.app, psycopg2.extensions as ext\n"
        "print(ext.get_wait_callback() is not None)\n"
    )
    env = _worker_env(settings, upstream)
    patched = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert patched.stdout.strip() == "True", patched.stderr
    plain = subprocess.run(
        [sys.executable, "-c", probe.split("\n", 1)[1]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.stdout.strip() == "False", plain.stderr


def test_thirty_slow_upstream_calls_overlap_on_the_gevent_worker(
    client, make_user, settings, upstream
):
    _, headers = make_user()
    # Queued before the worker starts, so it can take them all at once.
    task_ids = []
    for number in range(JOBS):
        response = client.post(
            "/api/v1/ai/generate",
            json={"kind": "text", "prompt": f"slow job {number} {uuid.uuid4().hex}"},
            headers=headers,
        )
        assert response.status_code == 202, response.get_json()
        task_ids.append(response.get_json()["task_id"])

    with gevent_worker(settings, upstream, concurrency=50) as logs:
        # Generous: the bound covers interpreter and worker start-up on a busy machine.
        done = [wait_for_state(client, headers, task_id, timeout=60) for task_id in task_ids]

    assert [job["state"] for job in done] == ["SUCCESS"] * JOBS, logs.text[-2000:]
    assert {job["result"]["text"] for job in done} == {"slow but fine"}
    prompts = [r.json["messages"][-1]["content"] for r in upstream.requests]
    # One call per job; any other ai job left queued by an earlier test may add its own.
    assert len([p for p in prompts if p.startswith("slow job ")]) == JOBS
    # Serial calls would never overlap; 50 greenlets should run nearly all 30 together.
    assert upstream.max_in_flight >= 20, upstream.max_in_flight
    # The worker's own log lines (INFO: every task received and finished) never carry the key.
    assert "ai.text" in logs.text and "succeeded" in logs.text
    assert API_KEY not in logs.text


def test_a_burst_of_cache_hits_at_concurrency_100_acks_every_message(
    client, make_user, settings, upstream
):
    # 100 greenlets finishing at once used to exhaust kombu's 10-connection
    # channel pool: acks failed and messages waited an hour for redelivery.
    prompt = f"burst {uuid.uuid4().hex}"
    users = [make_user()[1] for _ in range(8)]
    first = client.post(
        "/api/v1/ai/generate", json={"kind": "text", "prompt": prompt}, headers=users[0]
    ).get_json()["task_id"]
    with gevent_worker(settings, upstream, concurrency=10):
        assert wait_for_state(client, users[0], first, timeout=60)["state"] == "SUCCESS"
    # All queued before the worker starts, so 100 greenlets finish nearly together.
    submitted = []
    for number in range(BURST):
        headers = users[number % len(users)]
        response = client.post(
            "/api/v1/ai/generate", json={"kind": "text", "prompt": prompt}, headers=headers
        )
        assert response.status_code == 202, response.get_json()
        submitted.append((headers, response.get_json()["task_id"]))
    with gevent_worker(settings, upstream, concurrency=100) as logs:
        done = [wait_for_state(client, h, task_id, timeout=60) for h, task_id in submitted]
    assert [job["state"] for job in done] == ["SUCCESS"] * BURST, logs.text[-2000:]
    assert all(job["result"]["from_cache"] for job in done)
    assert "Couldn't ack" not in logs.text, logs.text[-3000:]
    assert "MaxConnectionsError" not in logs.text


class WorkerOutput:
    """What a worker subprocess printed, filled in when it has stopped."""

    text = ""


@contextmanager
def gevent_worker(settings, upstream, *, concurrency: int) -> Iterator[WorkerOutput]:
    """A real `celery worker -P gevent` subprocess on the ai queue, stopped by PID on exit."""
    output = WorkerOutput()
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-P", "gevent",
            "-c", str(concurrency), "-Q", "ai", "-n", f"gevent-test-{uuid.uuid4().hex[:8]}@%h",
            "--without-mingle", "--without-gossip"]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "worker.log"
        try:
            with running_server(argv, env=_worker_env(settings, upstream), log_path=log_path):
                yield output
        finally:
            output.text = log_path.read_text(errors="replace")


def test_the_broker_channel_pool_serves_every_greenlet_at_once(celery_app, settings):
    # What 100 greenlets acking at the same moment ask of kombu's pool.
    from infra.broker.config import broker_max_connections

    wanted = settings.ai_worker_concurrency
    assert broker_max_connections(settings) >= wanted
    with celery_app.connection_for_read() as connection:
        pool = connection.default_channel.pool
        held = [pool.get_connection() for _ in range(wanted)]
        for each in held:
            pool.release(each)
