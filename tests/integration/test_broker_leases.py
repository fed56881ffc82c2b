"""No job waits on a dead worker: real prefork workers, SIGKILLed, on a private broker prefix.

Each test runs its own workers as subprocesses (the Procfile's `worker` line's
pool and options) with BROKER_VISIBILITY_TIMEOUT=3 s, on a key prefix of its
own, so no other test's worker can take its messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select, text

from shared.models import Job, LedgerEntry
from tests.support.accounts import PASSWORD
from tests.support.stacks import private_stack

VISIBILITY = 3
# Lease expiry, one restore scan, a fresh worker's start-up and the jobs
# themselves, with room for a loaded 2-core machine. The old behaviour (an
# hour) fails this by far.
RECOVERY_BOUND = 90.0


@pytest.fixture
def leased(settings, redis_client, tmp_path: Path):
    """Settings, a Flask client, resources and a worker launcher on a private broker prefix."""
    with private_stack(
        settings, redis_client, tmp_path, broker_visibility_timeout=VISIBILITY
    ) as stack:

        def start_worker(name: str, concurrency: int = 1) -> subprocess.Popen:
            # Reserve several, so a kill strands waiting messages as well as the running one.
            return stack.start_worker(name, concurrency=concurrency, prefetch=4)

        yield stack.settings, stack.client, stack.resources, start_worker


def _user(client) -> tuple[int, dict[str, str]]:
    name = f"lease_{uuid.uuid4().hex[:10]}"
    created = client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    login = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    token = login.get_json()["access_token"]
    return created.get_json()["id"], {"Authorization": f"Bearer {token}"}


def _credit(client, headers, amount: int) -> str:
    response = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": amount}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


@contextmanager
def _wallet_locked(res, user_id: int) -> Iterator[None]:
    """Hold the user's wallet row, so postings to it block inside the worker."""
    with res.engine.connect() as conn:
        conn.execute(text("BEGIN"))
        conn.execute(text("SELECT 1 FROM wallets WHERE user_id = :u FOR UPDATE"), {"u": user_id})
        yield
        conn.execute(text("ROLLBACK"))


def _wait(predicate, bound: float, what: str) -> float:
    """Seconds until `predicate()` held; fails after `bound` seconds."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < bound, f"{what} not within {bound:.0f}s"
        time.sleep(0.2)
    return time.monotonic() - start


def _jobs(res, ids: list[str]) -> dict[str, Job]:
    with res.sessions() as session:
        rows = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids])))
        return {str(job.id): job for job in rows}


def _entries(res, ids: list[str]) -> dict[str, int]:
    with res.sessions() as session:
        rows = session.execute(
            select(LedgerEntry.job_id).where(LedgerEntry.job_id.in_([uuid.UUID(i) for i in ids]))
        ).all()
    counts: dict[str, int] = {}
    for (job_id,) in rows:
        counts[str(job_id)] = counts.get(str(job_id), 0) + 1
    return counts


def _waiting_on_a_lock(res) -> bool:
    """A worker's posting is running and waits on the wallet row the test holds."""
    with res.engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return waiting > 0


def _unacked(redis_client, prefix: str) -> int:
    return redis_client.hlen(f"{prefix}unacked")


def test_a_killed_workers_running_and_reserved_jobs_complete_once(leased, redis_client):
    settings, client, res, start_worker = leased
    user_id, headers = _user(client)
    doomed = start_worker("doomed")
    with _wallet_locked(res, user_id):
        # Concurrency 1 x prefetch 4: one job runs (blocked on the wallet row)
        # and three wait reserved, all four unacked.
        ids = [_credit(client, headers, 100 + n) for n in range(4)]
        _wait(
            lambda: _unacked(redis_client, settings.redis_key_prefix) == 4,
            60,
            "the worker holding all four messages",
        )
        _wait(lambda: _waiting_on_a_lock(res), 30, "a posting blocked on the wallet")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
        killed_at = time.monotonic()
    start_worker("rescuer")
    _wait(
        lambda: all(j.state == "SUCCESS" for j in _jobs(res, ids).values()),
        RECOVERY_BOUND,
        "the dead worker's jobs completing on another worker",
    )
    recovered_in = time.monotonic() - killed_at
    assert recovered_in < RECOVERY_BOUND
    # Exactly once: one ledger entry per job, and the balance is their sum.
    assert _entries(res, ids) == dict.fromkeys(ids, 1)
    wallet = client.get("/api/v1/wallet", headers=headers).get_json()
    assert wallet["balance"] == sum(100 + n for n in range(4))
    assert _unacked(redis_client, settings.redis_key_prefix) == 0


def _deliveries(log_dir: Path, task_id: str) -> int:
    """How many times any worker of this test received `task_id`'s message."""
    return sum(
        log.read_text().count(f"ledger.transaction[{task_id}] received")
        for log in log_dir.glob("*.log")
    )


def test_a_healthy_job_longer_than_the_visibility_timeout_runs_once(
    leased, redis_client, tmp_path: Path
):
    _settings, client, res, start_worker = leased
    user_id, headers = _user(client)
    holder = start_worker("holder")
    with _wallet_locked(res, user_id):
        task_id = _credit(client, headers, 700)
        _wait(lambda: _waiting_on_a_lock(res), 30, "the posting blocked on the wallet")
        # A second worker consumes the same queue: without leases it would
        # restore the running job's message after 3 s and start it again.
        start_worker("bystander")
        time.sleep(3 * VISIBILITY)  # the passing of time is the condition under test: 3 leases
        assert holder.poll() is None
    _wait(lambda: _jobs(res, [task_id])[task_id].state == "SUCCESS", 30, "the job finishing")
    job = _jobs(res, [task_id])[task_id]
    assert job.attempts == 1
    # The bystander never got the message: the holder kept its lease.
    assert _deliveries(tmp_path, task_id) == 1, "the running job's message was redelivered"
    assert _entries(res, [task_id]) == {task_id: 1}


def test_a_countdown_retry_held_by_a_killed_worker_is_not_lost(leased, redis_client, celery_app):
    """A retry's message waits in the worker (unacked) until its ETA; a dead worker's comes back."""
    settings, client, res, start_worker = leased
    _user_id, headers = _user(client)
    task_id = _credit(client, headers, 900)  # no worker yet: its message waits in the queue
    queue_key = f"{settings.redis_key_prefix}ledger"
    assert redis_client.delete(queue_key) == 1
    # What a retry publishes: the same task id again, with a countdown.
    from workers.factory import create_celery_app

    producer = create_celery_app(settings)
    producer.send_task(
        "ledger.transaction", args=[task_id], task_id=task_id, queue="ledger", countdown=9
    )
    doomed = start_worker("doomed")
    _wait(lambda: _unacked(redis_client, settings.redis_key_prefix) == 1, 60, "the ETA held")
    assert redis_client.llen(queue_key) == 0
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    assert _jobs(res, [task_id])[task_id].state == "PENDING"  # its countdown had not run out
    start_worker("rescuer")
    _wait(
        lambda: _jobs(res, [task_id])[task_id].state == "SUCCESS",
        RECOVERY_BOUND,
        "the countdown job completing after its worker died",
    )
    assert _entries(res, [task_id]) == {task_id: 1}
    producer.close()
