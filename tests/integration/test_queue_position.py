"""A queued job's position and ETA, polled while a real worker drains its queue."""

from __future__ import annotations

import time

import pytest

from tests.support.workers import running_worker

pytestmark = pytest.mark.integration

JOBS = 8


def test_queue_position_decreases_as_the_queue_drains(celery_app, client, make_user):
    _, headers = make_user("queued")
    ids = []
    for _ in range(JOBS):  # no worker yet: they wait in the ledger queue, in order
        accepted = client.post("/api/v1/transactions/random", json={"count": 3}, headers=headers)
        assert accepted.status_code == 202
        ids.append(accepted.get_json()["task_id"])
    first = [client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json() for task_id in ids]
    positions = [status["queue_position"] for status in first]
    # Jobs queued before these (by earlier tests) count too: only the steps are known.
    assert positions == list(range(positions[0], positions[0] + JOBS))
    assert all(status["state"] == "PENDING" for status in first)

    last = ids[-1]
    seen: list[int] = []
    etas: list[int | None] = []
    with running_worker(celery_app, concurrency=1, queues="ledger"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = client.get(f"/api/v1/tasks/{last}", headers=headers).get_json()
            if status["state"] != "PENDING":
                assert status["queue_position"] is None and status["eta_seconds"] is None
                break
            seen.append(status["queue_position"])
            etas.append(status["eta_seconds"])
            time.sleep(0.01)
        else:
            raise AssertionError(f"{last} still PENDING, positions seen {seen[-5:]}")
    assert seen == sorted(seen, reverse=True), seen  # never goes up
    assert len(set(seen)) >= 3 and seen[-1] < positions[-1], seen
    # Once claims have been timed, the queue's drain rate gives an ETA.
    assert any(eta is not None and eta >= 1 for eta in etas), etas
