"""RabbitMQ for tests: a private vhost per run, queue counts read directly, a worker subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from kombu import Connection

from infra.settings import ROOT
from tests.support.services import rabbitmq_reason
from tests.support.workers import running_worker

RABBITMQ_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1:5672")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def private_vhost(name: str) -> Iterator[str]:
    """A fresh vhost `name` that guest may use; yields its broker URL, deleted on exit.

    Without a RabbitMQ the calling test is skipped with the reason (and with
    CONVEYOR_TEST_REQUIRE_ALL=1, as in CI, a skip fails the run).
    """
    reason = rabbitmq_reason()
    if reason is not None:
        pytest.skip(reason)
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ_HOST}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of `queue`, asked of RabbitMQ directly; (0, 0) if undeclared."""
    with Connection(url) as conn:
        channel = conn.channel()
        try:
            _name, ready, consumers = channel.queue_declare(queue=queue, passive=True)
        except conn.channel_errors:
            return 0, 0
        return ready, consumers


def purge(url: str, *queues: str) -> None:
    """Drop every ready message in `queues` (those that exist)."""
    with Connection(url) as conn:
        for queue in queues:
            channel = conn.channel()
            try:
                channel.queue_purge(queue=queue)
            except conn.channel_errors:
                continue


@contextmanager
def thread_worker(celery_app, **options) -> Iterator:
    """tests.support.running_worker for an AMQP app, stopping promptly on exit.

    On RabbitMQ the worker's event loop sleeps in poll() for up to 10 s when
    no timer is due, and start_worker only flags it to stop; a no-op timer
    every 0.2 s makes it notice within that.
    """
    with running_worker(celery_app, **options) as worker:
        worker.timer.call_repeatedly(0.2, lambda: None)
        yield worker


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll `condition()` until it is true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def worker_process(
    env: Mapping[str, str], log_path: Path, *, queue: str, broker_url: str
) -> Iterator[subprocess.Popen]:
    """A prefork `celery worker` (own process group) consuming `queue`, ready on entry.

    Ready means RabbitMQ reports a consumer on `queue`. On exit the group is
    stopped with SIGTERM (SIGKILL after 30 s) unless the test already killed it.
    """
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-P",
        "prefork",
        "-c",
        "1",
        "-Q",
        queue,
        "-n",
        f"rabbit-{os.getpid()}-{time.monotonic_ns()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]
    with log_path.open("a") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a test can SIGKILL worker and children
        )
    try:
        deadline = time.monotonic() + 60
        while queue_counts(broker_url, queue)[1] == 0:
            tail = log_path.read_text()[-3000:]
            assert process.poll() is None, f"worker exited:\n{tail}"
            assert time.monotonic() < deadline, f"worker never consumed {queue}:\n{tail}"
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the worker and its pool children at once, as a lost host or the OOM killer would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
