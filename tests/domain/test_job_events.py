"""The event log written with each status document (shared/jobs/status.py), on real Redis."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from infra.redis_store import Keys
from shared.jobs.events import Event, EventHub, EventLog, StreamKeys
from shared.jobs.status import StatusStore

OWNER = 7


@pytest.fixture
def store(redis_client, settings):
    prefix = f"{settings.redis_key_prefix}ev-{uuid.uuid4().hex[:8]}:"
    yield StatusStore(redis_client, Keys(prefix)), EventLog(redis_client, StreamKeys(prefix))
    for key in redis_client.scan_iter(match=f"{prefix}*"):
        redis_client.delete(key)


def _doc(state: str = "PENDING", kind: str = "ledger.random") -> dict:
    return {"task_id": str(uuid.uuid4()), "kind": kind, "state": state, "progress": 0,
            "message": "queued", "updated_at": "2026-01-01T00:00:00Z"}  # fmt: skip


def _states(log: EventLog, job_id: str) -> list[str]:
    return [json.loads(event.data)["state"] for event in log.job_events(job_id)]


def test_nothing_is_appended_after_the_terminal_event(store):
    statuses, log = store
    doc = _doc()
    statuses.record_enqueued(OWNER, doc)
    statuses.write(OWNER, {**doc, "state": "STARTED"})
    statuses.progress(OWNER, doc, 50, "half")
    assert statuses.write(OWNER, {**doc, "state": "SUCCESS"})
    # A late progress and a late transition: refused, and neither becomes an event.
    statuses.progress(OWNER, doc, 90, "late")
    assert not statuses.write(OWNER, {**doc, "state": "PROGRESS"})
    assert _states(log, doc["task_id"]) == ["PENDING", "STARTED", "PROGRESS", "SUCCESS"]
    kinds = [event.type for event in log.job_events(doc["task_id"])]
    assert kinds == ["state", "state", "progress", "state"]
    # The row snapshot (only_if_missing) is not an event either.
    other = _doc("STARTED")
    statuses.write(OWNER, other, only_if_missing=True)
    assert log.job_events(other["task_id"]) == []


def test_one_id_per_event_in_the_job_and_user_logs(store):
    statuses, log = store
    doc = _doc()
    statuses.record_enqueued(OWNER, doc)
    statuses.write(OWNER, {**doc, "state": "FAILURE"})
    event_id = statuses.notify(OWNER, {"id": "n1", "task_id": doc["task_id"]})
    job_ids = [event.id for event in log.job_events(doc["task_id"])]
    user = log.user_events(OWNER)
    assert [event.id for event in user] == [*job_ids, event_id]
    assert user[-1].type == "notification"
    assert log.user_events(OWNER, after=job_ids[0]) == user[1:]


def test_queue_position_counts_tickets_ahead_and_claims_pass_them(store):
    statuses, _log = store
    docs = [_doc(kind="ledger.transaction") for _ in range(4)]
    tickets = [statuses.record_enqueued(OWNER, doc) for doc in docs]
    assert tickets == list(range(tickets[0], tickets[0] + 4))
    live = statuses.read_document(docs[3]["task_id"], OWNER)
    assert live.queue == "ledger" and live.ticket == tickets[3]
    before = statuses.estimate("ledger", tickets[3]).queue_position
    # A cancel of a queued job does not move anyone: its message is still queued.
    statuses.write(OWNER, {**docs[0], "state": "REVOKED"})
    assert statuses.estimate("ledger", tickets[3]).queue_position == before
    # A job that goes straight to its outcome (one-statement ledger jobs) was claimed.
    statuses.write(OWNER, {**docs[1], "state": "SUCCESS"})
    assert statuses.estimate("ledger", tickets[3]).queue_position == 1
    statuses.write(OWNER, {**docs[2], "state": "STARTED"})
    statuses.write(OWNER, {**docs[2], "state": "RETRY"})
    statuses.write(OWNER, {**docs[2], "state": "STARTED"})  # a retry's claim is not a new one
    estimate = statuses.estimate("ledger", tickets[3])
    assert estimate.queue_position == 0
    assert estimate.eta_seconds is None or estimate.eta_seconds >= 1


def test_a_wait_on_the_log_returns_what_was_written_after_the_last_id_read(store):
    statuses, log = store
    doc = _doc()
    statuses.record_enqueued(OWNER, doc)
    job_id = doc["task_id"]
    (pending,) = log.job_events(job_id)
    # Nothing new: the wait times out empty.
    assert log.wait_job_events(job_id, pending.id, block_ms=50) == []
    # Written before the wait began (between two reads): returned at once, not missed.
    statuses.write(OWNER, {**doc, "state": "STARTED"})
    statuses.write(OWNER, {**doc, "state": "SUCCESS"})
    waited = log.wait_job_events(job_id, pending.id, block_ms=5000)
    assert [json.loads(event.data)["state"] for event in waited] == ["STARTED", "SUCCESS"]
    assert log.wait_user_events(OWNER, pending.id, block_ms=5000) == waited
    assert log.wait_job_events(job_id, None, block_ms=50)[0] == pending


class LateFirstRead(redis.Redis):
    """A reader's own client whose reads reach Redis late (a connection made on a busy box)."""

    def xrevrange(self, *args, **kwargs):
        time.sleep(0.3)
        return super().xrevrange(*args, **kwargs)


def test_an_event_written_just_after_the_first_subscription_reaches_it(store):
    """A new process's first stream: the reader starts with it and must not skip what follows."""
    from tests.support.environment import REDIS_URL

    statuses, log = store
    reader = LateFirstRead.from_url(REDIS_URL, decode_responses=True)
    hub = EventHub(reader, log.keys, block_ms=100)
    doc = _doc()
    statuses.record_enqueued(OWNER, doc)
    sub = hub.subscribe(job_id=doc["task_id"])
    try:
        # At once, as a worker's write can land between the subscriber's replay of
        # its log and the reader's first read: it must still reach the subscriber.
        statuses.write(OWNER, {**doc, "state": "SUCCESS"})
        event = sub.get(timeout=5)
        assert isinstance(event, Event) and json.loads(event.data)["state"] == "SUCCESS"
    finally:
        hub.unsubscribe(sub)
        hub.close()
        reader.close()
