"""A worker holding messages outlives a Redis SIGKILL and restart, then runs its jobs once.

The worker is the Procfile's `worker` (prefork, ledger queue, gossip, mingle
and events on) against a redis-server of this test's own (AOF, fsync on every
write, so the SIGKILL loses nothing the test relies on). It holds countdown
messages unacked, so its task channel has a BRPOP in flight when Redis dies:
the shape in which kombu 5.7.0 killed the worker with `AttributeError:
'NoneType' object has no attribute 'hostname'` (tuning/kombu_redis.py).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.models import Job, LedgerEntry
from tests.support.accounts import PASSWORD
from tests.support.environment import process_environment
from tests.support.processes import running_server
from tests.support.redis_server import PrivateRedis
from tests.support.redis_server import wait_until as _wait

# Short leases, so the messages the dead connection held come back in seconds.
VISIBILITY = 4
COUNTDOWN = 6
BOUND = 90.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stack(settings, private_redis: PrivateRedis, tmp_path: Path):
    """Settings, API client, resources, producer and worker launcher, all on `private_redis`."""
    from api import create_app
    from shared.resources import Resources
    from workers.factory import create_celery_app

    prefix = f"{settings.redis_key_prefix}survive-{uuid.uuid4().hex[:8]}:"
    private = dataclasses.replace(settings, redis_url=private_redis.url, redis_key_prefix=prefix)
    api = create_app(private)
    res = Resources.build(private)
    producer = create_celery_app(private)
    log_path = tmp_path / "worker.log"
    env = {
        **process_environment(),
        "REDIS_URL": private_redis.url,
        "CONVEYOR_REDIS_PREFIX": prefix,
        "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "console",
    }
    argv = [
        str(Path(sys.executable).parent / "celery"), "-A", "workers.app", "worker",
        "-P", "prefork", "-Q", "ledger", "-c", "2", "-n", f"survivor-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip
    with ExitStack() as running:

        def start_worker() -> subprocess.Popen:
            worker = running.enter_context(running_server(argv, env=env, log_path=log_path))
            _wait(lambda: "ready" in log_path.read_text(), 60, "the worker starting")
            return worker

        yield private, api.test_client(), res, producer, start_worker, log_path
    producer.close()
    res.close()
    api.extensions["conveyor"].close()


def _user(client) -> dict[str, str]:
    name = f"survivor_{uuid.uuid4().hex[:10]}"
    client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    login = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {login.get_json()['access_token']}"}


def _credit(client, headers: dict[str, str], amount: int) -> str:
    response = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": amount}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


def _states(res, ids: list[str]) -> dict[str, str]:
    with res.sessions() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids])))
        return {str(job.id): job.state for job in jobs}


def _entries(res, ids: list[str]) -> dict[str, int]:
    with res.sessions() as session:
        rows = session.scalars(
            select(LedgerEntry.job_id).where(LedgerEntry.job_id.in_([uuid.UUID(i) for i in ids]))
        ).all()
    return {i: sum(1 for job_id in rows if str(job_id) == i) for i in ids}


def test_worker_holding_countdown_messages_survives_redis_kill_and_runs_them_once(
    stack, private_redis: PrivateRedis
):
    settings, client, res, producer, start_worker, log_path = stack
    headers = _user(client)
    ids = [_credit(client, headers, 100 + n) for n in range(2)]
    broker = private_redis.client()
    unacked = f"{settings.redis_key_prefix}unacked"
    # No worker yet: replace the API's messages with what a retry publishes,
    # the same task ids with a countdown, so the worker will hold them unacked
    # with its BRPOP in flight.
    assert broker.delete(f"{settings.redis_key_prefix}ledger") == 1
    for task_id in ids:
        producer.send_task(
            "ledger.transaction", args=[task_id], task_id=task_id, queue="ledger",
            countdown=COUNTDOWN,
        )  # fmt: skip
    worker = start_worker()
    _wait(lambda: broker.hlen(unacked) == 2, 30, "the worker holding both messages")
    broker.close()
    assert set(_states(res, ids).values()) == {"PENDING"}

    private_redis.kill()
    _wait(lambda: "Connection to broker lost" in log_path.read_text(), 30, "the loss noticed")
    private_redis.start()
    _wait(
        lambda: log_path.read_text().count("Connected to redis") >= 2 or worker.poll() is not None,
        60,
        "the worker reconnecting",
    )
    log = log_path.read_text()
    fatal = [line for line in log.splitlines() if "Unrecoverable error" in line]
    assert worker.poll() is None, f"worker exited ({worker.returncode}): {fatal or log[-3000:]}"
    assert not fatal

    # The held messages come back when their leases expire, then run once.
    _wait(lambda: set(_states(res, ids).values()) == {"SUCCESS"}, BOUND, "the held jobs finishing")
    assert _entries(res, ids) == dict.fromkeys(ids, 1)
    # Still consuming: a job submitted after the outage completes too.
    after = _credit(client, headers, 7)
    _wait(lambda: _states(res, [after]) == {after: "SUCCESS"}, BOUND, "a new job finishing")
    assert worker.poll() is None
