"""Completion webhooks' deliveries: those a job's outcome creates, and their attempts.

A finished job (SUCCESS or FAILURE) gets one delivery per matching endpoint of
its owner; the (endpoint, job, event) unique key makes announcing an outcome
twice harmless. Each delivery's id is the `webhook-id` of every attempt, so a
receiver can de-duplicate; an attempt first takes a short lease on the row, so
two copies of the same message never POST at once, and a delivery that
succeeded is never attempted again. Attempts back off exponentially until the
retry window (24 h by default) has passed.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.jobs.model import isoformat, utcnow
from shared.models import Job, WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

STATE_EVENTS = {"SUCCESS": "job.succeeded", "FAILURE": "job.failed"}

# Publishes the delivery task for one delivery id (the worker's publisher).
PublishDelivery = Callable[[str], None]


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes, which are UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=utcnow().tzinfo)


def event_payload(event: str, status: dict[str, Any], moment: datetime) -> str:
    """The body every attempt of a delivery sends: Standard Webhooks' type/timestamp/data."""
    body = {"type": event, "timestamp": isoformat(moment), "data": status}
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def record_deliveries(session: Session, owner_id: int, status: dict[str, Any]) -> list[str]:
    """Create the deliveries a finished job's `status` calls for; the ids of new ones."""
    event = STATE_EVENTS.get(status.get("state", ""))
    if event is None:
        return []
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.events).where(
            WebhookEndpoint.owner_id == owner_id
        )
    ).all()
    matching = [row.id for row in endpoints if event in (row.events or ())]
    if not matching:
        return []
    now = utcnow()
    payload = event_payload(event, status, now)
    task_id = uuid.UUID(status["task_id"])
    # A replayed job's outcome is a delivery of its own (one per replay).
    replay = session.scalar(select(Job.replays).where(Job.id == task_id)) or 0
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[
        session.get_bind().dialect.name
    ]
    statement = (
        insert(WebhookDelivery)
        .values(
            [
                {
                    "id": uuid.uuid4(),
                    "endpoint_id": endpoint_id,
                    "event": event,
                    "task_id": task_id,
                    "payload": payload,
                    "state": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                    "replay": replay,
                }
                for endpoint_id in matching
            ]
        )
        .on_conflict_do_nothing(index_elements=["endpoint_id", "task_id", "event", "replay"])
        .returning(WebhookDelivery.id)
    )
    return [str(delivery_id) for delivery_id in session.scalars(statement)]


class WebhookOutbox:
    """Turns a finished job into deliveries and puts each on the webhooks queue."""

    def __init__(self, sessions: sessionmaker, publish: PublishDelivery) -> None:
        self.sessions = sessions
        self.publish = publish

    def job_finished(self, owner_id: int, status: dict[str, Any]) -> list[str]:
        """Record and publish this outcome's deliveries (none for REVOKED or no endpoints)."""
        if status.get("state") not in STATE_EVENTS:
            return []
        with self.sessions.begin() as session:
            created = record_deliveries(session, owner_id, status)
        for delivery_id in created:
            self.publish(delivery_id)
        return created


@dataclass(frozen=True)
class PlannedAttempt:
    """What one attempt needs, read under its lease."""

    delivery_id: str
    attempt: int
    url: str
    secret: str
    payload: str
    created_at: datetime


def claim_attempt(
    session: Session, delivery_id: uuid.UUID, *, lease_seconds: float, now: datetime | None = None
) -> PlannedAttempt | None:
    """Lease a pending delivery for one attempt; None when done, deleted or held by another."""
    now = now or utcnow()
    claimed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == "pending",
            (WebhookDelivery.lease_until.is_(None)) | (WebhookDelivery.lease_until < now),
        )
        .values(
            attempts=WebhookDelivery.attempts + 1,
            last_attempt_at=now,
            lease_until=now + timedelta(seconds=lease_seconds),
        )
        .returning(WebhookDelivery.attempts, WebhookDelivery.endpoint_id)
    ).first()
    if claimed is None:
        return None
    row = session.execute(
        select(
            WebhookDelivery.payload,
            WebhookDelivery.created_at,
            WebhookEndpoint.url,
            WebhookEndpoint.secret,
        )
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id)
    ).one()
    return PlannedAttempt(
        str(delivery_id), claimed.attempts, row.url, row.secret, row.payload, _aware(row.created_at)
    )


def retry_delay(attempt: int, *, base_seconds: float, max_seconds: float) -> float:
    """Seconds before attempt `attempt + 1`: exponential from `base`, capped, with 10% jitter."""
    delay = min(max_seconds, base_seconds * 2 ** min(attempt - 1, 32))
    return delay * random.uniform(0.9, 1.0)  # noqa: S311 - spreading retries, not security


def record_attempt(
    session: Session,
    planned: PlannedAttempt,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    succeeded: bool,
    next_attempt_at: datetime | None,
    now: datetime | None = None,
) -> str:
    """Log one attempt and move the delivery on; returns its state (pending/succeeded/failed)."""
    now = now or utcnow()
    delivery_id = uuid.UUID(planned.delivery_id)
    session.merge(
        WebhookAttempt(
            delivery_id=delivery_id,
            attempt=planned.attempt,
            status_code=status_code,
            error=error,
            attempted_at=now,
            duration_ms=duration_ms,
        )
    )
    state = "succeeded" if succeeded else ("pending" if next_attempt_at else "failed")
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            state=state,
            last_status_code=status_code,
            last_error=error,
            lease_until=None,
            next_attempt_at=next_attempt_at,
            delivered_at=now if succeeded else None,
        )
    )
    return state


def next_attempt(
    planned: PlannedAttempt,
    *,
    base_seconds: float,
    max_seconds: float,
    window_seconds: float,
    now: datetime | None = None,
) -> datetime | None:
    """When to try again after a failed attempt, or None once the retry window has passed."""
    now = now or utcnow()
    if now >= planned.created_at + timedelta(seconds=window_seconds):
        return None
    delay = retry_delay(planned.attempt, base_seconds=base_seconds, max_seconds=max_seconds)
    return now + timedelta(seconds=delay)
