"""A worker's statements on a job row: claim, finish, mark a state; one conditional UPDATE each.

Every transition is conditional on the unfinished states, so two deliveries
of one job cannot both complete it and a cancelled job is never moved again.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, NamedTuple

from sqlalchemy import JSON, Connection, bindparam, case, exists, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from infra.prepared import PreparedStatement
from shared.jobs.model import (
    UNFINISHED,
    UNFINISHED_SQL,
    ClaimedJob,
    JobError,
    status_from_row,
    utcnow,
)
from shared.jobs.records import STATUS_COLUMNS
from shared.models import Job, WebhookEndpoint

# The worker's per-job statements, built once: each runs as one statement on an
# autocommit connection (or inside a caller's transaction). On the Table, not
# the ORM entity, so a Session runs them as plain Core statements (the ORM's
# bulk-update path cost more CPU than the round trip itself; `make bench`'s AI
# rows, py-spy), and a built statement reuses its compiled form and cache key.
_JOBS = Job.__table__
_UNFINISHED_STATE = _JOBS.c.state.in_([literal(state) for state in UNFINISHED])
_CLAIMED_COLUMNS = (
    _JOBS.c.id,
    _JOBS.c.owner_id,
    _JOBS.c.kind,
    _JOBS.c.params,
    _JOBS.c.attempts,
    _JOBS.c.created_at,
    _JOBS.c.expires_at,
    _JOBS.c.lost_runs,
)
# A claim that finds the job STARTED takes over a run that never reported an
# end: its worker process died under it (shared/jobs/poison.py). That run counts.
_RUN_LOST = case((_JOBS.c.state.in_([literal("STARTED"), literal("PROGRESS")]), 1), else_=0)
_CLAIM = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _UNFINISHED_STATE)
    .values(
        state="STARTED",
        message="started",
        attempts=_JOBS.c.attempts + 1,
        lost_runs=_JOBS.c.lost_runs + _RUN_LOST,
        started_at=func.coalesce(
            _JOBS.c.started_at, bindparam("now", type_=_JOBS.c.started_at.type)
        ),
        updated_at=bindparam("now", type_=_JOBS.c.updated_at.type),
    )
    .returning(*_CLAIMED_COLUMNS)
)
_FINISH_VALUES = ("state", "message", "error_code", "error_message")
# A bound None is SQL NULL, as `values(result=None)` wrote it (JSON's default is 'null').
_RESULT_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
_FINISH = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _UNFINISHED_STATE)
    .values(
        {name: bindparam(f"new_{name}", type_=_JOBS.c[name].type) for name in _FINISH_VALUES}
        | {
            "result": bindparam("new_result", type_=_RESULT_TYPE),
            # 100 on SUCCESS; a FAILURE (new_progress NULL) keeps the last reported one.
            "progress": func.coalesce(
                bindparam("new_progress", type_=_JOBS.c.progress.type), _JOBS.c.progress
            ),
            "updated_at": bindparam("now", type_=_JOBS.c.updated_at.type),
            "finished_at": bindparam("now", type_=_JOBS.c.finished_at.type),
        }
    )
    .returning(
        *(_JOBS.c[column.key] for column in STATUS_COLUMNS),
        # Whether the owner has any webhook endpoint: only then is the outbox
        # asked (a transaction of its own) to record the outcome's deliveries.
        exists()
        .where(WebhookEndpoint.__table__.c.owner_id == _JOBS.c.owner_id)
        .label("has_webhooks"),
    )
)
_MARK_STATE = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _UNFINISHED_STATE)
    .values(
        state=bindparam("new_state", type_=_JOBS.c.state.type),
        message=bindparam("new_message", type_=_JOBS.c.message.type),
        updated_at=bindparam("now", type_=_JOBS.c.updated_at.type),
    )
)


# The same claim and finish on a PostgreSQL connection, prepared once per
# connection (infra/prepared.py): a worker runs them for every job, and each
# would otherwise be parsed by the server and compiled, bound and read back by
# SQLAlchemy. Planned afresh on every run (a custom plan): one plan kept from
# while `jobs` was empty could scan an index whole for the one row (the
# partial index of unfinished jobs matches the state condition too).
_LOOKUP_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
_CLAIM_PREPARED = PreparedStatement(
    "conveyor_claim_job",
    f"""
UPDATE jobs SET state = 'STARTED', message = 'started', attempts = attempts + 1,
       lost_runs = lost_runs + CASE WHEN state IN ('STARTED', 'PROGRESS') THEN 1 ELSE 0 END,
       started_at = coalesce(started_at, %(now)s), updated_at = %(now)s
WHERE id = %(job_id)s AND state IN ({UNFINISHED_SQL})
RETURNING id, owner_id, kind, params, attempts, created_at, expires_at, lost_runs
""",  # noqa: S608
    types={"job_id": "uuid", "now": "timestamptz"},
    settings=_LOOKUP_SETTINGS,
)
_FINISH_PREPARED = PreparedStatement(
    "conveyor_finish_job",
    f"""
UPDATE jobs SET state = %(new_state)s, message = %(new_message)s,
       error_code = %(new_error_code)s, error_message = %(new_error_message)s,
       result = %(new_result)s, progress = coalesce(%(new_progress)s, progress),
       updated_at = %(now)s, finished_at = %(now)s
WHERE id = %(job_id)s AND state IN ({UNFINISHED_SQL})
RETURNING {", ".join(column.key for column in STATUS_COLUMNS)},
       EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.owner_id = jobs.owner_id)
           AS has_webhooks
""",  # noqa: S608
    types={
        "job_id": "uuid",
        "now": "timestamptz",
        "new_state": "varchar",
        "new_message": "varchar",
        "new_error_code": "varchar",
        "new_error_message": "varchar",
        "new_result": "jsonb",
        "new_progress": "smallint",
    },
    settings=_LOOKUP_SETTINGS,
)


def _prepared(conn: Connection | Session) -> bool:
    """A PostgreSQL connection (not a session, nor SQLite): the prepared statements apply."""
    return isinstance(conn, Connection) and conn.dialect.name == "postgresql"


class FinishedJob(NamedTuple):
    """A job `finish_job` just ended: its status document, and whether webhooks may apply."""

    status: dict[str, Any]
    has_webhooks: bool


def claim(conn: Connection | Session, job_id: uuid.UUID) -> ClaimedJob | None:
    """Mark the job STARTED for a new attempt; None when it is finished or cancelled.

    One statement: on an autocommit connection it needs no BEGIN/COMMIT trips.
    """
    if _prepared(conn):
        values = {"job_id": str(job_id), "now": utcnow()}
        row = _CLAIM_PREPARED.execute(conn, values).first()  # type: ignore[arg-type]
    else:
        row = conn.execute(_CLAIM, {"job_id": job_id, "now": utcnow()}).first()
    if row is None:
        return None
    return ClaimedJob(
        id=row.id if isinstance(row.id, uuid.UUID) else uuid.UUID(row.id),
        owner_id=row.owner_id,
        kind=row.kind,
        params=row.params,
        attempts=row.attempts,
        created_at=row.created_at,
        expires_at=row.expires_at,
        lost_runs=row.lost_runs,
    )


def lock_unfinished(session: Session, job_id: uuid.UUID) -> bool:
    """Lock the job row for the rest of the transaction; False when it is already terminal.

    A worker takes this lock in the same transaction that applies the job's
    effect, so a duplicate delivery or a concurrent cancel serialises behind it.
    """
    state = session.scalar(select(Job.state).where(Job.id == job_id).with_for_update())
    return state in UNFINISHED


def finish(
    session: Session | Connection,
    job_id: uuid.UUID,
    *,
    state: str,
    result: dict[str, Any] | None = None,
    error: JobError | None = None,
    message: str = "",
) -> dict[str, Any] | None:
    """Move an unfinished job to SUCCESS or FAILURE; None when it was already terminal."""
    finished = finish_job(session, job_id, state=state, result=result, error=error, message=message)
    return None if finished is None else finished.status


def finish_job(
    conn: Connection | Session,
    job_id: uuid.UUID,
    *,
    state: str,
    result: dict[str, Any] | None = None,
    error: JobError | None = None,
    message: str = "",
) -> FinishedJob | None:
    """`finish`, also saying whether the owner has webhook endpoints; None when already terminal.

    One conditional statement: a job whose only effect is its result (an AI
    job) finishes on an autocommit connection in one round trip, and a
    duplicate delivery or a cancel that got there first makes it a no-op.
    """
    assert state in ("SUCCESS", "FAILURE")
    success = state == "SUCCESS"
    values = {
        "job_id": job_id,
        "now": utcnow(),
        "new_state": state,
        "new_progress": 100 if success else None,
        "new_message": message or ("done" if success else "failed"),
        "new_result": result,
        "new_error_code": error.code if error else None,
        "new_error_message": error.message[:500] if error else None,
    }
    if _prepared(conn):
        # As the JSONB column type writes it: None is SQL NULL.
        values["new_result"] = None if result is None else json.dumps(result)
        values["job_id"] = str(job_id)
        row = _FINISH_PREPARED.execute(conn, values).first()  # type: ignore[arg-type]
    else:
        row = conn.execute(_FINISH, values).first()
    if row is None:
        return None
    return FinishedJob(status_from_row(row), bool(row.has_webhooks))


def mark_state(session: Session | Connection, job_id: uuid.UUID, state: str, message: str) -> None:
    """Record a non-terminal transition (e.g. RETRY) on an unfinished job."""
    assert state in UNFINISHED
    session.execute(
        _MARK_STATE,
        {"job_id": job_id, "new_state": state, "new_message": message[:255], "now": utcnow()},
    )


def cancelled_among(conn: Connection | Session, job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `job_ids` their owner cancelled (REVOKED), for a task that found them not claimable.

    Not claimable means finished or cancelled; only a cancel should end the
    task as REVOKED, a repeat delivery of a finished job stays a success.
    """
    if not job_ids:
        return set()
    rows = conn.execute(
        select(_JOBS.c.id).where(_JOBS.c.id.in_(job_ids), _JOBS.c.state == "REVOKED")
    )
    return {row.id for row in rows}
