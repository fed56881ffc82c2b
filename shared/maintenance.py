"""Housekeeping: expire old records, re-dispatch lost jobs, reap stuck ones.

Every function here is safe to run twice at once (two beats by mistake, or a
redelivered message): deletes and updates are conditional, and a job is only
re-published by the run whose conditional UPDATE claimed it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import redis
from sqlalchemy import delete, select, update
from sqlalchemy import true as sa_true
from sqlalchemy.orm import Session, sessionmaker

from infra.broker.inflight import InFlight
from shared import jobs
from shared.jobs import JobError, isoformat, utcnow
from shared.jobs.lifecycle import announce_outcome
from shared.jobs.status import publish as publish_status
from shared.models import Job
from shared.notifications import Notifications

if TYPE_CHECKING:
    from shared.webhooks import WebhookOutbox

log = logging.getLogger(__name__)

# kind, job id, queue: publishes the job's message (the worker's send_task).
Publish = Callable[[str, str, str], None]

_SCAN_CHUNK = 1000

# KEYS[1] = notification list (newest first), KEYS[2] = its read set; ARGV[1] = cutoff.
# Atomic, so a concurrent LPUSH cannot shift what we trim. ISO 8601 UTC strings
# of one format sort as time does.
_TRIM_OLD_NOTIFICATIONS = """
local removed = 0
while true do
  local last = redis.call('LINDEX', KEYS[1], -1)
  if not last then break end
  local ok, item = pcall(cjson.decode, last)
  if ok and type(item) == 'table' and type(item['created_at']) == 'string'
     and item['created_at'] >= ARGV[1] then break end
  redis.call('RPOP', KEYS[1])
  if ok and type(item) == 'table' and item['id'] then redis.call('SREM', KEYS[2], item['id']) end
  removed = removed + 1
end
return removed
"""


def expire_jobs(sessions: sessionmaker, *, now: datetime | None = None, batch: int = 1000) -> int:
    """Delete job records past `expires_at`, a batch per transaction; returns how many."""
    now = now or utcnow()
    deleted = 0
    while True:
        with sessions.begin() as session:
            doomed = select(Job.id).where(Job.expires_at < now).limit(batch)
            count = session.execute(delete(Job).where(Job.id.in_(doomed))).rowcount
        deleted += count
        if count < batch:
            return deleted


def release_idempotency_keys(
    sessions: sessionmaker, *, ttl_seconds: int, now: datetime | None = None
) -> int:
    """Forget Idempotency-Keys older than their TTL, so the key can be used again."""
    cutoff = (now or utcnow()) - timedelta(seconds=ttl_seconds)
    with sessions.begin() as session:
        return session.execute(
            update(Job)
            .where(Job.idempotency_key.is_not(None), Job.created_at < cutoff)
            .values(idempotency_key=None)
        ).rowcount


def expire_notifications(
    client: redis.Redis, prefix: str, *, max_age_seconds: int, now: datetime | None = None
) -> int:
    """Drop notifications older than `max_age_seconds` from every user's list."""
    cutoff = isoformat((now or utcnow()) - timedelta(seconds=max_age_seconds))
    own_list = re.compile(re.escape(prefix) + r"notifications:\d+$")
    trim = client.register_script(_TRIM_OLD_NOTIFICATIONS)
    removed = 0
    for key in client.scan_iter(match=f"{prefix}notifications:*", count=_SCAN_CHUNK):
        if own_list.match(key):
            removed += trim(keys=[key, f"{key}:read"], args=[cutoff])
    return removed


def redispatch_lost(
    sessions: sessionmaker,
    in_flight: InFlight,
    publish: Publish,
    *,
    older_than_seconds: int,
    max_redispatches: int | None = None,
    rerun_kinds: Collection[str] = (),
    statuses: jobs.StatusStore | None = None,
    notifications: Notifications | None = None,
    webhooks: WebhookOutbox | None = None,
    limit: int = 500,
    now: datetime | None = None,
) -> list[str]:
    """Re-publish jobs unchanged past the threshold whose message `in_flight` says is gone.

    A PENDING job was accepted but its message never reached the broker or
    was lost (a Redis restart without AOF, a flushed or purged queue, a
    failover that dropped writes). Where the broker lists every held message
    too (`in_flight.exact`: Redis), so are a RETRY job (it was to run again)
    and a STARTED one of `rerun_kinds` (a live worker would hold its message:
    its worker is gone, and the held message with it), without waiting for
    the stuck-job reaper's time limit. The same task id is reused, and the
    job claim makes a duplicate delivery a no-op. A job already re-published
    `max_redispatches` times is not published again: a PENDING one fails
    with code `lost` (and its owner is notified when `statuses` and
    `notifications` are given), so a message that keeps vanishing cannot
    loop forever; a started one is left to the reaper. Returns the
    re-published job ids. A broker that does not answer raises
    BrokerUnavailable (or redis.RedisError) and nothing is published.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=older_than_seconds)
    lost = Job.state == "PENDING"
    if in_flight.exact:
        orphaned = Job.state.in_(("STARTED", "PROGRESS")) & Job.kind.in_(tuple(rerun_kinds))
        lost = lost | (Job.state == "RETRY") | orphaned
    with sessions() as session:
        candidates = session.execute(
            select(Job.id, Job.kind, Job.queue, Job.state)
            .where(lost, Job.updated_at < cutoff, Job.expires_at > now)
            .order_by(Job.updated_at)
            .limit(limit)
        ).all()
    if not candidates:
        return []
    present = in_flight.present([(str(row.id), row.queue) for row in candidates])
    redispatched = []
    for row in candidates:
        if str(row.id) in present:
            continue  # waiting in a backlog, or held by a worker: not lost
        # Stamping updated_at claims the job for this sweep: a concurrent sweep's
        # identical UPDATE then matches nothing, so the job is published once.
        unexhausted = (
            Job.redispatches < max_redispatches if max_redispatches is not None else sa_true()
        )
        given_up = None
        with sessions.begin() as session:
            claimed = session.execute(
                update(Job)
                .where(
                    Job.id == row.id, Job.state == row.state, Job.updated_at < cutoff, unexhausted
                )
                .values(
                    updated_at=now,
                    redispatches=Job.redispatches + 1,
                    message="re-dispatched: its broker message was lost",
                )
                .returning(Job.id)
            ).first()
            if claimed is None and max_redispatches is not None and row.state == "PENDING":
                given_up = _fail_lost(session, row.id, cutoff, max_redispatches)
        if given_up is not None and statuses is not None and notifications is not None:
            announce_outcome(statuses, notifications, *given_up, webhooks=webhooks)
        if claimed is not None:
            publish(row.kind, str(row.id), row.queue)
            redispatched.append(str(row.id))
    if redispatched:
        log.warning("re-dispatched %d lost jobs", len(redispatched))
    return redispatched


def _fail_lost(
    session: Session, job_id: uuid.UUID, cutoff: datetime, max_redispatches: int
) -> tuple[int, dict, str] | None:
    """FAILURE `lost` for a job re-published `max_redispatches` times; (owner, status, message)."""
    still_lost = session.execute(
        select(Job.owner_id)
        .where(
            Job.id == job_id,
            Job.state == "PENDING",
            Job.updated_at < cutoff,
            Job.redispatches >= max_redispatches,
        )
        .with_for_update()
    ).first()
    if still_lost is None:
        return None  # claimed by a worker or by another sweep meanwhile
    message = f"its broker message was lost {max_redispatches + 1} times; giving up"
    status = jobs.finish(session, job_id, state="FAILURE", error=JobError("lost", message))
    log.error("job %s failed: %s", job_id, message)
    return None if status is None else (still_lost.owner_id, status, message)


@dataclass
class ReapOutcome:
    """Which stuck jobs were failed and which re-dispatched."""

    failed: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)


def reap_stuck(
    sessions: sessionmaker,
    statuses: jobs.StatusStore,
    notifications: Notifications,
    publish: Publish,
    *,
    time_limits: Mapping[str, float],
    grace_seconds: float,
    idempotent_kinds: Iterable[str],
    max_attempts: int,
    webhooks: WebhookOutbox | None = None,
    now: datetime | None = None,
) -> ReapOutcome:
    """Fail (or, for idempotent kinds, re-dispatch) jobs STARTED longer than their hard limit.

    A job whose worker died keeps its row STARTED; Redis would redeliver its
    message only after the visibility timeout (an hour). Idempotent kinds
    (ledger) are re-published up to `max_attempts` attempts; the rest fail
    with code `timeout` and a notification.
    """
    now = now or utcnow()
    idempotent = set(idempotent_kinds)
    shortest = min(time_limits.values(), default=0)
    with sessions() as session:
        candidates = session.execute(
            select(Job.id, Job.kind, Job.updated_at).where(
                Job.state.in_(("STARTED", "PROGRESS")),
                Job.updated_at < now - timedelta(seconds=shortest + grace_seconds),
            )
        ).all()
    outcome = ReapOutcome()
    for row in candidates:
        limit = time_limits.get(row.kind, shortest)
        cutoff = now - timedelta(seconds=limit + grace_seconds)
        if _aware(row.updated_at) >= cutoff:
            continue
        _reap_one(
            sessions,
            statuses,
            notifications,
            publish,
            row.id,
            cutoff,
            now,
            idempotent=row.kind in idempotent,
            max_attempts=max_attempts,
            outcome=outcome,
            webhooks=webhooks,
        )
    return outcome


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes, which are UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _reap_one(
    sessions: sessionmaker,
    statuses: jobs.StatusStore,
    notifications: Notifications,
    publish: Publish,
    job_id: uuid.UUID,
    cutoff: datetime,
    now: datetime,
    *,
    idempotent: bool,
    max_attempts: int,
    outcome: ReapOutcome,
    webhooks: WebhookOutbox | None = None,
) -> None:
    with sessions.begin() as session:
        # Lock and re-check: a new attempt may have claimed it since we looked,
        # and a concurrent reaper waits here and then finds it no longer stuck.
        row = session.execute(
            select(Job.owner_id, Job.kind, Job.queue, Job.attempts)
            .where(
                Job.id == job_id,
                Job.state.in_(("STARTED", "PROGRESS")),
                Job.updated_at < cutoff,
            )
            .with_for_update()
        ).first()
        if row is None:
            return
        redispatch = idempotent and row.attempts < max_attempts
        if redispatch:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    state="PENDING",
                    message="re-dispatched: its worker stopped responding",
                    updated_at=now,
                )
            )
            status = jobs.get_status(session, job_id, row.owner_id)
        else:
            error = JobError("timeout", "the job ran past its time limit and was stopped")
            status = jobs.finish(session, job_id, state="FAILURE", error=error)
    if redispatch:
        # The live document still says STARTED; correct it before the new
        # attempt can write its own, or this write would land after it.
        publish_status(statuses, row.owner_id, status)
        publish(row.kind, str(job_id), row.queue)
        outcome.redispatched.append(str(job_id))
        return
    outcome.failed.append(str(job_id))
    if status is not None:
        announce_outcome(
            statuses, notifications, row.owner_id, status, error.message, webhooks=webhooks
        )
