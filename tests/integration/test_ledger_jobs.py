"""Ledger jobs end to end: HTTP submit, a real Celery worker, poll to completion."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from shared import ledger
from shared.models import LedgerEntry
from tests.support.accounts import fund
from tests.support.polling import wait_for_state

pytestmark = pytest.mark.integration


def _post(client, headers, type_, amount, **extra):
    response = client.post(
        "/api/v1/transactions", json={"type": type_, "amount": amount, **extra}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


def test_debit_beyond_balance_fails_with_insufficient_funds_and_changes_nothing(
    client, make_user, resources, worker
):
    user_id, headers = make_user()
    fund(resources, user_id, 300)
    done = wait_for_state(client, headers, _post(client, headers, "debit", 301))
    assert done["state"] == "FAILURE"
    assert done["error"]["code"] == "insufficient_funds"
    assert done["result"] is None
    assert client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 300
    assert client.get("/api/v1/transactions", headers=headers).get_json()["total"] == 1


def test_credit_and_debit_post_and_list_with_task_ids(client, make_user, worker):
    _, headers = make_user()
    credit_id = _post(client, headers, "credit", 1_000, description="salary")
    assert wait_for_state(client, headers, credit_id)["result"]["balance"] == 1_000
    debit_id = _post(client, headers, "debit", 250, description="rent")
    debit = wait_for_state(client, headers, debit_id)
    assert debit["state"] == "SUCCESS" and debit["progress"] == 100
    assert debit["result"]["balance"] == 750
    listed = client.get("/api/v1/transactions", headers=headers).get_json()
    assert listed["total"] == 2
    newest = listed["items"][0]
    assert newest == {
        **newest,
        "type": "debit",
        "amount": 250,
        "balance_after": 750,
        "description": "rent",
        "task_id": debit_id,
        "id": debit["result"]["transaction_id"],
    }


def test_forty_concurrent_debit_jobs_of_100_on_2000_exactly_twenty_succeed(
    app, client, make_user, resources, worker
):
    user_id, headers = make_user()
    fund(resources, user_id, 2_000)
    task_ids: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(40)

    def submit():
        local = app.test_client()
        barrier.wait()
        task_id = _post(local, headers, "debit", 100)
        with lock:
            task_ids.append(task_id)

    threads = [threading.Thread(target=submit) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finals = [wait_for_state(client, headers, task_id, timeout=60) for task_id in task_ids]
    states = [final["state"] for final in finals]
    assert states.count("SUCCESS") == 20
    assert states.count("FAILURE") == 20
    assert {f["error"]["code"] for f in finals if f["state"] == "FAILURE"} == {"insufficient_funds"}
    assert client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 0
    with resources.sessions() as session:
        assert ledger.ledger_sum(session, user_id) == 0


def test_random_batch_posts_count_entries_never_overdrawing(client, make_user, resources, worker):
    user_id, headers = make_user()
    response = client.post("/api/v1/transactions/random", json={"count": 10}, headers=headers)
    done = wait_for_state(client, headers, response.get_json()["task_id"])
    assert done["state"] == "SUCCESS" and done["result"]["count"] == 10
    with resources.sessions() as session:
        posted = session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.job_id == done["task_id"])
        )
        assert ledger.ledger_sum(session, user_id) == done["result"]["balance"]
    assert posted == 10
    wallet = client.get("/api/v1/wallet", headers=headers).get_json()["balance"]
    assert wallet == done["result"]["balance"] >= 0


def test_random_batch_without_count_picks_one_to_ten(client, make_user, worker):
    _, headers = make_user()
    response = client.post("/api/v1/transactions/random", headers=headers)
    assert response.status_code == 202
    done = wait_for_state(client, headers, response.get_json()["task_id"])
    assert 1 <= done["result"]["count"] <= 10


def test_every_finished_job_writes_a_notification(client, make_user, worker):
    _, headers = make_user()
    ok = wait_for_state(client, headers, _post(client, headers, "credit", 10))
    failed = wait_for_state(client, headers, _post(client, headers, "debit", 10_000))
    pending = client.get("/api/v1/notifications/pending", headers=headers).get_json()["items"]
    by_task = {item["task_id"]: item for item in pending}
    assert by_task[ok["task_id"]]["type"] == "job.succeeded"
    assert by_task[failed["task_id"]]["type"] == "job.failed"
    assert "exceeds the balance" in by_task[failed["task_id"]]["message"]
    marked = client.post(
        "/api/v1/notifications/read",
        json={"ids": [ok["task_id"], by_task[ok["task_id"]]["id"]]},
        headers=headers,
    ).get_json()
    assert marked == {"updated": 1}
    left = client.get("/api/v1/notifications/pending", headers=headers).get_json()["items"]
    assert [item["task_id"] for item in left] == [failed["task_id"]]
    assert len(client.get("/api/v1/notifications", headers=headers).get_json()["items"]) == 2
