"""Failed jobs, listed and replayed: the same job runs again, as a new attempt of the same task id.

Why the same id, not a new job linked to the old one: a job's effects are
keyed by its id. A ledger job's entries are unique per (job, seq), so a
replayed ledger.random that had posted three of five entries before failing
posts the other two, never the first three again; and concurrent replays, or
a replay racing a redelivery, meet at the job-row claim that already makes
every duplicate delivery a no-op. A new id would post everything again.
Clients keep what they hold: the status URL, the event stream, the task id
their webhook consumer keys on; the replay's outcome reaches them through
these, as a new notification and a new webhook delivery (one per replay).

A replay reopens each chosen job in one conditional statement (only a job
still FAILURE is reopened, so two admins replaying it at once reopen it
once), records who replayed which jobs and what each had failed with (the
job's history, `failed_job_replay_items`), writes the PENDING document and
event, then publishes each job's message. A job whose message the broker
refused is put back as it was (FAILURE, its error, its record removed).
Replays bypass the owner's in-flight cap: an admin decided. Nothing caps
what is kept: a failed job stays until the job retention sweep removes it
(JOB_TTL_SECONDS after it was created, or after its last replay).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from infra.broker.messages import BrokerError, JobMessage, Publisher
from shared.jobs.kinds import KIND_QUEUES
from shared.jobs.model import isoformat, utcnow
from shared.jobs.status import StatusStore
from shared.models import FailedJobReplay, FailedJobReplayItem, Job, User

log = logging.getLogger(__name__)

# Messages published per broker round trip.
PUBLISH_CHUNK = 500


@dataclass(frozen=True)
class FailedFilter:
    """Which failed jobs: every criterion given must hold (none given: every failed job)."""

    kind: str | None = None
    error_code: str | None = None
    user_id: int | None = None
    since: datetime | None = None  # failed at or after
    until: datetime | None = None  # failed before

    def where(self) -> list[Any]:
        clauses: list[Any] = [Job.state == "FAILURE"]
        if self.kind is not None:
            clauses.append(Job.kind == self.kind)
        if self.error_code is not None:
            clauses.append(Job.error_code == self.error_code)
        if self.user_id is not None:
            clauses.append(Job.owner_id == self.user_id)
        if self.since is not None:
            clauses.append(Job.finished_at >= self.since)
        if self.until is not None:
            clauses.append(Job.finished_at < self.until)
        return clauses


def failed_item(row: Any) -> dict[str, Any]:
    """One failed job as the admin listing shows it."""
    return {
        "task_id": str(row.id),
        "kind": row.kind,
        "user_id": row.owner_id,
        "state": row.state,
        "error": {"code": row.error_code, "message": row.error_message or ""},
        "created_at": isoformat(row.created_at),
        "failed_at": isoformat(row.finished_at),
        "expires_at": isoformat(row.expires_at),
        "attempts": row.attempts,
        "lost_runs": row.lost_runs,
        "replays": row.replays,
    }


_LISTED = (
    Job.id, Job.kind, Job.owner_id, Job.state, Job.error_code, Job.error_message,
    Job.created_at, Job.finished_at, Job.expires_at, Job.attempts, Job.lost_runs, Job.replays,
)  # fmt: skip


def list_failed(
    session: Session, flt: FailedFilter, *, page: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of failed jobs matching `flt`, newest failure first, and how many match."""
    where = and_(*flt.where())
    total = session.scalar(select(func.count()).select_from(Job).where(where)) or 0
    rows = session.execute(
        select(*_LISTED)
        .where(where)
        .order_by(Job.finished_at.desc(), Job.id)
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return [failed_item(row) for row in rows], total


@dataclass(frozen=True)
class Reopened:
    """A failed job reopened for a replay, with what it had failed with (to put back)."""

    id: uuid.UUID
    owner_id: int
    kind: str
    error_code: str | None
    error_message: str | None
    failed_at: datetime | None
    status: dict[str, Any]


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did: its record's id, the jobs queued, and the ones left alone."""

    replay_id: int | None
    queued: list[dict[str, Any]]
    skipped: list[dict[str, Any]]


# The trace context a replayed job's message carries, per job (None: untraced).
TraceHeaders = Callable[[uuid.UUID], dict[str, str]]


def _chosen(task_ids: Sequence[uuid.UUID] | None, flt: FailedFilter | None) -> Select:
    query = select(*_LISTED, Job.queue).where(*(flt or FailedFilter()).where())
    if task_ids is not None:
        query = query.where(Job.id.in_(list(task_ids)))
    return query.order_by(Job.finished_at, Job.id)


def preview(
    session: Session, task_ids: Sequence[uuid.UUID] | None, flt: FailedFilter | None
) -> ReplayOutcome:
    """A dry run: the failed jobs a replay of this selection would queue, changing nothing."""
    rows = session.execute(_chosen(task_ids, flt)).all()
    return ReplayOutcome(None, [failed_item(row) for row in rows], _missing(task_ids, rows))


def replay(
    sessions: sessionmaker,
    publisher: Publisher,
    statuses: StatusStore | None,
    *,
    task_ids: Sequence[uuid.UUID] | None,
    flt: FailedFilter | None,
    admin_id: int,
    selection: dict[str, Any],
    ttl_seconds: int,
    message_headers: Callable[[int], dict[str, Any]],
    trace_headers: TraceHeaders | None = None,
) -> ReplayOutcome:
    """Reopen the chosen failed jobs, record the replay, publish them; see the module docstring.

    Raises BrokerError when no chosen job's message reached the broker (all
    are then put back as they were, and no replay is recorded).
    """
    now = utcnow()
    with sessions.begin() as session:
        admin_username = session.scalar(select(User.username).where(User.id == admin_id)) or ""
        rows = session.execute(_chosen(task_ids, flt).with_for_update()).all()
        reopened = [_reopen(session, row, now, ttl_seconds) for row in rows]
        reopened = [job for job in reopened if job is not None]
        replay_id = _record(session, reopened, now, admin_id, admin_username, selection)
    if not reopened:
        return ReplayOutcome(replay_id, [], _missing(task_ids, rows))
    if statuses is not None:
        _announce_reopened(statuses, reopened)
    refused = _publish(publisher, reopened, message_headers, trace_headers)
    if refused:
        _put_back(sessions, [job for job in reopened if job.id in refused], replay_id)
    queued = [job for job in reopened if job.id not in refused]
    if not queued:
        raise BrokerError("broker unavailable: no replayed job was published")
    log.warning(
        "replay %s by %s: %d failed job(s) queued again", replay_id, admin_username, len(queued)
    )
    skipped = _missing(task_ids, rows) + [
        {"task_id": str(job.id), "reason": "broker_unavailable"} for job in reopened
        if job.id in refused
    ]  # fmt: skip
    return ReplayOutcome(
        replay_id, [{"task_id": str(job.id), "state": "PENDING"} for job in queued], skipped
    )


def _reopen(session: Session, row: Any, now: datetime, ttl_seconds: int) -> Reopened | None:
    """The failed job as a new attempt: PENDING, its error cleared, its retention renewed."""
    reopened = session.execute(
        update(Job)
        .where(Job.id == row.id, Job.state == "FAILURE")
        .values(
            state="PENDING",
            message="replayed: queued again after its failure",
            progress=0,
            result=None,
            error_code=None,
            error_message=None,
            started_at=None,
            finished_at=None,
            updated_at=now,
            lost_runs=0,
            redispatches=0,
            replays=Job.replays + 1,
            expires_at=func.max(Job.expires_at, now + timedelta(seconds=ttl_seconds))
            if session.get_bind().dialect.name == "sqlite"
            else func.greatest(Job.expires_at, now + timedelta(seconds=ttl_seconds)),
        )
        .returning(Job.created_at, Job.expires_at)
    ).first()
    if reopened is None:
        return None
    status = {
        "task_id": str(row.id),
        "kind": row.kind,
        "state": "PENDING",
        "progress": 0,
        "message": "replayed: queued again after its failure",
        "created_at": isoformat(reopened.created_at),
        "updated_at": isoformat(now),
        "expires_at": isoformat(reopened.expires_at),
        "result": None,
        "error": None,
    }
    return Reopened(
        row.id, row.owner_id, row.kind, row.error_code, row.error_message, row.finished_at, status
    )


def _record(
    session: Session,
    reopened: list[Reopened],
    now: datetime,
    admin_id: int,
    admin_username: str,
    selection: dict[str, Any],
) -> int | None:
    if not reopened:
        return None
    replay_id = session.scalar(
        insert(FailedJobReplay)
        .values(
            replayed_at=now,
            admin_id=admin_id,
            admin_username=admin_username,
            selection=selection,
            replayed=len(reopened),
        )
        .returning(FailedJobReplay.id)
    )
    session.execute(
        insert(FailedJobReplayItem),
        [
            {
                "replay_id": replay_id,
                "job_id": job.id,
                "kind": job.kind,
                "owner_id": job.owner_id,
                "error_code": job.error_code,
                "error_message": job.error_message,
                "failed_at": job.failed_at,
            }
            for job in reopened
        ],
    )
    return replay_id


def _announce_reopened(statuses: StatusStore, reopened: list[Reopened]) -> None:
    """Each job's PENDING document and event, over its terminal one (before any worker writes)."""
    try:
        pipe = statuses.pipeline()
        for job in reopened:
            statuses.queue_reopened(pipe, job.owner_id, job.status)
        pipe.execute()
    except Exception:  # redis.RedisError: polls read the row until a worker writes
        log.warning("replayed jobs' live documents not written: Redis unavailable")


def _publish(
    publisher: Publisher,
    reopened: list[Reopened],
    message_headers: Callable[[int], dict[str, Any]],
    trace_headers: TraceHeaders | None,
) -> set[uuid.UUID]:
    """Publish every reopened job's message; the ids the broker refused."""
    refused: set[uuid.UUID] = set()
    for start in range(0, len(reopened), PUBLISH_CHUNK):
        chunk = reopened[start : start + PUBLISH_CHUNK]
        messages = [
            JobMessage(
                job.kind,
                str(job.id),
                KIND_QUEUES[job.kind],
                {
                    **message_headers(job.owner_id),
                    **(trace_headers(job.id) if trace_headers else {}),
                },
            )
            for job in chunk
        ]
        errors, _answers = publisher.publish_many(messages)
        refused.update(job.id for job, error in zip(chunk, errors, strict=True) if error)
    return refused


def _put_back(sessions: sessionmaker, jobs: list[Reopened], replay_id: int | None) -> None:
    """Jobs whose message never reached the broker: FAILURE again, as they were."""
    with sessions.begin() as session:
        for job in jobs:
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == "PENDING")
                .values(
                    state="FAILURE",
                    message="failed",
                    error_code=job.error_code,
                    error_message=job.error_message,
                    finished_at=job.failed_at,
                    replays=Job.replays - 1,
                )
            )
        if replay_id is not None:
            session.execute(
                delete(FailedJobReplayItem).where(
                    FailedJobReplayItem.replay_id == replay_id,
                    FailedJobReplayItem.job_id.in_([job.id for job in jobs]),
                )
            )
            session.execute(
                update(FailedJobReplay)
                .where(FailedJobReplay.id == replay_id)
                .values(replayed=FailedJobReplay.replayed - len(jobs))
            )


def _missing(task_ids: Sequence[uuid.UUID] | None, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Asked-for ids that are not failed jobs (unknown, or in another state)."""
    if task_ids is None:
        return []
    found = {row.id for row in rows}
    return [{"task_id": str(i), "reason": "not_failed"} for i in task_ids if i not in found]


def replay_history(session: Session, *, page: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Recorded replays, newest first: who, when, what was asked, and which jobs."""
    total = session.scalar(select(func.count()).select_from(FailedJobReplay)) or 0
    replays = session.scalars(
        select(FailedJobReplay)
        .order_by(FailedJobReplay.replayed_at.desc(), FailedJobReplay.id.desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    items_by_replay: dict[int, list[dict[str, Any]]] = {r.id: [] for r in replays}
    if replays:
        for item in session.scalars(
            select(FailedJobReplayItem).where(FailedJobReplayItem.replay_id.in_(items_by_replay))
        ):
            items_by_replay[item.replay_id].append(
                {
                    "task_id": str(item.job_id),
                    "kind": item.kind,
                    "user_id": item.owner_id,
                    "error": {"code": item.error_code, "message": item.error_message or ""},
                    "failed_at": isoformat(item.failed_at),
                }
            )
    return [
        {
            "id": r.id,
            "replayed_at": isoformat(r.replayed_at),
            "admin": {"id": r.admin_id, "username": r.admin_username},
            "selection": r.selection,
            "replayed": r.replayed,
            "jobs": items_by_replay[r.id],
        }
        for r in replays
    ], total
