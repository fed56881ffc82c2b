"""kombu Redis channels reuse one client per connection pool (tuning/kombu_redis.py)."""

from __future__ import annotations

import logging
import uuid

import pytest
from kombu import Connection, Producer, Queue

from tests.support.environment import tuning_on
from tuning import kombu_redis
from tuning.kombu_redis import ack_many

pytestmark = pytest.mark.integration


@pytest.fixture
def channel(settings, redis_client):
    kombu_redis.install()  # the adjustment itself is under test, whatever CONVEYOR_TUNING says
    prefix = f"{settings.redis_key_prefix}k{uuid.uuid4().hex[:8]}:"
    with Connection(settings.redis_url, transport_options={"global_keyprefix": prefix}) as conn:
        channel = conn.channel()
        yield channel, prefix
        channel.close()
    for key in redis_client.scan_iter(match=f"{prefix}*"):
        redis_client.delete(key)
    if not tuning_on("kombu_client_reuse"):
        kombu_redis.uninstall()  # the rest of the run stays on stock kombu


def test_one_client_serves_every_operation_of_a_channel_until_its_pool_changes(channel):
    chan, _prefix = channel
    with chan.conn_or_acquire() as first, chan.conn_or_acquire() as second:
        assert first is second
        assert first.ping()
    # A client passed in is used as given.
    with chan.conn_or_acquire(first) as given:
        assert given is first
    # A channel that drops its pool (as on close and reconnect) gets a new client.
    chan._pool = None
    with chan.conn_or_acquire() as third:
        assert third is not first and third.ping()


def test_ack_many_removes_every_message_from_unacked_in_one_go(channel, redis_client):
    chan, prefix = channel
    queue = Queue(f"acks-{uuid.uuid4().hex[:6]}", channel=chan)
    queue.declare()
    producer = Producer(chan)
    for n in range(5):
        producer.publish(f"m{n}", exchange="", routing_key=queue.name)
    chan.basic_qos(prefetch_count=10)
    messages = [queue.get(no_ack=False) for _ in range(5)]
    assert all(m is not None for m in messages)
    assert redis_client.hlen(f"{prefix}unacked") == 5
    ack_many(messages, logging.getLogger(__name__), (ConnectionError,))
    assert redis_client.hlen(f"{prefix}unacked") == 0
    assert redis_client.zcard(f"{prefix}unacked_index") == 0
    assert all(m.acknowledged for m in messages)
