"""Cached reads, invalidation on posting, warming and cache stats, with a real worker."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from shared import accounts, ledger
from shared.caches.warming import LOCK_NAME, warm
from shared.jobs import utcnow
from shared.ledger.wallet_cache import DEFAULT_PAGE_LIMIT, user_scope
from shared.locks import exclusive, lock_key
from shared.models import User, Wallet
from tests.support.accounts import fund
from tests.support.polling import wait_for_state

pytestmark = pytest.mark.integration


def _post(client, headers, type_: str, amount: int) -> dict:
    response = client.post(
        "/api/v1/transactions", json={"type": type_, "amount": amount}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    done = wait_for_state(client, headers, response.get_json()["task_id"])
    assert done["state"] == "SUCCESS", done
    return done


def _wallet(client, headers) -> dict:
    response = client.get("/api/v1/wallet", headers=headers)
    assert response.status_code == 200
    return response.get_json()


def _admin(resources, make_user) -> dict[str, str]:
    user_id, headers = make_user("admin")
    with resources.sessions.begin() as session:
        accounts.set_admin(session, user_id, True)
    return headers


def _warm(resources, **overrides):
    kwargs = {
        "sessions": resources.sessions,
        "cache": resources.cache,
        "targets": ("balances", "transactions"),
        "active_seconds": 3600,
        "batch_size": 2,  # several batches even with a handful of users
        "lock_ttl": 60,
    }
    return warm(**(kwargs | overrides))


def test_wallet_is_cached_and_fresh_right_after_each_posting(client, make_user, worker):
    _, headers = make_user()
    assert _wallet(client, headers) == {"balance": 0, "currency": "USD", "from_cache": False}
    assert _wallet(client, headers)["from_cache"] is True
    expected = 0
    for type_, amount in (("credit", 500), ("debit", 120), ("credit", 7)):
        _post(client, headers, type_, amount)
        expected += amount if type_ == "credit" else -amount
        # The very first read after SUCCESS: served fresh, never the old balance.
        assert _wallet(client, headers)["balance"] == expected
        assert _wallet(client, headers) == {
            "balance": expected,
            "currency": "USD",
            "from_cache": True,
        }


def test_random_batch_invalidates_cached_pages(client, make_user, worker):
    _, headers = make_user()
    first = client.get("/api/v1/transactions?page=1&limit=5", headers=headers).get_json()
    assert first["total"] == 0
    response = client.post("/api/v1/transactions/random", json={"count": 3}, headers=headers)
    done = wait_for_state(client, headers, response.get_json()["task_id"])
    assert done["state"] == "SUCCESS", done
    after = client.get("/api/v1/transactions?page=1&limit=5", headers=headers).get_json()
    assert after["total"] == 3
    assert [item["task_id"] for item in after["items"]] == [done["task_id"]] * 3
    assert _wallet(client, headers)["balance"] == done["result"]["balance"]


def test_transaction_pages_are_cached_per_page_and_limit(client, make_user, resources, worker):
    user_id, headers = make_user()
    _post(client, headers, "credit", 100)
    for query in ("page=1&limit=5", "page=1&limit=10", "page=2&limit=5"):
        client.get(f"/api/v1/transactions?{query}", headers=headers)
    generation = resources.cache.generations([user_scope(user_id)])[0]
    for parts in (("p1", "l5"), ("p1", "l10"), ("p2", "l5")):
        key = resources.cache.key("transactions", user_scope(user_id), generation, *parts)
        assert resources.redis.exists(key), parts


def test_warming_fills_the_cache_for_active_users_only(client, make_user, resources):
    active_id, active_headers = make_user("active")
    idle_id, _ = make_user("idle")
    fund(resources, active_id, 900)
    fund(resources, idle_id, 300)
    resources.cache.invalidate(user_scope(active_id))  # fund() is a direct domain posting
    long_ago = utcnow() - timedelta(hours=3)
    with resources.sessions.begin() as session:
        session.execute(update(User).where(User.id == idle_id).values(last_login_at=long_ago))
        session.execute(update(Wallet).where(Wallet.user_id == idle_id).values(updated_at=long_ago))

    outcome = _warm(resources)
    assert not outcome.skipped
    assert outcome.users >= 1 and outcome.balances == outcome.users

    cache = resources.cache
    active_gen, idle_gen = cache.generations([user_scope(active_id), user_scope(idle_id)])
    assert resources.redis.exists(cache.key("wallet", user_scope(active_id), active_gen))
    assert not resources.redis.exists(cache.key("wallet", user_scope(idle_id), idle_gen))
    page_key = cache.key(
        "transactions", user_scope(active_id), active_gen, "p1", f"l{DEFAULT_PAGE_LIMIT}"
    )
    idle_page_key = cache.key(
        "transactions", user_scope(idle_id), idle_gen, "p1", f"l{DEFAULT_PAGE_LIMIT}"
    )
    assert not resources.redis.exists(idle_page_key)

    # The first read is a hit, and the warmed page is exactly what the database says.
    assert _wallet(client, active_headers) == {
        "balance": 900,
        "currency": "USD",
        "from_cache": True,
    }
    with resources.sessions() as session:
        items, total = ledger.list_entries(session, active_id, page=1, limit=DEFAULT_PAGE_LIMIT)

    assert json.loads(resources.redis.get(page_key)) == {"items": items, "total": total}


def test_two_concurrent_warm_runs_one_does_the_work(make_user, resources):
    make_user("warmlock")  # at least one active user, so the first run reports progress
    inside = threading.Event()
    release = threading.Event()
    first = []

    def hold(_percent, _message):
        inside.set()
        release.wait(10)

    runner = threading.Thread(target=lambda: first.append(_warm(resources, progress=hold)))
    runner.start()
    try:
        assert inside.wait(10)
        second = _warm(resources)
    finally:
        release.set()
        runner.join(10)
    assert second.skipped and second.users == 0
    assert "another cache.warm run" in second.summary()
    assert not first[0].skipped and first[0].users >= 1
    # The lock is released: a later run works again.
    assert not _warm(resources).skipped


def test_warm_job_over_the_api(client, make_user, resources, worker):
    headers = _admin(resources, make_user)
    _, user_headers = make_user()
    denied = client.post("/api/v1/cache/warm", json={}, headers=user_headers)
    assert denied.status_code == 403
    invalid = client.post("/api/v1/cache/warm", json={"targets": ["nope"]}, headers=headers)
    assert invalid.status_code == 422

    prefix = resources.settings.redis_key_prefix
    with exclusive(resources.redis, lock_key(prefix, LOCK_NAME), 60) as held:
        assert held
        response = client.post(
            "/api/v1/cache/warm", json={"targets": ["balances"]}, headers=headers
        )
        assert response.status_code == 202, response.get_json()
        assert response.get_json()["kind"] == "cache.warm"
        skipped = wait_for_state(client, headers, response.get_json()["task_id"])
    assert skipped["state"] == "SUCCESS", skipped
    assert skipped["result"]["skipped"] is True
    assert "skipped" in skipped["message"]

    response = client.post("/api/v1/cache/warm", headers=headers)  # no body: every target
    done = wait_for_state(client, headers, response.get_json()["task_id"])
    assert done["state"] == "SUCCESS", done
    assert done["result"]["skipped"] is False
    assert done["result"]["targets"] == ["balances", "transactions", "ai"]
    assert done["result"]["users"] >= 2


def test_cache_stats_for_admins(client, make_user, resources, worker):
    headers = _admin(resources, make_user)
    _, user_headers = make_user()
    assert client.get("/api/v1/system/cache-stats", headers=user_headers).status_code == 403
    before = client.get("/api/v1/system/cache-stats", headers=headers).get_json()
    _wallet(client, user_headers)
    _wallet(client, user_headers)
    after = client.get("/api/v1/system/cache-stats", headers=headers).get_json()
    wallet_before, wallet_after = before["namespaces"]["wallet"], after["namespaces"]["wallet"]
    assert wallet_after["misses"] == wallet_before["misses"] + 1
    assert wallet_after["hits"] == wallet_before["hits"] + 1
    assert wallet_after["keys"] >= 1
    assert 0 <= wallet_after["hit_rate"] <= 1
    assert {"transactions", "ai"} <= set(after["namespaces"])
    assert after["totals"]["hits"] >= wallet_after["hits"]


def test_unique_users_do_not_share_cache_entries(client, make_user, resources):
    first_id, first_headers = make_user()
    _, second_headers = make_user()
    fund(resources, first_id, 10)
    resources.cache.invalidate(user_scope(first_id))
    assert _wallet(client, first_headers)["balance"] == 10
    assert _wallet(client, second_headers)["balance"] == 0


def test_warming_refreshes_popular_ai_entries_about_to_expire(resources):
    from shared.ai.cache import AICache
    from shared.ai.providers import OfflineProvider
    from shared.ai.request import AIRequest
    from shared.caches.warming import AIWarming

    provider = OfflineProvider()
    ai_cache = AICache.from_settings(resources.redis, resources.settings)
    tag = uuid.uuid4().hex[:8]
    expiring = AIRequest("text", f"expiring prompt {tag}", {})
    healthy = AIRequest("text", f"healthy prompt {tag}", {})
    model = provider.model_for("text")
    for request in (expiring, healthy):
        ai_cache.get_or_compute(request, provider.name, model, lambda: {"text": "old"})
        # Popular enough to rank above any prompt other tests recorded.
        resources.redis.zincrby(ai_cache.popular_key, 10**9, request.canonical_json())
    resources.redis.expire(ai_cache.key(expiring, provider.name, model), 30)

    warming = AIWarming(cache=ai_cache, provider=provider, top=20, expiring_seconds=600)
    outcome = _warm(resources, targets=("ai",), ai=warming)
    assert outcome.ai_refreshed >= 1
    assert ai_cache.ttl_remaining(expiring, provider.name, model) > 600
    assert ai_cache.get(expiring, provider.name, model)["text"] != "old"  # recomputed
    assert ai_cache.get(healthy, provider.name, model) == {"text": "old"}  # left alone
