"""Engine and session factories; sessions are framed by the caller (request or task)."""

from __future__ import annotations

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.orm import sessionmaker

import tuning
from infra import tracing
from infra.settings import VAR_DIR, Settings, normalize_database_url

# PostgreSQL aborts any statement running longer than this, so a runaway query
# cannot hold a pooled connection (and its locks) forever.
STATEMENT_TIMEOUT_MS = 30_000
# A session left idle inside a transaction (its client vanished with the
# wallet's row lock held: a worker host cut off between INSERT and COMMIT) is
# ended after this long, so the lock is freed for the other workers. TCP
# keepalives let the server notice a silent peer in about 25 s instead of
# the kernel's default two hours.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000
SESSION_OPTIONS = " ".join(
    f"-c {name}={value}"
    for name, value in (
        ("statement_timeout", STATEMENT_TIMEOUT_MS),
        ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_TIMEOUT_MS),
        ("tcp_keepalives_idle", 10),
        ("tcp_keepalives_interval", 5),
        ("tcp_keepalives_count", 3),
    )
)


def create_db_engine(settings: Settings, *, url: str | None = None, **overrides) -> Engine:
    """A pooled engine for `settings` (PostgreSQL in production, SQLite for development)."""
    url = normalize_database_url(url) if url else settings.resolved_database_url
    if url.startswith("sqlite"):
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(url, connect_args={"timeout": 30}, **overrides)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    options = {
        "pool_size": 10,
        "max_overflow": 20,
        "pool_recycle": 3600,  # below common server/proxy idle cut-offs
        "pool_timeout": 30,
        "pool_pre_ping": True,  # a connection dropped by a restart is replaced, not raised
        "connect_args": {"options": SESSION_OPTIONS},
    }
    options.update(overrides)
    # Looked up on the module at each call: with tracing on, OpenTelemetry's
    # SQLAlchemy instrumentation wraps it there (infra/tracing.py), and every
    # engine made afterwards has SQL spans.
    engine = sqlalchemy.create_engine(url, **options)
    if tracing.ACTIVE:
        tuning.install_traced_engine(engine, tuning.selection_of(settings))
    return engine


def create_session_factory(engine: Engine) -> sessionmaker:
    """Sessions that keep loaded values after commit (results are shaped after it)."""
    return sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the web, worker and beat processes read while one writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
