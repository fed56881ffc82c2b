"""Register, log in, and bearer-token checks through the Flask test client."""

from __future__ import annotations

import dataclasses
import time
import uuid

import jwt
import pytest

from tests.support.accounts import PASSWORD
from tests.support.polling import wait_for_state


def _name() -> str:
    return f"auth_{uuid.uuid4().hex[:10]}"


def test_register_then_login(client):
    name = _name()
    created = client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    assert created.status_code == 201
    assert created.get_json() == {"id": created.get_json()["id"], "username": name}
    login = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    body = login.get_json()
    assert login.status_code == 200
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert body["task_id"] is None  # LOGIN_GENERATES_TRANSACTIONS=false in tests
    wallet = client.get(
        "/api/v1/wallet", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert wallet.get_json() == {"balance": 0, "currency": "USD", "from_cache": False}


def test_duplicate_username_is_409(client):
    name = _name()
    client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    again = client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "username_taken"


def test_wrong_password_and_unknown_user_are_the_same_401(client):
    name = _name()
    client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    wrong = client.post("/api/v1/auth/login", json={"username": name, "password": "nope-nope"})
    unknown = client.post("/api/v1/auth/login", json={"username": _name(), "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.get_json()["error"]["code"] == "invalid_credentials"


def test_password_is_stored_as_a_slow_kdf_hash(client, resources):
    from sqlalchemy import select

    from shared.models import User

    name = _name()
    client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    with resources.sessions() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == name))
    assert stored.startswith("scrypt:") and PASSWORD not in stored


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Basic abc", "Bearer not-a-jwt", "Bearer a.b.c"],
)
def test_missing_or_malformed_token_is_401(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/wallet", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] in ("unauthorized", "invalid_token")


def test_expired_wrong_key_and_alg_none_tokens_are_rejected(client, make_user, settings):
    user_id, _ = make_user()
    now = int(time.time())
    expired = jwt.encode(
        {"sub": str(user_id), "exp": now - 10}, settings.signing_key, algorithm="HS256"
    )
    wrong_key = jwt.encode({"sub": str(user_id), "exp": now + 60}, "x" * 32, algorithm="HS256")
    unsigned = jwt.encode({"sub": str(user_id), "exp": now + 60}, None, algorithm="none")
    for token in (expired, wrong_key, unsigned):
        response = client.get("/api/v1/wallet", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ab", "password": PASSWORD}, "username"),
        ({"username": "bad name!", "password": PASSWORD}, "username"),
        ({"username": "x" * 65, "password": PASSWORD}, "username"),
        ({"username": "okname", "password": "short"}, "password"),
        ({"username": "okname", "password": "p" * 257}, "password"),
        ({"username": "okname"}, "password"),
        ({"username": "okname", "password": PASSWORD, "is_admin": True}, "is_admin"),
    ],
)
def test_register_validation_names_the_field(client, body, field):
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 422
    assert field in {detail["field"] for detail in response.get_json()["error"]["details"]}


def test_admin_bootstrap_creates_then_updates_the_admin(settings):
    from api import create_app
    from shared import accounts

    name = _name()
    first = create_app(
        dataclasses.replace(settings, admin_username=name, admin_password="first-pass-1")
    )
    second = create_app(
        dataclasses.replace(settings, admin_username=name, admin_password="second-pass-2")
    )
    res = second.extensions["conveyor"]
    with res.sessions() as session:
        assert accounts.authenticate(session, res.hasher, name, "second-pass-2") is not None
        user = accounts.authenticate(session, res.hasher, name, "second-pass-2")
        assert accounts.is_admin(session, user.id)
    for flask_app in (first, second):
        flask_app.extensions["conveyor"].close()


def test_login_enqueues_a_random_transactions_job(settings, worker):
    from api import create_app

    flask_app = create_app(dataclasses.replace(settings, login_generates_transactions=True))
    client = flask_app.test_client()
    name = _name()
    client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    body = client.post(
        "/api/v1/auth/login", json={"username": name, "password": PASSWORD}
    ).get_json()
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    done = wait_for_state(client, headers, body["task_id"])
    assert done["kind"] == "ledger.random" and done["state"] == "SUCCESS"
    assert 1 <= done["result"]["count"] <= 10
    wallet = client.get("/api/v1/wallet", headers=headers).get_json()
    assert wallet["balance"] == done["result"]["balance"] >= 0
    flask_app.extensions["conveyor"].close()
