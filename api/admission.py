"""Admission control for job submission: a per-user in-flight cap and queue back-pressure."""

from __future__ import annotations

import logging

from flask import Flask, current_app

from api.errors import ApiError
from infra.broker.depth import BrokerUnavailable, QueueDepths
from shared.jobs.inflight import seconds_until_a_slot

log = logging.getLogger(__name__)

# How long a client should wait before resubmitting to an overloaded queue.
OVERLOADED_RETRY_AFTER_SECONDS = 10


def too_many_inflight(limit: int, owner_id: int) -> ApiError:
    """The 429 of a user at the cap; Retry-After is when one of their jobs likely ends.

    From their unfinished jobs: 1 s while one runs, else the soonest queued
    one's start by its queue's drain estimate, within 1-60 s; 5 s when
    nothing can be estimated (shared/jobs/inflight.py).
    """
    res = current_app.extensions["conveyor"]
    wait = seconds_until_a_slot(res.sessions, res.statuses, owner_id, limit=limit)
    return ApiError(
        429,
        "too_many_inflight_jobs",
        f"you already have {limit} unfinished jobs; wait for some to finish",
        {"max_inflight_jobs": limit},
        {"Retry-After": str(wait)},
    )


def ensure_queue_capacity(queue: str, app: Flask | None = None) -> None:
    """503 `overloaded` when `queue` already holds more than QUEUE_MAX_DEPTH messages."""
    extensions = (app or current_app).extensions
    limit = extensions["conveyor"].settings.queue_max_depth
    try:
        depth = extensions["conveyor.queue_depths"].depth(queue)
    except BrokerUnavailable:
        # Publishing will fail and answer 503 naming the broker; nothing to add here.
        return
    if depth > limit:
        log.warning("queue %s overloaded: %d waiting (limit %d)", queue, depth, limit)
        raise ApiError(
            503,
            "overloaded",
            f"the {queue} queue is overloaded; retry later",
            {"queue": queue},
            {"Retry-After": str(OVERLOADED_RETRY_AFTER_SECONDS)},
        )


def queue_depths() -> QueueDepths:
    """This app's reader of the broker's queue depths (built with the metrics collector)."""
    return current_app.extensions["conveyor.queue_depths"]
