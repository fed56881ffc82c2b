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

from infra.broker.publish import build_publisher
from shared import jobs
from shared.jobs.kinds import QUEUES
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
    build_publisher(stack.settings, QUEUES).publish("ledger.transaction", task_id, "ledger", {})
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
    # The cancelled job's message was delivered and handled (skipped: Celery's tracer
    # says "ignored", its state REVOKED, tests/ops/test_flower_revoked.py), not lost.
    _until(lambda: stack.deliveries(task_id, "ignored") == 1, "the cancelled message consumed")
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


def test_a_half_posted_random_batch_resumes_after_redelivery(stack):
    """A worker died after posting part of a batch: the next delivery posts only the rest."""
    from shared import ledger

    user_id, headers = register_and_login(stack.client, f"half_{uuid.uuid4().hex[:8]}")
    fund(stack.resources, user_id, 5_000)
    task_id = stack.client.post(
        "/api/v1/transactions/random", json={"count": 6}, headers=headers
    ).get_json()["task_id"]
    job_id = jobs.parse_job_id(task_id)
    plan = ledger.plan_random_batch(job_id, 6)
    # The first attempt: claimed, three entries committed, then the worker was lost.
    with stack.resources.sessions.begin() as session:
        jobs.claim(session, job_id)
    first_three = []
    for seq, planned in enumerate(plan[:3]):
        with stack.resources.sessions.begin() as session:
            posting = ledger.post_random_entry(
                session, user_id=user_id, job_id=job_id, seq=seq, planned=planned
            )
        first_three.append(posting.entry_id)
    # Its message comes back (here it never left the queue) and a worker takes it.
    stack.start_worker("resume")
    done = wait_for_state(stack.client, headers, task_id)
    assert done["state"] == "SUCCESS" and done["result"]["count"] == 6
    assert done["result"]["transaction_ids"][:3] == first_three  # recognised, not re-posted
    assert _entries_for(stack.resources, task_id) == 6
    with stack.resources.sessions() as session:
        assert ledger.ledger_sum(session, user_id) == done["result"]["balance"]
    assert _row(stack.resources, task_id).attempts == 2


def test_workers_go_on_while_the_status_redis_is_down(settings, redis_client, tmp_path):
    """Broker and status on different servers; the status one is down: jobs still complete."""
    dead = "redis://127.0.0.1:1/0"
    with private_stack(
        settings,
        redis_client,
        tmp_path,
        celery_broker_url=settings.redis_url,
        celery_result_backend=settings.redis_url,
        # Login's brute-force limit fails closed without its store: keep that one up.
        ratelimit_storage_url=settings.redis_url,
        redis_url=dead,
    ) as split:
        _, headers = register_and_login(split.client, f"split_{uuid.uuid4().hex[:8]}")
        accepted = split.client.post(
            "/api/v1/transactions", json={"type": "credit", "amount": 42}, headers=headers
        )
        assert accepted.status_code == 202  # the broker is up; status Redis is not needed
        task_id = accepted.get_json()["task_id"]
        split.start_worker("split")
        _until(lambda: split.deliveries(task_id, "succeeded") == 1, "the job run")
        # Polls fall back to the row; the posting is there.
        done = wait_for_state(split.client, headers, task_id)
        assert done["state"] == "SUCCESS" and done["result"]["balance"] == 42
        assert _entries_for(split.resources, task_id) == 1
        logs = (tmp_path / "split.log").read_text()
        assert "not published: Redis unavailable" in logs  # it said what it could not do
