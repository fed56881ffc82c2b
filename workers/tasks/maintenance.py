"""Housekeeping tasks fired by beat; each is safe if beat fires it twice."""

from __future__ import annotations

import uuid

from celery import Celery, Task, shared_task

from infra import tracing
from infra.broker.inflight import broker_in_flight
from shared import maintenance
from shared.jobs import fair, fair_shares, kinds, records
from workers.runtime import publisher, resources
from workers.tasks.webhooks import outbox as webhook_outbox

MAINTENANCE = {"bind": True, "ignore_result": True, "soft_time_limit": 110, "time_limit": 120}


def republish(app: Celery) -> maintenance.Publish:
    """A `Publish` that sends the job's message again, through the path the API submits by.

    The message continues the job's trace (its submit's traceparent, kept on
    the row), under a producer span of its own when this process traces.
    """
    jobs_publisher = publisher(app)
    res = resources(app)

    def publish(kind: str, job_id: str, queue: str) -> None:
        with res.sessions() as session:
            owner_id, stored = records.republish_details(session, uuid.UUID(job_id))
        # The owner names the job's fair line (shared/jobs/fair.py).
        headers: dict = {"user_id": owner_id}
        if stored:
            headers["traceparent"] = stored
        with tracing.span(
            f"publish {kind}",
            kind="producer",
            parent=headers or None,
            attributes={"messaging.message.id": job_id, "conveyor.republished": True},
        ):
            tracing.inject(headers)
            # Same task id as the first message: the job id.
            jobs_publisher.publish(kind, job_id, queue, headers)

    return publish


@shared_task(name="maintenance.expire_jobs", **MAINTENANCE)
def expire_jobs(self: Task) -> dict:
    """Delete job records past their expiry and release stale Idempotency-Keys."""
    res = resources(self.app)
    return {
        "deleted": maintenance.expire_jobs(res.sessions),
        "keys_released": maintenance.release_idempotency_keys(
            res.sessions, ttl_seconds=res.settings.idempotency_ttl_seconds
        ),
    }


@shared_task(name="maintenance.expire_notifications", **MAINTENANCE)
def expire_notifications(self: Task) -> dict:
    """Drop notifications older than their TTL from lists kept alive by newer ones."""
    res = resources(self.app)
    removed = maintenance.expire_notifications(
        res.redis,
        res.settings.redis_key_prefix,
        max_age_seconds=res.settings.notifications_ttl_seconds,
    )
    return {"removed": removed}


@shared_task(name="maintenance.redispatch_lost", **MAINTENANCE)
def redispatch_lost(self: Task) -> dict:
    """Re-publish PENDING jobs whose broker message is gone."""
    res = resources(self.app)
    jobs_publisher = publisher(self.app)
    # The cached shares re-synced from the table (a Redis that lost them heals).
    with res.sessions() as session:
        fair_shares.sync(session, res.fair)
    # Slots whose finish was lost are freed first, so their lines move on.
    freed = {
        queue: fair.reconcile(jobs_publisher, queue, lambda ids: _ended(res, ids))
        for queue in fair.FAIR_QUEUES
    }
    in_flight = fair.FairInFlight(broker_in_flight(res.settings, res.redis), res.fair)
    try:
        ids = maintenance.redispatch_lost(
            res.sessions,
            in_flight,
            republish(self.app),
            older_than_seconds=res.settings.redispatch_after_seconds,
            max_redispatches=res.settings.stuck_max_redispatches,
            rerun_kinds=kinds.rerunnable_kinds(),
            statuses=res.statuses,
            notifications=res.notifications,
            webhooks=webhook_outbox(self.app),
        )
    finally:
        in_flight.close()
    return {"redispatched": ids, "fair_slots_freed": freed}


def _ended(res, job_ids: list[str]) -> set[str]:
    """Which of `job_ids` have ended (a terminal row, or none at all)."""
    with res.sessions() as session:
        return records.ended_among(session, [uuid.UUID(job_id) for job_id in job_ids])


@shared_task(name="maintenance.reap_stuck", **MAINTENANCE)
def reap_stuck(self: Task) -> dict:
    """Fail (or re-dispatch, when idempotent) jobs STARTED past their hard time limit."""
    res = resources(self.app)
    outcome = maintenance.reap_stuck(
        res.sessions,
        res.statuses,
        res.notifications,
        republish(self.app),
        time_limits=kinds.hard_time_limits(res.settings.ai_timeout_seconds),
        grace_seconds=res.settings.stuck_grace_seconds,
        idempotent_kinds=kinds.rerunnable_kinds(),
        max_attempts=res.settings.stuck_max_redispatches,
        webhooks=webhook_outbox(self.app),
    )
    return {"failed": outcome.failed, "redispatched": outcome.redispatched}
