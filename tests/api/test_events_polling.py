"""Polling stays cheap and honest: its own budget, Retry-After only where it means "poll again"."""

from __future__ import annotations

from infra.settings import Settings
from tests.support.accounts import register_and_login
from tests.support.apps import app_with, unique_name

DEFAULTS = Settings()


def _submit(client, headers) -> str:
    accepted = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 5}, headers=headers
    )
    assert accepted.status_code == 202, accepted.get_json()
    assert accepted.headers["Retry-After"] == "1"  # the 202 says when to poll first
    return accepted.get_json()["task_id"]


def test_polls_use_their_own_budget_and_carry_retry_after(settings):
    with app_with(
        settings, ratelimit_user="3/minute", ratelimit_poll="5/minute", ratelimit_auth="100/minute"
    ) as app:
        client = app.test_client()
        _, headers = register_and_login(client, unique_name())
        task_id = _submit(client, headers)  # 1 of the 3 general requests
        for remaining in (4, 3, 2):
            poll = client.get(f"/api/v1/tasks/{task_id}", headers=headers)
            assert poll.status_code == 200 and poll.get_json()["state"] == "PENDING"
            assert poll.headers["X-RateLimit-Limit"] == "5"
            assert int(poll.headers["X-RateLimit-Remaining"]) == remaining
            # The suggested interval, not flask-limiter's window reset.
            assert 1 <= int(poll.headers["Retry-After"]) <= 10
        # A stream connect (here web's replay-and-close) spends the same budget.
        assert client.get(f"/api/v1/tasks/{task_id}/events", headers=headers).status_code == 200
        # The general budget was untouched by all that: two requests left.
        wallet = client.get("/api/v1/wallet", headers=headers)
        assert wallet.status_code == 200 and wallet.headers["X-RateLimit-Remaining"] == "1"
        # No other 2xx carries Retry-After, though flask-limiter would add one.
        assert "Retry-After" not in wallet.headers
        assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 200
        limited = client.get(f"/api/v1/tasks/{task_id}", headers=headers)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
        # An exhausted poll budget leaves the general one alone (its last request).
        listing = client.get("/api/v1/tasks", headers=headers)
        assert listing.status_code == 200 and "Retry-After" not in listing.headers


def test_two_jobs_polled_every_second_stay_within_the_default_budget(settings):
    # The new user: two jobs polled once a second for a minute (120
    # polls) got 429s from the 60/minute general budget; RATELIMIT_POLL is 600.
    with app_with(
        settings,
        ratelimit_user=DEFAULTS.ratelimit_user,
        ratelimit_poll=DEFAULTS.ratelimit_poll,
        ratelimit_auth="100/minute",
    ) as app:
        client = app.test_client()
        _, headers = register_and_login(client, unique_name())
        ids = [_submit(client, headers) for _ in range(2)]
        polls = [client.get(f"/api/v1/tasks/{ids[n % 2]}", headers=headers) for n in range(120)]
        assert {poll.status_code for poll in polls} == {200}
        assert polls[-1].headers["X-RateLimit-Limit"] == "600"


def test_a_finished_or_cancelled_job_has_no_retry_after_nor_estimate(client, make_user):
    _, headers = make_user()
    task_id = _submit(client, headers)
    cancelled = client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
    assert cancelled.status_code == 202 and "Retry-After" not in cancelled.headers
    poll = client.get(f"/api/v1/tasks/{task_id}", headers=headers)
    assert poll.get_json()["state"] == "REVOKED"
    assert poll.get_json()["queue_position"] is None and poll.get_json()["eta_seconds"] is None
    assert "Retry-After" not in poll.headers
