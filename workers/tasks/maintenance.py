"""Housekeeping tasks fired by beat; each is safe if beat fires it twice."""

from __future__ import annotations

from celery import Celery

from shared import maintenance
from shared.jobs import KIND_QUEUES
from workers.app import app
from workers.runtime import resources

# Ledger jobs post each entry once per (job, seq), so re-running them is safe.
IDEMPOTENT_KINDS = ("ledger.transaction", "ledger.random")

MAINTENANCE = {"ignore_result": True, "soft_time_limit": 110, "time_limit": 120}


def publisher(celery: Celery) -> maintenance.Publish:
    """A `Publish` that sends the job's message again, as the API first did."""

    def publish(kind: str, job_id: str, queue: str) -> None:
        # Same task id as the first message: the job id.
        celery.send_task(kind, args=[job_id], task_id=job_id, queue=queue, ignore_result=True)

    return publish


def hard_time_limits(celery: Celery) -> dict[str, float]:
    """Each job kind's hard time limit, as its registered task (or the default) sets it."""
    default = celery.conf.task_time_limit
    limits = {}
    for kind in KIND_QUEUES:
        task = celery.tasks.get(kind)
        limits[kind] = (task.time_limit if task is not None else None) or default
    return limits


@app.task(name="maintenance.expire_jobs", **MAINTENANCE)
def expire_jobs() -> dict:
    """Delete job records past their expiry and release stale Idempotency-Keys."""
    res = resources()
    return {
        "deleted": maintenance.expire_jobs(res.sessions),
        "keys_released": maintenance.release_idempotency_keys(
            res.sessions, ttl_seconds=res.settings.idempotency_ttl_seconds
        ),
    }


@app.task(name="maintenance.expire_notifications", **MAINTENANCE)
def expire_notifications() -> dict:
    """Drop notifications older than their TTL from lists kept alive by newer ones."""
    res = resources()
    removed = maintenance.expire_notifications(
        res.redis,
        res.settings.redis_key_prefix,
        max_age_seconds=res.settings.notifications_ttl_seconds,
    )
    return {"removed": removed}


@app.task(name="maintenance.redispatch_lost", **MAINTENANCE)
def redispatch_lost() -> dict:
    """Re-publish PENDING jobs whose broker message is gone."""
    res = resources()
    in_flight = maintenance.broker_in_flight(res.settings, res.redis)
    try:
        ids = maintenance.redispatch_lost(
            res.sessions,
            in_flight,
            publisher(app),
            older_than_seconds=res.settings.redispatch_after_seconds,
        )
    finally:
        in_flight.close()
    return {"redispatched": ids}


@app.task(name="maintenance.reap_stuck", **MAINTENANCE)
def reap_stuck() -> dict:
    """Fail (or re-dispatch, when idempotent) jobs STARTED past their hard time limit."""
    res = resources()
    outcome = maintenance.reap_stuck(
        res.sessions,
        res.statuses,
        res.notifications,
        publisher(app),
        time_limits=hard_time_limits(app),
        grace_seconds=res.settings.stuck_grace_seconds,
        idempotent_kinds=IDEMPOTENT_KINDS,
        max_attempts=res.settings.stuck_max_redispatches,
    )
    return {"failed": outcome.failed, "redispatched": outcome.redispatched}
