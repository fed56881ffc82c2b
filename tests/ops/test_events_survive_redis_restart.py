"""An open event stream outlives a Redis SIGKILL and restart, and resumes from its last id.

The `events` process (the Procfile's line) and the status writes both use a
redis-server of this test's own (AOF, fsync always). The stream is open
across the outage; the writes after the restart reach it exactly once, in
order, and it closes after the terminal event.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from pathlib import Path

import redis

from shared.jobs.events import EventLog, StreamKeys
from tests.support.accounts import PASSWORD
from tests.support.environment import process_environment
from tests.support.events import Received, read_events, running_events
from tests.support.redis_server import PrivateRedis, wait_until


def test_a_stream_resumes_across_a_redis_restart(settings, tmp_path: Path):
    from api import create_app
    from shared.resources import Resources

    server = PrivateRedis(tmp_path)
    server.start()
    prefix = f"{settings.redis_key_prefix}restart-{uuid.uuid4().hex[:8]}:"
    private = dataclasses.replace(settings, redis_url=server.url, redis_key_prefix=prefix)
    api = create_app(private)
    res = Resources.build(private)
    env = {**process_environment(), "REDIS_URL": server.url, "CONVEYOR_REDIS_PREFIX": prefix}
    try:
        client = api.test_client()
        name = f"restart_{uuid.uuid4().hex[:10]}"
        created = client.post(
            "/api/v1/auth/register", json={"username": name, "password": PASSWORD}
        )
        owner_id = created.get_json()["id"]
        login = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.get_json()['access_token']}"}
        # No worker consumes this prefix: the test writes the job's status the
        # way a worker does, through the one writer (StatusStore).
        accepted = client.post("/api/v1/transactions/random", json={"count": 2}, headers=headers)
        task_id = accepted.get_json()["task_id"]
        pending = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()

        with running_events(env, tmp_path / "events.log", EVENTS_KEEPALIVE_SECONDS="0.5") as events:
            got: list[Received] = []
            answered = threading.Event()
            reader = threading.Thread(
                target=lambda: got.append(
                    read_events(
                        events.connection(timeout=60),
                        f"/api/v1/tasks/{task_id}/events",
                        headers,
                        bound=60,
                        answered=answered,
                    )
                )
            )
            reader.start()
            # The stream must be open (its 200 sent) before Redis goes: a request
            # that arrives while Redis is down is refused with a 503, by design.
            assert answered.wait(30), "the stream was not answered"
            started = {**pending, "state": "STARTED", "message": "started"}
            res.statuses.write(owner_id, started)
            res.statuses.progress(owner_id, started, 50, "posted 1 of 2")
            wait_until(
                lambda: "PROGRESS" in _log_states(res, private, task_id), 10, "progress written"
            )

            server.kill()
            server.start()  # same port, same AOF directory
            done = {**started, "state": "SUCCESS", "progress": 100, "message": "done"}
            wait_until(lambda: _try(lambda: res.statuses.progress(owner_id, started, 75, "2")),
                       30, "Redis back for the writer")  # fmt: skip
            res.statuses.write(owner_id, done)
            reader.join(timeout=60)
            assert not reader.is_alive(), "the stream did not end after SUCCESS"
        (received,) = got
        assert received.status == 200 and received.ended
        assert received.states == ["PENDING", "STARTED", "PROGRESS", "PROGRESS", "SUCCESS"]
        ids = received.ids
        assert all(ids) and len(set(ids)) == len(ids)  # each event once
        assert [data["progress"] for _id, kind, data in received.events if kind == "progress"] == [
            50,
            75,
        ]
        # The log the stream read is the log Redis kept through the restart (AOF).
        assert ids == _log_ids(res, private, task_id)
    finally:
        res.close()
        api.extensions["conveyor"].close()
        server.stop()


def _log(res, settings, task_id: str):
    return EventLog(res.redis, StreamKeys(settings.redis_key_prefix)).job_events(task_id)


def _log_states(res, settings, task_id: str) -> list[str]:
    return [json.loads(event.data)["state"] for event in _log(res, settings, task_id)]


def _log_ids(res, settings, task_id: str) -> list[str]:
    return [event.id for event in _log(res, settings, task_id)]


def _try(action) -> bool:
    try:
        action()
        return True
    except redis.RedisError:
        return False
