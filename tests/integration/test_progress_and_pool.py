"""Progress from a real worker as a poll sees it; the pooled engine's PostgreSQL settings."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.support.polling import wait_for_state
from workers.job_run import JobRun

pytestmark = pytest.mark.integration


def test_random_batch_reports_rising_progress(client, make_user, worker, monkeypatch):
    seen: list[tuple[str, int]] = []
    original = JobRun.progress

    def recording(self, percent, message):
        original(self, percent, message)
        seen.append((str(self.job.id), self.status["progress"]))

    monkeypatch.setattr(JobRun, "progress", recording)
    _, headers = make_user()
    response = client.post("/api/v1/transactions/random", json={"count": 10}, headers=headers)
    task_id = response.get_json()["task_id"]
    done = wait_for_state(client, headers, task_id)
    assert done["state"] == "SUCCESS" and done["progress"] == 100
    mine = [percent for job, percent in seen if job == task_id]
    assert mine == [10, 20, 30, 40, 50, 60, 70, 80, 90]


def test_pooled_connections_carry_the_session_timeouts_and_keepalives(resources):
    with resources.engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "30s"
        assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "30s"
        assert conn.execute(text("SHOW tcp_keepalives_idle")).scalar() == "10"


def test_a_session_idle_in_a_transaction_is_ended_and_its_locks_freed(resources, make_user):
    """A worker host cut off mid-transaction must not hold a wallet's lock for hours."""
    import psycopg2
    from sqlalchemy.exc import OperationalError

    from infra.db import create_db_engine

    user_id, _ = make_user("idle_tx")
    # A short timeout for this engine only; the mechanism is the same as production's 30 s.
    engine = create_db_engine(
        resources.settings,
        connect_args={
            "options": "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=1000"
        },
    )
    stranded = engine.connect()
    stranded.execute(text("BEGIN"))
    stranded.execute(text("SELECT 1 FROM wallets WHERE user_id = :u FOR UPDATE"), {"u": user_id})
    # The client goes silent holding the lock; another session waits for it and
    # gets it once the server ends the idle transaction (without that, the wait
    # would run into its own 30 s statement timeout and raise).
    with resources.engine.connect() as other:
        other.execute(text("SELECT 1 FROM wallets WHERE user_id = :u FOR UPDATE"), {"u": user_id})
        other.rollback()
    with pytest.raises((OperationalError, psycopg2.Error)):
        stranded.execute(text("SELECT 1"))
    stranded.close()
    engine.dispose()
