"""Admission control: the per-user in-flight cap (one INSERT) and queue-depth back-pressure."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import func, select

from infra.broker.depth import RedisQueueDepths
from shared import jobs
from shared.jobs.inflight import slot_wait
from shared.models import Job
from tests.support.accounts import register_and_login
from tests.support.apps import app_with, unique_name
from tests.support.workers import running_worker
from workers.factory import create_celery_app

CREDIT = {"type": "credit", "amount": 100}


def _unfinished(resources, user_id: int) -> int:
    with resources.sessions() as session:
        return session.scalar(
            select(func.count()).where(Job.owner_id == user_id, Job.state.in_(jobs.UNFINISHED))
        )


def test_inflight_cap_answers_429_and_frees_up_when_a_job_finishes(
    settings, resources, redis_client
):
    # A private key prefix: these messages sit on a queue no test worker consumes.
    with app_with(settings, max_inflight_jobs=3) as app:
        client = app.test_client()
        user_id, headers = register_and_login(client, unique_name())
        first = client.post(
            "/api/v1/transactions", json=CREDIT, headers={**headers, "Idempotency-Key": "first"}
        )
        assert first.status_code == 202
        # Counting and inserting is one statement: one database round trip.
        assert first.headers["X-Query-Count"] == "1"
        for _ in range(2):
            assert (
                client.post("/api/v1/transactions", json=CREDIT, headers=headers).status_code == 202
            )

        refused = client.post("/api/v1/transactions/random", json={}, headers=headers)
        assert refused.status_code == 429
        assert refused.get_json()["error"]["code"] == "too_many_inflight_jobs"
        assert refused.get_json()["error"]["details"] == {"max_inflight_jobs": 3}
        assert _unfinished(resources, user_id) == 3
        # The depth check reads the list kombu really publishes to.
        prefix = app.extensions["conveyor"].settings.redis_key_prefix
        assert redis_client.llen(f"{prefix}ledger") == 3

        # A replay is not a new job: it still answers, at the cap.
        replay = client.post(
            "/api/v1/transactions", json=CREDIT, headers={**headers, "Idempotency-Key": "first"}
        )
        assert replay.status_code == 202
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.get_json()["task_id"] == first.get_json()["task_id"]
        # A new key at the cap is refused, and records nothing.
        fresh_key = client.post(
            "/api/v1/transactions", json=CREDIT, headers={**headers, "Idempotency-Key": "second"}
        )
        assert fresh_key.status_code == 429
        assert _unfinished(resources, user_id) == 3

        # Another user is not affected by this one's backlog.
        _, other = register_and_login(client, unique_name())
        assert client.post("/api/v1/transactions", json=CREDIT, headers=other).status_code == 202

        # A cancelled job frees a slot...
        task_id = first.get_json()["task_id"]
        assert client.delete(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 202
        assert client.post("/api/v1/transactions", json=CREDIT, headers=headers).status_code == 202
        assert _unfinished(resources, user_id) == 3
        refused = client.post("/api/v1/transactions", json=CREDIT, headers=headers)
        assert refused.status_code == 429

        # ...and so do jobs that succeed: a worker on this app's own queues runs them.
        worker_app = create_celery_app(app.extensions["conveyor"].settings)
        with running_worker(worker_app, queues="ledger"):
            deadline = time.monotonic() + 30
            while _unfinished(resources, user_id) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert _unfinished(resources, user_id) == 0
        with resources.sessions() as session:
            states = session.scalars(select(Job.state).where(Job.owner_id == user_id)).all()
        assert sorted(states) == ["REVOKED", "SUCCESS", "SUCCESS", "SUCCESS"]
        assert client.post("/api/v1/transactions", json=CREDIT, headers=headers).status_code == 202
        worker_app.close()


def test_create_job_counts_in_the_same_statement(resources, make_user):
    """Domain level: the cap is enforced by create_job itself on a real connection."""
    user_id, _ = make_user("domain_cap")
    with resources.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for _ in range(2):
            jobs.create_job(
                conn,
                owner_id=user_id,
                kind="ledger.random",
                params={"count": 1},
                ttl_seconds=60,
                max_inflight=2,
            )
        try:
            jobs.create_job(
                conn,
                owner_id=user_id,
                kind="ledger.random",
                params={"count": 1},
                ttl_seconds=60,
                max_inflight=2,
            )
        except jobs.TooManyInflightJobs:
            pass
        else:
            raise AssertionError("the third job was accepted over the cap")
        # Without a cap (the login-triggered job), it is recorded.
        jobs.create_job(
            conn, owner_id=user_id, kind="ledger.random", params={"count": 1}, ttl_seconds=60
        )
    assert _unfinished(resources, user_id) == 3


def test_overloaded_queue_answers_503_with_retry_after(settings, redis_client):
    with app_with(settings, queue_max_depth=2) as app:
        prefix = app.extensions["conveyor"].settings.redis_key_prefix
        client = app.test_client()
        _, headers = register_and_login(client, unique_name())
        backlog = f"{prefix}ledger"
        redis_client.rpush(backlog, "a", "b", "c")  # stand-ins: nothing consumes this prefix
        try:
            time.sleep(1.1)  # past the per-process depth cache
            refused = client.post("/api/v1/transactions", json=CREDIT, headers=headers)
            assert refused.status_code == 503
            assert refused.get_json()["error"]["code"] == "overloaded"
            assert refused.get_json()["error"]["details"] == {"queue": "ledger"}
            assert int(refused.headers["Retry-After"]) > 0
        finally:
            redis_client.delete(backlog)
        time.sleep(1.1)
        assert client.post("/api/v1/transactions", json=CREDIT, headers=headers).status_code == 202


def test_queue_depth_is_cached_per_process(redis_client, settings):
    now = [0.0]
    prefix = f"{settings.redis_key_prefix}depth:"
    depths = RedisQueueDepths(redis_client, prefix, max_age=1.0, clock=lambda: now[0])
    try:
        assert depths.depth("q") == 0
        redis_client.rpush(f"{prefix}q", "x", "y")
        assert depths.depth("q") == 0  # cached
        now[0] = 1.5
        assert depths.depth("q") == 2
    finally:
        redis_client.delete(f"{prefix}q")


def test_slot_wait_is_bounded_and_prefers_a_running_job():
    assert slot_wait(True, [40]) == 1
    assert slot_wait(False, []) == slot_wait(False, [None]) == 5  # nothing to estimate from
    assert slot_wait(False, [0]) == 1
    assert slot_wait(False, [30, None, 7]) == 7
    assert slot_wait(False, [500]) == 60


def test_the_inflight_429_says_when_a_slot_is_likely_free_not_the_limiters_minute(
    settings, redis_client
):
    with app_with(settings, max_inflight_jobs=2) as app:  # no worker consumes its queues
        client = app.test_client()
        _, headers = register_and_login(client, unique_name())
        other_id, other = register_and_login(client, unique_name())
        mine = [client.post("/api/v1/transactions", json=CREDIT, headers=headers).get_json()
                for _ in range(2)]  # fmt: skip
        refused = client.post("/api/v1/transactions", json=CREDIT, headers=headers)
        assert refused.status_code == 429
        # The queue has no drain history yet: the fixed guess, not the limiter's window reset.
        assert refused.headers["Retry-After"] == "5"
        # Others' jobs, behind mine in the queue, drain quickly (a worker's first writes).
        res = app.extensions["conveyor"]
        theirs = [client.post("/api/v1/transactions", json=CREDIT, headers=other).get_json()
                  for _ in range(2)]  # fmt: skip
        for accepted in theirs:
            time.sleep(0.01)  # claims a few milliseconds apart: a drain rate to divide by
            res.statuses.write(other_id, {**accepted, "state": "SUCCESS"})
        refused = client.post("/api/v1/transactions", json=CREDIT, headers=headers)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"  # mine are next, at about 100 a second
        assert refused.headers["X-RateLimit-Limit"]  # the limiter ran, and left it alone
        # One of mine running: a slot may free at any moment.
        with res.autocommit_engine.connect() as conn:
            assert jobs.claim(conn, uuid.UUID(mine[0]["task_id"])) is not None
        assert (
            client.post("/api/v1/transactions", json=CREDIT, headers=headers).headers["Retry-After"]
            == "1"
        )
