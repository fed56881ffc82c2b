"""The read cache against real Redis: counters shared by processes, single-flight, races."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

from infra.settings import ROOT
from shared.caches.store import Cache
from tests.support.environment import process_environment

_CHILD = """
import sys
from shared.caches.store import Cache
from infra.redis_store import create_redis
from infra.settings import Settings

settings = Settings.from_env()
namespace, scope = sys.argv[1], sys.argv[2]
cache = Cache(create_redis(settings), settings.redis_key_prefix, {namespace: 60})
_, hit = cache.get_or_compute(namespace, scope, ("shared",), lambda: {"from": "child"})
_, miss = cache.get_or_compute(namespace, scope, ("child-only",), lambda: {"from": "child"})
print(hit, miss)
"""


def _cache(resources, namespace: str, **kwargs) -> Cache:
    return Cache(resources.redis, resources.settings.redis_key_prefix, {namespace: 60}, **kwargs)


def test_hits_and_misses_add_up_across_processes(resources):
    namespace, scope = f"probe{uuid.uuid4().hex[:8]}", "scope:1"
    cache = _cache(resources, namespace)
    _, first = cache.get_or_compute(namespace, scope, ("shared",), lambda: {"from": "parent"})
    _, second = cache.get_or_compute(namespace, scope, ("shared",), lambda: {"from": "parent"})
    assert (first, second) == (False, True)

    child = subprocess.run(
        [sys.executable, "-c", _CHILD, namespace, scope],
        cwd=ROOT,
        env=process_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert child.stdout.split() == ["True", "False"], child.stderr

    stats = cache.stats()[namespace]
    assert stats == {"hits": 2, "misses": 2, "hit_rate": 0.5, "keys": 2}


def test_twenty_concurrent_misses_compute_once(resources):
    namespace = f"herd{uuid.uuid4().hex[:8]}"
    cache = _cache(resources, namespace)
    calls = []
    start = threading.Barrier(20)
    results = []

    def compute():
        calls.append(1)
        time.sleep(0.3)  # a slow query: everyone else arrives while it runs
        return {"balance": 42}

    def read():
        start.wait()
        results.append(cache.get_or_compute(namespace, "user:1", (), compute))

    threads = [threading.Thread(target=read) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert len(results) == 20
    assert all(value == {"balance": 42} for value, _ in results)
    assert sorted(from_cache for _, from_cache in results) == [False] + [True] * 19
    assert cache.stats()[namespace]["misses"] == 1


def test_value_read_before_an_invalidation_is_never_served(resources):
    """A reader that loaded the old balance just before a posting committed."""
    namespace = f"race{uuid.uuid4().hex[:8]}"
    cache = _cache(resources, namespace)
    scope = f"user:{uuid.uuid4().hex}"

    def stale_read():
        value = {"balance": 100}  # read from the database before the commit...
        cache.invalidate(scope)  # ...which then commits and invalidates
        return value

    stale, _ = cache.get_or_compute(namespace, scope, (), stale_read)
    assert stale == {"balance": 100}
    fresh, from_cache = cache.get_or_compute(namespace, scope, (), lambda: {"balance": 250})
    assert (fresh, from_cache) == ({"balance": 250}, False)


def test_invalidation_reaches_every_namespace_of_the_scope(resources):
    cache = Cache(resources.redis, resources.settings.redis_key_prefix, {"a": 60, "b": 60})
    scope = f"user:{uuid.uuid4().hex}"
    cache.get_or_compute("a", scope, (), lambda: 1)
    cache.get_or_compute("b", scope, ("p1",), lambda: 1)
    cache.invalidate(scope)
    assert cache.get_or_compute("a", scope, (), lambda: 2) == (2, False)
    assert cache.get_or_compute("b", scope, ("p1",), lambda: 2) == (2, False)


def test_disabled_cache_touches_no_redis(resources, redis_client):
    namespace = f"off{uuid.uuid4().hex[:8]}"
    cache = _cache(resources, namespace, enabled=False)
    for expected in (1, 2):
        assert cache.get_or_compute(namespace, "user:1", (), lambda v=expected: v) == (
            expected,
            False,
        )
    prefix = resources.settings.redis_key_prefix
    assert not list(redis_client.scan_iter(match=f"{prefix}cache:{namespace}:*"))
    assert not redis_client.hexists(f"{prefix}cache:stats", f"{namespace}:misses")
