"""Delivery semantics on the production pool: a real prefork worker (the Procfile's options).

Each test has a private broker prefix (tests/support/stacks.py), so only its
own worker sees its messages and nothing is left on a shared queue. Worker
logs say how often each message was received and finished, so the tests
wait for that, not for time to pass.
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from shared import jobs
from shared.broker.publish import build_publisher
from shared.models import Job, LedgerEntry
from tests.support.accounts import fund, register_and_login
from tests.support.polling import wait_for_state
from tests.support.stacks import private_stack
from tests.support.workers import running_worker
from workers.job_run import JobRun, JobSuperseded
from workers.tasks.ledger import _post_one

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(settings, redis_client, tmp_path):
    with private_stack(settings, redis_client, tmp_path) as private:
        yield private


def _entries_for(resources, task_id: str) -> int:
    with resources.sessions() as session:
        return session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.job_id == task_id)
        )


def _row(resources, task_id: str) -> Job:
    with resources.sessions() as session:
        return session.get(Job, uuid.UUID(task_id))


def _until(condition, what: str, bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {bound:.0f}s"
        time.sleep(0.1)


def test_the_same_ledger_job_delivered_twice_posts_once(stack):
    user_id, headers = register_and_login(stack.client, f"dup_{uuid.uuid4().hex[:8]}")
    fund(stack.resources, user_id, 1_000)
    task_id = stack.client.post(
        "/api/v1/transactions", json={"type": "debit", "amount": 400}, headers=headers
    ).get_json()["task_id"]
    # A second copy of the same message, as a broker redelivers it after a
    # lost worker: same task, same task id, same argument.
    build_publisher(stack.settings).publish("ledger.transaction", task_id, "ledger", {})
    assert stack.resources.redis.llen(f"{stack.settings.redis_key_prefix}ledger") == 2
    # Two processes: the copies may run at the same moment.
    stack.start_worker("dup", concurrency=2)
    _until(lambda: stack.deliveries(task_id, "succeeded") == 2, "both copies consumed")
    done = wait_for_state(stack.client, headers, task_id)
    assert done["state"] == "SUCCESS" and done["result"]["balance"] == 600
    assert _entries_for(stack.resources, task_id) == 1
    assert stack.client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 600


def test_a_job_cancelled_before_it_starts_never_runs(stack):
    _, headers = register_and_login(stack.client, f"cancel_{uuid.uuid4().hex[:8]}")
    task_id = stack.client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 777}, headers=headers
    ).get_json()["task_id"]
    assert stack.client.delete(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 202
    later = stack.client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 5}, headers=headers
    ).get_json()["task_id"]
    stack.start_worker("cancel")
    # The cancelled job's message was delivered and handled (skipped), not lost.
    _until(lambda: stack.deliveries(task_id, "succeeded") == 1, "the cancelled message consumed")
    assert wait_for_state(stack.client, headers, later)["state"] == "SUCCESS"
    row = _row(stack.resources, task_id)
    # The row, not the live document (which is never overwritten once terminal).
    assert (row.state, row.attempts) == ("REVOKED", 0)
    assert _entries_for(stack.resources, task_id) == 0
    assert stack.client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 5
    assert stack.client.delete(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 409


def test_a_cancel_that_commits_while_the_job_runs_rolls_its_effect_back(stack, celery_app):
    """The window between a worker's claim and its posting: the cancel wins, nothing posts."""
    _user_id, headers = register_and_login(stack.client, f"race_{uuid.uuid4().hex[:8]}")
    task_id = stack.client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 300}, headers=headers
    ).get_json()["task_id"]
    # What a worker does first (no worker consumes this stack: its message stays queued).
    with stack.resources.sessions.begin() as session:
        claimed = jobs.claim(session, jobs.parse_job_id(task_id))
    assert claimed is not None and _row(stack.resources, task_id).state == "STARTED"
    # The owner cancels the running job, and that commits first...
    cancel = stack.client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
    assert cancel.status_code == 202 and cancel.get_json()["state"] == "REVOKED"
    # ...then the worker's posting transaction runs: the task's own code path.
    run = JobRun(celery_app.tasks["ledger.transaction"], stack.resources, claimed)
    with pytest.raises(JobSuperseded):
        _post_one(run)
    assert _entries_for(stack.resources, task_id) == 0
    assert stack.client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 0
    assert _row(stack.resources, task_id).state == "REVOKED"


def test_finished_jobs_cannot_be_cancelled(client, make_user, celery_app):
    _, headers = make_user()
    task_id = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 5}, headers=headers
    ).get_json()["task_id"]
    with running_worker(celery_app):
        wait_for_state(client, headers, task_id)
    response = client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
    assert response.status_code == 409
    assert response.get_json()["error"]["details"] == {"state": "SUCCESS"}
