"""Redis locks and single-flight: the one place that takes, waits on and releases them.

Every lock is SET NX PX with a random token, released by a compare-and-delete
script, so only its holder can release it and a holder that died loses it
after its TTL. Users:

- `exclusive`: one run at a time of a scheduled job (cache warming), on
  redis-py's own `Lock`.
- `SingleFlight`: one computation per cache key across all processes; the
  others wait for the holder's value. The read cache and the AI cache both
  sit on it; the AI cache adds shared failures through `share`/`revive`. It
  takes its lock with the same protocol, in the trip that reads the key, and
  releases it in the trip that stores the value.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)

T = TypeVar("T")


def lock_key(prefix: str, name: str) -> str:
    """The key of the named run lock."""
    return f"{prefix}lock:{name}"


def _release(lock: redis.lock.Lock) -> None:
    try:
        lock.release()
    except LockError:
        log.warning("lock %s expired before its holder released it", lock.name)
    except redis.RedisError:
        log.warning("could not release lock %s", lock.name, exc_info=True)


@contextmanager
def exclusive(client: redis.Redis, key: str, ttl_seconds: float) -> Iterator[bool]:
    """Yield True when this caller holds `key` (released on exit), False when another does.

    The TTL should exceed the holder's hard time limit, so a killed holder
    cannot keep the lock forever and a live one never loses it.
    """
    lock = client.lock(key, timeout=ttl_seconds, blocking=False, thread_local=False)
    acquired = lock.acquire()
    try:
        yield acquired
    finally:
        if acquired:
            _release(lock)


# Delete the lock only while it is still ours (redis-py's Lock releases the same way).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class SingleFlight(Generic[T]):
    """One computation of a missing value per key; concurrent callers wait for it.

    The holder of `<key>:lock` computes and stores the value; the others poll
    (one pipelined round trip each time) until the value appears, the holder's
    shared failure appears (raised again in every waiter), or the lock goes
    away without either (then one of them takes over). With `wait_timeout`, a
    waiter that waited that long computes the value itself, uncached.

    Two round trips for a holder: one takes the lock and reads the key (and
    who holds the lock, for a waiter), one stores the value and releases it.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        lock_ttl: float,
        poll_interval: float,
        wait_timeout: float | None = None,
        failure_ttl: float = 10.0,
        share: Callable[[BaseException], dict[str, Any] | None] | None = None,
        revive: Callable[[dict[str, Any]], BaseException] | None = None,
    ) -> None:
        self.redis = client
        self.lock_ttl = lock_ttl
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.failure_ttl = failure_ttl
        self._share = share
        self._revive = revive
        self._release_script = client.register_script(_RELEASE)

    def run(
        self,
        key: str,
        *,
        load: Callable[[Any], T | None],
        compute: Callable[[], T],
        store: Callable[[T, Any], None],
    ) -> tuple[T, bool]:
        """`(value, from_cache)` for `key`, after a miss: computed here once, or another's.

        `load` turns the stored raw value (or None) into a value (or None);
        `store(value, pipe)` queues the writes of a computed one on `pipe`.
        Redis errors before the computation propagate to the caller; after
        it, the value is returned whatever happens to its storing (logged).
        """
        lock_name = f"{key}:lock"
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        while True:
            token = secrets.token_hex(16)
            # In this order: a previous holder stored its value before releasing,
            # so once the lock is ours the read that follows sees that value.
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(lock_name, token, nx=True, px=max(1, int(self.lock_ttl * 1000)))
            pipe.get(key)
            pipe.get(lock_name)
            acquired, raw, holder = pipe.execute()
            cached = load(raw)
            if acquired:
                if cached is not None:
                    self._release(lock_name, token)
                    return cached, True
                return self._compute_holding(key, lock_name, token, compute, store), False
            if cached is not None:
                return cached, True
            waited = self._wait(key, lock_name, holder, load, deadline)
            if waited is not None:
                return waited, True
            if deadline is not None and time.monotonic() >= deadline:
                return compute(), False  # waited long enough: answer from the source

    def _compute_holding(
        self,
        key: str,
        lock_name: str,
        token: str,
        compute: Callable[[], T],
        store: Callable[[T, Any], None],
    ) -> T:
        released = False
        try:
            try:
                value = compute()
            except Exception as error:
                self._publish_failure(key, token, error)
                raise
            released = True
            self._store_and_release(key, lock_name, token, value, store)
            return value
        finally:
            if not released:
                self._release(lock_name, token)

    def _store_and_release(
        self, key: str, lock_name: str, token: str, value: T, store: Callable[[T, Any], None]
    ) -> None:
        """Store the value, then release the lock, in one trip; failures are only logged."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            store(value, pipe)
            pipe.evalsha(self._release_script.sha, 1, lock_name, token)
            *stored, released = pipe.execute(raise_on_error=False)
        except redis.RedisError:
            log.warning("could not store %s or release its lock", key, exc_info=True)
            return
        if any(isinstance(answer, Exception) for answer in stored):
            log.warning("could not store %s: %s", key, stored)
        if isinstance(released, redis.exceptions.NoScriptError):
            self._release(lock_name, token)  # the script call loads it
        elif isinstance(released, Exception):
            log.warning("could not release lock %s: %s", lock_name, released)
        elif not released:
            log.warning("lock %s expired before its holder released it", lock_name)

    def _release(self, lock_name: str, token: str) -> None:
        try:
            if not self._release_script(keys=[lock_name], args=[token]):
                log.warning("lock %s expired before its holder released it", lock_name)
        except redis.RedisError:
            log.warning("could not release lock %s", lock_name, exc_info=True)

    def _wait(
        self,
        key: str,
        lock_name: str,
        holder: Any,
        load: Callable[[Any], T | None],
        deadline: float | None,
    ) -> T | None:
        """The holder's value, or None when its lock went away (or the deadline passed)."""
        holder = holder.decode() if isinstance(holder, bytes) else holder
        failure_key = f"{key}:failed:{holder}"
        while deadline is None or time.monotonic() < deadline:
            time.sleep(self.poll_interval)
            # In this order: the holder stores the value or its failure before
            # releasing, so a lock seen gone means the later reads see them.
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(lock_name)
            pipe.get(key)
            if self._revive is not None:
                pipe.get(failure_key)
            lock, raw, *failure = pipe.execute()
            value = load(raw)
            if value is not None:
                return value
            if failure and failure[0] is not None and holder is not None:
                raise self._revive(json.loads(failure[0]))
            lock = lock.decode() if isinstance(lock, bytes) else lock
            if holder is None or lock != holder:
                return None
        return None

    def _publish_failure(self, key: str, token: str, error: BaseException) -> None:
        record = self._share(error) if self._share is not None else None
        if record is None:
            return
        try:
            self.redis.set(
                f"{key}:failed:{token}", json.dumps(record), px=int(self.failure_ttl * 1000)
            )
        except redis.RedisError:
            log.warning("could not share the failure for %s", key, exc_info=True)
