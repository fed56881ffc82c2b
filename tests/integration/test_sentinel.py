"""Redis behind Sentinel: every Redis user finds the master, follows a failover, and loses no job.

The test's own Sentinel set (tests/support/sentinel.py: a master, two
replicas and three sentinels on loopback, each with a password) stands in
for the one Redis. Settings carry REDIS_SENTINELS, REDIS_SENTINEL_MASTER,
REDIS_SENTINEL_PASSWORD and a REDIS_URL whose host is never resolved: only
its database number and password count. Data written "through Sentinel" is
read back with a plain client of the node the sentinels name, so a client
that went anywhere else (the URL's host, localhost:6379) is caught.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid

import pytest
from sqlalchemy import func, select

from infra.broker.depth import create_queue_depths
from infra.broker.inflight import broker_task_ids
from infra.redis_store import Keys, create_redis
from infra.settings import Settings
from shared.jobs.events import RESYNC, EventHub, StreamKeys
from shared.jobs.kinds import QUEUES
from shared.jobs.status import StatusStore
from shared.models import Job, LedgerEntry, Wallet
from tests.support.accounts import fund, register_and_login
from tests.support.environment import TEST_ENV
from tests.support.polling import wait_for_state
from tests.support.sentinel import SentinelSet, wait_until
from tests.support.stacks import private_stack
from tuning.redis_pipelines import LeanPipelines
from tuning.redis_reads import LeanReads

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server"),
]

DB = 5


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory):
    sentinels = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    try:
        sentinels.start()
        yield sentinels
    finally:
        sentinels.stop()


def _behind(sentinel_set: SentinelSet) -> dict[str, str]:
    """The variables that put a stack behind `sentinel_set`."""
    return {
        "REDIS_URL": f"redis://:{sentinel_set.password}@resolved-through-sentinel/{DB}",
        "REDIS_SENTINELS": sentinel_set.sentinels,
        "REDIS_SENTINEL_MASTER": sentinel_set.master_name,
        "REDIS_SENTINEL_PASSWORD": sentinel_set.sentinel_password,
    }


@pytest.fixture
def sentinel_settings(database_url, sentinel_set) -> Settings:
    prefix = f"{TEST_ENV['CONVEYOR_REDIS_PREFIX']}s{uuid.uuid4().hex[:8]}:"
    return Settings.from_env({**TEST_ENV, **_behind(sentinel_set), "CONVEYOR_REDIS_PREFIX": prefix})


def _on_master(sentinel_set: SentinelSet):
    """A plain client of the node the sentinels name as master, in Conveyor's database."""
    return sentinel_set.client(sentinel_set.master_port(), DB)


def _port(client) -> int:
    return int(client.info("server")["tcp_port"])


def test_every_redis_user_finds_the_master_through_sentinel(sentinel_settings, sentinel_set):
    from api import create_app
    from api.events_app import create_events_app
    from infra.broker.publish import CeleryPublisher, producer_app
    from workers.factory import create_celery_app

    settings, prefix = sentinel_settings, sentinel_settings.redis_key_prefix
    master, port = _on_master(sentinel_set), sentinel_set.master_port()
    # Conveyor's own client: job status, events, caches, locks, notifications.
    store = create_redis(settings)
    store.set(f"{prefix}probe", "through sentinel")
    assert master.get(f"{prefix}probe") == "through sentinel"
    # The polls' own connections (tuning/redis_reads.py) and the flush's (redis_pipelines.py).
    master.hset(f"{prefix}doc", mapping={"state": "PENDING"})
    assert LeanReads(store).hmget(f"{prefix}doc", ["state"]) == ["PENDING"]
    LeanPipelines(create_redis(settings)).pipeline().lpush(f"{prefix}own", "m").execute()
    assert master.lrange(f"{prefix}own", 0, -1) == ["m"]

    app = create_app(settings)
    try:
        # The rate limiter counts on the master (flask-limiter's Sentinel storage).
        register_and_login(app.test_client(), f"sentinel_{uuid.uuid4().hex[:8]}")
        assert list(master.scan_iter(match=f"{prefix}limits*")), "no limiter counter on the master"
        # The API's publisher (the fast publish when on) and Celery's own producer.
        app.extensions["conveyor.publisher"].publish("ledger.transaction", "job-1", "ledger", {})
        celery_publisher = CeleryPublisher(producer_app(settings, QUEUES))
        celery_publisher.publish("ledger.transaction", "job-2", "ledger", {})
        celery_publisher.close()
        queued = [json.loads(m)["headers"]["id"] for m in master.lrange(f"{prefix}ledger", 0, -1)]
        assert sorted(queued) == ["job-1", "job-2"]
        # Admission's queue depths read the master's lists.
        depths = create_queue_depths(settings, app.extensions["conveyor"].redis)
        assert depths.read(["ledger"]) == {"ledger": 2}
    finally:
        app.extensions["conveyor"].close()
    # The events process's pool (blocking) and its hub's reader.
    events = create_events_app(settings)
    try:
        assert _port(events.extensions["conveyor"].redis) == port
    finally:
        events.extensions["conveyor"].close()
    # Celery: the workers' broker connection and the result backend.
    celery = create_celery_app(settings)
    try:
        with celery.connection_for_write() as connection:
            assert _port(connection.default_channel.client) == port
        assert _port(celery.backend.client) == port
        assert celery.backend.client.connection_pool.connection_kwargs["db"] == DB
    finally:
        celery.close()
    for key in master.scan_iter(match=f"{prefix}*"):
        master.delete(key)


def test_a_blocking_pool_behind_sentinel_waits_for_a_free_connection(
    sentinel_settings, sentinel_set
):
    """The events process's pool: a greenlet finding every connection busy waits for one."""
    client = create_redis(sentinel_settings, max_connections=1, wait_for_connection=30)
    key = f"{sentinel_settings.redis_key_prefix}wait"
    held = client.connection_pool.get_connection()  # the only one, in use
    assert held.port == sentinel_set.master_port()
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(client.set(key, "x")))
    waiter.start()
    waiter.join(0.5)
    # A plain pool would have refused at once ("Too many connections").
    assert waiter.is_alive() and outcome == []
    client.connection_pool.release(held)
    waiter.join(30)
    assert outcome == [True]
    assert _on_master(sentinel_set).get(key) == "x"
    client.delete(key)


def test_own_connections_and_the_event_hub_follow_a_crashed_master(sentinel_settings, sentinel_set):
    settings, prefix = sentinel_settings, sentinel_settings.redis_key_prefix
    client = create_redis(settings)
    reads = LeanReads(client)
    pipelines = LeanPipelines(create_redis(settings, decode_responses=False))
    statuses = StatusStore(client, Keys(prefix))
    hub = EventHub(create_redis(settings, socket_timeout=5), StreamKeys(prefix), block_ms=200)
    job = str(uuid.uuid4())
    doc = {"task_id": job, "kind": "ledger.transaction", "state": "PENDING", "progress": 0,
           "message": "queued", "updated_at": "2026-01-01T00:00:00Z"}  # fmt: skip
    subscription = hub.subscribe(job_id=job)
    started = {**doc, "state": "STARTED"}
    statuses.write(7, started)
    # The hub's reader starts after the newest event it finds (a stream replays the
    # log for what came before): progress until one reaches the subscription.
    arrived = None
    for percent in range(1, 60):
        arrived = subscription.get(timeout=0.5)
        if arrived is not None:
            break
        statuses.progress(7, started, percent, "before the failover")
    assert arrived is not None and json.loads(arrived.data)["task_id"] == job
    assert pipelines.pipeline().lpush(f"{prefix}list", "before").execute() == [1]
    assert reads.hmget(Keys(prefix).job_status(job), ["state"]) == ["STARTED"]
    # What came before is on both replicas (a crash loses what is not; not tested here).
    assert _on_master(sentinel_set).wait(2, 10_000) == 2

    old = sentinel_set.kill_master()
    try:
        new = sentinel_set.wait_new_master(old)
        # Each reaches the promoted replica by itself: no new client, no restart.
        wait_until(lambda: client.ping(), 30, "the client on the new master")
        statuses.write(7, {**doc, "state": "SUCCESS"})
        # The hub lost its connection: it tells its streams to re-read, then goes on.
        # (What was still queued for it before the kill comes first.)
        after = [subscription.get(timeout=15) for _ in range(2)]
        while after[0] not in (RESYNC, None):
            after = [after[1], subscription.get(timeout=15)]
        assert after[0] == RESYNC, after
        assert after[1] is not None and json.loads(after[1].data)["state"] == "SUCCESS"
        assert reads.hmget(Keys(prefix).job_status(job), ["state"]) == ["SUCCESS"]
        assert pipelines.pipeline().lpush(f"{prefix}list", "after").execute() == [2]
        master = sentinel_set.client(new, DB)
        assert master.lrange(f"{prefix}list", 0, -1) == ["after", "before"]
        assert master.hget(Keys(prefix).job_status(job), "state") == "SUCCESS"
    finally:
        sentinel_set.rejoin(old)
    for key in _on_master(sentinel_set).scan_iter(match=f"{prefix}*"):
        _on_master(sentinel_set).delete(key)


@pytest.fixture
def stack(settings, redis_client, sentinel_set, tmp_path):
    behind = _behind(sentinel_set)
    with private_stack(
        settings,
        redis_client,
        tmp_path,
        redis_url=behind["REDIS_URL"],
        redis_sentinels=behind["REDIS_SENTINELS"],
        redis_sentinel_master=behind["REDIS_SENTINEL_MASTER"],
        redis_sentinel_password=behind["REDIS_SENTINEL_PASSWORD"],
        # The sweep brings back a job whose message went with the old master.
        redispatch_after_seconds=2,
        # The worker is held through the switch while jobs queue up.
        max_inflight_jobs=1000,
    ) as private:
        yield private


def _states(resources, task_ids: list[str]) -> dict[str, str]:
    with resources.sessions() as session:
        rows = session.execute(
            select(Job.id, Job.state).where(Job.id.in_([uuid.UUID(t) for t in task_ids]))
        )
        return {str(job_id): state for job_id, state in rows}


def _submit(stack, headers, amount: int):
    return stack.client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": amount}, headers=headers
    )


def test_a_forced_failover_with_a_worker_running_loses_and_doubles_nothing(stack, sentinel_set):
    from scripts.worker_health import canary_round_trip
    from workers.factory import create_celery_app

    user_id, headers = register_and_login(stack.client, f"failover_{uuid.uuid4().hex[:8]}")
    fund(stack.resources, user_id, 1)
    worker = stack.start_worker("sentinel", queues="ledger,maintenance", concurrency=2)
    before = [_submit(stack, headers, 10).get_json()["task_id"] for _ in range(5)]
    for task_id in before:
        assert wait_for_state(stack.client, headers, task_id, timeout=60)["state"] == "SUCCESS"

    # The worker is held (SIGSTOP) through the switch, so the jobs the old master
    # takes afterwards are still only there when Sentinel demotes it.
    os.killpg(worker.pid, signal.SIGSTOP)
    old = sentinel_set.master_port()
    sentinel_set.start_failover()
    # Submits and polls go on through the switch; Sentinel demotes the old master
    # (closing its clients) a few seconds after naming the new one.
    during, answers = [], []
    try:
        while not sentinel_set.failover_done(old):
            response = _submit(stack, headers, 1)
            answers.append(response.status_code)
            if response.status_code == 202:
                during.append(response.get_json()["task_id"])
            else:  # a dependency down, said as such: never a 500
                assert response.status_code == 503, response.get_json()
                assert response.headers["Retry-After"]
            poll = stack.client.get(f"/api/v1/tasks/{before[0]}", headers=headers)
            assert poll.status_code == 200 and poll.get_json()["state"] == "SUCCESS"
            time.sleep(0.05)
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    assert during, answers

    after = [_submit(stack, headers, 100).get_json()["task_id"] for _ in range(5)]
    for task_id in after:
        assert wait_for_state(stack.client, headers, task_id, timeout=60)["state"] == "SUCCESS"
    # What the old master took after the switch went with it: PENDING rows whose
    # message is on no broker list. The sweep publishes them again.
    new_master = _on_master(sentinel_set)
    on_broker = broker_task_ids(new_master, stack.settings.redis_key_prefix, ["ledger"])
    lost = [t for t, s in _states(stack.resources, during).items() if s == "PENDING"]
    assert lost and not set(lost) & on_broker, (len(during), lost)
    sweeper = create_celery_app(stack.settings)
    try:
        sweeper.send_task("maintenance.redispatch_lost", queue="maintenance")
        wait_until(
            lambda: set(_states(stack.resources, during).values()) == {"SUCCESS"},
            60,
            f"the {len(lost)} jobs lost with the old master re-published and done",
        )
        # The canary's answer comes back through the result backend (Celery's Sentinel backend).
        assert canary_round_trip(sweeper, "maintenance", 30)[0]
    finally:
        sweeper.close()

    # Exactly once: one entry per job, and the wallet holds the sum of every job.
    jobs = [uuid.UUID(t) for t in (*before, *during, *after)]
    with stack.resources.sessions() as session:
        per_job = session.execute(
            select(LedgerEntry.job_id, func.count())
            .where(LedgerEntry.job_id.in_(jobs))
            .group_by(LedgerEntry.job_id)
        ).all()
        balance = session.scalar(select(Wallet.balance).where(Wallet.user_id == user_id))
    assert len(per_job) == len(jobs) and {n for _job, n in per_job} == {1}
    assert balance == 1 + 10 * len(before) + len(during) + 100 * len(after)
    # The same worker process throughout: it saw the switch and reconnected by itself.
    assert worker.poll() is None, "the worker exited"
    log = (stack.log_dir / "sentinel.log").read_text()
    assert "Connection to broker lost" in log, log[-3000:]
    assert sentinel_set.password not in log and sentinel_set.sentinel_password not in log
    assert sentinel_set.role(old) == "slave"
