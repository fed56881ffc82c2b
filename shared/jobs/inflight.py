"""When a user at the in-flight cap (429 `too_many_inflight_jobs`) is likely to have a slot again.

A slot frees when one of the user's unfinished jobs ends. One that runs may
end any moment; a queued one starts when its queue reaches it, which the
queue's drain estimate says (the `eta_seconds` of a poll, shared/jobs/status.py).
The answer is the Retry-After of the 429: bounded, and a fixed guess when
nothing can be estimated (no drain history yet, Redis down).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from shared.jobs.model import UNFINISHED
from shared.jobs.status import StatusStore
from shared.models import Job

log = logging.getLogger(__name__)

# At least a second (sooner is a busy loop), at most a minute (a client asks
# again then; the estimate is rough that far out), 5 s when there is none.
MIN_WAIT_SECONDS = 1
MAX_WAIT_SECONDS = 60
UNKNOWN_WAIT_SECONDS = 5
# A job in one of these states is being worked on: it may end at any moment.
RUNNING = ("STARTED", "PROGRESS")


def slot_wait(running: bool, queued_etas: Iterable[int | None]) -> int:
    """Seconds until a slot is likely free: at once if a job runs, else the soonest queued start."""
    if running:
        return MIN_WAIT_SECONDS
    known = [eta for eta in queued_etas if eta is not None]
    if not known:
        return UNKNOWN_WAIT_SECONDS
    return max(MIN_WAIT_SECONDS, min(MAX_WAIT_SECONDS, min(known)))


def seconds_until_a_slot(
    sessions: sessionmaker, statuses: StatusStore, owner_id: int, *, limit: int
) -> int:
    """`slot_wait` for the owner's unfinished jobs (at most `limit` of them are read)."""
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.state)
            .where(Job.owner_id == owner_id, Job.state.in_(UNFINISHED))
            .limit(limit)
        ).all()
    if any(row.state in RUNNING for row in rows):
        return slot_wait(True, ())
    etas: list[int | None] = []
    try:
        # The earliest ticket of each queue is the owner's next job to start there.
        first: dict[str, int] = {}
        queued = [str(row.id) for row in rows if row.state == "PENDING"]
        for queue, ticket in statuses.queue_tickets(queued):
            first[queue] = min(ticket, first.get(queue, ticket))
        etas = [statuses.estimate(queue, ticket).eta_seconds for queue, ticket in first.items()]
    except redis.RedisError:
        log.warning("no slot estimate for user %s: Redis unavailable", owner_id)
    return slot_wait(False, etas)
