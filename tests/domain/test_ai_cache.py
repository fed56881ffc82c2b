"""AI cache, single-flight, quota and generate() against real Redis under a private prefix."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.ai import quota
from shared.ai.cache import AICache
from shared.ai.errors import AIError
from shared.ai.generation import generate
from shared.ai.providers import OfflineProvider, OpenAIProvider
from shared.ai.request import AIRequest
from tests.fakes import fixtures
from tests.fakes.openai_server import FakeOpenAIServer, Scripted
from tests.support.environment import TEST_ENV
from tests.support.redis_counting import CountingConnection

# Until a conftest provides it, the fixture is made visible to this module here.
openai_server = fixtures.openai_server

TTLS = {"text": 1800, "presentation": 3600, "image": 7200}
DECK = AIRequest("presentation", "Roman aqueducts", {"num_cards": 3})
RESULT = {"title": "Aqueducts", "cards": [{"title": "A", "bullets": ["x"]}] * 3}


@pytest.fixture(params=[False, True], ids=["bytes", "str"])
def ai_redis(request):
    """A client in each response mode, since callers may configure either."""
    url = TEST_ENV["REDIS_URL"]
    client = redis.Redis.from_url(url, decode_responses=request.param)
    yield client
    client.close()


@pytest.fixture
def prefix(ai_redis):
    """A key prefix no one else uses; every key under it is deleted afterwards."""
    value = f"conveyor-test-{uuid.uuid4().hex}:"
    yield value
    keys = list(ai_redis.scan_iter(match=value + "*", count=1000))
    if keys:
        ai_redis.delete(*keys)


@pytest.fixture
def cache(ai_redis, prefix):
    return AICache(ai_redis, prefix, TTLS, lock_ttl=5, poll_interval=0.01)


class Counting:
    """A compute callable that counts its calls (thread-safely) and can be slow."""

    def __init__(self, result: dict = RESULT, delay: float = 0.0, error: AIError | None = None):
        self.result, self.delay, self.error = result, delay, error
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> dict:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.result


def _in_threads(count: int, call):
    """Run `call()` in `count` threads released together; results or exceptions."""
    barrier = threading.Barrier(count)

    def run():
        barrier.wait()
        try:
            return call()
        except Exception as error:
            return error

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: run(), range(count)))


# Keys and hits


def test_miss_then_hit_without_calling_compute(cache):
    compute = Counting()
    assert cache.get_or_compute(DECK, "openai", "gpt-test", compute) == (RESULT, False)
    assert cache.get_or_compute(DECK, "openai", "gpt-test", compute) == (RESULT, True)
    assert compute.calls == 1


def test_key_covers_normalised_request_provider_and_model(cache, prefix):
    same = AIRequest(
        "presentation", "  Roman\n aqueducts ", {"num_cards": 3, "style": "professional"}
    )
    key = cache.key(DECK, "openai", "gpt-test")
    assert key.startswith(prefix + "ai:v1:") and len(key) == len(prefix) + len("ai:v1:") + 64
    assert cache.key(same, "openai", "gpt-test") == key
    assert cache.key(DECK, "openai", "gpt-other") != key
    assert cache.key(DECK, "offline", "gpt-test") != key
    four_cards = AIRequest("presentation", "Roman aqueducts", {"num_cards": 4})
    assert cache.key(four_cards, "openai", "gpt-test") != key


def test_ttl_per_kind_and_ttl_remaining(cache):
    assert cache.ttl_remaining(DECK, "p", "m") is None
    for kind, options in [("text", {}), ("presentation", {}), ("image", {})]:
        request = AIRequest(kind, "lighthouse", options)
        cache.get_or_compute(request, "p", "m", Counting({"any": kind}))
        remaining = cache.ttl_remaining(request, "p", "m")
        assert TTLS[kind] - 5 < remaining <= TTLS[kind]


def test_from_settings_uses_prefix_ttls_and_switch(ai_redis, prefix):
    from infra.settings import Settings

    settings = Settings.from_env({"CONVEYOR_REDIS_PREFIX": prefix, "CACHE_TTL_AI_IMAGE": "42"})
    built = AICache.from_settings(ai_redis, settings)
    assert built.prefix == prefix
    assert built.ttls == {"text": 1800, "presentation": 3600, "image": 42}
    assert built.lock_ttl > settings.ai_timeout_seconds
    off = AICache.from_settings(ai_redis, Settings.from_env({"CACHE_ENABLED": "false"}))
    compute = Counting()
    off.get_or_compute(DECK, "p", "m", compute)
    assert off.get_or_compute(DECK, "p", "m", compute) == (RESULT, False)
    assert compute.calls == 2


def test_compute_errors_propagate_and_are_not_cached(cache):
    failing = Counting(error=AIError("ai_unavailable", "down"))
    with pytest.raises(AIError):
        cache.get_or_compute(DECK, "p", "m", failing)
    assert cache.get_or_compute(DECK, "p", "m", Counting()) == (RESULT, False)


# Single-flight


def test_ten_threads_identical_request_compute_once(cache):
    compute = Counting(delay=0.3)
    outcomes = _in_threads(10, lambda: cache.get_or_compute(DECK, "p", "m", compute))
    assert compute.calls == 1
    assert all(result == RESULT for result, _ in outcomes)
    assert sorted(from_cache for _, from_cache in outcomes) == [False] + [True] * 9


def test_ten_threads_make_one_upstream_call(cache, openai_server):
    openai_server.push(Scripted(delay=0.3, content="Celery routes by queue."))
    request = AIRequest("text", "How does Celery route tasks?")
    with OpenAIProvider(openai_server.base_url, "sk-test", "gpt-test", "img-test", 5) as provider:
        outcomes = _in_threads(10, lambda: generate(request, provider, cache))
    assert openai_server.calls == 1
    assert {o["text"] for o in outcomes} == {"Celery routes by queue."}
    assert sum(not o["from_cache"] for o in outcomes) == 1


def test_upstream_failure_is_shared_with_waiters(cache):
    failing = Counting(delay=0.3, error=AIError("ai_rate_limited", "slow down", retry_after=9))
    outcomes = _in_threads(5, lambda: cache.get_or_compute(DECK, "p", "m", failing))
    assert failing.calls == 1
    assert all(isinstance(o, AIError) and o.code == "ai_rate_limited" for o in outcomes)
    assert all(o.retry_after == 9 and o.retryable for o in outcomes)


def test_quota_failure_is_not_shared_with_other_users(cache):
    first = threading.Event()

    def compute() -> dict:
        # The first caller is over quota; anyone after it is a different user.
        if not first.is_set():
            first.set()
            time.sleep(0.3)
            raise AIError("ai_quota_exceeded", "over quota")
        return RESULT

    outcomes = _in_threads(5, lambda: cache.get_or_compute(DECK, "p", "m", compute))
    errors = [o for o in outcomes if isinstance(o, AIError)]
    assert [e.code for e in errors] == ["ai_quota_exceeded"]
    assert [o[0] for o in outcomes if not isinstance(o, AIError)] == [RESULT] * 4


def test_lock_of_a_dead_holder_expires_and_a_waiter_computes(cache, ai_redis):
    ai_redis.set(cache.key(DECK, "p", "m") + ":lock", "crashed-worker", px=300)
    compute = Counting()
    started = time.monotonic()
    assert cache.get_or_compute(DECK, "p", "m", compute) == (RESULT, False)
    assert compute.calls == 1
    assert time.monotonic() - started < 5


def test_redis_down_computes_uncached():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nobody listens
    # No client-side retries: the test is about the cache stepping aside.
    dead = redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    compute = Counting()
    cache = AICache(dead, "conveyor-test-dead:", TTLS)
    assert cache.get_or_compute(DECK, "p", "m", compute) == (RESULT, False)
    assert compute.calls == 1


# Popularity


def test_popular_requests_rank_by_request_count(cache):
    other = AIRequest("text", "Explain idempotency")
    rare = AIRequest("image", "a red kite")
    for request, times in [(DECK, 3), (other, 2), (rare, 1)]:
        for _ in range(times):
            cache.get_or_compute(request, "p", "m", Counting({"any": 1}))
    cache.get_or_compute(rare, "p", "m", Counting(), record=False)
    cache.get_or_compute(rare, "p", "m", Counting(), record=False)
    assert cache.popular_requests(10) == [DECK, other, rare]
    assert cache.popular_requests(1) == [DECK]
    assert cache.popular_requests(0) == []


def test_popular_set_is_trimmed(ai_redis, prefix):
    small = AICache(ai_redis, prefix, TTLS, popular_max=5)
    for n in range(20):
        small.get_or_compute(AIRequest("text", f"prompt {n}"), "p", "m", Counting({"n": n}))
    assert ai_redis.zcard(small.popular_key) <= 5 + 5 // 10


# Quota


def test_quota_raises_at_limit_plus_one(ai_redis, prefix):
    for _ in range(3):
        quota.consume(ai_redis, prefix, 42, 3)
    with pytest.raises(AIError) as caught:
        quota.consume(ai_redis, prefix, 42, 3)
    error = caught.value
    assert (error.code, error.retryable) == ("ai_quota_exceeded", False)
    assert 0 < error.retry_after <= 24 * 3600
    assert quota.remaining(ai_redis, prefix, 42, 3) == 0
    quota.consume(ai_redis, prefix, 43, 3)  # another user has their own count
    assert quota.remaining(ai_redis, prefix, 43, 3) == 2


def test_quota_counts_per_utc_day_and_expires(ai_redis, prefix):
    today = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    quota.consume(ai_redis, prefix, 7, 1, now=today)
    quota.consume(ai_redis, prefix, 7, 1, now=today + timedelta(minutes=2))
    key = quota.quota_key(prefix, 7, today)
    assert key == f"{prefix}ai:quota:7:20260301"
    assert 0 < ai_redis.ttl(key) <= 2 * 24 * 3600


def test_quota_limit_zero_disables_it(ai_redis, prefix):
    for _ in range(5):
        quota.consume(ai_redis, prefix, 7, 0)
    assert quota.remaining(ai_redis, prefix, 7, 0) is None
    assert not list(ai_redis.scan_iter(match=prefix + "*"))


# generate()


def test_generate_adds_provider_model_and_from_cache(cache):
    request = AIRequest("image", "a lighthouse", {"size": "256x256"})
    first = generate(request, OfflineProvider(), cache)
    second = generate(request, OfflineProvider(), cache)
    assert (first["provider"], first["model"], first["from_cache"]) == (
        "offline",
        "offline-1",
        False,
    )
    assert second == {**first, "from_cache": True}
    assert first["url"].startswith("data:image/svg+xml")


def test_cache_hits_do_not_consume_quota(cache, ai_redis, prefix):
    def charge() -> None:
        quota.consume(ai_redis, prefix, "user-1", 1)

    generate(DECK, OfflineProvider(), cache, before_upstream=charge)
    again = generate(DECK, OfflineProvider(), cache, before_upstream=charge)
    assert again["from_cache"] is True
    with pytest.raises(AIError) as caught:
        generate(
            AIRequest("text", "something new"), OfflineProvider(), cache, before_upstream=charge
        )
    assert caught.value.code == "ai_quota_exceeded"


def test_generate_uses_the_image_model_for_images(cache, openai_server: FakeOpenAIServer):
    request = AIRequest("image", "a lighthouse")
    with OpenAIProvider(openai_server.base_url, "sk-test", "gpt-test", "img-test", 5) as provider:
        result = generate(request, provider, cache)
        assert result["model"] == "img-test"
        assert generate(request, provider, cache)["from_cache"] is True
    assert openai_server.calls == 1


@pytest.fixture
def counted_cache(prefix):
    """A cache whose client counts its round trips (tests/support/redis_counting.py)."""
    pool = redis.ConnectionPool.from_url(
        TEST_ENV["REDIS_URL"], connection_class=CountingConnection, decode_responses=True
    )
    client = redis.Redis(connection_pool=pool)
    yield AICache(client, prefix, TTLS, lock_ttl=5, poll_interval=0.01), client
    client.close()


def _trips(call) -> int:
    before = CountingConnection.sends
    call()
    return CountingConnection.sends - before


def test_the_callers_writes_ride_the_lookup_trip_on_a_miss_and_a_hit(counted_cache, prefix):
    cache, client = counted_cache
    cache.get_or_compute(DECK, "p", "m", Counting())  # scripts loaded, connection open
    marker = f"{prefix}also"

    def also(pipe):
        pipe.incr(marker)

    def miss(request, **kwargs):
        return lambda: cache.get_or_compute(request, "p", "m", Counting(), **kwargs)

    plain = _trips(miss(AIRequest("text", f"plain {uuid.uuid4()}", {})))
    riding = _trips(miss(AIRequest("text", f"riding {uuid.uuid4()}", {}), also=also))
    assert riding == plain == 3  # lookup (with the caller's writes), lock and read, store
    assert client.get(marker) == "1"
    assert _trips(lambda: cache.get_or_compute(DECK, "p", "m", Counting(), also=also)) == 1
    assert client.get(marker) == "2"


def test_a_failing_write_of_the_caller_does_not_fail_the_lookup(cache, ai_redis, prefix, caplog):
    cache.get_or_compute(DECK, "p", "m", Counting())
    ai_redis.set(f"{prefix}not-a-counter", "not a number")
    result = cache.get_or_compute(
        DECK, "p", "m", Counting(), also=lambda pipe: pipe.incr(f"{prefix}not-a-counter")
    )
    assert result == (RESULT, True)
    assert "writes sent with the ai cache lookup failed" in caplog.text


def test_with_the_cache_off_the_callers_writes_are_not_sent(ai_redis, prefix):
    off = AICache(ai_redis, prefix, TTLS, enabled=False)
    queued = []
    assert off.get_or_compute(DECK, "p", "m", Counting(), also=queued.append) == (RESULT, False)
    assert queued == []


def test_the_callers_settle_gets_every_reply_of_the_trip(cache, ai_redis, prefix):
    marker = f"{prefix}settled"
    seen = []

    def also(pipe):
        pipe.set(marker, "1")
        return lambda replies: seen.append(list(replies))

    assert cache.get_or_compute(DECK, "p", "m", Counting(), also=also) == (RESULT, False)
    assert len(seen) == 1 and len(seen[0]) == 4  # the lookup's three replies, then the SET's
    assert seen[0][3] is True and ai_redis.get(marker) in ("1", b"1")
