"""Where Redis is (one server, or a master found through Sentinel), its clients and key names.

Every Redis user in every process gets its client, or the URL its library
takes, from here: Conveyor's own stores (`create_redis`: job status, event
streams, caches, locks, queue depths, the fast publish), Celery's broker and
result backend (`celery_url`, `celery_transport_options`) and the rate
limiter (`limiter_storage`). Nobody else builds a Redis client or URL.

With REDIS_SENTINELS set, each one asks the sentinels for the master's address
whenever it opens a connection. A failover needs no restart: connections to
the old master fail (it died, or Sentinel demoted it and closed its clients),
and the next ones reach the new master. docs/sentinel.md says how fast.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelConnectionPool

from infra.settings import Settings, is_redis_url

# A sentinel answers from memory: two seconds without an answer means it is
# down or cut off, and the next one is asked.
SENTINEL_TIMEOUT_SECONDS = 2.0


class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (the master's address asked per connection) that waits for a free one.

    redis-py's two public pools combined: SentinelConnectionPool's connection
    class and ownership check over BlockingConnectionPool's queue, so a caller
    finding every connection in use waits `timeout` seconds instead of failing.
    """


def create_redis(
    settings: Settings,
    *,
    url: str | None = None,
    decode_responses: bool = True,
    max_connections: int | None = 200,
    socket_timeout: float = 5.0,
    wait_for_connection: float | None = None,
) -> redis.Redis:
    """One pooled client per process; short timeouts so a dead Redis fails fast, not hangs.

    `url`: a Redis other than REDIS_URL (a separate broker); behind Sentinel it
    can only be REDIS_URL itself (Settings.validate). `wait_for_connection`:
    a caller finding all `max_connections` in use waits up to that many
    seconds for one, instead of failing at once. `max_connections=None`: redis-py's
    own bound (none to speak of).
    """
    url = url or settings.redis_url
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_connect_timeout": 2,
        "socket_timeout": socket_timeout,
        "health_check_interval": 30,
        "max_connections": max_connections,
    }
    if wait_for_connection is not None:
        options["timeout"] = wait_for_connection
    if not settings.redis_sentinels:
        if wait_for_connection is None:
            return redis.Redis.from_url(url, **options)
        return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url, **options))
    pool_class = SentinelConnectionPool
    if wait_for_connection is not None:
        pool_class = BlockingSentinelConnectionPool
    sentinel = Sentinel(settings.sentinel_addresses, sentinel_kwargs=sentinel_options(settings))
    return sentinel.master_for(
        settings.redis_sentinel_master,
        connection_pool_class=pool_class,
        **_database_and_credentials(url),
        **options,
    )


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """How every client talks to the sentinels themselves: short timeouts, their password."""
    options: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
    }
    if settings.redis_sentinel_password:
        options["password"] = settings.redis_sentinel_password
    return options


def celery_url(settings: Settings, url: str) -> str:
    """`url` (the broker or result backend) as Celery takes it.

    Behind Sentinel a Redis URL becomes one `sentinel://` URL per sentinel,
    joined by `;`, each carrying REDIS_URL's database and credentials for the
    master (kombu's and Celery's Sentinel transports read them from there).
    Any other URL (RabbitMQ, or Redis without Sentinel) is returned as it is.
    """
    if not (settings.redis_sentinels and is_redis_url(url)):
        return url
    target = _database_and_credentials(url)
    auth = ""
    if target.get("password") is not None:
        auth = f"{quote(target.get('username') or '', safe='')}:"
        auth += f"{quote(target['password'], safe='')}@"
    return ";".join(
        f"sentinel://{auth}{_netloc(host, port)}/{target['db']}"
        for host, port in settings.sentinel_addresses
    )


def celery_transport_options(settings: Settings, url: str) -> dict[str, Any]:
    """What Celery's Sentinel transports need besides the URL (none for any other URL)."""
    if not (settings.redis_sentinels and is_redis_url(url)):
        return {}
    return {
        "master_name": settings.redis_sentinel_master,
        "sentinel_kwargs": sentinel_options(settings),
    }


def limiter_storage(settings: Settings, url: str) -> tuple[str, dict[str, Any]]:
    """The `limits` library's storage URI for `url`, and the storage options it needs besides.

    Behind Sentinel: `redis+sentinel://host:port,.../master`, with the
    database and the master's password as options (not in a URL that may be
    logged), every read and write on the master.
    """
    if settings.redis_sentinels and is_redis_url(url):
        hosts = ",".join(_netloc(host, port) for host, port in settings.sentinel_addresses)
        options: dict[str, Any] = {
            **_database_and_credentials(url),
            # The sentinels' own password, not the master's, which `limits` would reuse.
            "sentinel_kwargs": {"username": None, "password": None, **sentinel_options(settings)},
            # A counter read from a replica may lag its master's.
            "use_replicas": False,
        }
        return f"redis+sentinel://{hosts}/{settings.redis_sentinel_master}", options
    if url.startswith("unix://"):
        return "redis+unix://" + url.removeprefix("unix://"), {}
    return url, {}


def _database_and_credentials(url: str) -> dict[str, Any]:
    """The database number, user name and password `url` names (its host is Sentinel's to say)."""
    parsed = parse_url(url)
    found: dict[str, Any] = {"db": int(parsed.get("db") or 0)}
    for key in ("username", "password"):
        if parsed.get(key) is not None:
            found[key] = parsed[key]
    return found


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Keys:
    """Every Redis key name Conveyor uses, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job_status(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def notifications(self, user_id: int) -> str:
        return f"{self.prefix}notifications:{user_id}"

    def notifications_read(self, user_id: int) -> str:
        return f"{self.prefix}notifications:{user_id}:read"
