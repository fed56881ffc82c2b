"""How many messages wait in a broker queue, read cheaply for admission control."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis


class QueueDepths:
    """LLEN of each queue's Redis list, cached for `max_age` seconds per process.

    Every submission asks; one LLEN per queue per second per process is
    enough to notice a backlog of thousands, and costs nothing per request.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        # kombu's global_keyprefix: the ledger queue's list is `{prefix}ledger`.
        self._prefix = prefix
        self._max_age = max_age
        self._clock = clock
        self._cache: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def depth(self, queue: str) -> int:
        """Messages waiting in `queue` (as of at most `max_age` seconds ago)."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(queue)
        if cached is not None and now - cached[0] < self._max_age:
            return cached[1]
        value = int(self._redis.llen(f"{self._prefix}{queue}"))
        with self._lock:
            self._cache[queue] = (now, value)
        return value
