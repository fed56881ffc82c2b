"""Cached wallet reads (balance, first transaction pages) and their invalidation.

Both reads are scoped to the user (`user:<id>`), so one generation bump after
a posting commits invalidates the balance and every cached page together.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger
from shared.caches.store import Cache

log = logging.getLogger(__name__)

# GET /transactions' default page size: the page warming precomputes.
DEFAULT_PAGE_LIMIT = 50


def user_scope(user_id: int) -> str:
    return f"user:{user_id}"


def wallet_value(session: Session, user_id: int) -> dict[str, Any]:
    """The cacheable part of GET /wallet, read from the database."""
    _, balance, currency = ledger.wallet_for_user(session, user_id)
    return {"balance": balance, "currency": currency}


def wallet(cache: Cache, sessions: sessionmaker, user_id: int) -> tuple[dict[str, Any], bool]:
    """`({"balance", "currency"}, from_cache)` for the user's wallet."""

    def compute() -> dict[str, Any]:
        with sessions() as session:
            return wallet_value(session, user_id)

    return cache.get_or_compute("wallet", user_scope(user_id), (), compute)


def transactions_page(
    cache: Cache,
    sessions: sessionmaker,
    user_id: int,
    *,
    page: int,
    limit: int,
    max_cached_page: int,
) -> tuple[dict[str, Any], bool]:
    """`({"items", "total"}, from_cache)`; only pages up to `max_cached_page` are cached."""

    def compute() -> dict[str, Any]:
        with sessions() as session:
            items, total = ledger.list_entries(session, user_id, page=page, limit=limit)
        return {"items": items, "total": total}

    if page > max_cached_page:
        return compute(), False
    return cache.get_or_compute(
        "transactions", user_scope(user_id), (f"p{page}", f"l{limit}"), compute
    )


def invalidate_user(cache: Cache, user_id: int) -> None:
    """Call right after a posting for `user_id` commits, before its job reports SUCCESS.

    A Redis failure is logged, not raised: the posting is committed and must
    not be reported as failed; the values then go stale for at most their TTL.
    """
    try:
        cache.invalidate(user_scope(user_id))
    except redis.RedisError:
        log.error("cached wallet of user %s not invalidated", user_id, exc_info=True)
