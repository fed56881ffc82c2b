"""The three ways a ledger job posts agree: the ORM posting, the one-job statement, the batch.

`shared.ledger.post` (the general path of workers/job_run.py, and SQLite),
`job_posting.post_and_finish` (one job, one call of the PL/pgSQL function of
migration 0006) and `job_posting.post_jobs` (a batch of them, the ledger
worker's batches) run the same script of credits and debits, overdrafts and
repeated deliveries on fresh wallets; the balances, the ledger entries and
each job's outcome must come out identical. A refused overdraft is failed
with `insufficient_funds` before anything is delivered again, as the worker
does on every path (Celery's own path fails what the statement refused).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from shared import jobs, ledger
from shared.ledger.job_posting import post_and_finish, post_jobs
from shared.models import Job, LedgerEntry, Wallet

# (type, amount, description): includes an overdraft, an exact emptying, the
# largest amount, unicode and the longest description a request may carry.
SCRIPT = [
    ("credit", 500, "first"),
    ("debit", 200, ""),
    ("debit", 301, "overdraft: refused, nothing written"),
    ("debit", 300, "to exactly zero"),
    ("debit", 1, "overdraft of an empty wallet"),
    ("credit", ledger.MAX_AMOUNT, "the largest amount"),
    ("debit", ledger.MAX_AMOUNT - 7, "é ü ✓ — unicode"),
    ("credit", 1, "x" * 255),
]


@dataclass(frozen=True)
class Outcome:
    """What a path did with one job: refused, or posted with its job's result."""

    refused: bool
    state: str
    progress: int
    balance: int | None


def _job(resources, owner_id: int, entry_type: str, amount: int, description: str) -> uuid.UUID:
    params = {"type": entry_type, "amount": amount, "description": description}
    with resources.autocommit_engine.connect() as conn:
        created = jobs.create_job(
            conn, owner_id=owner_id, kind="ledger.transaction", params=params, ttl_seconds=3600
        )
    return uuid.UUID(created.status["task_id"])


def _orm(resources, job_id: uuid.UUID) -> None:
    """The general path's effect: claim, then post and finish in one transaction."""
    try:
        with resources.sessions.begin() as session:
            claimed = jobs.claim(session, job_id)
            if claimed is None:
                return  # finished already: a repeated delivery does nothing
            params = claimed.params
            posting = ledger.post(
                session,
                user_id=claimed.owner_id,
                entry_type=params["type"],
                amount=params["amount"],
                description=params.get("description", ""),
                job_id=job_id,
            )
            jobs.finish(
                session,
                job_id,
                state="SUCCESS",
                result={"transaction_id": posting.entry_id, "balance": posting.balance_after},
            )
    except ledger.InsufficientFunds:
        _fail(resources, job_id)  # rolled back, claim included; then failed with its code


def _fail(resources, job_id: uuid.UUID) -> None:
    with resources.sessions.begin() as session:
        jobs.finish(session, job_id, state="FAILURE", error=ledger.InsufficientFunds(0, 1))


def _one_statement(resources, job_id: uuid.UUID) -> None:
    with resources.autocommit_engine.connect() as conn:
        outcome = post_and_finish(conn, job_id, now=jobs.utcnow())
    if outcome.refused:
        _fail(resources, job_id)


def _run(resources, make_user, path: str) -> tuple[int, list[tuple], list[Outcome]]:
    user_id, _ = make_user(f"paths_{path}")
    job_ids = [_job(resources, user_id, *case) for case in SCRIPT]
    if path == "batch":
        # Two deliveries of the whole list, the second overlapping itself: once each.
        with resources.autocommit_engine.connect() as conn:
            outcomes = post_jobs(conn, job_ids, now=jobs.utcnow())
        for job_id, outcome in outcomes.items():
            if outcome.refused:
                _fail(resources, job_id)
        with resources.autocommit_engine.connect() as conn:
            again = post_jobs(conn, [*job_ids, *job_ids], now=jobs.utcnow())
        assert all(outcome.skipped for outcome in again.values())
    else:
        post = _orm if path == "orm" else _one_statement
        for job_id in job_ids:
            post(resources, job_id)
            post(resources, job_id)  # a repeated delivery
    with resources.sessions() as session:
        balance = session.scalar(select(Wallet.balance).where(Wallet.user_id == user_id))
        assert balance == ledger.ledger_sum(session, user_id)
        entries = [
            (job_ids.index(row.job_id), row.seq, row.type, row.amount, row.balance_after,
             row.description)
            for row in session.scalars(
                select(LedgerEntry)
                .join(Wallet, Wallet.id == LedgerEntry.wallet_id)
                .where(Wallet.user_id == user_id)
                .order_by(LedgerEntry.id)
            )
        ]  # fmt: skip
        outcomes = []
        for job_id in job_ids:
            row = session.get(Job, job_id)
            posted = row.state == "SUCCESS"
            outcomes.append(
                Outcome(
                    refused=not posted,
                    state=f"{row.state} {row.error_code or ''}".strip(),
                    progress=row.progress,
                    balance=row.result["balance"] if posted else None,
                )
            )
    return balance, entries, outcomes


@pytest.fixture
def results(resources, make_user):
    return {path: _run(resources, make_user, path) for path in ("orm", "statement", "batch")}


def test_the_script_means_what_it_says(results):
    balance, entries, outcomes = results["orm"]
    assert [o.refused for o in outcomes] == [False, False, True, False, True, False, False, False]
    assert {o.state for o in outcomes if o.refused} == {"FAILURE insufficient_funds"}
    assert balance == 500 - 200 - 300 + ledger.MAX_AMOUNT - (ledger.MAX_AMOUNT - 7) + 1 == 8
    assert len(entries) == 6


@pytest.mark.parametrize("path", ["statement", "batch"])
def test_every_path_leaves_the_same_balance_entries_and_outcomes(results, path):
    assert results[path] == results["orm"]
