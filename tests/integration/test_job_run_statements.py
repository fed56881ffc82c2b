"""A worker's one-statement job writes survive a connection the server just dropped."""

from __future__ import annotations

from sqlalchemy import text

from infra.db import create_db_engine
from shared.resources import Resources
from workers.job_run import one_statement


def test_a_statement_on_a_connection_dropped_a_moment_ago_runs_again_on_a_new_one(settings):
    res = Resources.build(settings)
    admin = create_db_engine(settings, isolation_level="AUTOCOMMIT")
    try:
        # Leave exactly one connection in the pool, fresh from use (so not pinged).
        pid = one_statement(res, lambda conn: conn.scalar(text("SELECT pg_backend_pid()")))
        with admin.connect() as conn:
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        again = one_statement(res, lambda conn: conn.scalar(text("SELECT pg_backend_pid()")))
        assert again != pid
    finally:
        admin.dispose()
        res.close()
