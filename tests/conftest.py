"""Fixtures: a throwaway PostgreSQL database, a private Redis key prefix, a real worker.

Nothing here edits os.environ: apps are built from explicit Settings
(`Settings.from_env(TEST_ENV)`), and servers a test starts get
`process_env`, this machine's environment with TEST_ENV over it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg2
import pytest
import redis
from psycopg2 import sql

from infra.settings import Settings
from tests.support.environment import (
    ADMIN_DSN,
    DB_NAME,
    REDIS_PREFIX,
    REDIS_URL,
    TEST_ENV,
    process_environment,
)


def _admin_connection():
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database, migrated to head with Alembic, dropped at the end."""
    from scripts.migrate import upgrade

    conn = _admin_connection()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
    conn.close()
    url = TEST_ENV["DATABASE_URL"]
    upgrade(url, configure_logging=False)
    yield url
    conn = _admin_connection()
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (DB_NAME,)
        )
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(DB_NAME)))
    conn.close()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """A client for the test Redis; every key under this run's prefix is deleted at the end."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.ping()
    yield client
    for key in client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_client: redis.Redis) -> Settings:
    return Settings.from_env(TEST_ENV)


@pytest.fixture(scope="session")
def process_env(settings: Settings) -> dict[str, str]:
    """What a subprocess of a test (gunicorn, celery, a script) runs with."""
    return process_environment()


@pytest.fixture(scope="session")
def resources(settings: Settings):
    from shared.resources import Resources

    res = Resources.build(settings)
    yield res
    res.close()


@pytest.fixture(scope="session")
def app(settings: Settings):
    from api import create_app

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    yield flask_app
    flask_app.extensions["conveyor"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def celery_app(settings: Settings):
    from workers.factory import create_celery_app, wire_process

    celery = create_celery_app(settings)
    # What the worker entry point (workers/app.py) does for its process.
    celery.set_current()
    celery.set_default()
    wire_process(settings)
    celery.loader.import_default_modules()
    return celery


@pytest.fixture(scope="module")
def worker(celery_app):
    """A real Celery worker (thread pool) consuming every queue from the test Redis."""
    from tests.support.workers import running_worker

    with running_worker(celery_app) as controller:
        yield controller


@pytest.fixture
def make_user(client):
    """Register a fresh user and return (user id, auth headers)."""
    from tests.support.accounts import register_and_login

    def factory(prefix: str = "user") -> tuple[int, dict[str, str]]:
        return register_and_login(client, f"{prefix}_{uuid.uuid4().hex[:10]}")

    return factory


@pytest.fixture(scope="module", autouse=True)
def _no_jobs_left_on_shared_queues(redis_client: redis.Redis) -> Iterator[None]:
    """Each module starts and ends with this run's broker queues empty.

    Tests that submit without a worker leave messages behind; without this a
    later module's worker would run them, and results would depend on order.
    Torn down after the module's own worker fixtures (autouse comes first).
    """
    from infra.broker import keys
    from shared.jobs.kinds import QUEUES

    def clear() -> None:
        names = [name for queue in QUEUES for name in keys.queue_lists(REDIS_PREFIX, queue)]
        redis_client.delete(*names, keys.unacked(REDIS_PREFIX), keys.unacked_index(REDIS_PREFIX))
        from tests.support.workers import clear_fair_lines

        clear_fair_lines(redis_client, REDIS_PREFIX)

    clear()
    yield
    clear()
