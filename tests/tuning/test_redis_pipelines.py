"""One pipelined round trip on connections of its own (tuning/redis_pipelines.py), real Redis."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import redis

from tests.support.environment import REDIS_PREFIX, REDIS_URL
from tests.support.processes import free_port
from tuning.redis_pipelines import LeanPipelines

# A script Redis has not seen (unique per run): EVALSHA answers NOSCRIPT for it.
UNKNOWN_SHA = uuid.uuid4().hex + uuid.uuid4().hex[:8]
ECHO = "return {KEYS[1], ARGV[1]}"


def _client(**extra) -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=5, **extra)


@pytest.fixture
def key(redis_client):
    name = f"{REDIS_PREFIX}lean-pipe:{uuid.uuid4().hex}"
    yield name
    redis_client.delete(name)


def test_answers_in_order_with_errors_in_place(key, redis_client):
    sha = redis_client.script_load(ECHO)
    pipelines = LeanPipelines(_client())
    pipe = pipelines.pipeline()
    pipe.lpush(key, "m1", "m2")
    pipe.evalsha(UNKNOWN_SHA, 1, key, "x")
    pipe.execute_command("INCR", key)  # WRONGTYPE: the key holds a list
    pipe.evalsha(sha, 1, key, "é")
    answers = pipe.execute(raise_on_error=False)
    assert answers[0] == 2
    assert isinstance(answers[1], redis.exceptions.NoScriptError)
    assert isinstance(answers[2], redis.ResponseError) and "WRONGTYPE" in str(answers[2])
    assert answers[3] == [key.encode(), "é".encode()]
    # LPUSH k m1 m2 leaves m1 nearest the tail (where BRPOP takes).
    assert redis_client.rpop(key) == "m1"
    # raise_on_error: the first error answer is raised, as redis-py's pipeline does.
    pipe.evalsha(UNKNOWN_SHA, 1, key, "x")
    with pytest.raises(redis.exceptions.NoScriptError):
        pipe.execute()
    # The connection read every answer, so it went back and is reused.
    assert pipelines.connections() == 1
    pipelines.close()
    assert pipelines.connections() == 0


def test_a_killed_connection_costs_no_failed_pipeline(key, redis_client):
    name = f"lean-pipe-{uuid.uuid4().hex[:8]}"
    pipelines = LeanPipelines(_client(client_name=name))
    assert pipelines.pipeline().lpush(key, "a").execute() == [1]
    killed = [c for c in redis_client.client_list() if c.get("name") == name]
    assert killed, "the lean connection did not name itself"
    for connection in killed:
        redis_client.client_kill_filter(_id=connection["id"])
    # The idle connection is dead: the pipeline runs through the client instead, once.
    assert pipelines.pipeline().lpush(key, "b").execute() == [2]
    assert pipelines.pipeline().lpush(key, "c").execute() == [3]
    assert redis_client.lrange(key, 0, -1) == ["c", "b", "a"]
    pipelines.close()


def test_redis_down_raises_a_redis_error_for_the_caller_to_handle():
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    pipelines = LeanPipelines(down)
    with pytest.raises(redis.RedisError):
        pipelines.pipeline().lpush("any", "m").execute()
    assert pipelines.connections() == 0


def test_an_argument_redis_cannot_take_is_a_data_error(key):
    pipelines = LeanPipelines(_client())
    with pytest.raises(redis.DataError):
        pipelines.pipeline().lpush(key, object()).execute()
    pipelines.close()


def test_the_publisher_sends_a_batch_on_its_own_connection(redis_client):
    from infra.broker.messages import JobMessage
    from tuning.celery_fast_publish import RedisListPublisher

    prefix = f"{REDIS_PREFIX}lean-pub-{uuid.uuid4().hex[:8]}:"
    client = _client()
    publisher = RedisListPublisher(client, prefix, REDIS_URL)
    messages = [JobMessage("ledger.transaction", str(uuid.uuid4()), "ledger", {}) for _ in range(3)]
    errors, extra = publisher.publish_many(messages, lambda pipe: pipe.execute_command("PING"))
    assert errors == [None, None, None] and extra == [b"PONG"]
    queued = redis_client.lrange(f"{prefix}ledger", 0, -1)
    assert [json.loads(m)["headers"]["id"] for m in reversed(queued)] == [
        m.job_id for m in messages
    ]
    # One connection of its own; the client's pool was never asked.
    assert publisher._pipelines.connections() == 1
    assert client.connection_pool._created_connections == 0
    publisher.close()
    redis_client.delete(f"{prefix}ledger")


def test_a_forked_child_opens_its_own_connections(key):
    pipelines = LeanPipelines(_client())
    assert pipelines.pipeline().lpush(key, "parent").execute() == [1]
    assert pipelines.connections() == 1
    pid = os.fork()
    if pid == 0:  # the child: the parent's socket is not its to use
        ok = pipelines.connections() == 0
        ok = ok and pipelines.pipeline().lpush(key, "child").execute() == [2]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection is untouched by the child's.
    assert pipelines.pipeline().lpush(key, "parent again").execute() == [3]
    pipelines.close()
