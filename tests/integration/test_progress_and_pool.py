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


def test_pooled_connections_carry_a_30s_statement_timeout(resources):
    with resources.engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "30s"
    pool = resources.engine.pool
    assert (pool.size(), pool._max_overflow, pool._recycle, pool._timeout) == (10, 20, 3600, 30)
    assert pool._pre_ping is True
