"""A job's end, announced: its final live document and its owner's notification (and event).

Workers (a job's own outcome) and housekeeping (a stuck job failed by the
reaper) end jobs through here, so both publish the same document and the same
notification, and a Redis outage is handled the same way: logged, never
raised, because the row already holds the outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from shared.jobs.status import StatusStore
from shared.notifications import Notifications

if TYPE_CHECKING:
    from shared.webhooks import WebhookOutbox

log = logging.getLogger(__name__)

_OUTCOMES = {"SUCCESS": ("job.succeeded", "succeeded"), "FAILURE": ("job.failed", "failed")}


def announce_outcome(
    statuses: StatusStore,
    notifications: Notifications,
    owner_id: int,
    status: dict[str, Any],
    message: str,
    *,
    webhooks: WebhookOutbox | None = None,
    first: Callable[[redis.client.Pipeline], None] | None = None,
) -> None:
    """Publish a finished job's document, notify its owner (`message`), queue its webhooks.

    The document (and its event), the notification and its event go to Redis
    in one pipelined trip, after whatever `first` queues on the same pipeline
    (a worker's cache invalidation, so a read after SUCCESS is never stale).
    The webhook deliveries are recorded before that, so a client that sees
    the outcome can also find its deliveries.
    """
    if webhooks is not None:
        queue_webhooks(webhooks, owner_id, status)
    try:
        pipe = statuses.pipeline()
        if first is not None:
            first(pipe)
        queue_outcome(pipe, statuses, notifications, owner_id, status, message)
        pipe.execute()
    except redis.RedisError:
        log.warning(
            "status of job %s not published: Redis unavailable (nor its notification)",
            status["task_id"],
        )


def queue_outcome(
    pipe: redis.client.Pipeline,
    statuses: StatusStore,
    notifications: Notifications,
    owner_id: int,
    status: dict[str, Any],
    message: str,
) -> None:
    """Queue on `pipe` what `announce_outcome` sends: the document, its notification and events.

    For a caller that announces several jobs in one trip (tuning/celery_ledger_batches.py).
    """
    statuses.write(owner_id, status, pipe=pipe)
    outcome = _OUTCOMES.get(status["state"])
    if outcome is not None:  # REVOKED: the owner cancelled it; no notification
        kind, verb = outcome
        item = notifications.push(
            owner_id,
            type=kind,
            title=f"{status['kind']} {verb}",
            message=message,
            task_id=status["task_id"],
            pipe=pipe,
        )
        # After the terminal state event, so GET /events shows the outcome first.
        statuses.notify(owner_id, item, pipe=pipe)


def queue_webhooks(webhooks: WebhookOutbox, owner_id: int, status: dict[str, Any]) -> None:
    """Queue the job's completion webhooks; logged, never raised."""
    # Called after the job's own commit: a webhook never holds up or undoes a
    # job. A failure here is logged, not raised, like the notification's.
    try:
        webhooks.job_finished(owner_id, status)
    except Exception:
        log.exception("webhooks for job %s not queued", status.get("task_id"))
