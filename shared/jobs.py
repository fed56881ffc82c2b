"""Job records: the durable row in the database and the live status document in Redis.

The database row is the truth; Redis holds a JSON status document per job so a
poll is one Redis read. Workers write the document at every transition and on
progress; a terminal document is never overwritten (a Lua guard), so a late
progress write cannot resurrect a cancelled or finished job.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import redis
from sqlalchemy import Connection, and_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.models import Job
from shared.redis_store import Keys

UNFINISHED = ("PENDING", "STARTED", "PROGRESS", "RETRY")
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
STATES = UNFINISHED + TERMINAL

# Live status documents outlive any job's run by far; the row answers after that.
STATUS_TTL_SECONDS = 24 * 3600

KIND_QUEUES = {
    "ledger.transaction": "ledger",
    "ledger.random": "ledger",
    "ai.text": "ai",
    "ai.presentation": "ai",
    "ai.image": "ai",
    "cache.warm": "maintenance",
}


class JobError(Exception):
    """A job failed for a reason the client should see, with a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was used before with a different request body."""


class TooManyInflightJobs(Exception):
    """The owner already has the maximum number of unfinished jobs."""


class JobNotFound(Exception):
    """No such job for this owner (another owner's job counts as not found)."""


class JobAlreadyFinished(Exception):
    """The job reached a terminal state and cannot be cancelled."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status["state"])
        self.status = status


@dataclass(frozen=True)
class Submission:
    """The outcome of submitting a job: its status and whether it was a replay."""

    status: dict[str, Any]
    replayed: bool


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job it has claimed."""

    id: uuid.UUID
    owner_id: int
    kind: str
    params: dict[str, Any]
    attempts: int
    created_at: datetime
    expires_at: datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z; SQLite hands back naive datetimes, which are UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def request_hash(kind: str, payload: Mapping[str, Any]) -> str:
    """A stable fingerprint of a validated request, for Idempotency-Key comparison."""
    canonical = json.dumps([kind, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_job_id(value: str) -> uuid.UUID | None:
    """The UUID in `value`, or None when it is not one (so the caller answers 404)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


_STATUS_COLUMNS = (
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


def status_from_row(row: Any) -> dict[str, Any]:
    """The public status document of a job row (or any row with the status columns)."""
    error = None
    if row.error_code:
        error = {"code": row.error_code, "message": row.error_message or ""}
    return {
        "task_id": str(row.id),
        "kind": row.kind,
        "state": row.state,
        "progress": row.progress,
        "message": row.message,
        "created_at": isoformat(row.created_at),
        "updated_at": isoformat(row.updated_at),
        "expires_at": isoformat(row.expires_at),
        "result": row.result,
        "error": error,
    }


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
            select(*_STATUS_COLUMNS, Job.request_hash).where(
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
        select(*_STATUS_COLUMNS).where(Job.id == job_id, Job.owner_id == owner_id)
    ).first()
    return status_from_row(row) if row else None


def list_jobs(
    session: Session,
    owner_id: int,
    *,
    state: str | None = None,
    kind: str | None = None,
    page: int = 1,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int]:
    """The owner's jobs, newest first, and how many match in all."""
    conditions = [Job.owner_id == owner_id]
    if state:
        conditions.append(Job.state == state)
    if kind:
        conditions.append(Job.kind == kind)
    where = and_(*conditions)
    total = session.scalar(select(func.count()).select_from(Job).where(where)) or 0
    rows = session.execute(
        select(*_STATUS_COLUMNS)
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
        .returning(*_STATUS_COLUMNS)
    ).first()
    if row is not None:
        return status_from_row(row)
    current = get_status(session, job_id, owner_id)
    if current is None:
        raise JobNotFound(str(job_id))
    raise JobAlreadyFinished(current)


def claim(session: Session, job_id: uuid.UUID) -> ClaimedJob | None:
    """Mark the job STARTED for a new attempt; None when it is finished or cancelled."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(UNFINISHED))
        .values(
            state="STARTED",
            message="started",
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, utcnow()),
            updated_at=utcnow(),
        )
        .returning(
            Job.id,
            Job.owner_id,
            Job.kind,
            Job.params,
            Job.attempts,
            Job.created_at,
            Job.expires_at,
        )
    ).first()
    if row is None:
        return None
    return ClaimedJob(
        id=row.id,
        owner_id=row.owner_id,
        kind=row.kind,
        params=row.params,
        attempts=row.attempts,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


def lock_unfinished(session: Session, job_id: uuid.UUID) -> bool:
    """Lock the job row for the rest of the transaction; False when it is already terminal.

    A worker takes this lock in the same transaction that applies the job's
    effect, so a duplicate delivery or a concurrent cancel serialises behind it.
    """
    state = session.scalar(select(Job.state).where(Job.id == job_id).with_for_update())
    return state in UNFINISHED


def finish(
    session: Session,
    job_id: uuid.UUID,
    *,
    state: str,
    result: dict[str, Any] | None = None,
    error: JobError | None = None,
    message: str = "",
) -> dict[str, Any] | None:
    """Move an unfinished job to SUCCESS or FAILURE; None when it was already terminal."""
    assert state in ("SUCCESS", "FAILURE")
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(UNFINISHED))
        .values(
            state=state,
            progress=100 if state == "SUCCESS" else Job.progress,
            message=message or ("done" if state == "SUCCESS" else "failed"),
            result=result,
            error_code=error.code if error else None,
            error_message=error.message[:500] if error else None,
            updated_at=now,
            finished_at=now,
        )
        .returning(*_STATUS_COLUMNS)
    ).first()
    return status_from_row(row) if row else None


def mark_state(session: Session, job_id: uuid.UUID, state: str, message: str) -> None:
    """Record a non-terminal transition (e.g. RETRY) on an unfinished job."""
    assert state in UNFINISHED
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(UNFINISHED))
        .values(state=state, message=message[:255], updated_at=utcnow())
    )


# KEYS[1] = status key; ARGV = document, ttl, state, mode ("set" | "nx").
# A terminal document is final; "nx" only fills a missing key (the API's
# fallback snapshot must never overwrite a worker's newer write).
_WRITE_STATUS = """
local current = redis.call('HGET', KEYS[1], 'state')
if ARGV[4] == 'nx' and current then return 0 end
if current == 'SUCCESS' or current == 'FAILURE' or current == 'REVOKED' then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'state', ARGV[3], 'owner', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class LiveDocument(NamedTuple):
    """A live status document as stored: its state and its JSON text."""

    state: str
    document: str


class StatusStore:
    """Live job status documents in Redis: written by workers, read by the API."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_seconds: int = STATUS_TTL_SECONDS):
        self._redis = client
        self._keys = keys
        self._ttl = ttl_seconds
        self._write = client.register_script(_WRITE_STATUS)

    def write(
        self, owner_id: int, status: dict[str, Any], *, only_if_missing: bool = False
    ) -> bool:
        """Store `status` unless the stored one is terminal; True when written."""
        written = self._write(
            keys=[self._keys.job_status(status["task_id"])],
            args=[
                json.dumps(status, separators=(",", ":")),
                self._ttl,
                status["state"],
                "nx" if only_if_missing else "set",
                owner_id,
            ],
        )
        return bool(written)

    def read(self, job_id: str, owner_id: int) -> dict[str, Any] | None:
        """The owner's live status document, or None (absent, or another owner's)."""
        live = self.read_document(job_id, owner_id)
        return None if live is None else json.loads(live.document)

    def read_document(self, job_id: str, owner_id: int) -> LiveDocument | None:
        """Like `read`, but the document stays the JSON text it is stored as."""
        owner, state, doc = self._redis.hmget(
            self._keys.job_status(job_id), "owner", "state", "doc"
        )
        if doc is None or owner != str(owner_id):
            return None
        return LiveDocument(state, doc)

    def progress(
        self, owner_id: int, status: dict[str, Any], percent: int, message: str
    ) -> dict[str, Any]:
        """Write a PROGRESS update derived from `status`; returns the new document."""
        updated = {
            **status,
            "state": "PROGRESS",
            "progress": max(0, min(100, int(percent))),
            "message": message[:255],
            "updated_at": isoformat(utcnow()),
        }
        self.write(owner_id, updated)
        return updated
