"""A job's end, announced: its final live document and its owner's notification (and event).

Workers (a job's own outcome) and housekeeping (a stuck job failed by the
reaper) end jobs through here, so both publish the same document and the same
notification, and a Redis outage is handled the same way: logged, never
raised, because the row already holds the outcome.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis

from shared.jobs.status import StatusStore, publish
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
) -> None:
    """Publish a finished job's document, notify its owner (`message`), queue its webhooks."""
    publish(statuses, owner_id, status)
    if webhooks is not None:
        _queue_webhooks(webhooks, owner_id, status)
    outcome = _OUTCOMES.get(status["state"])
    if outcome is None:
        return  # REVOKED: the owner cancelled it and needs no notification
    kind, verb = outcome
    try:
        item = notifications.push(
            owner_id,
            type=kind,
            title=f"{status['kind']} {verb}",
            message=message,
            task_id=status["task_id"],
        )
        # After the terminal state event, so GET /events shows the outcome first.
        statuses.notify(owner_id, item)
    except redis.RedisError:
        log.warning("notification for job %s not written: Redis unavailable", status["task_id"])


def _queue_webhooks(webhooks: WebhookOutbox, owner_id: int, status: dict[str, Any]) -> None:
    # Called after the job's own commit: a webhook never holds up or undoes a
    # job. A failure here is logged, not raised, like the notification's.
    try:
        webhooks.job_finished(owner_id, status)
    except Exception:
        log.exception("webhooks for job %s not queued", status.get("task_id"))
