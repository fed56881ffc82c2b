"""The live status document of each job in Redis and its event log: the one writer of both.

The row is the truth; Redis holds a JSON document per job so a poll is one
Redis read. Workers write it at every transition and on progress; a terminal
document is never overwritten (a Lua guard), so a late progress write cannot
resurrect a cancelled or finished job. The same Lua call appends the event
that streams replay (shared/jobs/events.py), so a document and its event are
written together or not at all, in one round trip.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import redis
from sqlalchemy.orm import sessionmaker

from infra.redis_store import Keys
from shared.jobs import status_scripts
from shared.jobs.events import (
    FIREHOSE_MAX,
    JOB_STREAM_MAX,
    USER_STREAM_MAX,
    StreamKeys,
)
from shared.jobs.kinds import KIND_QUEUES
from shared.jobs.model import TERMINAL, isoformat, utcnow
from shared.jobs.records import get_status
from shared.jobs.status_scripts import StatusPipeline, run_script

log = logging.getLogger(__name__)

# Live status documents outlive any job's run by far; the row answers after that.
STATUS_TTL_SECONDS = 24 * 3600
# A live document that has not changed for this long is confirmed against the
# row, in case a worker's final Redis write was lost.
STALE_AFTER = timedelta(seconds=60)


NO_ESTIMATE = {"queue_position": None, "eta_seconds": None, "waiting_for": None}


class LiveDocument(NamedTuple):
    """A live status document as stored: its state, its JSON text, and its queue ticket."""

    state: str
    document: str
    queue: str | None = None
    ticket: int | None = None


class Estimate(NamedTuple):
    """Where a PENDING job stands: jobs ahead of it, and seconds until it starts (or None)."""

    queue_position: int
    eta_seconds: int | None
    # Why it waits: "own_jobs" (behind its user's earlier jobs), "user_cap"
    # (its user is at the running cap) or "worker" (for a free worker).
    waiting_for: str | None = None


def _compact(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


class StatusStore:
    """Live job status documents and their events in Redis: written by workers, read by the API."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_seconds: int = STATUS_TTL_SECONDS):
        self._redis = client
        self._keys = keys
        self._streams = StreamKeys(keys.prefix)
        self._ttl = ttl_seconds
        self._write = client.register_script(status_scripts.WRITE_STATUS)
        self._enqueued = client.register_script(status_scripts.RECORD_ENQUEUED)
        self._notify = client.register_script(status_scripts.APPEND_NOTIFICATION)

    def pipeline(self) -> StatusPipeline:
        """A non-transactional pipeline on this store's client, to batch writes in one trip."""
        return StatusPipeline(self._redis.pipeline(transaction=False))

    def _queue_key(self, queue: str, name: str) -> str:
        return f"{self._keys.prefix}queue:{queue}:{name}"

    def write(
        self,
        owner_id: int,
        status: dict[str, Any],
        *,
        only_if_missing: bool = False,
        event: str = "state",
        pipe: redis.client.Pipeline | StatusPipeline | None = None,
    ) -> bool:
        """Store `status` and append it as an event, unless the stored one is terminal.

        One round trip (a Lua script), or queued on `pipe` (then the answer
        comes with the pipeline's). `only_if_missing` writes a snapshot of the
        row (no event). True when written.
        """
        document = status if "queue_position" in status else {**status, **NO_ESTIMATE}
        job_id = status["task_id"]
        queue = KIND_QUEUES.get(status.get("kind", ""), "none")
        written = run_script(
            self._write,
            pipe,
            keys=[
                self._keys.job_status(job_id),
                self._streams.job(job_id),
                self._streams.user(owner_id),
                self._streams.firehose,
                self._queue_key(queue, "claimed"),
                self._queue_key(queue, "claims"),
            ],
            args=[
                _compact(document),
                self._ttl,
                status["state"],
                "nx" if only_if_missing else "set",
                owner_id,
                "" if only_if_missing else event,
                job_id,
                isoformat(utcnow()),
                JOB_STREAM_MAX,
                USER_STREAM_MAX,
                FIREHOSE_MAX,
            ],
        )
        return pipe is None and bool(written)

    def record_enqueued(self, owner_id: int, status: dict[str, Any]) -> int | None:
        """A just-published job's PENDING document, queue ticket and first event; its ticket."""
        keys, args = self._enqueued_call(owner_id, status)
        ticket = self._enqueued(keys=keys, args=args)
        return int(ticket) or None

    def queue_reopened(self, pipe: StatusPipeline, owner_id: int, status: dict[str, Any]) -> None:
        """Queue a replayed job's PENDING document, new queue ticket and event on `pipe`.

        The one write that replaces a terminal document: an admin reopened the
        job (shared/jobs/replay.py), before its new message is published.
        """
        keys, args = self._enqueued_call(owner_id, status)
        pipe.delete(keys[0])
        pipe.run_script(self._enqueued, keys, args)

    def queue_enqueued(
        self, pipe: redis.client.Pipeline | Any, owner_id: int, status: dict[str, Any]
    ) -> None:
        """Queue record_enqueued on `pipe` (any client of this Redis); see settle_enqueued.

        A bare EVALSHA: a Script called on a pipeline makes every execute() ask
        SCRIPT EXISTS first, one more round trip per batch of submissions.
        """
        keys, args = self._enqueued_call(owner_id, status)
        pipe.evalsha(self._enqueued.sha, len(keys), *keys, *args)

    def settle_enqueued(
        self, entries: list[tuple[int, dict[str, Any]]], answers: list[Any]
    ) -> None:
        """After a pipeline of queue_enqueued calls: redo the ones Redis lacked the script for.

        `answers` are the pipeline's (raise_on_error=False) for `entries`, in
        order. Other errors are left to the caller's logging: best effort.
        """
        for (owner_id, status), answer in zip(entries, answers, strict=True):
            if isinstance(answer, redis.exceptions.NoScriptError):
                self.record_enqueued(owner_id, status)  # loads the script, then runs it

    def _enqueued_call(self, owner_id: int, status: dict[str, Any]) -> tuple[list[str], list[Any]]:
        job_id = status["task_id"]
        queue = KIND_QUEUES[status["kind"]]
        keys = [
            self._keys.job_status(job_id),
            self._streams.job(job_id),
            self._streams.user(owner_id),
            self._streams.firehose,
            self._queue_key(queue, "tickets"),
        ]
        args = [
            _compact({**status, **NO_ESTIMATE}),
            owner_id,
            queue,
            self._ttl,
            job_id,
            isoformat(utcnow()),
            JOB_STREAM_MAX,
            USER_STREAM_MAX,
            FIREHOSE_MAX,
        ]
        return keys, args

    def notify(
        self,
        owner_id: int,
        notification: dict[str, Any],
        pipe: redis.client.Pipeline | StatusPipeline | None = None,
    ) -> str:
        """Append `notification` to its owner's event stream; the event id (unless on `pipe`)."""
        return run_script(
            self._notify,
            pipe,
            keys=[self._streams.user(owner_id), self._streams.firehose],
            args=[
                notification.get("task_id") or "",
                owner_id,
                _compact(notification),
                isoformat(utcnow()),
                self._ttl,
                JOB_STREAM_MAX,
                USER_STREAM_MAX,
                FIREHOSE_MAX,
            ],
        )

    def read(self, job_id: str, owner_id: int) -> dict[str, Any] | None:
        """The owner's live status document, or None (absent, or another owner's)."""
        live = self.read_document(job_id, owner_id)
        return None if live is None else json.loads(live.document)

    def read_document(self, job_id: str, owner_id: int) -> LiveDocument | None:
        """Like `read`, but the document stays the JSON text it is stored as."""
        owner, state, doc, queue, ticket = self._redis.hmget(
            self._keys.job_status(job_id), "owner", "state", "doc", "queue", "ticket"
        )
        if doc is None or owner != str(owner_id):
            return None
        return LiveDocument(state, doc, queue, int(ticket) if ticket else None)

    def queue_tickets(self, job_ids: list[str]) -> list[tuple[str, int]]:
        """The (queue, ticket) of each of `job_ids` whose live document has a ticket; one trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self._keys.job_status(job_id), "queue", "ticket")
        return [(queue, int(ticket)) for queue, ticket in pipe.execute() if queue and ticket]

    def estimate(self, queue: str, ticket: int) -> Estimate:
        """Jobs ahead of `ticket` in `queue` and an ETA from the recent claim rate; O(1)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._queue_key(queue, "claimed"))
        pipe.lindex(self._queue_key(queue, "claims"), 0)
        pipe.lindex(self._queue_key(queue, "claims"), -1)
        pipe.llen(self._queue_key(queue, "claims"))
        claimed, newest, oldest, samples = pipe.execute()
        position = max(0, ticket - int(claimed or 0) - 1)
        return Estimate(position, _eta(position, newest, oldest, samples), "worker")

    def estimate_at(self, queue: str, position: int, waiting_for: str) -> Estimate:
        """A job `position` places from the front (the fair order's), with its ETA; O(1)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.lindex(self._queue_key(queue, "claims"), 0)
        pipe.lindex(self._queue_key(queue, "claims"), -1)
        pipe.llen(self._queue_key(queue, "claims"))
        newest, oldest, samples = pipe.execute()
        return Estimate(position, _eta(position, newest, oldest, samples), waiting_for)

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
        self.write(owner_id, updated, event="progress")
        return updated


def _eta(position: int, newest: Any, oldest: Any, samples: int) -> int | None:
    """Seconds until the job `position` places from the front starts, by the recent claim rate."""
    if samples >= 2 and int(newest) > int(oldest):
        per_second = (samples - 1) / ((int(newest) - int(oldest)) / 1000)
        return math.ceil((position + 1) / per_second)
    return None


def with_estimate(status: dict[str, Any], estimate: Estimate | None) -> dict[str, Any]:
    """`status` with `queue_position` and `eta_seconds`: the estimate's while PENDING, else null."""
    if estimate is None or status["state"] != "PENDING":
        return {**status, **NO_ESTIMATE}
    return {**status, **estimate._asdict()}


def suggested_poll_seconds(status: dict[str, Any]) -> int:
    """How long a client should wait before polling again (Retry-After), from the job's state.

    Running jobs change by the second; a queued one not before its ETA is near.
    """
    if status["state"] == "PENDING":
        eta = status.get("eta_seconds")
        return 2 if eta is None else max(1, min(10, eta // 2))
    return 1


def started_document(job: Any) -> dict[str, Any]:
    """The document of a job an attempt has just claimed (a `ClaimedJob`)."""
    return {
        "task_id": str(job.id),
        "kind": job.kind,
        "state": "STARTED",
        "progress": 0,
        "message": "started",
        "created_at": isoformat(job.created_at),
        "updated_at": isoformat(utcnow()),
        "expires_at": isoformat(job.expires_at),
        "result": None,
        "error": None,
    }


def publish(statuses: StatusStore, owner_id: int, status: dict[str, Any] | None) -> bool:
    """Write `status` as the live document; a Redis outage is logged, not raised.

    The row already holds the transition; a missing live document only means
    polls read the row until the next write.
    """
    if status is None:
        return False
    try:
        return statuses.write(owner_id, status)
    except redis.RedisError:
        log.warning("status of job %s not published: Redis unavailable", status["task_id"])
        return False


def is_stale(status: dict[str, Any], *, now: datetime | None = None) -> bool:
    """A non-terminal document that has not changed for STALE_AFTER (its last write may be lost)."""
    updated = datetime.fromisoformat(status["updated_at"].replace("Z", "+00:00"))
    return (now or utcnow()) - updated > STALE_AFTER


def current(
    statuses: StatusStore,
    sessions: sessionmaker,
    job_id: uuid.UUID,
    owner_id: int,
    live: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """What a poll answers: the live document unless absent or stale, else the row.

    The row read is cached as the live document for the next poll, but never
    over a worker's write (`only_if_missing`). None: this owner has no such job.
    """
    if live is not None and (live["state"] in TERMINAL or not is_stale(live)):
        return live
    with sessions() as session:
        status = get_status(session, job_id, owner_id)
    if status is not None and live is None:
        try:
            statuses.write(owner_id, status, only_if_missing=True)
        except redis.RedisError:
            log.debug("status snapshot not cached: Redis unavailable")
    return status
