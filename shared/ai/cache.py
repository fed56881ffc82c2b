"""`AICache`: AI results in Redis, with single-flight and a popularity ranking.

Keys (all under the configured prefix, e.g. "conveyor:"):

- `ai:v1:<sha256>`: the result JSON; the hash covers the canonical JSON of
  (kind, normalised prompt, options, provider, model); TTL per kind.
- `ai:v1:<sha256>:lock`: held (SET NX PX) by the one worker computing it.
- `ai:v1:<sha256>:failed:<token>`: a few seconds' record of an upstream
  failure, so workers waiting on that computation fail with the same error
  instead of queueing up behind one another against a failing upstream.
- `ai:popular`: sorted set, request JSON → times requested, for cache warming.

Single-flight (shared/locks.py): concurrent identical requests make ONE
upstream call. The winner holds the lock while computing; the others poll
until the value (or the winner's shared failure) appears, or the lock
disappears, and then take the lock themselves. A lock outliving its holder
expires after `lock_ttl`. What is the AI cache's own: which failures are
shared, and the popularity ranking.

If Redis fails before the computation starts, the cache steps aside and the
request is computed uncached (logged); a result is never computed twice
because of a Redis error after the upstream call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import redis

from shared.ai.errors import AIError
from shared.ai.request import AIRequest, AIRequestError
from shared.locks import SingleFlight

if TYPE_CHECKING:
    from infra.settings import Settings

log = logging.getLogger(__name__)

# A caller's writes queued on the cache lookup's pipeline; what it returns, if
# callable, settles their replies (see `_execute_with`).
Also = Callable[[redis.client.Pipeline], object]

# Per-user quota failures belong to the user who hit them, not to others
# waiting for the same prompt; everything else came from the upstream.
_SHARED_FAILURE_CODES = frozenset(
    {"ai_timeout", "ai_unavailable", "ai_rate_limited", "ai_bad_response", "ai_rejected"}
)


def _shared_failure(error: BaseException) -> dict | None:
    """What waiters on the same request should fail with, or None to keep it private."""
    if not isinstance(error, AIError) or error.code not in _SHARED_FAILURE_CODES:
        return None
    return {
        "code": error.code,
        "message": error.message,
        "retryable": error.retryable,
        "retry_after": error.retry_after,
    }


def _revive_failure(record: dict) -> AIError:
    return AIError(
        record["code"],
        record["message"],
        retryable=record["retryable"],
        retry_after=record["retry_after"],
    )


def _parse(raw: bytes | str | None, key: str) -> dict | None:
    """A cached result, or None when absent or unreadable (then it is recomputed)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("ignoring unreadable ai cache entry %s", key)
        return None


class AICache:
    """Results of AI requests in Redis, keyed by request, provider and model."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttls: Mapping[str, int],
        *,
        enabled: bool = True,
        lock_ttl: float = 30.0,
        poll_interval: float = 0.05,
        failure_ttl: float = 10.0,
        popular_max: int = 1000,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttls = dict(ttls)
        self.enabled = enabled
        self.lock_ttl = lock_ttl
        self.poll_interval = poll_interval
        self.failure_ttl = failure_ttl
        self.popular_max = popular_max
        self.popular_key = prefix + "ai:popular"
        self._flight: SingleFlight[dict] = SingleFlight(
            client,
            lock_ttl=lock_ttl,
            poll_interval=poll_interval,
            failure_ttl=failure_ttl,
            share=_shared_failure,
            revive=_revive_failure,
        )

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> AICache:
        """A cache with the TTLs, prefix and switch from `settings`."""
        return cls(
            client,
            settings.redis_key_prefix,
            {
                "text": settings.cache_ttl_ai_text,
                "presentation": settings.cache_ttl_ai_presentation,
                "image": settings.cache_ttl_ai_image,
            },
            enabled=settings.cache_enabled,
            # The lock must outlive one upstream attempt, or a second worker
            # starts the same call while the first is still waiting on it.
            lock_ttl=settings.ai_timeout_seconds + 15,
        )

    def key(self, request: AIRequest, provider: str, model: str) -> str:
        """The Redis key of `request`'s result from `provider`/`model`."""
        identity = json.dumps(
            [request.kind, request.prompt, request.options, provider, model],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return self.prefix + "ai:v1:" + hashlib.sha256(identity.encode()).hexdigest()

    def get(self, request: AIRequest, provider: str, model: str) -> dict | None:
        """The cached result, or None."""
        return self._read(self.key(request, provider, model))

    def put(self, request: AIRequest, provider: str, model: str, value: dict) -> None:
        """Store `value` with its kind's TTL (cache warming refreshes entries with this)."""
        self._write(self.key(request, provider, model), request.kind, value)

    def ttl_remaining(self, request: AIRequest, provider: str, model: str) -> float | None:
        """Seconds until the cached result expires, or None when nothing is cached."""
        millis = self.redis.pttl(self.key(request, provider, model))
        return millis / 1000 if millis >= 0 else None

    def get_or_compute(
        self,
        request: AIRequest,
        provider: str,
        model: str,
        compute: Callable[[], dict],
        *,
        record: bool = True,
        also: Also | None = None,
    ) -> tuple[dict, bool]:
        """`(result, from_cache)`: the cached result, or `compute()`'s, computed once.

        `compute` runs only on a miss, at most once per call, and its AIError
        propagates. `record=False` leaves the popularity ranking alone (for
        the cache-warming job's own requests). `also(pipe)` queues the
        caller's own writes on the lookup's trip (a job's live status); their
        failure is logged and does not fail the lookup. With the cache off
        there is no lookup and `also` is not called.
        """
        if not self.enabled or self.ttls.get(request.kind, 0) <= 0:
            return compute(), False
        started = False

        def tracked() -> dict:
            nonlocal started
            started = True
            return compute()

        try:
            key = self.key(request, provider, model)
            # The ranking and the lookup share one round trip.
            cached = self._record_and_read(request, key, also) if record else self._read(key, also)
            if cached is not None:
                return cached, True
            return self._flight.run(
                key,
                load=lambda raw: _parse(raw, key),
                compute=tracked,
                store=lambda value, pipe: self._queue_write(pipe, key, request.kind, value),
            )
        except redis.RedisError:
            if started:
                raise  # the failure came from compute itself, e.g. a quota check
            log.warning("ai cache unavailable; computing uncached", exc_info=True)
            return compute(), False

    def popular_requests(self, limit: int) -> list[AIRequest]:
        """The `limit` most requested requests, most requested first."""
        if limit <= 0:
            return []
        requests = []
        for member in self.redis.zrevrange(self.popular_key, 0, limit - 1):
            try:
                requests.append(AIRequest.from_dict(json.loads(member)))
            except (ValueError, AIRequestError):
                continue  # stored under older, looser rules; not worth warming
        return requests

    def _read(self, key: str, also: Also | None = None) -> dict | None:
        if also is None:
            return _parse(self.redis.get(key), key)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(key)
        (raw,) = _execute_with(pipe, 1, also)
        return _parse(raw, key)

    def _queue_write(self, pipe: redis.client.Pipeline, key: str, kind: str, value: dict) -> None:
        ttl = self.ttls.get(kind, 0)
        if ttl > 0:
            pipe.set(key, json.dumps(value, separators=(",", ":")), ex=ttl)

    def _write(self, key: str, kind: str, value: dict) -> None:
        if self.ttls.get(kind, 0) <= 0:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            self._queue_write(pipe, key, kind, value)
            pipe.execute()
        except redis.RedisError:
            # The result is computed and paid for; failing the job over a cache
            # write would only make the caller pay again.
            log.warning("could not cache ai result %s", key, exc_info=True)

    def _record_and_read(
        self,
        request: AIRequest,
        key: str,
        also: Also | None = None,
    ) -> dict | None:
        """Count `request` in the popularity ranking and read its cached result, in one trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zincrby(self.popular_key, 1, request.canonical_json())
        pipe.zcard(self.popular_key)
        pipe.get(key)
        _, size, raw = _execute_with(pipe, 3, also)
        # Trim in batches (10% slack) rather than on every call.
        if size > self.popular_max + self.popular_max // 10:
            self.redis.zremrangebyrank(self.popular_key, 0, -(self.popular_max + 1))
        return _parse(raw, key)


def _execute_with(pipe: redis.client.Pipeline, own: int, also: Also | None) -> list:
    """Execute `pipe`, whose first `own` commands are the cache's, with `also`'s queued after.

    The cache's own replies are returned (an error among them raised, as
    `execute` would). `also(pipe)` may return a callable, which then gets
    every reply of the trip to settle its own; an error left among those
    is logged only.
    """
    if also is None:
        return pipe.execute()
    settle = also(pipe)
    replies = pipe.execute(raise_on_error=False)
    for reply in replies[:own]:
        if isinstance(reply, Exception):
            raise reply
    try:
        if callable(settle):
            replies = settle(replies) or replies
        failed = next((reply for reply in replies[own:] if isinstance(reply, Exception)), None)
    except redis.RedisError as error:
        failed = error
    if failed is not None:
        log.warning("writes sent with the ai cache lookup failed: %s", failed)
    return replies[:own]
