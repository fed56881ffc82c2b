"""Delivery with a worker started on demand: duplicates post once, cancelled jobs never run."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from shared.models import LedgerEntry
from tests.support.accounts import fund
from tests.support.polling import wait_for_state
from tests.support.workers import queue_depth, running_worker

pytestmark = pytest.mark.integration


def _entries_for(resources, task_id: str) -> int:
    with resources.sessions() as session:
        return session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.job_id == task_id)
        )


def _drain(redis_client, settings, queue="ledger", timeout=30.0):
    deadline = time.monotonic() + timeout
    while (
        queue_depth(redis_client, settings.redis_key_prefix, queue) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert queue_depth(redis_client, settings.redis_key_prefix, queue) == 0


def test_the_same_ledger_job_delivered_twice_posts_once(
    client, make_user, resources, celery_app, redis_client, settings
):
    user_id, headers = make_user()
    fund(resources, user_id, 1_000)
    task_id = client.post(
        "/api/v1/transactions", json={"type": "debit", "amount": 400}, headers=headers
    ).get_json()["task_id"]
    # A second copy of the same message, as Redis would redeliver it after a
    # lost worker: same task name, same task id, same argument.
    celery_app.send_task(
        "ledger.transaction", args=[task_id], task_id=task_id, queue="ledger", ignore_result=True
    )
    assert queue_depth(redis_client, settings.redis_key_prefix, "ledger") >= 2
    with running_worker(celery_app):
        done = wait_for_state(client, headers, task_id)
        _drain(redis_client, settings)
        time.sleep(0.5)  # let the duplicate that was just taken finish
    assert done["state"] == "SUCCESS" and done["result"]["balance"] == 600
    assert _entries_for(resources, task_id) == 1
    assert client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 600


def test_a_job_cancelled_before_it_starts_never_runs(
    client, make_user, resources, celery_app, redis_client, settings
):
    _, headers = make_user()
    task_id = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 777}, headers=headers
    ).get_json()["task_id"]
    assert client.delete(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 202
    with running_worker(celery_app):
        _drain(redis_client, settings)
        time.sleep(0.5)
    final = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
    assert final["state"] == "REVOKED"
    assert _entries_for(resources, task_id) == 0
    assert client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 0
    assert client.delete(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 409


def test_finished_jobs_cannot_be_cancelled(client, make_user, celery_app):
    _, headers = make_user()
    task_id = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 5}, headers=headers
    ).get_json()["task_id"]
    with running_worker(celery_app):
        wait_for_state(client, headers, task_id)
    response = client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
    assert response.status_code == 409
    assert response.get_json()["error"]["details"] == {"state": "SUCCESS"}
