"""Rate limits against real Redis: headers, 429s, brute-force keys, and a dead limiter store."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.support.accounts import PASSWORD, register_and_login
from tests.support.apps import app_with, unique_name
from tests.support.metrics import scrape_headers


def test_user_limit_sets_headers_then_answers_429_with_retry_after(settings):
    with app_with(
        settings,
        ratelimit_enabled=True,
        ratelimit_user="3/minute",
        ratelimit_anonymous="100/minute",
        ratelimit_auth="100/minute",
    ) as app:
        client = app.test_client()
        _, headers = register_and_login(client, unique_name())
        _, other = register_and_login(client, unique_name())
        remaining = []
        for _ in range(3):
            response = client.get("/api/v1/wallet", headers=headers)
            assert response.status_code == 200
            assert response.headers["X-RateLimit-Limit"] == "3"
            assert int(response.headers["X-RateLimit-Reset"]) > 0
            remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        assert remaining == [2, 1, 0]

        limited = client.get("/api/v1/transactions", headers=headers)  # one budget for all routes
        assert limited.status_code == 429
        assert limited.get_json()["error"]["code"] == "rate_limited"
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        # Per user: someone else from the same IP is unaffected.
        assert client.get("/api/v1/wallet", headers=other).status_code == 200


def test_probes_are_never_limited(settings):
    with app_with(settings, ratelimit_enabled=True, ratelimit_anonymous="1/minute") as app:
        client = app.test_client()
        for path in ("/healthz", "/readyz", "/healthz", "/readyz", "/metrics", "/metrics"):
            response = client.get(path, headers=scrape_headers())
            assert response.status_code == 200, path
            assert "X-RateLimit-Limit" not in response.headers
        assert client.get("/api/v1/openapi.json").status_code == 200
        assert client.get("/api/v1/openapi.json").status_code == 429


def test_anonymous_limit_is_per_ip(settings):
    with app_with(settings, ratelimit_enabled=True, ratelimit_anonymous="2/minute") as app:
        client = app.test_client()
        first = {"REMOTE_ADDR": "10.1.0.1"}
        assert client.get("/api/v1/openapi.json", environ_base=first).status_code == 200
        assert client.get("/api/v1/openapi.json", environ_base=first).status_code == 200
        assert client.get("/api/v1/openapi.json", environ_base=first).status_code == 429
        second = {"REMOTE_ADDR": "10.1.0.2"}
        assert client.get("/api/v1/openapi.json", environ_base=second).status_code == 200


def test_invalid_token_counts_as_anonymous(settings):
    with app_with(
        settings,
        ratelimit_enabled=True,
        ratelimit_anonymous="2/minute",
        ratelimit_user="100/minute",
    ) as app:
        client = app.test_client()
        forged = {"Authorization": "Bearer not-a-token"}
        assert client.get("/api/v1/wallet", headers=forged).status_code == 401
        assert client.get("/api/v1/wallet", headers=forged).status_code == 401
        # A made-up token does not buy a fresh budget.
        assert client.get("/api/v1/wallet", headers=forged).status_code == 429


def test_login_is_limited_per_username_across_ips(settings):
    with app_with(
        settings,
        ratelimit_enabled=True,
        ratelimit_auth="3/minute",
        ratelimit_anonymous="100/minute",
    ) as app:
        client = app.test_client()
        victim = unique_name("victim")
        statuses = [
            client.post(
                "/api/v1/auth/login",
                json={"username": victim, "password": "guess-" + str(i)},
                environ_base={"REMOTE_ADDR": f"10.2.0.{i}"},
            ).status_code
            for i in range(5)
        ]
        assert statuses == [401, 401, 401, 429, 429]
        # Case does not open a new budget for the same account.
        upper = client.post(
            "/api/v1/auth/login",
            json={"username": victim.upper(), "password": "x"},
            environ_base={"REMOTE_ADDR": "10.2.0.99"},
        )
        assert upper.status_code == 429
        assert upper.get_json()["error"]["code"] == "rate_limited"


def test_login_and_register_are_limited_per_ip(settings):
    with app_with(
        settings,
        ratelimit_enabled=True,
        ratelimit_auth="3/minute",
        ratelimit_anonymous="100/minute",
    ) as app:
        client = app.test_client()
        ip = {"REMOTE_ADDR": "10.3.0.1"}
        statuses = [
            client.post(
                "/api/v1/auth/login",
                json={"username": unique_name(), "password": "wrong-pw"},
                environ_base=ip,
            ).status_code
            for _ in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        register = client.post(
            "/api/v1/auth/register",
            json={"username": unique_name(), "password": PASSWORD},
            environ_base=ip,
        )
        assert register.status_code == 201  # its own per-IP budget, untouched by logins
        assert "X-RateLimit-Limit" in register.headers


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server, server.getsockname()[1]


@pytest.mark.parametrize("dead", ["refused", "hung"])
def test_limiter_store_down_auth_fails_closed_the_rest_open(settings, make_user, dead, caplog):
    _, headers = make_user("store_down")
    server = None
    if dead == "refused":
        url = "redis://:sekrit-pass@127.0.0.1:1/0"
    else:
        server, port = _silent_server()
        url = f"redis://:sekrit-pass@127.0.0.1:{port}/0"
    try:
        with app_with(settings, ratelimit_enabled=True, ratelimit_storage_url=url) as app:
            client = app.test_client()
            login = client.post("/api/v1/auth/login", json={"username": "someone", "password": "x"})
            assert login.status_code == 503
            assert login.get_json()["error"]["details"] == {"dependency": "rate_limit_storage"}
            assert login.headers["Retry-After"] == "5"
            register = client.post(
                "/api/v1/auth/register", json={"username": unique_name(), "password": PASSWORD}
            )
            assert register.status_code == 503

            wallet = client.get("/api/v1/wallet", headers=headers)
            assert wallet.status_code == 200  # fail open: served, just not counted
            assert "X-RateLimit-Limit" not in wallet.headers
            assert client.get("/healthz").status_code == 200
    finally:
        if server is not None:
            server.close()
    assert "sekrit-pass" not in caplog.text


def test_ai_limit_marker_applies_per_user(settings):
    """The AI route (if present) carries RATELIMIT_AI on top of the per-user budget."""
    with app_with(
        settings, ratelimit_enabled=True, ratelimit_ai="2/hour", ratelimit_user="100/minute"
    ) as app:
        if "/api/v1/ai/generate" not in {rule.rule for rule in app.url_map.iter_rules()}:
            pytest.skip("POST /api/v1/ai/generate is not in this tree yet")
        client = app.test_client()
        _, headers = register_and_login(client, unique_name())
        body = {"kind": "text", "prompt": "hello", "options": {"operation": "summarize"}}
        codes = [
            client.post("/api/v1/ai/generate", json=body, headers=headers).status_code
            for _ in range(3)
        ]
        assert codes[:2] == [202, 202]
        assert codes[2] == 429


def test_limiter_threads_share_one_budget(settings):
    """Concurrent requests from one user are counted atomically in Redis."""
    with app_with(
        settings,
        ratelimit_enabled=True,
        ratelimit_user="5/minute",
        ratelimit_auth="100/minute",
        ratelimit_anonymous="100/minute",
    ) as app:
        client = app.test_client()
        _, headers = register_and_login(client, unique_name())
        codes: list[int] = []
        lock = threading.Lock()

        def call():
            status = app.test_client().get("/api/v1/wallet", headers=headers).status_code
            with lock:
                codes.append(status)

        threads = [threading.Thread(target=call) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(codes) == [200] * 5 + [429] * 7
