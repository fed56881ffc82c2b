"""The poll's HMGET on connections of its own (tuning/redis_reads.py), against the real Redis."""

from __future__ import annotations

import socket
import threading
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.environment import REDIS_PREFIX, REDIS_URL
from tests.support.processes import free_port
from tuning.redis_reads import LeanReads


@pytest.fixture
def hash_key(redis_client):
    key = f"{REDIS_PREFIX}lean:{uuid.uuid4().hex}"
    redis_client.hset(key, mapping={"owner": "7", "state": "SUCCESS", "doc": '{"a":"é"}'})
    yield key
    redis_client.delete(key)


def _client(**extra) -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=5, **extra)


def test_hmget_answers_what_the_client_answers(hash_key, redis_client):
    reads = LeanReads(_client())
    fields = ("owner", "state", "doc", "missing")
    assert reads.hmget(hash_key, *fields) == redis_client.hmget(hash_key, *fields)
    assert reads.hmget(hash_key, list(fields)) == ["7", "SUCCESS", '{"a":"é"}', None]
    assert reads.hmget(f"{hash_key}:absent", "owner") == [None]
    # Anything else goes to the real client.
    assert reads.hget(hash_key, "owner") == "7"
    reads.close()


def test_a_killed_connection_costs_no_failed_read(hash_key, redis_client):
    name = f"lean-{uuid.uuid4().hex[:8]}"
    reads = LeanReads(_client(client_name=name))
    assert reads.hmget(hash_key, "owner") == ["7"]
    killed = [c for c in redis_client.client_list() if c.get("name") == name]
    assert killed, "the lean connection did not name itself"
    for connection in killed:
        redis_client.client_kill_filter(_id=connection["id"])
    # The idle connection is dead: the read still answers, then goes on working.
    assert reads.hmget(hash_key, "owner", "state") == ["7", "SUCCESS"]
    assert reads.hmget(hash_key, "state") == ["SUCCESS"]
    reads.close()


def test_redis_down_raises_a_redis_error_for_the_poll_to_handle():
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    reads = LeanReads(down)
    with pytest.raises(redis.RedisError):
        reads.hmget("any", "owner")


def test_a_dead_redis_is_dialled_once_by_its_own_connection_then_as_the_client_retries():
    """The own connection tries once; the client's retry policy alone decides the rest."""
    dialled: list[None] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, then hangs up

        def hang_up() -> None:
            while True:
                try:
                    peer, _ = listener.accept()
                except OSError:  # the listener closed: the test is over
                    return
                dialled.append(None)
                peer.close()

        threading.Thread(target=hang_up, daemon=True).start()
        port = listener.getsockname()[1]
        down = redis.Redis(port=port, socket_timeout=2, retry=Retry(NoBackoff(), 2))
        with pytest.raises(redis.ConnectionError):
            down.hmget("any", "owner")
        by_the_client = len(dialled)
        dialled.clear()
        with pytest.raises(redis.ConnectionError):
            LeanReads(down).hmget("any", "owner")
        assert by_the_client >= 3  # the client's first try and its two retries
        assert len(dialled) == 1 + by_the_client


def test_concurrent_readers_beyond_its_connections_all_get_their_own_answer(redis_client):
    keys = [f"{REDIS_PREFIX}lean:{uuid.uuid4().hex}" for _ in range(8)]
    for index, key in enumerate(keys):
        redis_client.hset(key, "owner", str(index))
    reads = LeanReads(_client(), max_connections=2)
    wrong: list[str] = []

    def read(index: int) -> None:
        for _ in range(200):
            if reads.hmget(keys[index], "owner") != [str(index)]:
                wrong.append(keys[index])

    most = [0]

    def watch(stop: threading.Event) -> None:
        while not stop.is_set():
            most[0] = max(most[0], reads.connections())

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,))
    watcher.start()
    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(keys))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join()
    assert wrong == []
    # Never more than its own two; the other readers went through the client's pool.
    assert 1 <= most[0] <= 2
    reads.close()
    assert reads.connections() == 0
    redis_client.delete(*keys)
