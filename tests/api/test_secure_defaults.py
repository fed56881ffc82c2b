"""Secure defaults: production config refusal, headers, CORS, gzip, JSON-only Celery, passwords."""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
import time
import uuid

import pytest

from infra.settings import ROOT, ConfigError
from shared import accounts, jobs
from tests.support.accounts import fund, register_and_login
from tests.support.apps import app_with, unique_name
from tests.support.environment import process_environment
from tests.support.polling import wait_for_state
from tests.support.workers import queue_depth


def test_create_app_refuses_production_without_secret_key(settings):
    from api import create_app

    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app(dataclasses.replace(settings, env="production", secret_key=""))


def test_web_process_refuses_to_start_in_production_without_secret_key():
    env = {k: v for k, v in process_environment().items() if k != "SECRET_KEY"}
    env["CONVEYOR_ENV"] = "production"
    started = subprocess.run(
        [sys.executable, "-c", "import api.wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "SECRET_KEY" in started.stderr


def test_security_headers_on_every_response(client):
    for response in (
        client.get("/healthz"),
        client.get("/api/v1/nothing"),
        client.get("/api/v1/wallet"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        assert "Strict-Transport-Security" not in response.headers  # not outside production


def test_hsts_in_production(settings):
    with app_with(settings, env="production", secret_key="s" * 40) as app:
        response = app.test_client().get("/healthz")
        assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_cors_only_for_configured_origins(settings, client):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }
    # Default: no origin is allowed.
    response = client.options(
        "/api/v1/transactions", headers={"Origin": "https://app.example", **preflight}
    )
    assert "Access-Control-Allow-Origin" not in response.headers

    with app_with(settings, cors_origins="https://app.example, https://admin.example") as app:
        cors = app.test_client()
        allowed = cors.options(
            "/api/v1/transactions", headers={"Origin": "https://app.example", **preflight}
        )
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
        simple = cors.get("/healthz", headers={"Origin": "https://admin.example"})
        assert simple.headers["Access-Control-Allow-Origin"] == "https://admin.example"
        assert "X-RateLimit-Remaining" in simple.headers["Access-Control-Expose-Headers"]
        denied = cors.options(
            "/api/v1/transactions", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "Access-Control-Allow-Origin" not in denied.headers
        assert "Access-Control-Allow-Credentials" not in allowed.headers


def test_gzip_for_large_responses_only_when_accepted(client):
    big = client.get("/api/v1/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert big.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in big.headers["Vary"]
    assert json.loads(gzip.decompress(big.data))["openapi"] == "3.1.0"

    plain = client.get("/api/v1/openapi.json")
    assert "Content-Encoding" not in plain.headers
    small = client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert len(small.data) < 500
    assert "Content-Encoding" not in small.headers


def test_expired_token_is_401(client, resources):
    user_id, _ = register_and_login(client, unique_name())
    user = accounts.User(id=user_id, username="x")
    token = accounts.issue_token(resources.settings.signing_key, user, ttl_seconds=-5)
    response = client.get("/api/v1/wallet", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_token"


def test_an_unknown_user_costs_the_same_kdf_run_as_a_known_one(monkeypatch):
    # No timing measured (a shared machine is too noisy): the same work is done,
    # one scrypt verification of the same cost, whether the user exists or not.
    hasher = accounts.PasswordHasher("scrypt:2048:8:1")
    known = hasher.hash("correct-password")
    calls = []
    real = accounts.check_password_hash
    monkeypatch.setattr(accounts, "check_password_hash", lambda h, p: calls.append(h) or real(h, p))
    assert hasher.verify(known, "wrong-password") is False
    assert hasher.verify(None, "whatever-password") is False
    assert hasher.verify(None, "decoy-password") is False  # the decoy never authenticates
    assert hasher.verify(known, "correct-password") is True
    assert len(calls) == 4
    # Every check ran the same KDF with the same parameters.
    assert {h.split("$", 1)[0] for h in calls} == {"scrypt:2048:8:1"}


def test_no_passwords_or_tokens_in_logs(client, caplog):
    caplog.set_level("DEBUG")
    password = f"pw-{uuid.uuid4().hex}"
    name = unique_name()
    assert (
        client.post(
            "/api/v1/auth/register", json={"username": name, "password": password}
        ).status_code
        == 201
    )
    login = client.post("/api/v1/auth/login", json={"username": name, "password": password})
    token = login.get_json()["access_token"]
    client.post("/api/v1/auth/login", json={"username": name, "password": password + "x"})
    client.get("/api/v1/wallet", headers={"Authorization": f"Bearer {token}"})
    assert password not in caplog.text
    assert token not in caplog.text


@pytest.mark.integration
def test_pickled_message_is_rejected_not_run(
    celery_app, worker, resources, make_user, client, redis_client, tmp_path
):
    """A pickle on the ledger queue is refused by the worker: not unpickled, not run."""
    user_id, headers = make_user("pickle")
    fund(resources, user_id, 1_000)
    with resources.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        job = jobs.create_job(
            conn,
            owner_id=user_id,
            kind="ledger.transaction",
            params={"type": "debit", "amount": 500, "description": "pickled"},
            ttl_seconds=600,
        )
    task_id = job.status["task_id"]
    marker = tmp_path / "unpickled"
    celery_app.send_task(
        "ledger.transaction",
        args=[task_id],
        kwargs={"x": _Exploit(str(marker))},
        task_id=task_id,
        queue="ledger",
        serializer="pickle",
    )

    # A JSON job sent after it completes, so the worker has dealt with the pickle too.
    after = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 1}, headers=headers
    )
    assert wait_for_state(client, headers, after.get_json()["task_id"])["state"] == "SUCCESS"
    deadline = time.monotonic() + 10
    while (
        queue_depth(redis_client, resources.settings.redis_key_prefix, "ledger")
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)

    assert not marker.exists(), "the worker unpickled the message"
    status = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
    assert status["state"] == "PENDING"
    assert client.get("/api/v1/wallet", headers=headers).get_json()["balance"] == 1_001


class _Exploit:
    """Unpickling this creates a file: proof that the payload was (not) deserialized."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_production_settings_validate_the_secret_length(settings):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        dataclasses.replace(settings, env="production", secret_key="short").validate()
