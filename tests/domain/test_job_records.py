"""Job records and live status documents against PostgreSQL and Redis."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select

from shared import accounts, jobs, webhooks
from shared.jobs.claims import finish_job
from shared.models import Job


@pytest.fixture
def owner(resources) -> int:
    with resources.sessions.begin() as session:
        return accounts.register(
            session, resources.hasher, f"jobs_{uuid.uuid4().hex[:10]}", "password123", "USD"
        ).id


def _create(resources, owner_id, key=None, payload=None):
    fingerprint = jobs.request_hash("ledger.transaction", payload or {}) if key else None
    with resources.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return jobs.create_job(
            conn,
            owner_id=owner_id,
            kind="ledger.transaction",
            params=payload or {},
            idempotency_key=key,
            request_fingerprint=fingerprint,
            ttl_seconds=3600,
        )


def _count(resources, owner_id) -> int:
    with resources.sessions() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner_id))


def test_new_job_is_pending_with_a_random_uuid(resources, owner):
    submission = _create(resources, owner)
    status = submission.status
    assert uuid.UUID(status["task_id"]).version == 4
    assert status["state"] == "PENDING" and status["progress"] == 0
    assert status["created_at"].endswith("Z") and status["expires_at"] > status["created_at"]
    with resources.sessions() as session:
        assert jobs.get_status(session, uuid.UUID(status["task_id"]), owner)["state"] == "PENDING"


def test_idempotency_key_same_body_replays_different_body_is_refused(resources, owner):
    first = _create(resources, owner, key="k-1", payload={"amount": 5})
    again = _create(resources, owner, key="k-1", payload={"amount": 5})
    assert again.replayed and again.status["task_id"] == first.status["task_id"]
    with pytest.raises(jobs.IdempotencyKeyReused):
        _create(resources, owner, key="k-1", payload={"amount": 6})
    assert _count(resources, owner) == 1


def test_idempotency_keys_are_per_owner(resources, owner):
    with resources.sessions.begin() as session:
        other = accounts.register(
            session, resources.hasher, f"o_{uuid.uuid4().hex[:8]}", "pw12345678", "USD"
        ).id
    a = _create(resources, owner, key="shared-key", payload={"amount": 1})
    b = _create(resources, other, key="shared-key", payload={"amount": 1})
    assert not b.replayed and a.status["task_id"] != b.status["task_id"]


def test_sixteen_concurrent_duplicates_create_one_job(resources, owner):
    barrier = threading.Barrier(16)
    results: list[jobs.Submission] = []
    lock = threading.Lock()

    def submit():
        barrier.wait()
        submission = _create(resources, owner, key="race", payload={"amount": 7})
        with lock:
            results.append(submission)

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.status["task_id"] for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert _count(resources, owner) == 1


def test_cancelled_job_cannot_be_claimed_and_finished_job_cannot_be_cancelled(resources, owner):
    job_id = uuid.UUID(_create(resources, owner).status["task_id"])
    with resources.sessions.begin() as session:
        assert jobs.cancel_job(session, job_id, owner)["state"] == "REVOKED"
    with resources.sessions.begin() as session:
        assert jobs.claim(session, job_id) is None
    with pytest.raises(jobs.JobAlreadyFinished), resources.sessions.begin() as session:
        jobs.cancel_job(session, job_id, owner)


def test_cancel_of_another_owners_job_is_not_found(resources, owner):
    job_id = uuid.UUID(_create(resources, owner).status["task_id"])
    with pytest.raises(jobs.JobNotFound), resources.sessions.begin() as session:
        jobs.cancel_job(session, job_id, owner + 10_000)


def test_claim_then_finish_once(resources, owner):
    job_id = uuid.UUID(_create(resources, owner).status["task_id"])
    with resources.sessions.begin() as session:
        claimed = jobs.claim(session, job_id)
    assert claimed is not None and claimed.attempts == 1 and claimed.owner_id == owner
    with resources.sessions.begin() as session:
        done = jobs.finish(session, job_id, state="SUCCESS", result={"ok": True})
    assert done["state"] == "SUCCESS" and done["progress"] == 100
    with resources.sessions.begin() as session:
        assert jobs.finish(session, job_id, state="FAILURE", error=jobs.JobError("x", "y")) is None
        assert jobs.claim(session, job_id) is None


def test_status_store_never_overwrites_a_terminal_document(resources, owner):
    store = resources.statuses
    job_id = str(uuid.uuid4())
    base = {
        "task_id": job_id,
        "kind": "ai.text",
        "progress": 0,
        "message": "",
        "result": None,
        "error": None,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "expires_at": "2026-01-02T00:00:00Z",
    }
    assert store.write(owner, {**base, "state": "STARTED"})
    assert store.write(owner, {**base, "state": "REVOKED"})
    assert not store.write(owner, {**base, "state": "PROGRESS", "progress": 50})
    assert store.read(job_id, owner)["state"] == "REVOKED"


def test_status_store_snapshot_only_fills_a_missing_document(resources, owner):
    store = resources.statuses
    job_id = str(uuid.uuid4())
    doc = {"task_id": job_id, "kind": "ai.text", "state": "PROGRESS", "progress": 40}
    assert store.write(owner, doc)
    assert not store.write(owner, {**doc, "state": "PENDING", "progress": 0}, only_if_missing=True)
    assert store.read(job_id, owner)["progress"] == 40


def test_status_store_hides_other_owners_documents(resources, owner):
    job_id = str(uuid.uuid4())
    resources.statuses.write(owner, {"task_id": job_id, "state": "STARTED"})
    assert resources.statuses.read(job_id, owner + 1) is None
    assert resources.statuses.read(job_id, owner) is not None


def test_claim_and_finish_run_alone_on_an_autocommit_connection(resources, owner):
    job_id = uuid.UUID(_create(resources, owner).status["task_id"])
    with resources.autocommit_engine.connect() as conn:
        assert jobs.claim(conn, job_id).attempts == 1
        finished = finish_job(conn, job_id, state="SUCCESS", result={"text": "hi"})
        # Terminal now: a duplicate delivery can neither claim nor finish it again.
        assert finish_job(conn, job_id, state="SUCCESS", result={"text": "again"}) is None
        assert jobs.claim(conn, job_id) is None
    assert finished.status["state"] == "SUCCESS" and finished.status["result"] == {"text": "hi"}
    assert finished.has_webhooks is False
    with resources.sessions() as session:
        assert jobs.get_status(session, job_id, owner)["result"] == {"text": "hi"}


def test_finish_job_says_whether_the_owner_has_a_webhook_endpoint(resources, owner):
    with resources.sessions.begin() as session:
        webhooks.create_endpoint(session, owner, "https://example.invalid/hook", ["job.failed"])
    job_id = uuid.UUID(_create(resources, owner).status["task_id"])
    with resources.autocommit_engine.connect() as conn:
        jobs.claim(conn, job_id)
        finished = finish_job(conn, job_id, state="FAILURE", error=jobs.JobError("x", "y"))
    assert finished.has_webhooks is True


def test_a_failure_keeps_the_progress_and_stores_no_result(resources, owner):
    job_id = uuid.UUID(_create(resources, owner).status["task_id"])
    with resources.autocommit_engine.connect() as conn:
        jobs.claim(conn, job_id)
        jobs.mark_state(conn, job_id, "RETRY", "retry 1 of 2")
        finished = finish_job(conn, job_id, state="FAILURE", error=jobs.JobError("ai_x", "no"))
    assert finished.status["error"] == {"code": "ai_x", "message": "no"}
    assert finished.status["progress"] == 0 and finished.status["result"] is None
    with resources.sessions() as session:
        # SQL NULL, as before: not a JSON 'null' document.
        assert session.scalar(select(Job.id).where(Job.id == job_id, Job.result.is_(None)))


def test_an_id_prefix_is_the_range_of_ids_that_start_with_it():
    low, high = jobs.id_prefix_range("5A62313e-84")
    assert str(low) == "5a62313e-8400-0000-0000-000000000000"
    assert str(high) == "5a62313e-84ff-ffff-ffff-ffffffffffff"
    whole = "5a62313e-8483-4f7e-9d6c-0b1c2d3e4f50"
    assert jobs.id_prefix_range(whole) == (uuid.UUID(whole), uuid.UUID(whole))
    # A dash only where ids have one, hex digits elsewhere, 1-36 characters.
    for bad in ("", "5a62-313e", "5a62313e8", "5a62313g", whole + "0", " 5a6"):
        assert jobs.id_prefix_range(bad) is None, bad


def test_listing_by_id_prefix_keeps_the_owners_jobs_that_start_with_it(resources, owner):
    chosen = ["0fffffff-ffff-4fff-8fff-ffffffffffff", "10000000-0000-4000-8000-000000000000",
              "10000000-0000-4000-8000-000000000001", "1fffffff-ffff-4fff-8fff-ffffffffffff",
              "20000000-0000-4000-8000-000000000000"]  # fmt: skip
    for job_id in chosen:
        created = uuid.UUID(_create(resources, owner).status["task_id"])
        with resources.sessions.begin() as session:
            session.execute(Job.__table__.update().where(Job.id == created).values(id=job_id))
    with resources.sessions.begin() as session:
        other = accounts.register(
            session, resources.hasher, f"o_{uuid.uuid4().hex[:8]}", "pw123456", "USD"
        ).id
    # Another owner's job inside the same range: never listed for `owner`.
    foreign = uuid.UUID(_create(resources, other).status["task_id"])
    with resources.sessions.begin() as session:
        session.execute(
            Job.__table__.update()
            .where(Job.id == foreign)
            .values(id="10000000-0000-4000-8000-0000000000ff")
        )

    def listed(prefix: str) -> list[str]:
        with resources.sessions() as session:
            items, total = jobs.list_jobs(session, owner, id_prefix=prefix, limit=100)
        assert total == len(items)
        return sorted(item["task_id"] for item in items)

    assert listed("1") == chosen[1:4]
    assert listed("10000000-0000-4000-8000-00000000000") == chosen[1:3]
    assert listed("1FFFFFFF") == chosen[3:4]
    assert listed(chosen[0]) == chosen[:1]
    assert listed("3") == [] and listed("not-an-id") == []
