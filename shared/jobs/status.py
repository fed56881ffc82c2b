"""The live status document of each job in Redis: the one writer and reader of it.

The row is the truth; Redis holds a JSON document per job so a poll is one
Redis read. Workers write it at every transition and on progress; a terminal
document is never overwritten (a Lua guard), so a late progress write cannot
resurrect a cancelled or finished job.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import redis
from sqlalchemy.orm import sessionmaker

from shared.jobs.model import TERMINAL, isoformat, utcnow
from shared.jobs.records import get_status
from shared.redis_store import Keys

log = logging.getLogger(__name__)

# Live status documents outlive any job's run by far; the row answers after that.
STATUS_TTL_SECONDS = 24 * 3600
# A live document that has not changed for this long is confirmed against the
# row, in case a worker's final Redis write was lost.
STALE_AFTER = timedelta(seconds=60)


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
