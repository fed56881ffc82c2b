"""REDIS_SENTINELS and REDIS_SENTINEL_MASTER: what is refused, and the URLs and options built.

No server is needed: these check what each Redis user is handed
(infra/redis_store.py, infra/broker/config.py, api/limits.py);
tests/integration/test_sentinel.py runs the same against a real Sentinel set.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from kombu import Connection

from api.limits import storage
from infra.broker.config import celery_broker_config
from infra.redis_store import celery_url
from infra.settings import ConfigError, Settings

SENTINELS = "sentinel-a:26379, sentinel-b:26380,[fd00::7]:26381"
PASSWORD = "p@ss:w/rd%"  # every character a URL gives a meaning to


def _behind_sentinel(**extra: str) -> Settings:
    return Settings.from_env(
        {
            "REDIS_URL": f"redis://:{quote(PASSWORD, safe='')}@ignored-host:6379/3",
            "REDIS_SENTINELS": SENTINELS,
            "REDIS_SENTINEL_MASTER": "conveyor",
            "REDIS_SENTINEL_PASSWORD": "sentinel-secret",
            **extra,
        }
    )


def test_the_sentinels_are_read_as_host_port_pairs() -> None:
    assert _behind_sentinel().sentinel_addresses == (
        ("sentinel-a", 26379),
        ("sentinel-b", 26380),
        ("fd00::7", 26381),
    )
    assert Settings.from_env({}).sentinel_addresses == ()


@pytest.mark.parametrize(
    "variables",
    [
        {"REDIS_SENTINELS": "sentinel-a:26379"},
        {"REDIS_SENTINEL_MASTER": "conveyor"},
    ],
)
def test_one_variable_without_the_other_is_refused(variables: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="REDIS_SENTINELS and REDIS_SENTINEL_MASTER"):
        Settings.from_env(variables)


@pytest.mark.parametrize("value", ["sentinel-a", "sentinel-a:", ":26379", "a:0", "a:70000", "a:x,"])
def test_a_malformed_sentinel_list_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_SENTINELS must look like host:26379"):
        Settings.from_env({"REDIS_SENTINELS": value, "REDIS_SENTINEL_MASTER": "conveyor"})


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("REDIS_URL", "rediss://:pw@host:6380/0"),
        ("REDIS_URL", "unix:///run/redis.sock"),
        ("CELERY_BROKER_URL", "redis://other-redis:6379/0"),
        ("CELERY_RESULT_BACKEND", "redis://other-redis:6379/1"),
        ("RATELIMIT_STORAGE_URL", "redis://other-redis:6379/2"),
    ],
)
def test_a_redis_that_would_not_fail_over_with_the_rest_is_refused(name: str, url: str) -> None:
    with pytest.raises(ConfigError, match=name):
        _behind_sentinel(**{name: url})


def test_celery_gets_one_sentinel_url_per_sentinel_and_the_masters_name() -> None:
    settings = _behind_sentinel()
    config = celery_broker_config(settings, ["ledger"])
    auth = f":{quote(PASSWORD, safe='')}@"
    assert config["broker_url"] == (
        f"sentinel://{auth}sentinel-a:26379/3;sentinel://{auth}sentinel-b:26380/3;"
        f"sentinel://{auth}[fd00::7]:26381/3"
    )
    assert config["result_backend"] == config["broker_url"]
    sentinel_kwargs = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0,
                       "password": "sentinel-secret"}  # fmt: skip
    broker = config["broker_transport_options"]
    assert broker["master_name"] == "conveyor" and broker["sentinel_kwargs"] == sentinel_kwargs
    assert broker["global_keyprefix"] == settings.redis_key_prefix
    assert broker["visibility_timeout"] == settings.broker_visibility_timeout
    assert config["result_backend_transport_options"] == {
        "global_keyprefix": settings.redis_key_prefix,
        "master_name": "conveyor",
        "sentinel_kwargs": sentinel_kwargs,
    }
    # kombu reads back every sentinel and the master's password as given.
    connection = Connection(config["broker_url"])
    assert connection.transport_cls == "sentinel" and len(connection.alt) == 3
    assert connection.password == PASSWORD and connection.virtual_host == "3"


def test_a_rabbitmq_broker_stays_rabbitmq_while_results_go_through_sentinel() -> None:
    settings = _behind_sentinel(CELERY_BROKER_URL="amqp://guest:guest@rabbit:5672/conveyor")
    config = celery_broker_config(settings, ["ledger"])
    assert config["broker_url"] == "amqp://guest:guest@rabbit:5672/conveyor"
    assert "master_name" not in config["broker_transport_options"]
    assert config["result_backend"].startswith("sentinel://")


def test_without_sentinels_every_url_is_the_one_configured() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://:pw@redis:6379/2"})
    config = celery_broker_config(settings, ["ledger"])
    assert config["broker_url"] == config["result_backend"] == "redis://:pw@redis:6379/2"
    assert "master_name" not in config["broker_transport_options"]
    assert config["result_backend_transport_options"] == {
        "global_keyprefix": settings.redis_key_prefix
    }
    assert storage(settings) == ("redis://:pw@redis:6379/2", {})
    assert celery_url(settings, "amqp://rabbit//") == "amqp://rabbit//"


def test_the_limiter_asks_the_sentinels_and_keeps_the_password_out_of_its_url() -> None:
    uri, options = storage(_behind_sentinel())
    assert uri == "redis+sentinel://sentinel-a:26379,sentinel-b:26380,[fd00::7]:26381/conveyor"
    assert options == {
        "db": 3,
        "password": PASSWORD,
        "sentinel_kwargs": {"username": None, "password": "sentinel-secret",
                            "socket_connect_timeout": 2.0, "socket_timeout": 2.0},
        "use_replicas": False,
    }  # fmt: skip
