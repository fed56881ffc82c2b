"""Slow SQL: fingerprint statements, time them on the engine, keep totals per shape in Redis."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
from sqlalchemy import Engine, event

from infra.redis_store import Keys

log = logging.getLogger(__name__)

MAX_STATEMENT_CHARS = 2000

_NORMALISERS = (
    (re.compile(r"'(?:[^']|'')*'"), "?"),  # string literals
    (re.compile(r"%\(\w+\)s|%s|\$\d+|(?<!:):\w+\b"), "?"),  # bound parameters, any paramstyle
    (re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", re.IGNORECASE), "?"),  # numbers
    (re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)"), "(?)"),  # IN (?, ?, ?) lists of any length
    (re.compile(r"\s+"), " "),
)

# Queries counted per request (or task); None when nobody is counting.
_query_count: ContextVar[list[int] | None] = ContextVar("conveyor_query_count", default=None)


def fingerprint(statement: str) -> str:
    """`statement` with literals and parameters replaced by ?, so equal shapes group together."""
    text = statement
    for pattern, replacement in _NORMALISERS:
        text = pattern.sub(replacement, text)
    return text.strip()[:MAX_STATEMENT_CHARS]


class SlowQueryLog:
    """Per-fingerprint count, total and max milliseconds of slow statements, in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        base = f"{keys.prefix}slow_queries"
        self.statements_key = f"{base}:statements"
        self.count_key = f"{base}:count"
        self.total_key = f"{base}:total_ms"
        self.max_key = f"{base}:max_ms"

    def record(self, statement: str, elapsed_ms: float) -> None:
        """Add one slow execution of `statement` (one atomic round trip)."""
        shape = fingerprint(statement)
        digest = hashlib.sha1(shape.encode(), usedforsecurity=False).hexdigest()[:16]
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(self.statements_key, digest, shape)
        pipe.hincrby(self.count_key, digest, 1)
        pipe.zincrby(self.total_key, elapsed_ms, digest)
        pipe.zadd(self.max_key, {digest: elapsed_ms}, gt=True)
        pipe.execute()

    def top(self, limit: int = 50) -> list[dict[str, Any]]:
        """The slowest fingerprints by total time, worst first."""
        ranked = self.redis.zrevrange(self.total_key, 0, limit - 1, withscores=True)
        if not ranked:
            return []
        digests = [digest for digest, _ in ranked]
        statements = self.redis.hmget(self.statements_key, digests)
        counts = self.redis.hmget(self.count_key, digests)
        maxima = [self.redis.zscore(self.max_key, digest) for digest in digests]
        return [
            {
                "fingerprint": digest,
                "statement": statement,
                "count": int(count or 0),
                "total_ms": round(total, 2),
                "mean_ms": round(total / int(count), 2) if count else None,
                "max_ms": round(maximum or 0.0, 2),
            }
            for (digest, total), statement, count, maximum in zip(
                ranked, statements, counts, maxima, strict=True
            )
        ]

    def reset(self) -> int:
        """Forget every recorded statement; returns how many fingerprints there were."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zcard(self.total_key)
        pipe.delete(self.statements_key, self.count_key, self.total_key, self.max_key)
        return int(pipe.execute()[0])


@contextmanager
def counting_queries() -> Iterator[list[int]]:
    """Count the statements this thread executes inside the block (`box[0]`)."""
    box = [0]
    token = _query_count.set(box)
    try:
        yield box
    finally:
        _query_count.reset(token)


def start_counting() -> list[int]:
    """Begin counting this thread's statements (for request hooks that cannot use `with`)."""
    box = [0]
    _query_count.set(box)
    return box


def stop_counting() -> None:
    _query_count.set(None)


def instrument_engine(engine: Engine, slow_log: SlowQueryLog, slow_query_ms: float) -> None:
    """Time every statement on `engine`; record the ones slower than `slow_query_ms`."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, _cursor, _statement, _parameters, _context, _executemany) -> None:
        conn.info.setdefault("conveyor_query_start", []).append(time.perf_counter())
        box = _query_count.get()
        if box is not None:
            box[0] += 1

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, _cursor, statement, _parameters, _context, _executemany) -> None:
        starts = conn.info.get("conveyor_query_start")
        if not starts:
            return
        elapsed_ms = (time.perf_counter() - starts.pop()) * 1000
        if elapsed_ms < slow_query_ms:
            return
        log.warning(
            "slow query",
            extra={"duration_ms": round(elapsed_ms, 2), "statement": fingerprint(statement)[:500]},
        )
        try:
            slow_log.record(statement, elapsed_ms)
        except redis.RedisError:
            # Observability must never fail the query it observed.
            log.warning("slow query not recorded: Redis unavailable", exc_info=True)

    @event.listens_for(engine, "handle_error")
    def _failed(context) -> None:
        # A failed statement never reaches after_cursor_execute: drop its start time.
        starts = context.connection.info.get("conveyor_query_start") if context.connection else None
        if starts:
            starts.pop()
