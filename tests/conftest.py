"""Fixtures: a throwaway PostgreSQL database, a private Redis key prefix, a real worker.

The environment is set before any Conveyor module is imported, because the
Celery app (workers.app) reads its settings once, at import.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
import redis
from psycopg2 import sql

RUN_ID = uuid.uuid4().hex[:12]
ADMIN_DSN = os.environ.get(
    "TEST_POSTGRES_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
DB_NAME = f"conveyor_test_{RUN_ID}"
PG_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
REDIS_PREFIX = f"conveyor-test-{RUN_ID}:"

os.environ.update(
    {
        "CONVEYOR_ENV": "development",
        "DATABASE_URL": f"postgresql://postgres@{PG_HOST}:5432/{DB_NAME}",
        "REDIS_URL": REDIS_URL,
        "CONVEYOR_REDIS_PREFIX": REDIS_PREFIX,
        # scrypt at a test-sized cost: the same code path, 16x cheaper than production.
        "PASSWORD_HASH_METHOD": "scrypt:2048:8:1",
        "LOGIN_GENERATES_TRANSACTIONS": "false",
        "RATELIMIT_ENABLED": "false",
        "AI_PROVIDER": "offline",
        "LOG_LEVEL": "WARNING",
    }
)
for _name in (
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "SECRET_KEY",
    "AI_API_KEY",
    "CONVEYOR_ADMIN_USERNAME",
    "CONVEYOR_ADMIN_PASSWORD",
):
    os.environ.pop(_name, None)

from shared.settings import Settings  # noqa: E402


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
    url = os.environ["DATABASE_URL"]
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
    return Settings.from_env()


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
    wire_process()
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
