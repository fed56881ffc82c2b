"""The live status document of each job in Redis: the one writer and reader of it.

The row is the truth; Redis holds a JSON document per job so a poll is one
Redis read. Workers write it at every transition and on progress; a terminal
document is never overwritten (a Lua guard), so a late progress write cannot
resurrect a cancelled or finished job.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import redis

from shared.jobs.model import isoformat, utcnow
from shared.redis_store import Keys

# Live status documents outlive any job's run by far; the row answers after that.
STATUS_TTL_SECONDS = 24 * 3600


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
