"""RabbitMQ as the broker, end to end: the API, real workers and the sweep on a private vhost.

Job status, results and notifications stay on Redis (REDIS_URL); only the
broker is RabbitMQ. The web side is `api.create_app` and the worker side
`workers.app.create_celery_app`, both built from one Settings whose
CELERY_BROKER_URL names this run's vhost. In-process thread workers run the
happy paths; a prefork worker subprocess is SIGKILLed (whole process group)
to show RabbitMQ requeues what it held.
"""

from __future__ import annotations

import dataclasses
import importlib
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from infra.broker.inflight import broker_in_flight
from shared import jobs, maintenance
from shared.jobs import utcnow
from shared.models import Job, LedgerEntry
from tests.fakes.openai_server import FakeOpenAIServer, Scripted
from tests.support.accounts import register_and_login
from tests.support.apps import app_with
from tests.support.environment import RUN_ID, process_environment
from tests.support.metrics import scrape_headers
from tests.support.polling import wait_for_state
from tests.support.processes import free_port
from tests.support.rabbitmq import (
    kill_group,
    private_vhost,
    purge,
    queue_counts,
    thread_worker,
    wait_until,
    worker_process,
)
from workers.tasks.maintenance import republish

pytestmark = pytest.mark.integration

QUEUES = ("ledger", "ai", "maintenance")
API_KEY = f"sk-conveyor-rabbit-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    with private_vhost(f"conveyor_test_{RUN_ID}") as url:
        yield url


@pytest.fixture(scope="module")
def amqp_settings(settings, broker_url):
    # Login enqueues a job here, so that path runs through RabbitMQ too.
    return dataclasses.replace(
        settings, celery_broker_url=broker_url, login_generates_transactions=True
    )


@pytest.fixture(scope="module")
def amqp_app(amqp_settings):
    from api import create_app

    flask_app = create_app(amqp_settings)
    flask_app.config["TESTING"] = True
    yield flask_app
    flask_app.extensions["conveyor.queue_depths"].close()
    flask_app.extensions["conveyor"].close()


@pytest.fixture
def web(amqp_app):
    return amqp_app.test_client()


@pytest.fixture(scope="module")
def amqp_celery(amqp_settings):
    """The worker side's Celery app (the web app keeps its own producer app, as in production)."""
    from workers.factory import TASK_MODULES, create_celery_app

    # Tasks are shared: an app finalized after their modules are imported gets them all.
    for module in TASK_MODULES:
        importlib.import_module(module)
    return create_celery_app(amqp_settings)


@pytest.fixture
def idle(broker_url, settings, redis_client) -> Iterator[None]:
    """No worker runs; every queue starts and ends empty (the fair lines too)."""
    from tests.support.workers import clear_fair_lines

    purge(broker_url, *QUEUES)
    clear_fair_lines(redis_client, settings.redis_key_prefix)
    yield
    purge(broker_url, *QUEUES)
    clear_fair_lines(redis_client, settings.redis_key_prefix)


@pytest.fixture
def user(web):
    return register_and_login(web, f"rabbit_{uuid.uuid4().hex[:10]}")


def _post(web, headers, path: str, body: dict) -> str:
    response = web.post(f"/api/v1{path}", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


def _credit(web, headers, amount: int) -> str:
    return _post(web, headers, "/transactions", {"type": "credit", "amount": amount})


def _row(resources, job_id: str) -> Job:
    with resources.sessions() as session:
        return session.execute(select(Job).where(Job.id == uuid.UUID(job_id))).scalar_one()


def _entries(resources, job_id: str) -> int:
    with resources.sessions() as session:
        return session.scalar(select(func.count()).where(LedgerEntry.job_id == uuid.UUID(job_id)))


def _gauge(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} not exported")


def test_amqp_broker_gets_quorum_queues_confirms_and_a_short_heartbeat(amqp_celery, settings):
    from workers.factory import create_celery_app

    conf = amqp_celery.conf
    assert conf.broker_transport_options == {"confirm_publish": True}
    assert conf.broker_heartbeat == 30
    for queue in conf.task_queues:
        assert queue.durable and queue.queue_arguments == {"x-queue-type": "quorum"}
        # Native delayed delivery (countdowns on quorum queues) needs topic exchanges.
        assert queue.exchange.type == "topic"
    redis_conf = create_celery_app(settings).conf
    assert "confirm_publish" not in redis_conf.broker_transport_options
    assert {q.exchange.type for q in redis_conf.task_queues} == {"direct"}


def test_jobs_run_end_to_end_through_rabbitmq(web, amqp_celery, resources, broker_url):
    with thread_worker(amqp_celery):
        username = f"rabbit_{uuid.uuid4().hex[:10]}"
        _user_id, headers = register_and_login(web, username)
        login = web.post(
            "/api/v1/auth/login", json={"username": username, "password": "correct horse battery"}
        ).get_json()
        done = wait_for_state(web, headers, login["task_id"])
        assert done["state"] == "SUCCESS", (done["error"], done["message"])
        # Both logins queued a random batch: the balance is settled once both are done.
        for job in web.get("/api/v1/tasks", headers=headers).get_json()["items"]:
            assert wait_for_state(web, headers, job["task_id"])["state"] == "SUCCESS"
        balance = web.get("/api/v1/wallet", headers=headers).get_json()["balance"]

        credited = wait_for_state(web, headers, _credit(web, headers, 500))
        assert credited["state"] == "SUCCESS"
        assert credited["result"]["balance"] == balance + 500

        debit = {"type": "debit", "amount": balance + 501}
        refused = wait_for_state(web, headers, _post(web, headers, "/transactions", debit))
        assert refused["state"] == "FAILURE"
        assert refused["error"]["code"] == "insufficient_funds"

        batch = wait_for_state(web, headers, _post(web, headers, "/transactions/random", {}))
        assert batch["state"] == "SUCCESS"

        ai = {"kind": "text", "prompt": "Explain quorum queues", "options": {}}
        text = wait_for_state(web, headers, _post(web, headers, "/ai/generate", ai))
        assert text["state"] == "SUCCESS" and text["result"]["provider"] == "offline"
    assert queue_counts(broker_url, "ledger")[0] == 0


def test_cancelled_before_start_never_runs(web, amqp_celery, resources, user, idle):
    _user_id, headers = user
    cancelled = _credit(web, headers, 70)
    response = web.delete(f"/api/v1/tasks/{cancelled}", headers=headers)
    assert response.status_code == 202 and response.get_json()["state"] == "REVOKED"
    with thread_worker(amqp_celery, queues="ledger"):
        # Queued after the cancelled one: once it is done, the first was delivered too.
        later = wait_for_state(web, headers, _credit(web, headers, 5))
    assert later["state"] == "SUCCESS"
    assert wait_for_state(web, headers, cancelled)["state"] == "REVOKED"
    assert _row(resources, cancelled).attempts == 0
    assert _entries(resources, cancelled) == 0


def test_admission_reads_the_rabbitmq_queue_depth(amqp_settings, web, user, broker_url, idle):
    _user_id, headers = user
    for amount in range(1, 5):
        _credit(web, headers, amount)
    assert queue_counts(broker_url, "ledger")[0] == 4
    with app_with(amqp_settings, queue_max_depth=3) as strict:
        client = strict.test_client()
        _, strict_headers = register_and_login(client, f"rabbit_{uuid.uuid4().hex[:10]}")
        try:
            body = {"type": "credit", "amount": 1}
            refused = client.post("/api/v1/transactions", json=body, headers=strict_headers)
            assert refused.status_code == 503, refused.get_json()
            assert refused.get_json()["error"]["code"] == "overloaded"
            assert refused.get_json()["error"]["details"] == {"queue": "ledger"}
            purge(broker_url, "ledger")

            def accepted() -> bool:
                answer = client.post("/api/v1/transactions", json=body, headers=strict_headers)
                return answer.status_code == 202

            # Accepted again once the per-process depth cache (1 s) sees the empty queue.
            wait_until(accepted, 5, "admission to see the purged queue")
        finally:
            strict.extensions["conveyor.queue_depths"].close()


def test_metrics_queue_depth_is_rabbitmqs_count(web, user, broker_url, idle):
    _user_id, headers = user
    for amount in (1, 2):
        _credit(web, headers, amount)
    _post(web, headers, "/ai/generate", {"kind": "text", "prompt": "depth", "options": {}})
    text = web.get("/metrics", headers=scrape_headers()).get_data(as_text=True)
    assert _gauge(text, "conveyor_broker_up") == 1
    for queue in QUEUES:
        expected = queue_counts(broker_url, queue)[0]
        assert _gauge(text, "conveyor_queue_depth", queue=queue) == expected
    assert _gauge(text, "conveyor_queue_depth", queue="ledger") == 2
    assert _gauge(text, "conveyor_queue_depth", queue="ai") == 1


def test_a_dead_broker_is_a_503_naming_it_not_a_500(settings, redis_client):
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    with app_with(settings, celery_broker_url=down) as app:
        client = app.test_client()
        try:
            _, headers = register_and_login(client, f"rabbit_{uuid.uuid4().hex[:10]}")
            body = {"type": "credit", "amount": 1}
            response = client.post("/api/v1/transactions", json=body, headers=headers)
            assert response.status_code == 503, response.get_json()
            assert response.get_json()["error"]["details"] == {"dependency": "broker"}
            text = client.get("/metrics", headers=scrape_headers()).get_data(as_text=True)
            assert _gauge(text, "conveyor_broker_up") == 0
        finally:
            app.extensions["conveyor.queue_depths"].close()


def test_redispatch_sweep_on_rabbitmq(
    amqp_settings, amqp_celery, resources, redis_client, user, broker_url, idle
):
    user_id, _headers = user
    publish = republish(amqp_celery)

    def job(amount: int) -> str:
        with resources.autocommit_engine.connect() as conn:
            return jobs.create_job(
                conn,
                owner_id=user_id,
                kind="ledger.transaction",
                params={"type": "credit", "amount": amount},
                ttl_seconds=3600,
            ).status["task_id"]

    def sweep() -> list[str]:
        in_flight = broker_in_flight(amqp_settings, redis_client)
        try:
            return maintenance.redispatch_lost(
                resources.sessions, in_flight, publish, older_than_seconds=3600
            )
        finally:
            in_flight.close()

    lost, queued = job(250), job(40)
    publish("ledger.transaction", lost, "ledger")
    purge(broker_url, "ledger")  # its message is gone (a purged or deleted queue)
    publish("ledger.transaction", queued, "ledger")
    with resources.sessions.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id.in_([uuid.UUID(lost), uuid.UUID(queued)]))
            .values(updated_at=utcnow() - timedelta(hours=2))
        )
    # A ready message in the queue: the sweep cannot tell whose, so it waits.
    first = sweep()
    assert lost not in first and queued not in first
    with thread_worker(amqp_celery, queues="ledger"):
        wait_until(lambda: _row(resources, queued).state == "SUCCESS", 30, "the queued job")
        # The backlog drained and the old job is still PENDING: its message was lost.
        assert _row(resources, lost).state == "PENDING"
        assert sweep() == [lost]
        assert sweep() == []  # a second beat firing at once publishes nothing more
        wait_until(lambda: _row(resources, lost).state == "SUCCESS", 30, "the re-dispatched job")
    for job_id in (lost, queued):
        assert _row(resources, job_id).attempts == 1
        assert _entries(resources, job_id) == 1


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def worker_env(broker_url, upstream) -> dict[str, str]:
    """A worker subprocess's environment: this run's database and Redis, the vhost, the fake AI."""
    upstream.reset()
    return {
        **process_environment(),
        "CELERY_BROKER_URL": broker_url,
        "AI_PROVIDER": "openai",
        "AI_BASE_URL": upstream.base_url,
        "AI_API_KEY": API_KEY,
        "AI_TIMEOUT_SECONDS": "20",
        "AI_MAX_RETRIES": "2",
        "AI_RETRY_BACKOFF_SECONDS": "0.2",
        # No AI cache: its single-flight lock would hold a redelivered attempt
        # until the killed holder's lock expires (AI_TIMEOUT_SECONDS + 15 s).
        "CACHE_ENABLED": "false",
        "LOG_FORMAT": "console",
        "LOG_LEVEL": "INFO",
    }


def test_countdown_retry_is_delayed_by_rabbitmq(
    web, user, upstream, worker_env, broker_url, tmp_path, idle
):
    _user_id, headers = user
    upstream.push(Scripted(status=500))  # then the default, a valid answer
    with worker_process(worker_env, tmp_path / "worker.log", queue="ai", broker_url=broker_url):
        ai = {"kind": "text", "prompt": "retry me", "options": {}}
        done = wait_for_state(web, headers, _post(web, headers, "/ai/generate", ai))
    assert done["state"] == "SUCCESS", done
    first, second = upstream.requests
    # The retry's countdown (under 1 s from the backoff, raised to RabbitMQ's
    # whole second) was spent in the broker's delay queues, not skipped.
    assert second.received_at - first.received_at >= 0.9


def test_sigkilled_worker_message_is_requeued_and_its_job_completes_once(
    web, user, resources, upstream, worker_env, broker_url, tmp_path, idle
):
    _user_id, headers = user
    upstream.push(Scripted(delay=15))  # the first attempt hangs inside the upstream call
    log_path = tmp_path / "worker.log"
    ai = {"kind": "text", "prompt": "survive a kill", "options": {}}
    with worker_process(worker_env, log_path, queue="ai", broker_url=broker_url) as doomed:
        task_id = _post(web, headers, "/ai/generate", ai)
        wait_until(lambda: upstream.calls == 1, 30, "the first attempt to call upstream")
        kill_group(doomed)
    # RabbitMQ saw the connection close and requeued the unacked message.
    wait_until(lambda: queue_counts(broker_url, "ai")[0] == 1, 30, "the message to be requeued")
    with worker_process(worker_env, log_path, queue="ai", broker_url=broker_url):
        done = wait_for_state(web, headers, task_id)
    assert done["state"] == "SUCCESS", done
    assert upstream.calls == 2
    row = _row(resources, task_id)
    assert row.attempts == 2 and row.state == "SUCCESS"
