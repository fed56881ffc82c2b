"""Job rows as the API sees them: admission, reads and cancel, each one conditional statement.

The database row is the truth about a job. Every transition is a conditional
UPDATE on the unfinished states, so a cancelled or finished job cannot be
moved again; a worker's claim and finish are shared/jobs/claims.py.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.jobs.kinds import KIND_QUEUES
from shared.jobs.model import (
    TERMINAL,
    UNFINISHED,
    IdempotencyKeyReused,
    JobAlreadyFinished,
    JobNotFound,
    Submission,
    TooManyInflightJobs,
    id_prefix_range,
    status_from_row,
    utcnow,
)
from shared.models import Job

STATUS_COLUMNS = (
    Job.id,
    Job.owner_id,
    Job.kind,
    Job.state,
    Job.progress,
    Job.message,
    Job.created_at,
    Job.updated_at,
    Job.expires_at,
    Job.result,
    Job.error_code,
    Job.error_message,
)


def _insert_for(conn: Connection):
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Job)
    if dialect == "sqlite":
        return sqlite.insert(Job)
    raise RuntimeError(f"unsupported database dialect {dialect}")


def create_job(
    conn: Connection,
    *,
    owner_id: int,
    kind: str,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    request_fingerprint: str | None = None,
    ttl_seconds: int,
    idempotency_ttl_seconds: int = 24 * 3600,
    max_inflight: int | None = None,
) -> Submission:
    """Record a PENDING job, or return the one an earlier request with this key created.

    One INSERT ... ON CONFLICT DO NOTHING RETURNING: concurrent duplicates race
    on the unique (owner, key) constraint and exactly one row exists after.
    With `max_inflight`, the same statement inserts only while the owner has
    fewer unfinished jobs (raises TooManyInflightJobs); a replay still answers.
    `conn` should be in autocommit mode; the statement is atomic on its own.
    """
    now = utcnow()
    job_id = uuid.uuid4()
    values = {
        "id": job_id,
        "owner_id": owner_id,
        "kind": kind,
        "queue": KIND_QUEUES[kind],
        "state": "PENDING",
        "progress": 0,
        "message": "queued",
        "params": params,
        "idempotency_key": idempotency_key,
        "request_hash": request_fingerprint,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds),
    }
    if max_inflight is None:
        statement, bound = _insert_for(conn).values(**values), {}
        if idempotency_key is None:
            conn.execute(statement)
            return Submission(status_from_row(_Row(values)), replayed=False)
        statement = statement.on_conflict_do_nothing(
            index_elements=["owner_id", "idempotency_key"]
        ).returning(Job.id)
    else:
        statement = _admission_insert(conn.dialect.name, tuple(values), idempotency_key is not None)
        bound = {**values, "inflight_owner": owner_id, "max_inflight": max_inflight}
        if idempotency_key is None:
            if conn.execute(statement, bound).first() is None:
                raise TooManyInflightJobs(owner_id)
            return Submission(status_from_row(_Row(values)), replayed=False)

    for _ in range(3):
        if conn.execute(statement, bound).first() is not None:
            return Submission(status_from_row(_Row(values)), replayed=False)
        existing = conn.execute(
            select(*STATUS_COLUMNS, Job.request_hash).where(
                Job.owner_id == owner_id, Job.idempotency_key == idempotency_key
            )
        ).first()
        if existing is None:
            # Over the in-flight limit, or the holder was deleted between our
            # two statements (then the next attempt inserts).
            if max_inflight is not None:
                raise TooManyInflightJobs(owner_id)
            continue
        if _aware(existing.created_at) < now - timedelta(seconds=idempotency_ttl_seconds):
            # Keys are kept 24 h: release the stale one and try once more.
            conn.execute(update(Job).where(Job.id == existing.id).values(idempotency_key=None))
            continue
        if existing.request_hash != request_fingerprint:
            raise IdempotencyKeyReused(idempotency_key)
        return Submission(status_from_row(existing), replayed=True)
    raise RuntimeError("could not record the job after releasing a stale idempotency key")


@functools.cache
def _admission_insert(dialect: str, names: tuple[str, ...], idempotent: bool):
    """INSERT ... SELECT that yields no row at the limit, RETURNING the id; built once.

    Every value arrives as a bound parameter (`names`, plus `inflight_owner` and
    `max_inflight`): building the statement per request, a literal per column,
    cost more CPU than the rest of a submission (`make bench`, py-spy).
    """
    columns = Job.__table__.c
    inflight = (
        select(func.count())
        .select_from(Job)
        .where(Job.owner_id == bindparam("inflight_owner"), Job.state.in_(UNFINISHED))
        .scalar_subquery()
    )
    # Counting and inserting in one statement keeps submission at one round
    # trip. Under concurrency the count can be a few jobs stale: the limit
    # protects capacity, it is not an invariant.
    row = select(*(bindparam(name, type_=columns[name].type) for name in names))
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect](Job)
    statement = insert.from_select(list(names), row.where(inflight < bindparam("max_inflight")))
    if idempotent:
        statement = statement.on_conflict_do_nothing(index_elements=["owner_id", "idempotency_key"])
    return statement.returning(Job.id)


def delete_job(conn: Connection, job_id: uuid.UUID) -> None:
    """Remove a job that never reached the broker (its submission answered 503)."""
    conn.execute(Job.__table__.delete().where(Job.id == job_id, Job.state == "PENDING"))


class _Row:
    """Attribute access over the values dict we just inserted (saves a round trip)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values, result=None, error_code=None, error_message=None)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def get_status(session: Session, job_id: uuid.UUID, owner_id: int) -> dict[str, Any] | None:
    """The status document from the row, or None when this owner has no such job."""
    row = session.execute(
        select(*STATUS_COLUMNS).where(Job.id == job_id, Job.owner_id == owner_id)
    ).first()
    return status_from_row(row) if row else None


def list_jobs(
    session: Session,
    owner_id: int,
    *,
    state: str | None = None,
    kind: str | None = None,
    id_prefix: str | None = None,
    page: int = 1,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int]:
    """The owner's jobs, newest first, and how many match in all.

    `id_prefix` keeps the jobs whose id starts with it (`id_prefix_range`;
    one that no id can start with matches nothing).
    """
    conditions = [Job.owner_id == owner_id]
    if state:
        conditions.append(Job.state == state)
    if kind:
        conditions.append(Job.kind == kind)
    if id_prefix is not None:
        bounds = id_prefix_range(id_prefix)
        if bounds is None:
            return [], 0
        conditions.append(Job.id.between(*bounds))
    where = and_(*conditions)
    total = session.scalar(select(func.count()).select_from(Job).where(where)) or 0
    rows = session.execute(
        select(*STATUS_COLUMNS)
        .where(where)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return [status_from_row(row) for row in rows], total


def cancel_job(session: Session, job_id: uuid.UUID, owner_id: int) -> dict[str, Any]:
    """Mark an unfinished job REVOKED; a worker that claims it later skips it."""
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.owner_id == owner_id, Job.state.in_(UNFINISHED))
        .values(state="REVOKED", message="cancelled", updated_at=now, finished_at=now)
        .returning(*STATUS_COLUMNS)
    ).first()
    if row is not None:
        return status_from_row(row)
    current = get_status(session, job_id, owner_id)
    if current is None:
        raise JobNotFound(str(job_id))
    raise JobAlreadyFinished(current)


def remember_trace_parents(conn: Connection, traced: list[tuple[str, str]]) -> None:
    """Keep each (job id, traceparent) on its row, so a re-published message continues the trace."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "UPDATE jobs SET trace_parent = t.parent"
            " FROM unnest(%(ids)s::uuid[], %(parents)s::text[]) AS t(id, parent)"
            " WHERE jobs.id = t.id",
            {"ids": [job_id for job_id, _ in traced], "parents": [p for _, p in traced]},
        )
        return
    for job_id, parent in traced:
        conn.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(trace_parent=parent))


def trace_parent(session: Session, job_id: uuid.UUID) -> str | None:
    """The traceparent the job's submit was traced under (None: untraced, or not sampled)."""
    return session.scalar(select(Job.trace_parent).where(Job.id == job_id))


def republish_details(session: Session, job_id: uuid.UUID) -> tuple[int | None, str | None]:
    """The job's owner and the traceparent its submit was traced under, for a re-publish."""
    row = session.execute(select(Job.owner_id, Job.trace_parent).where(Job.id == job_id)).first()
    return (None, None) if row is None else (row.owner_id, row.trace_parent)


def ended_among(session: Session, job_ids: list[uuid.UUID]) -> set[str]:
    """Which of `job_ids` have ended: a terminal row, or no row (expired, deleted)."""
    live = set(
        session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.state.not_in(TERMINAL)))
    )
    return {str(job_id) for job_id in job_ids if job_id not in live}
