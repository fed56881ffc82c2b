"""Cache warming: precompute hot reads for recently active users and popular AI prompts.

Users are processed in batches by keyset pagination, each batch with a fixed
number of bulk queries (ids, balances, first pages, counts), never one query
per user. Each batch reads the users' cache generations BEFORE the database,
so a posting that commits meanwhile makes the warmed values unreachable
instead of stale (see shared.caches.store). One run at a time, by a Redis lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger
from shared.ai.errors import AIError
from shared.caches.store import Cache
from shared.jobs import utcnow
from shared.ledger.wallet_cache import DEFAULT_PAGE_LIMIT, user_scope
from shared.locks import exclusive, lock_key
from shared.models import LedgerEntry, User, Wallet

if TYPE_CHECKING:
    from shared.ai.cache import AICache
    from shared.ai.provider import Provider

log = logging.getLogger(__name__)

TARGETS = ("balances", "transactions", "ai")
LOCK_NAME = "cache.warm"
SKIPPED_MESSAGE = "skipped: another cache.warm run is in progress"

Progress = Callable[[int, str], None]


@dataclass
class WarmOutcome:
    """What one warming run did (the job's result)."""

    targets: list[str]
    skipped: bool = False
    users: int = 0
    balances: int = 0
    transaction_pages: int = 0
    ai_checked: int = 0
    ai_refreshed: int = 0
    ai_failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.skipped:
            return SKIPPED_MESSAGE
        return (
            f"warmed {self.balances} balances and {self.transaction_pages} transaction pages"
            f" for {self.users} active users; refreshed {self.ai_refreshed} AI entries"
        )


@dataclass(frozen=True)
class AIWarming:
    """What re-warming AI entries needs: the AI cache, a provider, and which entries."""

    cache: AICache
    provider: Provider
    top: int
    expiring_seconds: float


def warm(
    *,
    sessions: sessionmaker,
    cache: Cache,
    targets: Iterable[str] = TARGETS,
    active_seconds: int,
    batch_size: int,
    lock_ttl: int,
    ai: AIWarming | None = None,
    progress: Progress | None = None,
) -> WarmOutcome:
    """Warm `targets` unless another run holds the lock (then return at once, skipped)."""
    wanted = [target for target in TARGETS if target in set(targets)]
    outcome = WarmOutcome(targets=wanted)
    report = progress or (lambda _percent, _message: None)
    with exclusive(cache.redis, lock_key(cache.prefix, LOCK_NAME), lock_ttl) as acquired:
        if not acquired:
            outcome.skipped = True
            return outcome
        if "balances" in wanted or "transactions" in wanted:
            _warm_users(sessions, cache, outcome, active_seconds, batch_size, report)
        if "ai" in wanted and ai is not None:
            report(90, "re-warming popular AI prompts")
            _warm_ai(ai, outcome)
    return outcome


def _warm_users(
    sessions: sessionmaker,
    cache: Cache,
    outcome: WarmOutcome,
    active_seconds: int,
    batch_size: int,
    report: Progress,
) -> None:
    since = utcnow() - timedelta(seconds=active_seconds)
    with sessions() as session:
        total = active_user_count(session, since)
    after = 0
    while True:
        with sessions() as session:
            user_ids = active_user_ids(session, since, after=after, limit=batch_size)
            if not user_ids:
                return
            # Generations first, database second: see the module docstring.
            scopes = [user_scope(user_id) for user_id in user_ids]
            generations = dict(zip(user_ids, cache.generations(scopes), strict=True))
            wallets = wallets_of(session, user_ids)
            if "balances" in outcome.targets:
                outcome.balances += cache.put_many(
                    "wallet",
                    (
                        (user_scope(uid), generations[uid], (), {"balance": b, "currency": c})
                        for uid, (_wid, b, c) in wallets.items()
                    ),
                )
            if "transactions" in outcome.targets:
                pages = first_pages(session, wallets, DEFAULT_PAGE_LIMIT)
                outcome.transaction_pages += cache.put_many(
                    "transactions",
                    (
                        (user_scope(uid), generations[uid], ("p1", f"l{DEFAULT_PAGE_LIMIT}"), page)
                        for uid, page in pages.items()
                    ),
                )
        outcome.users += len(user_ids)
        after = user_ids[-1]
        report(
            min(89, int(89 * outcome.users / max(total, 1))),
            f"warmed {outcome.users} of {total} active users",
        )


def _active_filter(since):
    # A login or a posting (which stamps the wallet) within the window.
    return or_(User.last_login_at >= since, Wallet.updated_at >= since)


def active_user_count(session: Session, since) -> int:
    """How many users logged in or had a posting since `since`."""
    query = select(func.count()).select_from(User).join(Wallet, Wallet.user_id == User.id)
    return session.scalar(query.where(_active_filter(since))) or 0


def active_user_ids(session: Session, since, *, after: int, limit: int) -> list[int]:
    """The next `limit` active user ids above `after`, ascending (keyset pagination)."""
    return list(
        session.scalars(
            select(User.id)
            .join(Wallet, Wallet.user_id == User.id)
            .where(_active_filter(since), User.id > after)
            .order_by(User.id)
            .limit(limit)
        )
    )


def wallets_of(session: Session, user_ids: Sequence[int]) -> dict[int, tuple[int, int, str]]:
    """user id → (wallet id, balance, currency), in one query."""
    rows = session.execute(
        select(Wallet.user_id, Wallet.id, Wallet.balance, Wallet.currency).where(
            Wallet.user_id.in_(user_ids)
        )
    )
    return {row.user_id: (row.id, row.balance, row.currency) for row in rows}


def first_pages(
    session: Session, wallets: dict[int, tuple[int, int, str]], limit: int
) -> dict[int, dict[str, Any]]:
    """user id → the value GET /transactions?page=1&limit=`limit` caches, in two queries."""
    user_of_wallet = {wallet_id: user_id for user_id, (wallet_id, _, _) in wallets.items()}
    wallet_ids = list(user_of_wallet)
    ranked = (
        select(
            LedgerEntry.id,
            LedgerEntry.wallet_id,
            LedgerEntry.type,
            LedgerEntry.amount,
            LedgerEntry.balance_after,
            LedgerEntry.description,
            LedgerEntry.created_at,
            LedgerEntry.job_id,
            func.row_number()
            .over(
                partition_by=LedgerEntry.wallet_id,
                order_by=(LedgerEntry.created_at.desc(), LedgerEntry.id.desc()),
            )
            .label("rank"),
        )
        .where(LedgerEntry.wallet_id.in_(wallet_ids))
        .subquery()
    )
    rows = session.execute(select(ranked).where(ranked.c.rank <= limit).order_by(ranked.c.rank))
    totals = dict(
        session.execute(
            select(LedgerEntry.wallet_id, func.count())
            .where(LedgerEntry.wallet_id.in_(wallet_ids))
            .group_by(LedgerEntry.wallet_id)
        ).all()
    )
    pages: dict[int, dict[str, Any]] = {
        user_id: {"items": [], "total": int(totals.get(wallet_id, 0))}
        for wallet_id, user_id in user_of_wallet.items()
    }
    for row in rows:
        pages[user_of_wallet[row.wallet_id]]["items"].append(ledger.entry_item(row))
    return pages


def _warm_ai(ai: AIWarming, outcome: WarmOutcome) -> None:
    """Recompute the most requested AI entries that expire within `ai.expiring_seconds`.

    Entries already gone are left for the next request: warming pays the
    upstream only to keep hot entries from lapsing.
    """
    for request in ai.cache.popular_requests(ai.top):
        model = ai.provider.model_for(request.kind)
        remaining = ai.cache.ttl_remaining(request, ai.provider.name, model)
        outcome.ai_checked += 1
        if remaining is None or remaining > ai.expiring_seconds:
            continue
        try:
            value = ai.provider.generate(request)
        except AIError as error:
            log.warning("could not re-warm an AI entry: %s", error.code)
            outcome.ai_failed += 1
            continue
        ai.cache.put(request, ai.provider.name, model, value)
        outcome.ai_refreshed += 1
