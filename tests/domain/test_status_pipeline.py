"""Status writes on a pipeline: one trip (no SCRIPT EXISTS), and a Redis that lost the scripts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.redis_store import Keys
from shared.jobs.status import StatusStore
from tests.support.redis_server import PrivateRedis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    # Its own server: the test flushes the script cache, which no shared server should lose.
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _document(state: str = "SUCCESS") -> dict:
    return {
        "task_id": str(uuid.uuid4()),
        "kind": "ledger.transaction",
        "state": state,
        "progress": 100,
        "message": "done",
        "created_at": "2026-12-01T00:00:00+00:00",
        "updated_at": "2026-12-01T00:00:01+00:00",
        "expires_at": "2026-12-02T00:00:00+00:00",
        "result": {"balance": 1},
        "error": None,
    }


def test_scripts_on_a_pipeline_go_in_one_trip_and_survive_a_lost_script_cache(private_redis):
    client = private_redis.client()
    store = StatusStore(client, Keys(f"t{uuid.uuid4().hex[:6]}:"))
    commands_before = _script_exists_calls(client)
    first, second = _document(), _document()
    pipe = store.pipeline()
    store.write(7, first, pipe=pipe)
    client.lpush("side-effect", "once")  # another command in the same trip, not on the pipeline
    pipe.lpush("side-effect", "once")
    store.notify(7, {"task_id": first["task_id"], "type": "job.succeeded"}, pipe=pipe)
    # Redis forgets every script (as after a restart): the script calls fail
    # NOSCRIPT, are loaded and run again; the plain command runs once.
    client.script_flush()
    pipe.execute()
    assert store.read(first["task_id"], 7)["state"] == "SUCCESS"
    assert client.lrange("side-effect", 0, -1) == ["once", "once"]
    events = client.xrange(f"{store._streams.user(7)}")
    assert [e[1]["type"] for e in events] == ["state", "notification"]
    # Scripts loaded again: the next pipeline runs them with no SCRIPT EXISTS trip.
    pipe = store.pipeline()
    store.write(7, second, pipe=pipe)
    pipe.execute()
    assert store.read(second["task_id"], 7)["state"] == "SUCCESS"
    assert _script_exists_calls(client) == commands_before
    client.close()


def _script_exists_calls(client) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))


def test_writes_on_anothers_pipeline_are_settled_after_its_owner_executes_it(private_redis):
    """A job's status riding the AI cache lookup's trip (JobRun.ride): NOSCRIPT still recovers."""
    from shared.jobs.status_scripts import StatusPipeline

    client = private_redis.client()
    store = StatusStore(client, Keys(f"t{uuid.uuid4().hex[:6]}:"))
    client.set("looked-up", "value")
    document = _document("PROGRESS")
    owners = client.pipeline(transaction=False)
    owners.get("looked-up")  # the owner's own command comes first
    riding = StatusPipeline(owners)
    store.write(7, document, pipe=riding)
    client.script_flush()
    answers = owners.execute(raise_on_error=False)  # the owner executes its pipeline
    assert answers[0] == "value" and isinstance(answers[1], Exception)
    settled = riding.settle(answers)
    assert not isinstance(settled[1], Exception)
    assert store.read(document["task_id"], 7)["state"] == "PROGRESS"
    client.close()
