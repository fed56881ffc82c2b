"""The ledger against PostgreSQL: postings, overdraft refusal, exactly-once, concurrency."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select

from shared import accounts, jobs, ledger
from shared.models import Job, LedgerEntry


@pytest.fixture
def user_id(resources) -> int:
    with resources.sessions.begin() as session:
        user = accounts.register(
            session, resources.hasher, f"ledger_{uuid.uuid4().hex[:10]}", "password123", "USD"
        )
        return user.id


def _job(resources, owner_id: int, kind: str = "ledger.transaction") -> uuid.UUID:
    with resources.engine.connect() as conn:
        submission = jobs.create_job(
            conn, owner_id=owner_id, kind=kind, params={}, ttl_seconds=3600
        )
        conn.commit()
    return uuid.UUID(submission.status["task_id"])


def _balance(resources, user_id: int) -> int:
    with resources.sessions() as session:
        return ledger.wallet_for_user(session, user_id)[1]


def _entries(resources, user_id: int) -> int:
    with resources.sessions() as session:
        return ledger.list_entries(session, user_id)[1]


def test_credit_then_debit_moves_balance_and_records_entries(resources, user_id):
    with resources.sessions.begin() as session:
        credit = ledger.post(session, user_id=user_id, entry_type="credit", amount=1_000)
        debit = ledger.post(session, user_id=user_id, entry_type="debit", amount=400)
    assert (credit.balance_after, debit.balance_after) == (1_000, 600)
    assert _balance(resources, user_id) == 600
    with resources.sessions() as session:
        items, total = ledger.list_entries(session, user_id)
        assert ledger.ledger_sum(session, user_id) == 600
    assert total == 2
    assert [item["type"] for item in items] == ["debit", "credit"]  # newest first
    assert items[0]["balance_after"] == 600


def test_overdraft_raises_and_changes_nothing(resources, user_id):
    with resources.sessions.begin() as session:
        ledger.post(session, user_id=user_id, entry_type="credit", amount=100)
    with pytest.raises(ledger.InsufficientFunds) as raised, resources.sessions.begin() as session:
        ledger.post(session, user_id=user_id, entry_type="debit", amount=101)
    assert raised.value.code == "insufficient_funds"
    assert _balance(resources, user_id) == 100
    assert _entries(resources, user_id) == 1


@pytest.mark.parametrize("amount", [0, -5, 10**12 + 1])
def test_amount_out_of_range_is_refused(resources, user_id, amount):
    with pytest.raises(ValueError), resources.sessions.begin() as session:
        ledger.post(session, user_id=user_id, entry_type="credit", amount=amount)


def test_same_job_and_seq_posts_once(resources, user_id):
    job_id = _job(resources, user_id)
    first = second = None
    with resources.sessions.begin() as session:
        first = ledger.post(
            session, user_id=user_id, entry_type="credit", amount=250, job_id=job_id
        )
    with resources.sessions.begin() as session:
        second = ledger.post(
            session, user_id=user_id, entry_type="credit", amount=250, job_id=job_id
        )
    assert not first.replayed and second.replayed
    assert second.entry_id == first.entry_id
    assert _balance(resources, user_id) == 250
    with resources.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.job_id == job_id)
        )
    assert count == 1


def test_forty_concurrent_debits_of_100_on_2000_exactly_twenty_succeed(resources, user_id):
    with resources.sessions.begin() as session:
        ledger.post(session, user_id=user_id, entry_type="credit", amount=2_000)
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(40)

    def debit() -> None:
        start.wait()
        try:
            with resources.sessions.begin() as session:
                ledger.post(session, user_id=user_id, entry_type="debit", amount=100)
            outcome = "ok"
        except ledger.InsufficientFunds:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=debit) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 20
    assert outcomes.count("refused") == 20
    assert _balance(resources, user_id) == 0
    with resources.sessions() as session:
        assert ledger.ledger_sum(session, user_id) == 0


def test_random_plan_is_deterministic_per_job():
    job_id = uuid.uuid4()
    assert ledger.plan_random_batch(job_id, 7) == ledger.plan_random_batch(job_id, 7)
    assert len(ledger.plan_random_batch(job_id, 10)) == 10
    assert ledger.plan_random_batch(job_id, 5) != ledger.plan_random_batch(uuid.uuid4(), 5)


def test_random_entries_never_overdraw(resources, user_id):
    for _ in range(5):
        job_id = _job(resources, user_id, "ledger.random")
        for seq, planned in enumerate(ledger.plan_random_batch(job_id, 10)):
            with resources.sessions.begin() as session:
                posting = ledger.post_random_entry(
                    session, user_id=user_id, job_id=job_id, seq=seq, planned=planned
                )
            assert posting.balance_after >= 0
    with resources.sessions() as session:
        assert ledger.ledger_sum(session, user_id) == _balance(resources, user_id)
        rows = session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == user_id))
    assert rows == 5


def test_concurrent_random_debits_on_one_wallet_never_overdraw(resources, user_id):
    """Two login batches of one user run at once: each capped debit sees the other's first."""
    with resources.sessions.begin() as session:
        ledger.post(session, user_id=user_id, entry_type="credit", amount=1_000)
    jobs_ = [_job(resources, user_id, "ledger.random") for _ in range(12)]
    start = threading.Barrier(len(jobs_))
    failures: list[BaseException] = []

    def debit_everything(job_id: uuid.UUID) -> None:
        start.wait()
        try:
            with resources.sessions.begin() as session:
                # The cap is read, then the debit posted, with others doing the same.
                ledger.post_random_entry(
                    session,
                    user_id=user_id,
                    job_id=job_id,
                    seq=0,
                    planned=("debit", 1_000, "random debit"),
                )
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=debit_everything, args=(j,)) for j in jobs_]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with resources.sessions() as session:
        assert ledger.ledger_sum(session, user_id) == _balance(resources, user_id) >= 0
        entries = session.scalar(select(func.count()).where(LedgerEntry.job_id.in_(jobs_)))
    # Each batch posted its one entry: a debit of what was there, or a credit when nothing was.
    assert entries == len(jobs_)
