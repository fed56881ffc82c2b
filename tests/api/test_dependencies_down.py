"""A dependency that is down is a clear 503 naming it, and no accepted job is left behind."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from sqlalchemy import func, select

from shared.models import Job
from tests.support.accounts import register_and_login

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture
def app_without_broker(settings):
    from api import create_app

    flask_app = create_app(dataclasses.replace(settings, celery_broker_url=DEAD_REDIS))
    yield flask_app
    flask_app.extensions["conveyor"].close()


@pytest.fixture
def app_without_redis(settings):
    from api import create_app

    flask_app = create_app(dataclasses.replace(settings, redis_url=DEAD_REDIS))
    yield flask_app
    flask_app.extensions["conveyor"].close()


@pytest.fixture
def app_without_database(settings):
    from api import create_app

    dead = "postgresql://postgres@127.0.0.1:1/nothing"
    flask_app = create_app(dataclasses.replace(settings, database_url=dead))
    yield flask_app
    flask_app.extensions["conveyor"].close()


def test_submit_with_the_broker_down_is_503_and_records_nothing(app_without_broker, resources):
    client = app_without_broker.test_client()
    user_id, headers = register_and_login(client, "nobroker_user")
    response = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 5}, headers=headers
    )
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "service_unavailable" and error["details"] == {"dependency": "broker"}
    assert response.headers["Retry-After"]
    with resources.sessions() as session:
        count = session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == user_id))
    assert count == 0


def test_readyz_names_redis_when_it_is_down(app_without_redis):
    response = app_without_redis.test_client().get("/readyz")
    body = response.get_json()
    assert response.status_code == 503
    assert body["checks"]["redis"]["ok"] is False and body["checks"]["database"]["ok"] is True
    assert body["error"]["details"] == {"failed": ["redis"]}


def test_readyz_names_the_database_when_it_is_down(app_without_database):
    response = app_without_database.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["error"]["details"] == {"failed": ["database"]}


def test_readyz_ok_reports_latency(client):
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready"
    assert all(check["ok"] and check["latency_ms"] > 0 for check in body["checks"].values())


def test_database_down_is_503_not_500(app_without_database, app):
    _, headers = register_and_login(app.test_client(), "nodb_user")
    response = app_without_database.test_client().get("/api/v1/wallet", headers=headers)
    assert response.status_code == 503
    assert response.get_json()["error"]["details"] == {"dependency": "database"}


def test_polling_survives_redis_being_down(app_without_redis, app):
    client = app.test_client()
    _, headers = register_and_login(client, "noredis_poll")
    task_id = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 5}, headers=headers
    ).get_json()["task_id"]
    polled = app_without_redis.test_client().get(f"/api/v1/tasks/{task_id}", headers=headers)
    assert polled.status_code == 200 and polled.get_json()["state"] == "PENDING"


def test_wallet_is_read_from_the_database_when_redis_is_down(app_without_redis, app, resources):
    from tests.support.accounts import fund

    user_id, headers = register_and_login(app.test_client(), "noredis_wallet")
    fund(resources, user_id, 4_200)
    response = app_without_redis.test_client().get("/api/v1/wallet", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"balance": 4_200, "currency": "USD", "from_cache": False}


def test_a_retry_with_the_same_key_after_a_broker_outage_starts_clean(
    app_without_broker, app, resources
):
    """The 503 left no job behind, so the key is free: the retry is a new job, not a replay."""
    outage = app_without_broker.test_client()
    user_id, headers = register_and_login(outage, f"retry_{uuid.uuid4().hex[:10]}")
    keyed = {**headers, "Idempotency-Key": "after-the-outage"}
    body = {"type": "credit", "amount": 5}
    assert outage.post("/api/v1/transactions", json=body, headers=keyed).status_code == 503
    # The broker is back (the same database, a working broker).
    retry = app.test_client().post("/api/v1/transactions", json=body, headers=keyed)
    assert retry.status_code == 202
    assert "Idempotent-Replayed" not in retry.headers
    with resources.sessions() as session:
        rows = session.scalars(select(Job.state).where(Job.owner_id == user_id)).all()
    assert rows == ["PENDING"]


def test_login_with_the_broker_down_logs_in_without_its_job(settings, resources):
    from api import create_app

    down = create_app(
        dataclasses.replace(
            settings, celery_broker_url=DEAD_REDIS, login_generates_transactions=True
        )
    )
    try:
        client = down.test_client()
        user_id, _ = register_and_login(client, f"login_nobroker_{id(client)}")
        login = client.post(
            "/api/v1/auth/login",
            json={"username": f"login_nobroker_{id(client)}", "password": "correct horse battery"},
        )
        assert login.status_code == 200
        assert login.get_json()["access_token"] and login.get_json()["task_id"] is None
        with resources.sessions() as session:
            count = session.scalar(
                select(func.count()).select_from(Job).where(Job.owner_id == user_id)
            )
        assert count == 0  # the demo job's row was removed with its failed publish
    finally:
        down.extensions["conveyor"].close()
