"""Group-committed submission: one batch, one INSERT, one broker trip, and each job its own outcome.

`submit_many` is called with whole batches (what concurrent requests hand the
group commit), against the real PostgreSQL and Redis; the group commit itself
with real threads; and the whole path through a real gunicorn (gevent, as
the Procfile runs it, and gthread) under concurrent requests.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from infra.broker import envelope, keys
from infra.broker.publish import CeleryPublisher, producer_app
from infra.redis_store import Keys
from shared.jobs.group_commit import GroupCommit
from shared.jobs.kinds import QUEUES
from shared.jobs.model import IdempotencyKeyReused, Submission, TooManyInflightJobs, request_hash
from shared.jobs.status import StatusStore
from shared.jobs.submission import BrokerError, PreparedJob, submit_many
from tests.support.accounts import register_and_login
from tests.support.environment import process_environment
from tests.support.processes import free_port, running_server
from tuning.celery_fast_publish import RedisListPublisher

BIN = Path(sys.executable).parent
KIND = "ledger.transaction"
CREDIT = {"type": "credit", "amount": 5, "description": "batch"}
DEBIT = {"type": "debit", "amount": 5, "description": "batch"}


@pytest.fixture
def prefix(settings, redis_client):
    """A private key prefix (queues, documents) under the run's, deleted after the test."""
    name = f"{settings.redis_key_prefix}b{uuid.uuid4().hex[:8]}:"
    yield name
    for key in redis_client.scan_iter(match=f"{name}*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def statuses(redis_client, prefix):
    return StatusStore(redis_client, Keys(prefix))


def _job(owner_id: int, body: dict, key: str | None = None, cap: int | None = 50) -> PreparedJob:
    return PreparedJob(
        owner_id=owner_id,
        kind=KIND,
        params=body,
        headers={"request_id": "test", "user_id": owner_id},
        idempotency_key=key,
        request_fingerprint=request_hash(KIND, body) if key else None,
        max_inflight=cap,
    )


def _flush(resources, publisher, statuses, jobs):
    with resources.autocommit_engine.connect() as conn:
        return submit_many(conn, publisher, statuses, resources.settings, jobs)


def _queued_ids(redis_client, prefix: str) -> list[str]:
    """Task ids on the ledger queue, in the order workers will take them (tail first)."""
    raw = redis_client.lrange(keys.queue_list(prefix, "ledger"), 0, -1)
    return [envelope.task_id(message) for message in reversed(raw)]


def _rows(resources, owner_id: int) -> list[str]:
    with resources.engine.connect() as conn:
        found = conn.execute(text("SELECT id FROM jobs WHERE owner_id = :o"), {"o": owner_id})
        return sorted(str(job_id) for (job_id,) in found)


def _redis_publisher(redis_client, settings, prefix, *, shared: bool) -> RedisListPublisher:
    # `shared`: the broker is the status Redis, so the documents ride in the same pipeline.
    return RedisListPublisher(redis_client, prefix, settings.redis_url if shared else "")


@pytest.mark.parametrize("shared", [True, False], ids=["one-trip", "broker-apart"])
def test_one_batch_keeps_each_jobs_idempotency_outcome(
    resources, make_user, redis_client, settings, prefix, statuses, shared
):
    owner, _ = make_user("batchkeys")
    publisher = _redis_publisher(redis_client, settings, prefix, shared=shared)
    (earlier,) = _flush(resources, publisher, statuses, [_job(owner, CREDIT, key="old")])
    batch = [
        _job(owner, CREDIT, key="k1"),  # 0: new
        _job(owner, CREDIT, key="k1"),  # 1: same key, same body in the same batch: replay of 0
        _job(owner, CREDIT, key="k2"),  # 2: new
        _job(owner, DEBIT, key="k2"),  # 3: same key, another body in the same batch: 422
        _job(owner, CREDIT, key="old"),  # 4: key from an earlier batch: replay
        _job(owner, DEBIT, key="old"),  # 5: key from an earlier batch, another body: 422
        _job(owner, CREDIT),  # 6: no key: new
        _job(owner, CREDIT),  # 7: no key: new
    ]
    outcomes = _flush(resources, publisher, statuses, batch)

    new = [outcomes[i] for i in (0, 2, 6, 7)]
    assert all(isinstance(o, Submission) and not o.replayed for o in new), outcomes
    assert outcomes[1].replayed and outcomes[1].status["task_id"] == outcomes[0].status["task_id"]
    assert isinstance(outcomes[3], IdempotencyKeyReused)
    assert outcomes[4].replayed and outcomes[4].status["task_id"] == earlier.status["task_id"]
    assert isinstance(outcomes[5], IdempotencyKeyReused)
    new_ids = [o.status["task_id"] for o in new]
    assert len(set(new_ids)) == 4
    # Exactly one row per job, and the broker holds exactly the new jobs' messages, in order.
    assert _rows(resources, owner) == sorted([earlier.status["task_id"], *new_ids])
    assert _queued_ids(redis_client, prefix) == [earlier.status["task_id"], *new_ids]
    for task_id in new_ids:
        document = statuses.read(task_id, owner)
        assert document is not None and document["state"] == "PENDING", task_id


def test_one_batch_admits_exactly_up_to_each_owners_cap(
    resources, make_user, redis_client, settings, prefix, statuses
):
    capped, _ = make_user("batchcap")
    other, _ = make_user("batchcap")
    publisher = _redis_publisher(redis_client, settings, prefix, shared=True)
    (first,) = _flush(resources, publisher, statuses, [_job(capped, CREDIT, key="kept", cap=3)])
    batch = [
        _job(capped, CREDIT, cap=3),  # 0: 2nd unfinished: admitted
        _job(other, CREDIT, cap=3),  # 1: another owner: admitted
        _job(capped, CREDIT, key="kept", cap=3),  # 2: replay: answers, takes no slot
        _job(capped, CREDIT, cap=3),  # 3: 3rd: admitted
        _job(capped, CREDIT, cap=3),  # 4: 4th: over the cap
        _job(other, CREDIT, cap=3),  # 5: admitted
        _job(capped, CREDIT, key="late", cap=3),  # 6: over the cap (keyed: single path)
        _job(capped, CREDIT, cap=None),  # 7: no cap (a job the system starts): admitted
    ]
    outcomes = _flush(resources, publisher, statuses, batch)

    for index in (0, 1, 3, 5, 7):
        assert isinstance(outcomes[index], Submission), (index, outcomes[index])
        assert not outcomes[index].replayed
    assert outcomes[2].replayed and outcomes[2].status["task_id"] == first.status["task_id"]
    assert isinstance(outcomes[4], TooManyInflightJobs)
    assert isinstance(outcomes[6], TooManyInflightJobs)
    assert len(_rows(resources, capped)) == 4
    assert len(_rows(resources, other)) == 2
    assert len(_queued_ids(redis_client, prefix)) == 6


def test_a_batch_that_cannot_reach_the_broker_leaves_no_row(
    resources, make_user, redis_client, settings, prefix, statuses
):
    owner, _ = make_user("batchdown")
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    publisher = RedisListPublisher(dead, prefix, settings.redis_url)
    batch = [
        _job(owner, CREDIT, key="retry-me"),
        _job(owner, CREDIT, key="retry-me"),
        _job(owner, CREDIT),
    ]
    outcomes = _flush(resources, publisher, statuses, batch)

    # The replay (1) of a job of this batch (0) fails with it: that job is gone.
    assert all(isinstance(outcome, BrokerError) for outcome in outcomes), outcomes
    assert _rows(resources, owner) == []
    # A retry with the same key starts clean once the broker is back.
    working = _redis_publisher(redis_client, settings, prefix, shared=True)
    (retried,) = _flush(resources, working, statuses, [_job(owner, CREDIT, key="again")])
    assert isinstance(retried, Submission) and not retried.replayed
    assert _queued_ids(redis_client, prefix) == [retried.status["task_id"]]


def test_celerys_publisher_takes_the_batched_insert_too(
    resources, make_user, redis_client, settings, prefix, statuses
):
    owner, _ = make_user("batchcelery")
    producer = producer_app(dataclasses.replace(settings, redis_key_prefix=prefix), QUEUES)
    try:
        outcomes = _flush(
            resources,
            CeleryPublisher(producer),
            statuses,
            [_job(owner, CREDIT), _job(owner, CREDIT, key="c"), _job(owner, DEBIT, key="c")],
        )
    finally:
        producer.close()
    assert [type(o) for o in outcomes] == [Submission, Submission, IdempotencyKeyReused]
    new_ids = [o.status["task_id"] for o in outcomes[:2]]
    assert _rows(resources, owner) == sorted(new_ids)
    assert sorted(_queued_ids(redis_client, prefix)) == sorted(new_ids)
    assert all(statuses.read(task_id, owner)["state"] == "PENDING" for task_id in new_ids)


# -- the group commit ------------------------------------------------------------------


class _HeldFlush:
    """A flush that records its batches; the first one waits until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.failing: set[int] = set()

    def __call__(self, items):
        self.batches.append(list(items))
        if len(self.batches) == 1:
            assert self.release.wait(30)
        if self.failing & set(items):
            raise RuntimeError("flush failed")
        return [item * 10 for item in items]


def _queued(batcher: GroupCommit) -> int:
    with batcher._lock:
        return len(batcher._queue)


def _wait_queued(batcher: GroupCommit, count: int) -> None:
    done = threading.Event()
    for _ in range(3000):
        if _queued(batcher) >= count:
            return
        done.wait(0.01)
    raise AssertionError(f"{count} callers never queued")


def test_an_idle_caller_flushes_its_own_item_at_once():
    flush = _HeldFlush()
    flush.release.set()
    batcher = GroupCommit(flush)
    assert batcher.run(4) == 40
    assert flush.batches == [[4]]


def test_callers_arriving_during_a_flush_share_the_next_one_each_with_its_outcome():
    flush = _HeldFlush()
    batcher = GroupCommit(flush, max_batch=4)
    with ThreadPoolExecutor(8) as pool:
        leader = pool.submit(batcher.run, 1)
        for _ in range(3000):
            if flush.batches:
                break
            threading.Event().wait(0.01)
        followers = {n: pool.submit(batcher.run, n) for n in range(2, 8)}
        _wait_queued(batcher, 6)
        flush.release.set()
        assert leader.result(30) == 10
        assert {n: f.result(30) for n, f in followers.items()} == {n: n * 10 for n in range(2, 8)}
    # The six that waited went in batches of at most four, in arrival order.
    assert flush.batches[0] == [1]
    assert sorted(n for batch in flush.batches[1:] for n in batch) == list(range(2, 8))
    assert [len(batch) for batch in flush.batches[1:]] == [4, 2]


def test_a_leader_that_gathers_first_takes_the_callers_ready_by_then():
    flush = _HeldFlush()
    flush.release.set()
    gathered = threading.Event()
    arrived = threading.Event()

    def gather() -> None:
        # Stand-in for one pass of gevent's hub: let the callers that are ready queue up.
        if not gathered.is_set():
            gathered.set()
            assert arrived.wait(30)

    batcher = GroupCommit(flush, gather=gather)
    with ThreadPoolExecutor(4) as pool:
        leader = pool.submit(batcher.run, 1)
        assert gathered.wait(30)
        followers = {n: pool.submit(batcher.run, n) for n in (2, 3, 4)}
        _wait_queued(batcher, 4)
        arrived.set()
        assert leader.result(30) == 10
        assert {n: f.result(30) for n, f in followers.items()} == {2: 20, 3: 30, 4: 40}
    # One flush: without the gather the leader would have flushed [1] alone.
    assert flush.batches == [[1, 2, 3, 4]]


def test_the_web_batcher_gathers_ready_requests_before_each_flush(app):
    from api.extensions import _let_ready_requests_run, submit_batcher

    with app.app_context():
        assert submit_batcher()._gather is _let_ready_requests_run


def test_a_failed_flush_fails_only_its_own_batch():
    flush = _HeldFlush()
    flush.failing = {3}
    batcher = GroupCommit(flush, max_batch=2)
    with ThreadPoolExecutor(6) as pool:
        leader = pool.submit(batcher.run, 1)
        for _ in range(3000):
            if flush.batches:
                break
            threading.Event().wait(0.01)
        second = [pool.submit(batcher.run, 2)]
        _wait_queued(batcher, 1)
        second.append(pool.submit(batcher.run, 3))
        _wait_queued(batcher, 2)
        third = pool.submit(batcher.run, 4)
        _wait_queued(batcher, 3)
        flush.release.set()
        assert leader.result(30) == 10
        for future in second:
            with pytest.raises(RuntimeError, match="flush failed"):
                future.result(30)
        assert third.result(30) == 40
    # And the batcher goes on after it.
    assert batcher.run(5) == 50


# -- through a real gunicorn -------------------------------------------------------------


@pytest.fixture(params=["gevent", "gthread"])
def web(request, settings, prefix, tmp_path):
    """One gunicorn worker (several requests in flight), MAX_INFLIGHT_JOBS=5, no job worker."""
    port = free_port()
    env = {
        **process_environment(),
        "CONVEYOR_REDIS_PREFIX": prefix,
        "MAX_INFLIGHT_JOBS": "5",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "16",
        "GUNICORN_CMD_ARGS": f"--graceful-timeout 3 --worker-class {request.param}",
    }
    argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "api.wsgi:app"]
    with running_server(
        argv, env=env, log_path=tmp_path / "web.log", port=port, ready_path="/healthz"
    ):
        yield f"http://127.0.0.1:{port}"


def _post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


class _Http:
    """Just enough of a test client for register_and_login, over real HTTP."""

    def __init__(self, base: str) -> None:
        self.base = base

    def post(self, path: str, json: dict):
        status, body, _ = _post(self.base + path, json, {})

        class Answer:
            status_code = status

            @staticmethod
            def get_json():
                return body

        return Answer


def test_concurrent_submits_through_gunicorn_each_get_their_own_answer(
    web, resources, redis_client, prefix
):
    owner, auth = register_and_login(_Http(web), f"gc_{uuid.uuid4().hex[:10]}")
    url = web + "/api/v1/transactions"
    key = uuid.uuid4().hex
    keyed_requests = [(CREDIT, {**auth, "Idempotency-Key": key})] * 12  # one job among them
    keyed_requests += [(DEBIT, {**auth, "Idempotency-Key": key})] * 4  # another body
    plain_requests = [(CREDIT, auth)] * 12  # only 4 more fit under MAX_INFLIGHT_JOBS=5
    with ThreadPoolExecutor(16) as pool:
        keyed = list(pool.map(lambda r: _post(url, *r), keyed_requests))
        plain = list(pool.map(lambda r: _post(url, *r), plain_requests))

    winners = {body["task_id"] for status, body, _ in keyed if status == 202}
    assert len(winners) == 1, keyed
    (task_id,) = winners
    first_body = CREDIT if any(s == 202 for s, _, _ in keyed[:12]) else DEBIT
    losers = keyed[12:] if first_body is CREDIT else keyed[:12]
    assert all(status == 422 for status, _, _ in losers), losers
    fresh = [h for status, _, h in keyed if status == 202 and "Idempotent-Replayed" not in h]
    assert len(fresh) == 1

    assert sorted(status for status, _, _ in plain) == [202] * 4 + [429] * 8, plain
    accepted = {body["task_id"] for status, body, _ in plain if status == 202} | {task_id}
    assert _rows(resources, owner) == sorted(accepted)
    assert sorted(_queued_ids(redis_client, prefix)) == sorted(accepted)
