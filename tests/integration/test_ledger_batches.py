"""Ledger jobs drained in batches by a real prefork worker (tuning/celery_ledger_batches.py).

A backlog is queued before the worker starts, so its consumer gathers
messages while its pool is busy: the jobs run in batches of several, one
database call each. Every job must still end as if it had run alone:
exactly once, cancelled ones never, overdrafts failed with their code, a
repeated message posted once, live documents and cached reads fresh.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from sqlalchemy import func, select, text

from infra.broker.publish import build_publisher
from shared import jobs
from shared.jobs.kinds import QUEUES
from shared.models import Job, LedgerEntry
from tests.support.accounts import fund, register_and_login
from tests.support.stacks import private_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(settings, redis_client, tmp_path):
    # A backlog of more than the default 50 unfinished jobs per user.
    # The batching adjustment itself is under test: on whatever CONVEYOR_TUNING says.
    with private_stack(
        settings, redis_client, tmp_path, max_inflight_jobs=500, tuning="on"
    ) as private:
        yield private


def _submit(stack, headers, body) -> str:
    response = stack.client.post("/api/v1/transactions", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


def _rows(stack, task_ids) -> dict[str, Job]:
    with stack.resources.sessions() as session:
        found = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(t) for t in task_ids])))
        return {str(job.id): job for job in found}


def _wait_terminal(stack, task_ids, bound: float = 90.0) -> dict[str, Job]:
    deadline = time.monotonic() + bound
    while True:
        rows = _rows(stack, task_ids)
        if all(row.state in ("SUCCESS", "FAILURE", "REVOKED") for row in rows.values()):
            return rows
        unfinished = [t for t, row in rows.items() if row.state not in jobs.TERMINAL]
        assert time.monotonic() < deadline, f"{len(unfinished)} jobs unfinished: {unfinished[:3]}"
        time.sleep(0.2)


def _entries(stack, task_id: str) -> int:
    with stack.resources.sessions() as session:
        return session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.job_id == task_id)
        )


def _batch_sizes(stack) -> list[int]:
    """The batch size on each batched job's log line (JSON lines, `batch_size`)."""
    sizes = []
    for path in stack.log_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            if '"batch_size"' in line and "succeeded in" in line:
                sizes.append(json.loads(line)["batch_size"])
    return sizes


def test_a_backlog_drains_in_batches_and_each_job_keeps_its_own_outcome(stack):
    tag = uuid.uuid4().hex[:8]
    _saver_id, saver = register_and_login(stack.client, f"batch_saver_{tag}")
    spender_id, spender = register_and_login(stack.client, f"batch_spender_{tag}")
    fund(stack.resources, spender_id, 1_000)
    # Warm the spender's cached wallet read: a read after SUCCESS must not return it.
    assert stack.client.get("/api/v1/wallet", headers=spender).get_json()["balance"] == 1_000

    credits = [_submit(stack, saver, {"type": "credit", "amount": n}) for n in range(1, 61)]
    debits = [_submit(stack, spender, {"type": "debit", "amount": 10}) for _ in range(30)]
    overdrafts = [_submit(stack, saver, {"type": "debit", "amount": 10**9}) for _ in range(3)]
    cancelled = _submit(stack, spender, {"type": "credit", "amount": 5_000})
    assert stack.client.delete(f"/api/v1/tasks/{cancelled}", headers=spender).status_code == 202
    repeated = credits[7]
    publisher = build_publisher(stack.settings, QUEUES)
    # A second copy of one message (as after a lost worker) and one that names no job.
    publisher.publish("ledger.transaction", repeated, "ledger", {})
    publisher.publish("ledger.transaction", "not-a-job-id", "ledger", {})

    stack.start_worker("batches", concurrency=2)
    everything = credits + debits + overdrafts + [cancelled]
    rows = _wait_terminal(stack, everything)

    for task_id in credits + debits:
        assert rows[task_id].state == "SUCCESS", rows[task_id].error_message
        assert rows[task_id].attempts == 1
        assert _entries(stack, task_id) == 1
    for task_id in overdrafts:
        assert (rows[task_id].state, rows[task_id].error_code) == ("FAILURE", "insufficient_funds")
        assert _entries(stack, task_id) == 0
    assert rows[cancelled].state == "REVOKED" and _entries(stack, cancelled) == 0

    # Fresh reads: the wallets, and every job's live document, say the outcome.
    assert stack.client.get("/api/v1/wallet", headers=saver).get_json()["balance"] == sum(
        range(1, 61)
    )
    assert stack.client.get("/api/v1/wallet", headers=spender).get_json()["balance"] == 700
    for task_id in credits + debits:
        owner = saver if task_id in credits else spender
        body = stack.client.get(f"/api/v1/tasks/{task_id}", headers=owner).get_json()
        assert body["state"] == "SUCCESS" and body["result"] == rows[task_id].result
    # Each job's owner was told, once per job.
    notified = stack.client.get("/api/v1/notifications?limit=100", headers=spender).get_json()
    succeeded = [n for n in notified["items"] if n["type"] == "job.succeeded"]
    assert sorted(n["task_id"] for n in succeeded) == sorted(debits)

    # The backlog really ran in batches (a lone job runs as soon as a process is free).
    # (A batch's lines are written when it returns to the main process, just
    # after its jobs committed.)
    deadline = time.monotonic() + 30
    while len(sizes := _batch_sizes(stack)) < len(credits) + len(debits):
        assert time.monotonic() < deadline, f"{len(sizes)} batched jobs logged as succeeded"
        time.sleep(0.1)
    assert max(sizes) > 1
    # Each delivery logs Celery's "received" line once, batched or handed back
    # (the overdrafts ran through Celery's own path after their batch).
    for task_id in [credits[0], debits[-1], *overdrafts]:
        assert stack.deliveries(task_id, "received") == 1
    assert stack.deliveries(repeated, "received") == 2
    # Every message was acknowledged: none is left for redelivery.
    unacked = f"{stack.settings.redis_key_prefix}unacked"
    deadline = time.monotonic() + 30
    while stack.resources.redis.hlen(unacked) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.resources.redis.hlen(unacked) == 0
    # The message naming no job was dropped by Celery's path and the worker lives on.
    assert stack.workers[0].poll() is None


def test_a_job_that_breaks_its_batch_does_not_take_the_others_down(stack):
    """A batch whose call fails hands every job back; each then runs on its own."""
    tag = uuid.uuid4().hex[:8]
    user_id, headers = register_and_login(stack.client, f"batch_poison_{tag}")
    first = _submit(stack, headers, {"type": "credit", "amount": 1})
    # A row no API would write (its amount is not a number): the batch's one
    # statement fails on it, so the whole call fails and rolls back.
    poison = uuid.uuid4()
    with stack.resources.sessions.begin() as session:
        session.execute(
            text(
                "INSERT INTO jobs (id, owner_id, kind, queue, state, progress, message, params,"
                " attempts, redispatches, created_at, updated_at, expires_at)"
                " VALUES (:id, :owner, 'ledger.transaction', 'ledger', 'PENDING', 0, '',"
                " CAST(:params AS jsonb), 0, 0, now(), now(), now() + interval '1 hour')"
            ),
            {"id": poison, "owner": user_id, "params": '{"type": "credit", "amount": "lots"}'},
        )
    build_publisher(stack.settings, QUEUES).publish("ledger.transaction", str(poison), "ledger", {})
    rest = [_submit(stack, headers, {"type": "credit", "amount": 10}) for _ in range(20)]

    # One process: the first message runs alone, the rest gather behind it.
    stack.start_worker("poison", concurrency=1)
    rows = _wait_terminal(stack, [first, *rest])
    assert all(rows[t].state == "SUCCESS" for t in [first, *rest])
    assert stack.client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 201
    assert _rows(stack, [str(poison)])[str(poison)].state == "PENDING"
    logs = "".join(p.read_text() for p in stack.log_dir.glob("*.log"))
    assert re.search(r"ledger batch of \d+ not posted; each job runs on its own", logs)
    assert stack.workers[0].poll() is None
