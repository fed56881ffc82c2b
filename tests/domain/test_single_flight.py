"""SingleFlight's round trips (shared/locks.py): lock and read in one, store and release in one."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
import redis

from shared.locks import SingleFlight
from tests.conftest import REDIS_PREFIX, REDIS_URL
from tests.support.redis_counting import CountingConnection as _CountingConnection


@pytest.fixture
def client():
    pool = redis.ConnectionPool.from_url(
        REDIS_URL, connection_class=_CountingConnection, decode_responses=True
    )
    client = redis.Redis(connection_pool=pool)
    yield client
    for key in client.scan_iter(match=f"{REDIS_PREFIX}sf:*"):
        client.delete(key)
    client.close()


def _key() -> str:
    return f"{REDIS_PREFIX}sf:{uuid.uuid4().hex}"


def _flight(client) -> SingleFlight:
    return SingleFlight(client, lock_ttl=5, poll_interval=0.01)


def _run(flight, key, value, store=None):
    return flight.run(
        key,
        load=lambda raw: None if raw is None else json.loads(raw),
        compute=lambda: value,
        store=store or (lambda v, pipe: pipe.set(key, json.dumps(v), ex=60)),
    )


def test_a_miss_takes_two_round_trips_and_leaves_the_value_and_no_lock(client):
    flight = _flight(client)
    _run(flight, _key(), {"warm": True})  # the first release loads the script
    key = _key()
    before = _CountingConnection.sends
    assert _run(flight, key, {"n": 1}) == ({"n": 1}, False)
    assert _CountingConnection.sends - before == 2
    assert json.loads(client.get(key)) == {"n": 1} and 0 < client.ttl(key) <= 60
    assert client.exists(f"{key}:lock") == 0
    # A caller that missed just before it was stored takes it, and gives the lock back.
    assert _run(flight, key, {"n": 2}) == ({"n": 1}, True)
    assert client.exists(f"{key}:lock") == 0


def test_a_release_script_the_server_does_not_know_is_loaded_and_run(client):
    flight = _flight(client)
    # As if Redis had restarted since: its script cache knows no such script.
    flight._release_script.sha = "0" * 40
    key = _key()
    assert _run(flight, key, 7) == (7, False)
    assert client.exists(f"{key}:lock") == 0
    assert client.get(key) == "7"


def test_a_failed_store_still_answers_and_releases(client, caplog):
    flight = _flight(client)
    key = _key()
    client.set(f"{key}:other", "not a hash")

    def store(value, pipe):
        pipe.hset(f"{key}:other", "field", value)  # WRONGTYPE: answered as an error

    with caplog.at_level(logging.WARNING, logger="shared.locks"):
        assert _run(flight, key, 3, store) == (3, False)
    assert "could not store" in caplog.text
    assert client.exists(f"{key}:lock") == 0


def test_a_failed_computation_releases_the_lock(client):
    flight = _flight(client)
    key = _key()

    def boom():
        raise ValueError("upstream said no")

    with pytest.raises(ValueError):
        flight.run(key, load=lambda raw: raw, compute=boom, store=lambda v, pipe: None)
    assert client.exists(f"{key}:lock") == 0


def test_a_held_lock_is_left_alone_and_its_value_awaited(client):
    flight = _flight(client)
    key = _key()
    client.set(f"{key}:lock", "another-worker", px=2000)
    client.set(key, json.dumps("theirs"))
    # The value is there: answered from it without touching their lock.
    assert _run(flight, key, "ours") == ("theirs", True)
    assert client.get(f"{key}:lock") == "another-worker"
