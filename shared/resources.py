"""The per-process resources every adapter needs, built from one Settings object."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from shared.accounts import PasswordHasher, TokenVerifier
from shared.cache import Cache
from shared.db import create_db_engine, create_session_factory
from shared.jobs import StatusStore
from shared.notifications import Notifications
from shared.redis_store import Keys, create_redis
from shared.settings import Settings
from shared.slow_queries import SlowQueryLog, instrument_engine


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
    notifications: Notifications
    cache: Cache
    tokens: TokenVerifier
    _hasher: PasswordHasher | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Resources:
        engine = create_db_engine(settings)
        autocommit_engine = create_db_engine(
            settings, isolation_level="AUTOCOMMIT", pool_size=5, max_overflow=10
        )
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
