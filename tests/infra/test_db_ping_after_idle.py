"""The autocommit pool pings a connection only after it sat idle (shared/resources.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from infra.db import create_db_engine
from shared.resources import AUTOCOMMIT_POOL_SIZE, Resources, ping_after_idle


def _engine(settings, idle_seconds: float):
    engine = create_db_engine(
        settings, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0, pool_pre_ping=False
    )
    ping_after_idle(engine, idle_seconds)
    return engine


def _kill_pooled_connection(settings, engine) -> None:
    """End the server side of the pool's one connection while it sits in the pool."""
    with engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
    admin = create_db_engine(settings, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()


def test_a_connection_that_sat_idle_is_pinged_and_replaced_when_dead(settings):
    engine = _engine(settings, idle_seconds=0.0)  # every reuse counts as idle
    try:
        _kill_pooled_connection(settings, engine)
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT 1")) == 1
    finally:
        engine.dispose()


def test_a_connection_used_a_moment_ago_is_handed_out_without_a_ping(settings):
    # The control: without the ping the dead connection reaches the statement,
    # which fails (and invalidates the pool, so the next checkout reconnects).
    engine = _engine(settings, idle_seconds=3600.0)
    try:
        _kill_pooled_connection(settings, engine)
        with pytest.raises(OperationalError), engine.connect() as conn:
            conn.scalar(text("SELECT 1"))
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT 1")) == 1
    finally:
        engine.dispose()


def test_the_autocommit_pool_keeps_every_connection_it_opens(settings):
    # A burst that used the whole pool leaves all its connections open for the
    # next one (an overflow connection would have been closed on return).
    res = Resources.build(settings)
    try:
        held = [res.autocommit_engine.connect() for _ in range(AUTOCOMMIT_POOL_SIZE)]
        for conn in held:
            conn.close()
        assert res.autocommit_engine.pool.checkedin() == AUTOCOMMIT_POOL_SIZE
    finally:
        res.close()
