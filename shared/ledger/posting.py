"""Wallets and the ledger: every balance change is one ledger entry, posted exactly once."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from shared.jobs import JobError, isoformat, utcnow
from shared.models import LedgerEntry, Wallet

MAX_AMOUNT = 10**12


class InsufficientFunds(JobError):
    """A debit larger than the balance; nothing was changed."""

    def __init__(self, balance: int, amount: int) -> None:
        super().__init__(
            "insufficient_funds", f"debit of {amount} exceeds the balance of {balance}"
        )


@dataclass(frozen=True)
class Posting:
    """A ledger entry that exists after `post` (new, or found from an earlier delivery)."""

    entry_id: int
    balance_after: int
    replayed: bool


def create_wallet(session: Session, user_id: int, currency: str) -> int:
    """Open the user's (only) wallet at a zero balance; returns its id."""
    return session.scalar(
        insert(Wallet)
        .values(user_id=user_id, balance=0, currency=currency, updated_at=utcnow())
        .returning(Wallet.id)
    )


def wallet_for_user(session: Session, user_id: int, *, lock: bool = False) -> tuple[int, int, str]:
    """(wallet id, balance, currency) of the user's wallet; `lock` holds its row until commit."""
    query = select(Wallet.id, Wallet.balance, Wallet.currency).where(Wallet.user_id == user_id)
    row = session.execute(query.with_for_update() if lock else query).one()
    return row.id, row.balance, row.currency


def post(
    session: Session,
    *,
    user_id: int,
    entry_type: str,
    amount: int,
    description: str = "",
    job_id: uuid.UUID | None = None,
    seq: int = 0,
) -> Posting:
    """Apply one credit or debit to the user's wallet, at most once per (job, seq).

    The wallet row is locked for the rest of the caller's transaction, so
    concurrent postings to one wallet serialise and a debit can never take the
    balance below zero. Commit (or roll back) is the caller's.
    """
    if entry_type not in ("credit", "debit"):
        raise ValueError(f"unknown entry type {entry_type!r}")
    if not 0 < amount <= MAX_AMOUNT:
        raise ValueError(f"amount must be 1..{MAX_AMOUNT}")
    wallet = session.execute(
        select(Wallet.id, Wallet.balance).where(Wallet.user_id == user_id).with_for_update()
    ).one()
    if job_id is not None:
        prior = session.execute(
            select(LedgerEntry.id, LedgerEntry.balance_after).where(
                LedgerEntry.job_id == job_id, LedgerEntry.seq == seq
            )
        ).first()
        if prior is not None:
            return Posting(prior.id, prior.balance_after, replayed=True)
    balance = wallet.balance + (amount if entry_type == "credit" else -amount)
    if balance < 0:
        raise InsufficientFunds(wallet.balance, amount)
    now = utcnow()
    session.execute(
        update(Wallet).where(Wallet.id == wallet.id).values(balance=balance, updated_at=now)
    )
    entry_id = session.scalar(
        insert(LedgerEntry)
        .values(
            wallet_id=wallet.id,
            job_id=job_id,
            seq=seq,
            type=entry_type,
            amount=amount,
            balance_after=balance,
            description=description,
            created_at=now,
        )
        .returning(LedgerEntry.id)
    )
    return Posting(entry_id, balance, replayed=False)


def plan_random_batch(job_id: uuid.UUID, count: int) -> list[tuple[str, int, str]]:
    """The batch a ledger.random job posts: (type, amount, description) per entry.

    Seeded by the job id, so a redelivered job re-plans the same batch and the
    entries it already posted are recognised by (job, seq).
    """
    rng = random.Random(job_id.int)  # noqa: S311 - demo data, not security
    plan = []
    for index in range(count):
        entry_type = "credit" if rng.random() < 0.6 else "debit"
        amount = rng.randint(100, 50_000)
        plan.append((entry_type, amount, f"random {entry_type} {index + 1} of {count}"))
    return plan


def post_random_entry(
    session: Session, *, user_id: int, job_id: uuid.UUID, seq: int, planned: tuple[str, int, str]
) -> Posting:
    """Post one planned random entry; a debit is capped at the balance so it never overdraws."""
    entry_type, amount, description = planned
    if entry_type == "debit":
        # Locked now, not only in post(): another posting between this read and
        # the debit would make the cap stale and the debit overdraw.
        _, balance, _ = wallet_for_user(session, user_id, lock=True)
        amount = min(amount, balance)
        if amount == 0:  # nothing to debit: credit instead, still one entry per seq
            entry_type, amount = "credit", planned[1]
            description = description.replace("debit", "credit")
    return post(
        session,
        user_id=user_id,
        entry_type=entry_type,
        amount=amount,
        description=description,
        job_id=job_id,
        seq=seq,
    )


def list_entries(
    session: Session, user_id: int, *, page: int = 1, limit: int = 50
) -> tuple[list[dict[str, Any]], int]:
    """The user's ledger entries, newest first, and the total count."""
    wallet_id = session.scalar(select(Wallet.id).where(Wallet.user_id == user_id))
    total = session.scalar(
        select(func.count()).select_from(LedgerEntry).where(LedgerEntry.wallet_id == wallet_id)
    )
    rows = session.execute(
        select(
            LedgerEntry.id,
            LedgerEntry.type,
            LedgerEntry.amount,
            LedgerEntry.balance_after,
            LedgerEntry.description,
            LedgerEntry.created_at,
            LedgerEntry.job_id,
        )
        .where(LedgerEntry.wallet_id == wallet_id)
        .order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc())
        .offset((page - 1) * limit)
        .limit(limit)
    ).all()
    return [entry_item(row) for row in rows], total or 0


def entry_item(row: Any) -> dict[str, Any]:
    """A ledger entry as GET /transactions shows it (any row with the entry columns)."""
    return {
        "id": row.id,
        "type": row.type,
        "amount": row.amount,
        "balance_after": row.balance_after,
        "description": row.description,
        "created_at": isoformat(row.created_at),
        "task_id": str(row.job_id) if row.job_id else None,
    }


def ledger_sum(session: Session, user_id: int) -> int:
    """Credits minus debits over the user's whole ledger (equals the balance)."""
    rows = session.execute(
        select(LedgerEntry.type, func.coalesce(func.sum(LedgerEntry.amount), 0))
        .join(Wallet, Wallet.id == LedgerEntry.wallet_id)
        .where(Wallet.user_id == user_id)
        .group_by(LedgerEntry.type)
    ).all()
    totals = dict(rows)
    return int(totals.get("credit", 0)) - int(totals.get("debit", 0))
