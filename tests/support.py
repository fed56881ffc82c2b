"""Helpers shared by tests: users, funding, polling, a worker context, queue depths."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery.contrib.testing.worker import start_worker

from shared import ledger
from shared.settings import ROOT

PASSWORD = "correct horse battery"


def register_and_login(client, username: str) -> tuple[int, dict[str, str]]:
    created = client.post(
        "/api/v1/auth/register", json={"username": username, "password": PASSWORD}
    )
    assert created.status_code == 201, created.get_json()
    login = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    return created.get_json()["id"], {"Authorization": f"Bearer {login.get_json()['access_token']}"}


def fund(resources, user_id: int, amount: int) -> None:
    """Credit a wallet directly through the domain (no job)."""
    with resources.sessions.begin() as session:
        ledger.post(
            session, user_id=user_id, entry_type="credit", amount=amount, description="test funding"
        )


def wait_for_state(
    client, headers, task_id: str, states=("SUCCESS", "FAILURE", "REVOKED"), timeout: float = 30.0
) -> dict[str, Any]:
    """Poll GET /tasks/{id} until its state is one of `states`."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/api/v1/tasks/{task_id}", headers=headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        if body["state"] in states:
            return body
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} stuck in {body.get('state')}: {body}")


@contextmanager
def running_worker(
    celery_app, *, concurrency: int = 8, queues: str = "ledger,ai,maintenance"
) -> Iterator[Any]:
    """A real worker in this process (thread pool), stopped on exit."""
    from workers import runtime

    runtime.reset()
    with start_worker(
        celery_app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        queues=queues.split(","),
        shutdown_timeout=30,
        loglevel="WARNING",
    ) as controller:
        yield controller
    runtime.reset()


def queue_depth(redis_client, prefix: str, queue: str) -> int:
    return redis_client.llen(f"{prefix}{queue}")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    port: int | None = None,
    start_timeout: float = 45.0,
) -> Iterator[subprocess.Popen]:
    """A server subprocess, its output in `log_path`, stopped by its PID on exit.

    With `port`, waits until the port accepts connections (failing with the
    log's tail if the process dies first). Output goes to a file, not a pipe,
    so a talkative server can never block on a full pipe nobody reads.
    """
    with log_path.open("w") as log:
        process = subprocess.Popen(
            list(argv), cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + start_timeout
            while port is not None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    tail = log_path.read_text()[-2000:]
                    assert process.poll() is None, f"{argv[:4]} exited:\n{tail}"
                    assert time.monotonic() < deadline, f"{argv[:4]} did not listen:\n{tail}"
                    time.sleep(0.1)
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
