"""The guard of kombu's detached Redis channels (tuning/kombu_detached_guard.py), on a real channel.

The second test is the tripwire in the other direction: it fails once kombu
itself stops raising AttributeError there, and the guard can go.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from kombu import Connection

from tests.support.environment import tuning_on
from tuning import kombu_detached_guard


@pytest.fixture
def detached_channel(settings):
    prefix = f"{settings.redis_key_prefix}g{uuid.uuid4().hex[:8]}:"
    conn = Connection(settings.redis_url, transport_options={"global_keyprefix": prefix})
    channel = conn.channel()
    transport = channel.connection
    client = transport.client
    transport.client = None  # what Connection.collect() leaves behind (the module's step 2)
    yield channel
    transport.client = client
    conn.release()


def test_a_detached_channel_raises_what_the_worker_handles(detached_channel):
    kombu_detached_guard.install()
    try:
        with pytest.raises(redis.ConnectionError, match="already closed"):
            detached_channel._connparams()
    finally:
        if not tuning_on("kombu_detached_guard"):
            kombu_detached_guard.uninstall()


def test_kombu_itself_still_raises_attribute_error_there(detached_channel):
    kombu_detached_guard.uninstall()
    try:
        with pytest.raises(AttributeError, match="hostname"):
            detached_channel._connparams()
    finally:
        if tuning_on("kombu_detached_guard"):
            kombu_detached_guard.install()


def test_installing_twice_wraps_once():
    kombu_detached_guard.install()
    kombu_detached_guard.install()
    from kombu.transport import redis as kombu_redis

    inner = kombu_redis.Channel._connparams._conveyor_original
    assert not hasattr(inner, "_conveyor_original")
    if not tuning_on("kombu_detached_guard"):
        kombu_detached_guard.uninstall()
