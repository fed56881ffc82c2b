"""Housekeeping against real Redis, PostgreSQL and a real worker: beat tasks and effects."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from beat_schedule import beat_schedule
from infra.broker import keys
from infra.broker.inflight import RedisInFlight, broker_task_ids
from shared import jobs, maintenance
from shared.jobs import kinds, utcnow
from shared.models import Job, LedgerEntry
from tests.support.workers import running_worker
from workers.tasks.maintenance import republish

pytestmark = pytest.mark.integration

LONG_AGO = timedelta(hours=2)


def _job(resources, owner_id: int, kind: str, params: dict, **row) -> str:
    """A job record as the API writes it, then aged/moved as `row` says."""
    with resources.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        submission = jobs.create_job(
            conn, owner_id=owner_id, kind=kind, params=params, ttl_seconds=3600
        )
    job_id = submission.status["task_id"]
    if row:
        with resources.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(**row))
    return job_id


def _row(resources, job_id: str):
    with resources.sessions() as session:
        return session.execute(select(Job).where(Job.id == uuid.UUID(job_id))).scalar_one_or_none()


def _entries(resources, job_id: str) -> int:
    with resources.sessions() as session:
        return session.scalar(select(func.count()).where(LedgerEntry.job_id == uuid.UUID(job_id)))


def _wait_for_row_state(resources, job_id: str, state: str, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _row(resources, job_id)
        if row is not None and row.state == state:
            return row
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {state}: {row and row.state}")


def test_redispatch_sweep_recovers_a_job_whose_message_was_deleted(
    celery_app, resources, redis_client, make_user
):
    user_id, _ = make_user("lost")
    prefix = resources.settings.redis_key_prefix
    publish = republish(celery_app)
    lost = _job(resources, user_id, "ledger.transaction", {"type": "credit", "amount": 250})
    queued = _job(resources, user_id, "ledger.transaction", {"type": "credit", "amount": 40})
    publish("ledger.transaction", lost, "ledger")
    publish("ledger.transaction", queued, "ledger")
    # Lose the first message (a Redis restart without AOF, a flushed queue...).
    for raw in redis_client.lrange(f"{prefix}ledger", 0, -1):
        if json.loads(raw)["headers"]["id"] == lost:
            assert redis_client.lrem(f"{prefix}ledger", 0, raw) == 1
    with resources.sessions.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id.in_([uuid.UUID(lost), uuid.UUID(queued)]))
            .values(updated_at=utcnow() - LONG_AGO)
        )
    assert lost not in broker_task_ids(redis_client, prefix, ["ledger"])

    def sweep() -> list[str]:
        return maintenance.redispatch_lost(
            resources.sessions,
            RedisInFlight(redis_client, prefix),
            publish,
            older_than_seconds=3600,
        )

    first = sweep()
    assert lost in first
    assert queued not in first  # its message is still waiting: not lost
    assert lost not in sweep()  # a second beat firing at once publishes nothing more
    assert lost in broker_task_ids(redis_client, prefix, ["ledger"])

    with running_worker(celery_app, queues="ledger"):
        done = _wait_for_row_state(resources, lost, "SUCCESS")
        _wait_for_row_state(resources, queued, "SUCCESS")
    assert done.attempts == 1
    assert _entries(resources, lost) == 1
    assert done.result["balance"] in (250, 290)


def test_a_job_whose_message_keeps_vanishing_is_redispatched_a_bounded_number_of_times(
    celery_app, resources, redis_client, make_user
):
    user_id, _ = make_user("vanishing")
    prefix = resources.settings.redis_key_prefix
    job_id = _job(resources, user_id, "ledger.transaction", {"type": "credit", "amount": 9})
    sent: list[str] = []

    def publish_then_lose(kind: str, task_id: str, queue_name: str) -> None:
        sent.append(task_id)  # published, and then lost again before any worker saw it

    def sweep() -> list[str]:
        with resources.sessions.begin() as session:
            session.execute(
                update(Job)
                .where(Job.id == uuid.UUID(job_id))
                .values(updated_at=utcnow() - LONG_AGO)
            )
        return maintenance.redispatch_lost(
            resources.sessions,
            RedisInFlight(redis_client, prefix),
            publish_then_lose,
            older_than_seconds=3600,
            max_redispatches=2,
            statuses=resources.statuses,
            notifications=resources.notifications,
        )

    assert job_id not in broker_task_ids(redis_client, prefix, ["ledger"])  # never published
    assert sweep() == [job_id]
    assert sweep() == [job_id]
    assert sweep() == []  # the third loss: no third publish...
    assert sent == [job_id, job_id]
    row = _row(resources, job_id)
    assert (row.state, row.error_code, row.redispatches) == ("FAILURE", "lost", 2)
    # ...and its owner hears about it, like any failed job.
    status = resources.statuses.read(job_id, user_id)
    assert status["state"] == "FAILURE" and status["error"]["code"] == "lost"
    notes = resources.notifications.recent(user_id)
    assert [n["type"] for n in notes if n["task_id"] == job_id] == ["job.failed"]
    assert sweep() == []  # a finished job is never looked at again
    assert sent == [job_id, job_id]


def test_a_started_or_retrying_job_whose_held_message_vanished_is_published_again(
    celery_app, resources, redis_client, make_user
):
    """Its worker died with the message (a failover dropped the held copy): no time limit wait."""
    user_id, _ = make_user("orphaned")
    prefix = resources.settings.redis_key_prefix
    aged = {"updated_at": utcnow() - LONG_AGO}
    orphaned = _job(resources, user_id, "ledger.random", {"count": 2}, state="STARTED", **aged)
    retrying = _job(resources, user_id, "ledger.transaction", {"type": "credit", "amount": 5},
                    state="RETRY", **aged)  # fmt: skip
    held = _job(resources, user_id, "ledger.transaction", {"type": "credit", "amount": 7},
                state="STARTED", **aged)  # fmt: skip
    ai = _job(resources, user_id, "ai.text", {"prompt": "p"}, state="STARTED", **aged)
    # `held` is running on a live worker: its message is in kombu's unacked hash
    # ([message, exchange, routing key]).
    entry = json.dumps([{"headers": {"id": held}}, "", "ledger"])
    redis_client.hset(keys.unacked(prefix), "tag-held", entry)
    sent: list[str] = []

    def sweep(in_flight) -> list[str]:
        return maintenance.redispatch_lost(
            resources.sessions,
            in_flight,
            lambda kind, task_id, queue: sent.append(task_id),
            older_than_seconds=3600,
            max_redispatches=3,
            rerun_kinds=kinds.rerunnable_kinds(),
        )

    try:
        assert sorted(sweep(RedisInFlight(redis_client, prefix))) == sorted([orphaned, retrying])
        assert sweep(RedisInFlight(redis_client, prefix)) == []  # stamped: one publish each
    finally:
        redis_client.hdel(keys.unacked(prefix), "tag-held")
    assert sorted(sent) == sorted([orphaned, retrying])
    # An AI run may have called its upstream already: the reaper decides, after its limit.
    assert _row(resources, ai).redispatches == 0 and _row(resources, held).redispatches == 0
    orphaned_row = _row(resources, orphaned)
    assert (orphaned_row.state, orphaned_row.redispatches) == ("STARTED", 1)
    republish(celery_app)("ledger.random", orphaned, "ledger")
    with running_worker(celery_app, queues="ledger"):
        done = _wait_for_row_state(resources, orphaned, "SUCCESS")
    assert _entries(resources, orphaned) == 2 and done.attempts == 1


class _CountsOnly:
    """A broker view that cannot list held messages (as on RabbitMQ): none reported present."""

    exact = False

    def present(self, candidates) -> set[str]:
        return set()

    def close(self) -> None:
        pass


def test_where_held_messages_cannot_be_listed_only_pending_jobs_are_published_again(
    resources, make_user
):
    user_id, _ = make_user("coarse")
    aged = {"updated_at": utcnow() - LONG_AGO}
    running = _job(resources, user_id, "ledger.random", {"count": 1}, state="STARTED", **aged)
    waiting = _job(resources, user_id, "ledger.random", {"count": 1}, **aged)
    # RabbitMQ requeues a dead consumer's messages itself; a STARTED job may be running.
    assert maintenance.redispatch_lost(
        resources.sessions,
        _CountsOnly(),
        lambda kind, task_id, queue: None,
        older_than_seconds=3600,
        rerun_kinds=kinds.rerunnable_kinds(),
    ) == [waiting]  # fmt: skip
    assert _row(resources, running).redispatches == 0


def test_reaper_fails_stuck_jobs_and_reruns_idempotent_ones(celery_app, resources, make_user):
    user_id, _ = make_user("stuck")
    stale = {"state": "STARTED", "attempts": 1, "updated_at": utcnow() - LONG_AGO}
    stuck_ai = _job(resources, user_id, "ai.text", {"prompt": "hello"}, **stale)
    stuck_ledger = _job(
        resources, user_id, "ledger.transaction", {"type": "credit", "amount": 75}, **stale
    )
    worn_out = _job(
        resources,
        user_id,
        "ledger.transaction",
        {"type": "credit", "amount": 5},
        **(stale | {"attempts": 3}),
    )
    running = _job(resources, user_id, "ai.text", {"prompt": "hi"}, state="STARTED", attempts=1)
    # The dead worker's last live document.
    with resources.sessions() as session:
        started = jobs.get_status(session, uuid.UUID(stuck_ledger), user_id)
    resources.statuses.write(user_id, started)

    def reap() -> maintenance.ReapOutcome:
        return maintenance.reap_stuck(
            resources.sessions,
            resources.statuses,
            resources.notifications,
            republish(celery_app),
            time_limits=kinds.hard_time_limits(
                celery_app.conf.conveyor_settings.ai_timeout_seconds
            ),
            grace_seconds=60,
            idempotent_kinds=kinds.rerunnable_kinds(),
            max_attempts=3,
        )

    outcome = reap()
    assert {stuck_ai, worn_out} <= set(outcome.failed)
    assert stuck_ledger in outcome.redispatched
    assert running not in outcome.failed + outcome.redispatched
    again = reap()  # beat firing twice: nothing is failed or published twice
    assert not {stuck_ai, worn_out, stuck_ledger} & set(again.failed + again.redispatched)

    failed = _row(resources, stuck_ai)
    assert (failed.state, failed.error_code) == ("FAILURE", "timeout")
    status = resources.statuses.read(stuck_ai, user_id)
    assert status["state"] == "FAILURE" and status["error"]["code"] == "timeout"
    notes = [n for n in resources.notifications.recent(user_id) if n["task_id"] == stuck_ai]
    assert [n["type"] for n in notes] == ["job.failed"]
    assert _row(resources, running).state == "STARTED"
    assert resources.statuses.read(stuck_ledger, user_id)["state"] == "PENDING"

    with running_worker(celery_app, queues="ledger"):
        rerun = _wait_for_row_state(resources, stuck_ledger, "SUCCESS")
    assert rerun.result["balance"] >= 75
    assert _entries(resources, stuck_ledger) == 1
    assert _entries(resources, worn_out) == 0


def test_expire_jobs_and_release_idempotency_keys(resources, make_user):
    user_id, _ = make_user("expiry")
    now = utcnow()
    expired = _job(resources, user_id, "ledger.random", {"count": 1}, expires_at=now - LONG_AGO)
    kept = _job(resources, user_id, "ledger.random", {"count": 1}, idempotency_key="fresh-key")
    old_key = _job(
        resources,
        user_id,
        "ledger.random",
        {"count": 1},
        idempotency_key="old-key",
        created_at=now - timedelta(days=2),
    )
    assert maintenance.expire_jobs(resources.sessions) >= 1
    assert _row(resources, expired) is None
    assert maintenance.release_idempotency_keys(resources.sessions, ttl_seconds=24 * 3600) >= 1
    assert _row(resources, old_key).idempotency_key is None
    assert _row(resources, kept).idempotency_key == "fresh-key"
    assert maintenance.expire_jobs(resources.sessions) == 0  # idempotent


def test_expire_notifications_drops_only_old_ones(resources, redis_client, make_user):
    user_id, _ = make_user("notes")
    key = resources.keys.notifications(user_id)
    old = [
        {
            "id": f"old{i}",
            "type": "job.succeeded",
            "title": "t",
            "message": "m",
            "task_id": None,
            "created_at": jobs.isoformat(utcnow() - timedelta(days=9)),
        }
        for i in range(2)
    ]
    for item in old:
        redis_client.lpush(key, json.dumps(item))
    fresh = resources.notifications.push(
        user_id, type="job.succeeded", title="t", message="m", task_id=None
    )
    resources.notifications.mark_read(user_id, ["old0", fresh["id"]])
    removed = maintenance.expire_notifications(
        redis_client, resources.settings.redis_key_prefix, max_age_seconds=7 * 24 * 3600
    )
    assert removed >= 2
    assert [n["id"] for n in resources.notifications.recent(user_id)] == [fresh["id"]]
    assert redis_client.smembers(resources.keys.notifications_read(user_id)) == {fresh["id"]}


def test_every_beat_entry_names_a_registered_task_routed_to_maintenance(celery_app):
    celery_app.loader.import_default_modules()
    assert beat_schedule, "the schedule is empty"
    for name, entry in beat_schedule.items():
        task = celery_app.tasks.get(entry["task"])
        assert task is not None, f"{name}: {entry['task']} is not registered"
        route = celery_app.amqp.router.route({}, entry["task"])
        assert route["queue"].name == "maintenance", name
        assert entry["options"]["queue"] == "maintenance", name
        assert task.ignore_result, f"{name}: nobody polls it, so no result should be stored"
        assert task.time_limit and task.soft_time_limit, name


def test_a_scheduled_task_runs_on_a_maintenance_worker(celery_app, resources, make_user):
    user_id, _ = make_user("beat")
    expired = _job(
        resources, user_id, "ledger.random", {"count": 1}, expires_at=utcnow() - LONG_AGO
    )
    with running_worker(celery_app, queues="maintenance"):
        celery_app.send_task(beat_schedule["expire-jobs"]["task"], queue="maintenance")
        deadline = time.monotonic() + 30
        while _row(resources, expired) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _row(resources, expired) is None
