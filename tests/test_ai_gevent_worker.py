"""The `worker_ai` shape for real: a `celery worker -P gevent` subprocess, a slow upstream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from shared.settings import ROOT
from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest, Scripted
from tests.support import wait_for_state

pytestmark = pytest.mark.integration

API_KEY = f"sk-gevent-test-{uuid.uuid4().hex}"
JOBS = 30


def _worker_env(settings, upstream: FakeOpenAIServer) -> dict[str, str]:
    return {
        **os.environ,
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

    with tempfile.TemporaryFile() as output:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-P",
                "gevent",
                "-c",
                "50",
                "-Q",
                "ai",
                "-n",
                f"gevent-test-{uuid.uuid4().hex[:8]}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=_worker_env(settings, upstream),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            # Generous: the bound covers interpreter and worker start-up on a busy machine.
            done = [wait_for_state(client, headers, task_id, timeout=60) for task_id in task_ids]
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
        output.seek(0)
        logs = output.read().decode(errors="replace")

    assert [job["state"] for job in done] == ["SUCCESS"] * JOBS, logs[-2000:]
    assert {job["result"]["text"] for job in done} == {"slow but fine"}
    prompts = [r.json["messages"][-1]["content"] for r in upstream.requests]
    # One call per job; any other ai job left queued by an earlier test may add its own.
    assert len([p for p in prompts if p.startswith("slow job ")]) == JOBS
    # Serial calls would never overlap; 50 greenlets should run nearly all 30 together.
    assert upstream.max_in_flight >= 20, upstream.max_in_flight
    # The worker's own log lines (INFO: every task received and finished) never carry the key.
    assert "ai.text" in logs and "succeeded" in logs
    assert API_KEY not in logs
