"""The lean Redis publisher writes the message Celery would, and real workers run it."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import uuid

import pytest

from infra.broker.publish import CeleryPublisher, producer_app
from shared.jobs.kinds import QUEUES
from tests.support.accounts import register_and_login
from tests.support.environment import tuning_on
from tests.support.polling import wait_for_state
from tests.support.workers import running_worker
from tuning.celery_fast_publish import RedisListPublisher

# Fields that differ between any two publishes (who, when, which delivery).
VOLATILE_HEADERS = {"origin", "sent_at"}
VOLATILE_PROPERTIES = {"reply_to", "delivery_tag"}


def _pop(redis_client, key: str) -> dict:
    raw = redis_client.lpop(key)
    assert raw is not None, f"nothing on {key}"
    return json.loads(raw)


def _comparable(message: dict) -> dict:
    body = json.loads(base64.b64decode(message["body"]))
    headers = {k: v for k, v in message["headers"].items() if k not in VOLATILE_HEADERS}
    properties = {k: v for k, v in message["properties"].items() if k not in VOLATILE_PROPERTIES}
    rest = {k: v for k, v in message.items() if k not in ("body", "headers", "properties")}
    return {"body": body, "headers": headers, "properties": properties, **rest}


def test_lean_message_matches_celerys_own(app, redis_client, settings):
    # The API's producer app: like the web process, it never imports task code.
    # (A process that has, e.g. a worker, would stamp each task's own time
    # limits into the message; workers apply those same limits either way.)
    producer = producer_app(settings, QUEUES)
    job_id = str(uuid.uuid4())
    queue = f"compare-{uuid.uuid4().hex[:8]}"
    key = settings.redis_key_prefix + queue
    extra = {"request_id": "req-1", "user_id": 42}
    # From a fresh thread: send_task takes parent/root ids from any task context
    # an earlier test left on this thread, which the web process never has.
    publisher = threading.Thread(
        target=CeleryPublisher(producer).publish,
        args=("ledger.transaction", job_id, queue, extra),
    )
    publisher.start()
    publisher.join()
    celerys = _pop(redis_client, key)
    lean = RedisListPublisher(redis_client, settings.redis_key_prefix)
    lean.publish("ledger.transaction", job_id, queue, extra)
    ours = _pop(redis_client, key)
    ours_c, celerys_c = _comparable(ours), _comparable(celerys)
    differing = {
        key: (ours_c["headers"].get(key), celerys_c["headers"].get(key))
        for key in ours_c["headers"].keys() | celerys_c["headers"].keys()
        if ours_c["headers"].get(key) != celerys_c["headers"].get(key)
    }
    assert differing == {}
    assert ours_c == celerys_c
    assert isinstance(ours["headers"]["sent_at"], float)
    for leftover in redis_client.scan_iter(match=f"{settings.redis_key_prefix}*{queue}*"):
        redis_client.delete(leftover)
    producer.close()


def test_the_api_uses_the_lean_publisher_with_a_redis_broker(app):
    # With CONVEYOR_TUNING=off (or -fast_publish) the API publishes through send_task.
    expected = RedisListPublisher if tuning_on("fast_publish") else CeleryPublisher
    # Fair-queue jobs pass the fair lines first (shared/jobs/fair.py), then this publisher.
    assert isinstance(app.extensions["conveyor.publisher"].inner, expected)


@pytest.mark.integration
def test_jobs_complete_with_either_publisher(settings, celery_app):
    from api import create_app

    for fast in (True, False):
        # Whatever CONVEYOR_TUNING says, both publishers are tried here.
        both_ways = dataclasses.replace(settings, tuning="on", broker_fast_publish=fast)
        flask_app = create_app(both_ways)
        expected = RedisListPublisher if fast else CeleryPublisher
        assert isinstance(flask_app.extensions["conveyor.publisher"].inner, expected)
        client = flask_app.test_client()
        _, headers = register_and_login(client, f"pub_{fast}_{uuid.uuid4().hex[:6]}")
        response = client.post(
            "/api/v1/transactions",
            json={"type": "credit", "amount": 321},
            headers={**headers, "X-Request-ID": f"pub-{fast}"},
        )
        assert response.status_code == 202
        with running_worker(celery_app):
            done = wait_for_state(client, headers, response.get_json()["task_id"])
        assert done["state"] == "SUCCESS" and done["result"]["balance"] == 321
        flask_app.extensions["conveyor"].close()


def test_job_records_use_an_autocommit_pool_and_still_one_statement(resources, client, make_user):
    with resources.autocommit_engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is True
    with resources.engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is False
    _, headers = make_user()
    for _ in range(2):  # the first may PREPARE the batch INSERT on its connection first
        response = client.post(
            "/api/v1/transactions", json={"type": "credit", "amount": 1}, headers=headers
        )
        assert response.status_code == 202
    # One statement for the job record (X-Query-Count is on outside production).
    assert response.headers["X-Query-Count"] == "1"
