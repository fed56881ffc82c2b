"""Per-user notifications in Redis: a capped, expiring list plus a set of read ids."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from infra.redis_store import Keys
from shared.jobs import isoformat, utcnow


class Notifications:
    """Write one notification per finished job; read and acknowledge them per user."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, max_items: int = 100, ttl_seconds: int = 604800
    ) -> None:
        self._redis = client
        self._keys = keys
        self._max = max_items
        self._ttl = ttl_seconds

    def push(
        self,
        user_id: int,
        *,
        type: str,
        title: str,
        message: str,
        task_id: str | None,
        pipe: redis.client.Pipeline | None = None,
    ) -> dict[str, Any]:
        """Add a notification (newest first), trimming to the cap and refreshing the TTL.

        With `pipe`, the writes are queued there (sent with the pipeline).
        """
        item = {
            "id": uuid.uuid4().hex,
            "type": type,
            "title": title,
            "message": message,
            "task_id": task_id,
            "created_at": isoformat(utcnow()),
        }
        key = self._keys.notifications(user_id)
        own = pipe is None
        if own:
            pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(item, separators=(",", ":")))
        pipe.ltrim(key, 0, self._max - 1)
        pipe.expire(key, self._ttl)
        if own:
            pipe.execute()
        return {**item, "read": False}

    def recent(self, user_id: int, *, unread_only: bool = False) -> list[dict[str, Any]]:
        """The user's notifications, newest first, each with its `read` flag."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.lrange(self._keys.notifications(user_id), 0, -1)
        pipe.smembers(self._keys.notifications_read(user_id))
        raw_items, read_ids = pipe.execute()
        items = []
        for raw in raw_items:
            item = json.loads(raw)
            item["read"] = item["id"] in read_ids
            if not (unread_only and item["read"]):
                items.append(item)
        return items

    def mark_read(self, user_id: int, ids: list[str] | None = None) -> int:
        """Mark the given ids (or all, when None) read; returns how many changed."""
        items = self.recent(user_id)
        present = {item["id"] for item in items}
        already = {item["id"] for item in items if item["read"]}
        wanted = present if ids is None else present & set(ids)
        newly = wanted - already
        read_key = self._keys.notifications_read(user_id)
        # Rewrite the read set as a subset of the live list, so it cannot grow
        # past the cap as old notifications are trimmed away.
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(read_key)
        if already | wanted:
            pipe.sadd(read_key, *(already | wanted))
            pipe.expire(read_key, self._ttl)
        pipe.execute()
        return len(newly)
