"""The durable per-user shares of the fair queues (the `fair_shares` table), and their Redis cache.

PostgreSQL holds each (user, queue) share an admin set; the fair lines read
a copy in the status Redis (`FairLines.set_policy`). A change writes the row
first, then the cache; the sweep re-syncs the whole cache from the table
(`sync`), so a Redis that lost it, or a cache write that failed, heals.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.jobs.fair import FAIR_QUEUES, FairLines, Policy
from shared.jobs.model import utcnow
from shared.models import FairShare, User


class UnknownUser(LookupError):
    """No user has this id."""


def shares_of(session: Session, user_id: int) -> dict[str, Policy]:
    """The user's shares by queue: each fair queue's, defaults where none was set."""
    if session.get(User, user_id) is None:
        raise UnknownUser(user_id)
    rows = session.scalars(select(FairShare).where(FairShare.user_id == user_id))
    found = {row.queue: Policy(row.weight, row.max_running) for row in rows}
    return {queue: found.get(queue, Policy()) for queue in FAIR_QUEUES}


def put_share(session: Session, user_id: int, queue: str, policy: Policy) -> None:
    """Set the user's share of `queue` (in the caller's transaction)."""
    if session.get(User, user_id) is None:
        raise UnknownUser(user_id)
    row = session.get(FairShare, (user_id, queue))
    if row is None:
        row = FairShare(user_id=user_id, queue=queue)
        session.add(row)
    row.weight, row.max_running, row.updated_at = policy.weight, policy.max_running, utcnow()


def drop_share(session: Session, user_id: int, queue: str) -> None:
    """Back to the defaults for the user on `queue`."""
    if session.get(User, user_id) is None:
        raise UnknownUser(user_id)
    session.execute(delete(FairShare).where(FairShare.user_id == user_id, FairShare.queue == queue))


def sync(session: Session, lines: FairLines) -> int:
    """Replace every fair queue's cached shares with the table's; how many rows."""
    rows = list(session.scalars(select(FairShare)))
    for queue in FAIR_QUEUES:
        lines.sync_policies(
            queue,
            {
                row.user_id: Policy(row.weight, row.max_running)
                for row in rows
                if row.queue == queue
            },
        )
    return len(rows)
