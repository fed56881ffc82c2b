"""The per-process resources every adapter needs, built from one Settings object."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import Engine, event, exc
from sqlalchemy.orm import sessionmaker

from infra.db import create_db_engine, create_session_factory
from infra.redis_store import Keys, create_redis
from infra.settings import Settings
from infra.slow_queries import SlowQueryLog, instrument_engine
from shared.accounts import PasswordHasher, TokenVerifier
from shared.caches.store import Cache
from shared.jobs import StatusStore
from shared.jobs.fair import FairLines
from shared.notifications import Notifications

# The autocommit pool: at most this many connections per process, all kept
# once opened. (It was 5 kept + 10 overflow, the same 15 at most, but a
# returned overflow connection was closed: under a gevent worker's 100
# greenlets every burst reconnected, a new backend each time.)
AUTOCOMMIT_POOL_SIZE = 15
# A pooled autocommit connection that served a statement less than this long
# ago is handed out without a ping; one idle longer is pinged first (and
# replaced if dead), as pool_pre_ping does for every checkout.
PING_AFTER_IDLE_SECONDS = 1.0


@dataclass
class Resources:
    """One engine (pooled), one Redis client (pooled) and the stores built on them."""

    settings: Settings
    engine: Engine
    # Same database, connections kept in autocommit: for single statements that
    # are atomic on their own (recording a job), without BEGIN/COMMIT round
    # trips or switching a pooled connection's isolation level per request.
    autocommit_engine: Engine
    sessions: sessionmaker
    redis: redis.Redis
    keys: Keys
    statuses: StatusStore
    # The fair lines of the ai and ledger queues (shared/jobs/fair.py).
    fair: FairLines
    notifications: Notifications
    cache: Cache
    tokens: TokenVerifier
    _hasher: PasswordHasher | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Resources:
        engine = create_db_engine(settings)
        autocommit_engine = create_db_engine(
            settings,
            isolation_level="AUTOCOMMIT",
            pool_size=AUTOCOMMIT_POOL_SIZE,
            max_overflow=0,
            pool_pre_ping=False,
            # The most recently returned connection first: under light load
            # the same few stay busy (no ping), and the rest sit idle.
            pool_use_lifo=True,
        )
        ping_after_idle(autocommit_engine, PING_AFTER_IDLE_SECONDS)
        client = create_redis(settings)
        keys = Keys(settings.redis_key_prefix)
        slow_queries = SlowQueryLog(client, keys)
        for each in (engine, autocommit_engine):
            instrument_engine(each, slow_queries, settings.slow_query_ms)
        return cls(
            settings=settings,
            engine=engine,
            autocommit_engine=autocommit_engine,
            sessions=create_session_factory(engine),
            redis=client,
            keys=keys,
            statuses=StatusStore(client, keys),
            fair=FairLines(client, settings),
            notifications=Notifications(
                client,
                keys,
                max_items=settings.notifications_max,
                ttl_seconds=settings.notifications_ttl_seconds,
            ),
            cache=Cache.from_settings(client, settings),
            tokens=TokenVerifier(settings.signing_key),
        )

    @property
    def hasher(self) -> PasswordHasher:
        # Built on first use: hashing the decoy password costs a full KDF run.
        if self._hasher is None:
            self._hasher = PasswordHasher(self.settings.password_hash_method)
        return self._hasher

    @property
    def supports_one_statement_posting(self) -> bool:
        """PostgreSQL runs a ledger job's claim, posting and finish as one statement."""
        return self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()
        self.autocommit_engine.dispose()
        self.redis.close()


def ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout only when it sat idle `idle_seconds` or more.

    pool_pre_ping costs a round trip on every checkout; on the hot paths (a
    submission's INSERT, a worker's claim and finish, one statement each)
    that doubled the trips. A connection returned moments ago is as alive as
    a ping would show; one that sat idle (the server may have restarted or
    dropped it meanwhile) is pinged, and a dead one is replaced, with every
    other connection opened before it (SQLAlchemy's own pre-ping handling).
    A connection the server dropped within `idle_seconds` of its last use can
    still fail one statement, which invalidates the pool too; the worker's
    job-row statements run once more on a new connection then
    (workers/job_run.py `one_statement`). `idle_seconds=0` pings every reuse,
    as pool_pre_ping did.
    """
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # fresh, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                # The pool replaces it (and those opened before it) and retries.
                raise exc.InvalidatePoolError() from error
            raise
