"""The one-statement ledger job: claim, post and finish together, or nothing at all."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import func, select, text

from shared import jobs, ledger
from shared.ledger.job_posting import post_and_finish, post_jobs
from shared.models import Job, LedgerEntry


def _job(resources, owner_id: int, params: dict) -> uuid.UUID:
    with resources.autocommit_engine.connect() as conn:
        created = jobs.create_job(
            conn, owner_id=owner_id, kind="ledger.transaction", params=params, ttl_seconds=3600
        )
    return uuid.UUID(created.status["task_id"])


def _post(resources, job_id: uuid.UUID, *_what):
    with resources.sessions.begin() as session:
        return post_and_finish(session, job_id, now=jobs.utcnow())


def _entries(resources, job_id) -> int:
    with resources.sessions() as session:
        return session.scalar(select(func.count()).where(LedgerEntry.job_id == job_id))


def test_posts_and_finishes_in_one_statement(resources, make_user):
    user_id, _ = make_user("onestmt")
    job_id = _job(resources, user_id, {"type": "credit", "amount": 250})
    outcome = _post(resources, job_id, "credit", 250)
    assert not outcome.skipped and not outcome.refused
    status = outcome.status
    assert status["state"] == "SUCCESS" and status["progress"] == 100
    assert status["result"]["balance"] == 250 and status["result"]["transaction_id"] > 0
    assert outcome.summary == "credit of 250 posted; balance 250"
    with resources.sessions() as session:
        row = session.get(Job, job_id)
        assert (row.state, row.attempts) == ("SUCCESS", 1)
        assert ledger.ledger_sum(session, user_id) == 250
    assert _entries(resources, job_id) == 1


def test_a_second_delivery_or_a_cancelled_job_writes_nothing(resources, make_user):
    user_id, _ = make_user("onestmt_dup")
    job_id = _job(resources, user_id, {"type": "credit", "amount": 10})
    assert not _post(resources, job_id, "credit", 10).skipped
    again = _post(resources, job_id, "credit", 10)
    assert again.skipped and again.status is None
    cancelled = _job(resources, user_id, {"type": "credit", "amount": 99})
    with resources.sessions.begin() as session:
        jobs.cancel_job(session, cancelled, user_id)
    assert _post(resources, cancelled, "credit", 99).skipped
    assert _entries(resources, job_id) == 1 and _entries(resources, cancelled) == 0
    with resources.sessions() as session:
        assert ledger.ledger_sum(session, user_id) == 10


def test_an_overdraft_is_refused_and_changes_nothing(resources, make_user):
    user_id, _ = make_user("onestmt_over")
    job_id = _job(resources, user_id, {"type": "debit", "amount": 5})
    outcome = _post(resources, job_id, "debit", 5)
    assert outcome.refused and outcome.owner_id == user_id
    assert _entries(resources, job_id) == 0
    with resources.sessions() as session:
        assert session.get(Job, job_id).state == "PENDING"


def test_forty_concurrent_debits_of_100_on_2000_exactly_twenty_post(resources, make_user):
    user_id, _ = make_user("onestmt_race")
    with resources.sessions.begin() as session:
        ledger.post(session, user_id=user_id, entry_type="credit", amount=2_000)
    debits = [_job(resources, user_id, {"type": "debit", "amount": 100}) for _ in range(40)]
    start = threading.Barrier(len(debits))
    outcomes = []
    lock = threading.Lock()

    def debit(job_id):
        start.wait()
        outcome = _post(resources, job_id, "debit", 100)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=debit, args=(j,)) for j in debits]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for o in outcomes if o.status) == 20
    assert sum(1 for o in outcomes if o.refused) == 20
    with resources.sessions() as session:
        assert ledger.ledger_sum(session, user_id) == 0
        assert session.scalar(select(func.min(LedgerEntry.balance_after))) >= 0


def _post_list(resources, job_ids):
    with resources.autocommit_engine.connect() as conn:
        return post_jobs(conn, job_ids, now=jobs.utcnow())


def _balance(resources, user_id: int) -> int:
    with resources.sessions() as session:
        return ledger.ledger_sum(session, user_id)


def test_a_list_posts_each_job_in_order_with_its_own_outcome(resources, make_user):
    user_id, _ = make_user("batch_order")
    credit = _job(resources, user_id, {"type": "credit", "amount": 100})
    too_big = _job(resources, user_id, {"type": "debit", "amount": 150})
    debit = _job(resources, user_id, {"type": "debit", "amount": 50})
    late_credit = _job(resources, user_id, {"type": "credit", "amount": 10})
    outcomes = _post_list(resources, [credit, too_big, debit, late_credit])
    # In the order given, one wallet: 100, (150 refused: it would overdraw), 50, 60.
    assert outcomes[credit].status["result"]["balance"] == 100
    assert outcomes[too_big].refused and _entries(resources, too_big) == 0
    assert outcomes[debit].status["result"]["balance"] == 50
    assert outcomes[late_credit].status["result"]["balance"] == 60
    assert outcomes[late_credit].summary == "credit of 10 posted; balance 60"
    assert _balance(resources, user_id) == 60
    with resources.sessions() as session:
        assert session.get(Job, too_big).state == "PENDING"  # for the general path to fail
        assert session.get(Job, debit).state == "SUCCESS"


def test_a_list_skips_what_is_not_an_unfinished_ledger_job_and_posts_a_repeat_once(
    resources, make_user
):
    user_id, _ = make_user("batch_skip")
    job_id = _job(resources, user_id, {"type": "credit", "amount": 7})
    cancelled = _job(resources, user_id, {"type": "credit", "amount": 99})
    with resources.sessions.begin() as session:
        jobs.cancel_job(session, cancelled, user_id)
    with resources.autocommit_engine.connect() as conn:
        other_kind = uuid.UUID(
            jobs.create_job(
                conn, owner_id=user_id, kind="ledger.random", params={"count": 2}, ttl_seconds=60
            ).status["task_id"]
        )
    unknown = uuid.uuid4()
    outcomes = _post_list(resources, [job_id, cancelled, job_id, other_kind, unknown])
    assert outcomes[job_id].status["state"] == "SUCCESS"
    assert all(outcomes[j].skipped for j in (cancelled, other_kind, unknown))
    assert _entries(resources, job_id) == 1 and _entries(resources, cancelled) == 0
    assert _balance(resources, user_id) == 7
    # Delivered again later: nothing more.
    assert _post_list(resources, [job_id])[job_id].skipped
    assert _balance(resources, user_id) == 7


def test_lists_sharing_wallets_in_opposite_orders_never_deadlock(resources, make_user):
    """Wallets are locked in owner order: two lists over the same wallets both complete."""
    owners = [make_user(f"batch_lock{i}")[0] for i in range(4)]
    lists = [
        [_job(resources, owner, {"type": "credit", "amount": 1}) for owner in owners * 5]
        for _ in range(2)
    ]
    lists[1].reverse()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def post(job_ids):
        start.wait()
        try:
            for _ in range(5):
                _post_list(resources, job_ids)
        except BaseException as exc:  # a deadlock surfaces here as DBAPIError
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(ids,)) for ids in lists]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [_balance(resources, owner) for owner in owners] == [10, 10, 10, 10]


def test_a_job_in_two_concurrent_lists_never_deadlocks_them(resources, make_user):
    """A repeated message can put one job in two lists at once; both lists complete.

    Staged so the lock-order cycle would happen: a third session holds the
    wallet; list A (reaching the shared job last) queues on the wallet first,
    then list B (reaching it first) holds the shared job and queues behind A.
    When the wallet is let go, A gets it and moves on to the shared job.
    """
    user_id, _ = make_user("batch_dup_lock")
    shared = _job(resources, user_id, {"type": "credit", "amount": 1})
    first = [_job(resources, user_id, {"type": "credit", "amount": 1}) for _ in range(2)]
    second = [_job(resources, user_id, {"type": "credit", "amount": 1}) for _ in range(2)]
    errors: list[BaseException] = []

    def post(job_ids):
        try:
            _post_list(resources, job_ids)
        except BaseException as exc:  # a deadlock surfaces here as DBAPIError
            errors.append(exc)

    with resources.engine.connect() as holder:
        holder.execute(text("BEGIN"))
        holder.execute(text("SELECT 1 FROM wallets WHERE user_id = :u FOR UPDATE"), {"u": user_id})
        threads = []
        for waiting, job_ids in ((1, [*first, shared]), (2, [shared, *second])):
            thread = threading.Thread(target=post, args=(job_ids,))
            thread.start()
            threads.append(thread)
            _until_lock_waiters(resources, waiting)
        holder.execute(text("ROLLBACK"))
    for thread in threads:
        thread.join()
    assert errors == []
    assert _entries(resources, shared) == 1
    assert _balance(resources, user_id) == 5


def _until_lock_waiters(resources, count: int) -> None:
    """Until `count` sessions of this database wait on a lock (bounded)."""
    deadline = time.monotonic() + 10
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while True:
        with resources.engine.connect() as conn:
            if conn.execute(query).scalar() >= count:
                return
        assert time.monotonic() < deadline, f"{count} sessions never waited on a lock"
        time.sleep(0.02)
