"""Every invalid job request is a 422 naming its fields, and records and enqueues nothing.

Malformed bodies (400/413/415, nesting, fuzzing) are tests/api/test_strict_input.py's.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from shared.models import Job
from tests.support.workers import queue_depth

INVALID_TRANSACTIONS = [
    ({}, "type"),
    ({"type": "credit"}, "amount"),
    ({"type": "refund", "amount": 5}, "type"),
    ({"type": "credit", "amount": 0}, "amount"),
    ({"type": "credit", "amount": -1}, "amount"),
    ({"type": "credit", "amount": 10**12 + 1}, "amount"),
    ({"type": "credit", "amount": 10.5}, "amount"),
    ({"type": "credit", "amount": "100"}, "amount"),
    ({"type": "credit", "amount": True}, "amount"),
    ({"type": "credit", "amount": 5, "description": "d" * 256}, "description"),
    ({"type": "credit", "amount": 5, "owner_id": 1}, "owner_id"),
    ({"type": "credit", "amount": 5, "balance": 10**6}, "balance"),
]

INVALID_RANDOM = [
    ({"count": 0}, "count"),
    ({"count": 11}, "count"),
    ({"count": "3"}, "count"),
    ({"count": 2.5}, "count"),
    ({"count": 3, "extra": 1}, "extra"),
]


def _jobs_of(resources, user_id) -> int:
    with resources.sessions() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == user_id))


def _assert_422_naming(response, field):
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert field in {detail["field"] for detail in error["details"]}


@pytest.mark.parametrize(("body", "field"), INVALID_TRANSACTIONS)
def test_invalid_transaction_is_422_and_changes_nothing(
    client, make_user, resources, settings, redis_client, body, field
):
    user_id, headers = make_user()
    depth = queue_depth(redis_client, settings.redis_key_prefix, "ledger")
    _assert_422_naming(client.post("/api/v1/transactions", json=body, headers=headers), field)
    assert _jobs_of(resources, user_id) == 0
    assert queue_depth(redis_client, settings.redis_key_prefix, "ledger") == depth


@pytest.mark.parametrize(("body", "field"), INVALID_RANDOM)
def test_invalid_random_batch_is_422_and_changes_nothing(client, make_user, resources, body, field):
    user_id, headers = make_user()
    _assert_422_naming(
        client.post("/api/v1/transactions/random", json=body, headers=headers), field
    )
    assert _jobs_of(resources, user_id) == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page=0", "page"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("state=DONE", "state"),
        ("kind=ledger.nope", "kind"),
        ("bogus=1", "bogus"),
    ],
)
def test_invalid_query_strings_are_422(client, make_user, query, field):
    _, headers = make_user()
    path = "/api/v1/tasks" if "state" in query or "kind" in query else "/api/v1/transactions"
    _assert_422_naming(client.get(f"{path}?{query}", headers=headers), field)


def test_json_array_body_is_422(client, make_user):
    _, headers = make_user()
    _assert_422_naming(client.post("/api/v1/transactions", json=[1, 2], headers=headers), "(body)")


def test_overlong_idempotency_key_is_422(client, make_user, resources):
    user_id, headers = make_user()
    response = client.post(
        "/api/v1/transactions",
        json={"type": "credit", "amount": 5},
        headers={**headers, "Idempotency-Key": "k" * 256},
    )
    _assert_422_naming(response, "Idempotency-Key")
    assert _jobs_of(resources, user_id) == 0


def test_every_response_carries_request_id_and_process_time(client):
    echoed = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    fresh = client.get("/api/v1/nope")
    assert len(fresh.headers["X-Request-ID"]) >= 16
    assert float(fresh.headers["X-Process-Time"]) > 0
