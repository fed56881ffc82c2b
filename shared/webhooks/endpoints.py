"""Webhook endpoints: register, list and delete them, and read each one's delivery log."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shared.jobs.model import isoformat, utcnow
from shared.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.webhooks.signing import new_secret

log = logging.getLogger(__name__)

EVENTS = ("job.succeeded", "job.failed")
MAX_ENDPOINTS_PER_USER = 20
# Attempts shown per delivery in the log (the newest).
LOG_ATTEMPTS_SHOWN = 50


class TooManyEndpoints(Exception):
    """The user already has MAX_ENDPOINTS_PER_USER endpoints."""


def parse_id(value: str) -> uuid.UUID | None:
    """The UUID in `value`, or None when it is not one (the API answers 404)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


def endpoint_document(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as the API shows it (never with its secret)."""
    return {
        "id": str(endpoint.id),
        "url": endpoint.url,
        "events": list(endpoint.events),
        "created_at": isoformat(endpoint.created_at),
    }


def create_endpoint(
    session: Session, owner_id: int, url: str, events: Sequence[str]
) -> dict[str, Any]:
    """Register an endpoint; the answer is the only time its secret is shown."""
    count = session.scalar(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.owner_id == owner_id)
    )
    if (count or 0) >= MAX_ENDPOINTS_PER_USER:
        raise TooManyEndpoints
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        owner_id=owner_id,
        url=url,
        events=sorted(set(events)),
        secret=new_secret(),
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return {**endpoint_document(endpoint), "secret": endpoint.secret}


def list_endpoints(session: Session, owner_id: int) -> list[dict[str, Any]]:
    """The owner's endpoints, newest first."""
    rows = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.owner_id == owner_id)
        .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id)
    )
    return [endpoint_document(row) for row in rows]


def delete_endpoint(
    session: Session, owner_id: int, endpoint_id: uuid.UUID
) -> dict[str, Any] | None:
    """Delete the owner's endpoint (and its log); None when it is not theirs or unknown."""
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner_id == owner_id
        )
    )
    if endpoint is None:
        return None
    document = endpoint_document(endpoint)
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))
    return document


def list_deliveries(
    session: Session, owner_id: int, endpoint_id: uuid.UUID, *, page: int, limit: int
) -> tuple[list[dict[str, Any]], int] | None:
    """A page of an endpoint's deliveries and attempts, newest first; None if not theirs."""
    owned = session.scalar(
        select(WebhookEndpoint.id).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner_id == owner_id
        )
    )
    if owned is None:
        return None
    total = session.scalar(
        select(func.count())
        .select_from(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
    )
    rows = list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
            .offset((page - 1) * limit)
            .limit(limit)
        )
    )
    attempts: dict[uuid.UUID, list[dict[str, Any]]] = {row.id: [] for row in rows}
    if rows:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt.desc())
        ):
            shown = attempts[attempt.delivery_id]
            if len(shown) < LOG_ATTEMPTS_SHOWN:
                shown.append(
                    {
                        "attempt": attempt.attempt,
                        "status_code": attempt.status_code,
                        "error": attempt.error,
                        "at": isoformat(attempt.attempted_at),
                        "duration_ms": attempt.duration_ms,
                    }
                )
    return [_delivery_document(row, attempts[row.id]) for row in rows], total or 0


def _delivery_document(row: WebhookDelivery, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "event": row.event,
        "task_id": str(row.task_id),
        "state": row.state,
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "created_at": isoformat(row.created_at),
        "last_attempt_at": isoformat(row.last_attempt_at),
        "next_attempt_at": isoformat(row.next_attempt_at),
        "delivered_at": isoformat(row.delivered_at),
        "log": attempts,
    }
