"""A Redis lock that keeps two runs of one scheduled job from overlapping."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

# Delete the lock only if we still hold it: after expiry another run may.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def run_lock_key(prefix: str, name: str) -> str:
    return f"{prefix}lock:{name}"


@contextmanager
def exclusive_run(client: redis.Redis, prefix: str, name: str, ttl_seconds: int) -> Iterator[bool]:
    """Yield True when this run holds lock `name` (released on exit), False when another does.

    The TTL should exceed the run's hard time limit, so a killed run cannot
    hold the lock forever and a live one never loses it.
    """
    key = run_lock_key(prefix, name)
    token = uuid.uuid4().hex
    acquired = bool(client.set(key, token, nx=True, ex=ttl_seconds))
    try:
        yield acquired
    finally:
        if acquired:
            client.eval(_RELEASE, 1, key, token)
