"""Completion webhooks: one task per delivery, retried with back-off on the webhooks queue."""

from __future__ import annotations

import logging
import threading

import httpx
from celery import Celery, Task, shared_task

from infra import tracing
from infra.broker.config import delayable_countdown
from infra.settings import Settings
from shared import webhooks
from shared.jobs.kinds import WEBHOOK_QUEUE
from shared.jobs.model import utcnow
from shared.webhooks.sender import http_client, send
from workers.runtime import publisher, resources

log = logging.getLogger(__name__)

DELIVER = "webhooks.deliver"
# An attempt is one short HTTP call: the limits only stop a wedged one.
SOFT_LIMIT_SECONDS, HARD_LIMIT_SECONDS = 60, 75

_lock = threading.Lock()
_clients: dict[Settings, httpx.Client] = {}


def outbox(app: Celery) -> webhooks.WebhookOutbox:
    """The outbox job outcomes are announced to: records deliveries, publishes their task."""
    jobs_publisher = publisher(app)

    def publish(delivery_id: str) -> None:
        # The delivery id is also the task id: a duplicate message is visible as such.
        # Traced: the delivery continues the trace of the job whose outcome it carries.
        jobs_publisher.publish(DELIVER, delivery_id, WEBHOOK_QUEUE, tracing.inject({}))

    return webhooks.WebhookOutbox(resources(app).sessions, publish)


def _client(settings: Settings) -> httpx.Client:
    # One pooled client per process and settings; every request is its own attempt.
    with _lock:
        client = _clients.get(settings)
        if client is None:
            client = _clients[settings] = http_client(settings.webhook_timeout_seconds)
        return client


@shared_task(
    name=DELIVER,
    bind=True,
    ignore_result=True,
    max_retries=None,  # the retry window decides when to stop, not a count
    soft_time_limit=SOFT_LIMIT_SECONDS,
    time_limit=HARD_LIMIT_SECONDS,
)
def deliver(self: Task, delivery_id: str) -> None:
    """Make one signed attempt at a delivery; schedule the next one if it failed."""
    res = resources(self.app)
    settings = res.settings
    parsed = webhooks.parse_id(delivery_id)
    if parsed is None:
        log.error("dropping webhook message with a malformed delivery id %r", delivery_id)
        return
    with res.sessions.begin() as session:
        # Held past the task's hard limit: a copy of this message cannot start
        # a second request while this attempt may still be running.
        planned = webhooks.claim_attempt(session, parsed, lease_seconds=HARD_LIMIT_SECONDS + 15)
    if planned is None:
        return  # delivered, given up, deleted, or another copy holds it right now
    result = send(
        _client(settings),
        url=planned.url,
        secret=planned.secret,
        msg_id=planned.delivery_id,
        body=planned.payload,
        allow_private=settings.webhook_allow_private_urls,
    )
    retry_at = None
    if not result.ok:
        retry_at = webhooks.next_attempt(
            planned,
            base_seconds=settings.webhook_retry_base_seconds,
            max_seconds=settings.webhook_retry_max_seconds,
            window_seconds=settings.webhook_retry_window_seconds,
        )
    with res.sessions.begin() as session:
        state = webhooks.record_attempt(
            session,
            planned,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            succeeded=result.ok,
            next_attempt_at=retry_at,
        )
    if state == "failed":
        log.warning("webhook delivery %s given up after %d attempts", delivery_id, planned.attempt)
    if retry_at is not None:
        countdown = max(0.0, (retry_at - utcnow()).total_seconds())
        raise self.retry(countdown=delayable_countdown(self.app.conf.broker_url, countdown))
