"""The test run's configuration: its private database, Redis prefix and settings, as env vars.

Nothing edits os.environ: apps are built from `Settings.from_env(TEST_ENV)`,
and servers a test starts get `process_environment()`.
"""

from __future__ import annotations

import os
import uuid

RUN_ID = uuid.uuid4().hex[:12]
# Which adjustments of tuning/ this run's processes apply (CONVEYOR_TUNING, default on).
TUNING = os.environ.get("CONVEYOR_TUNING", "on")
ADMIN_DSN = os.environ.get(
    "TEST_POSTGRES_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
DB_NAME = f"conveyor_test_{RUN_ID}"
PG_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
# Set by tests/support/services.py when it started an embedded PostgreSQL for the run.
PG_PORT = os.environ.get("TEST_POSTGRES_PORT", "5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
REDIS_PREFIX = f"conveyor-test-{RUN_ID}:"

# The configuration every test process (and every server a test starts) runs
# with: the forms users type (a bare postgresql:// URL, a documented
# CONVEYOR_ENV), the rate limiter ON with budgets no test reaches (tests of
# the limits themselves build apps with the real ones), scrypt at a
# test-sized cost (the same code path, 16x cheaper than production).
TEST_ENV = {
    "CONVEYOR_ENV": "development",
    "DATABASE_URL": f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{DB_NAME}",
    "REDIS_URL": REDIS_URL,
    "CONVEYOR_REDIS_PREFIX": REDIS_PREFIX,
    "PASSWORD_HASH_METHOD": "scrypt:2048:8:1",
    "LOGIN_GENERATES_TRANSACTIONS": "false",
    "RATELIMIT_ENABLED": "true",
    "RATELIMIT_ANONYMOUS": "100000/minute",
    "RATELIMIT_AUTH": "100000/minute",
    "RATELIMIT_USER": "100000/minute",
    "RATELIMIT_AI": "100000/hour",
    "RATELIMIT_POLL": "100000/minute",
    "AI_PROVIDER": "offline",
    "LOG_LEVEL": "WARNING",
    # The suite runs both ways: CI runs it again with CONVEYOR_TUNING=off (stock libraries).
    "CONVEYOR_TUNING": TUNING,
}


def process_environment() -> dict[str, str]:
    """A subprocess's environment: this machine's minus Conveyor's settings, plus TEST_ENV."""
    from infra.settings import environment_names

    inherited = {k: v for k, v in os.environ.items() if k not in environment_names()}
    return {**inherited, **TEST_ENV}


def tuning_on(name: str) -> bool:
    """Whether this run's processes apply the adjustment `name` (tuning/__init__.py)."""
    from tuning import Selection

    return name in Selection.parse(TUNING)
