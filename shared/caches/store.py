"""The read cache: JSON values in Redis, namespaced and versioned, with single-flight.

Keys (under the configured prefix, e.g. "conveyor:"):

- `cache:<namespace>:v1:<scope>:g<generation>:<parts...>`: a cached value,
  with its namespace's TTL. `v1` is the value schema version; bump it when a
  value's shape changes and old entries simply stop being read.
- `cache:gen:<scope>`: the scope's generation (e.g. `user:42`). Invalidating a
  scope increments it, so every key built with the old generation is
  unreachable at once, whatever the namespace.
- `<value key>:lock`: held by the one process computing a missing value; the
  others wait briefly for it (single-flight, shared/locks.py).
- `cache:stats`: one hash, `<namespace>:hits` / `<namespace>:misses`, so every
  web and worker process adds to the same figures.

Why generations rather than DEL: a reader that loaded the balance from the
database just before a posting committed would otherwise write that stale
value back after the invalidating DEL. Here the reader reads the generation
before it reads the database and writes under that generation; once the
posting bumps it, the stale write lands in a key nobody reads again, and any
reader that saw the new generation read the database after the commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from shared.locks import SingleFlight

log = logging.getLogger(__name__)

SCHEMA_VERSION = "v1"

# KEYS[1] = generation key, KEYS[2] = stats hash; ARGV = key head, key tail, namespace.
# The generation and the value are read in one step, and a hit is counted there too.
_LOOKUP = """
local generation = redis.call('GET', KEYS[1]) or '0'
local value = redis.call('GET', ARGV[1] .. generation .. ARGV[2])
if value then redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':hits', 1) end
return {generation, value or false}
"""


@dataclass(frozen=True)
class NamespaceStats:
    """Hit and miss counts of one namespace, and how many values it holds now."""

    hits: int
    misses: int
    keys: int

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return round(self.hits / total, 4) if total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
            "keys": self.keys,
        }


class Cache:
    """Namespaced JSON values in Redis, invalidated per scope by generation."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttls: Mapping[str, int],
        *,
        enabled: bool = True,
        lock_ttl: float = 5.0,
        wait_timeout: float = 2.0,
        poll_interval: float = 0.01,
        generation_ttl: int = 24 * 3600,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttls = dict(ttls)
        self.enabled = enabled
        self.lock_ttl = lock_ttl
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        # A generation key must outlive every value written under it, or a
        # reset to 0 could resurrect an old generation-0 value.
        self.generation_ttl = max(generation_ttl, 2 * max(self.ttls.values(), default=0))
        self.stats_key = f"{prefix}cache:stats"
        self._lookup = client.register_script(_LOOKUP)
        self._flight: SingleFlight[Any] = SingleFlight(
            client, lock_ttl=lock_ttl, poll_interval=poll_interval, wait_timeout=wait_timeout
        )

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Any) -> Cache:
        """The read cache with the prefix, TTLs and switch from `settings`."""
        return cls(
            client,
            settings.redis_key_prefix,
            {"wallet": settings.cache_ttl_wallet, "transactions": settings.cache_ttl_transactions},
            enabled=settings.cache_enabled,
        )

    # Keys

    def generation_key(self, scope: str) -> str:
        return f"{self.prefix}cache:gen:{scope}"

    def key(self, namespace: str, scope: str, generation: str | int, *parts: object) -> str:
        """The value key of (`namespace`, `scope`, `parts`) at `generation`."""
        head, tail = self._key_halves(namespace, scope, parts)
        return f"{head}{generation}{tail}"

    def _key_halves(self, namespace: str, scope: str, parts: Iterable[object]) -> tuple[str, str]:
        if namespace not in self.ttls:
            raise KeyError(f"unknown cache namespace {namespace!r}")
        tail = "".join(f":{part}" for part in parts)
        return f"{self.prefix}cache:{namespace}:{SCHEMA_VERSION}:{scope}:g", tail

    # Reads

    def get_or_compute(
        self, namespace: str, scope: str, parts: tuple, compute: Callable[[], Any]
    ) -> tuple[Any, bool]:
        """`(value, from_cache)`: the cached value, or `compute()`'s, computed once.

        With the cache disabled this is exactly `compute()` (no Redis at all).
        If Redis fails, the value is computed uncached rather than failing the read.
        """
        if not self.enabled:
            return compute(), False
        head, tail = self._key_halves(namespace, scope, parts)
        try:
            generation, raw = self._lookup(
                keys=[self.generation_key(scope), self.stats_key], args=[head, tail, namespace]
            )
        except redis.RedisError:
            log.warning("read cache unavailable; computing %s uncached", namespace, exc_info=True)
            return compute(), False
        if raw is not None:
            return json.loads(raw), True
        return self._single_flight(namespace, f"{head}{generation}{tail}", compute)

    def _single_flight(
        self, namespace: str, key: str, compute: Callable[[], Any]
    ) -> tuple[Any, bool]:
        try:
            value, from_cache = self._flight.run(
                key,
                load=lambda raw: None if raw is None else json.loads(raw),
                compute=compute,
                store=lambda value, pipe: pipe.set(
                    key, json.dumps(value, separators=(",", ":")), ex=self.ttls[namespace]
                ),
            )
        except redis.RedisError:
            log.warning("read cache unavailable; computing %s uncached", namespace, exc_info=True)
            self._count(namespace, misses=1)
            return compute(), False
        self._count(namespace, hits=int(from_cache), misses=int(not from_cache))
        return value, from_cache

    # Writes

    def generations(self, scopes: list[str]) -> list[str]:
        """The current generation of each scope (read BEFORE computing values to store)."""
        if not scopes:
            return []
        values = self.redis.mget([self.generation_key(scope) for scope in scopes])
        return [value or "0" for value in values]

    def put_many(self, namespace: str, entries: Iterable[tuple[str, str, tuple, Any]]) -> int:
        """Store `(scope, generation, parts, value)` entries in one round trip; returns how many."""
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for scope, generation, parts, value in entries:
            pipe.set(
                self.key(namespace, scope, generation, *parts),
                json.dumps(value, separators=(",", ":")),
                ex=self.ttls[namespace],
            )
            count += 1
        if count:
            pipe.execute()
        return count

    def invalidate(self, scope: str, *, pipe: redis.client.Pipeline | None = None) -> None:
        """Make every cached value of `scope` unreachable by bumping its generation.

        Runs even with the cache disabled: another process may have it enabled.
        With `pipe`, the writes are queued there, ahead of what follows them.
        """
        own = pipe is None
        if own:
            pipe = self.redis.pipeline(transaction=True)
        pipe.incr(self.generation_key(scope))
        pipe.expire(self.generation_key(scope), self.generation_ttl)
        if own:
            pipe.execute()

    # Statistics

    def count(self, namespace: str, *, hits: int = 0, misses: int = 0) -> None:
        """Add to a namespace's counters (for caches that keep their own values, e.g. AI)."""
        self._count(namespace, hits=hits, misses=misses)

    def queue_count(self, pipe: Any, namespace: str, *, hits: int = 0, misses: int = 0) -> None:
        """`count`'s writes, queued on `pipe` (a pipeline the caller sends anyway)."""
        if hits:
            pipe.hincrby(self.stats_key, f"{namespace}:hits", hits)
        if misses:
            pipe.hincrby(self.stats_key, f"{namespace}:misses", misses)

    def _count(self, namespace: str, *, hits: int = 0, misses: int = 0) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            self.queue_count(pipe, namespace, hits=hits, misses=misses)
            pipe.execute()
        except redis.RedisError:
            log.warning("cache statistics not recorded", exc_info=True)

    def stats(self, extra_key_patterns: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Hits, misses, hit rate and live keys per namespace.

        `extra_key_patterns` maps other namespaces (e.g. "ai") to the key
        pattern, under the prefix, whose keys they own.
        """
        counters = self.redis.hgetall(self.stats_key)
        patterns = {
            namespace: f"cache:{namespace}:{SCHEMA_VERSION}:*" for namespace in self.ttls
        } | dict(extra_key_patterns or {})
        names = set(patterns) | {field.rsplit(":", 1)[0] for field in counters}
        result = {}
        for namespace in sorted(names):
            pattern = patterns.get(namespace)
            result[namespace] = NamespaceStats(
                hits=int(counters.get(f"{namespace}:hits", 0)),
                misses=int(counters.get(f"{namespace}:misses", 0)),
                keys=self._count_keys(self.prefix + pattern) if pattern else 0,
            ).to_dict()
        return result

    def _count_keys(self, pattern: str) -> int:
        # SCAN, never KEYS: an admin page must not block Redis. Lock and
        # failure markers share some patterns and are not values.
        return sum(
            1
            for key in self.redis.scan_iter(match=pattern, count=1000)
            if not key.endswith(":lock") and ":failed:" not in key
        )
