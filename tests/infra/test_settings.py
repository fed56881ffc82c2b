"""Every documented DATABASE_URL form works: for the engine, for Alembic and for `make migrate`."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg2
import pytest
from psycopg2 import sql
from sqlalchemy import text

from infra.db import create_db_engine
from infra.settings import ROOT, ConfigError, Settings, normalize_database_url
from tests.support.environment import ADMIN_DSN, PG_HOST, PG_PORT, process_environment

FORMS = ("postgresql", "postgres", "postgresql+psycopg2")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+psycopg2://u:p@h/db"),
        ("POSTGRES://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:///var/x.db", "sqlite:///var/x.db"),
    ],
)
def test_documented_forms_map_to_the_shipped_driver(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql+psycopg://u@h/db", "not a url"])
def test_unsupported_forms_are_refused_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env({"DATABASE_URL": url})


@pytest.fixture
def scratch_database():
    """A throwaway, empty database for a migration from nothing."""
    name = f"conveyor_urls_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(ADMIN_DSN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with admin.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    admin.close()


@pytest.mark.parametrize("scheme", FORMS)
def test_engine_connects_with_each_form(scheme: str, database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    settings = Settings.from_env(
        {"DATABASE_URL": f"{scheme}://postgres@{PG_HOST}:{PG_PORT}/{name}"}
    )
    engine = create_db_engine(settings)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", FORMS)
def test_make_migrate_with_each_form(scheme: str, scratch_database: str) -> None:
    """`python -m scripts.migrate` (what `make migrate` and compose's migrate run)."""
    env = {
        **process_environment(),
        "DATABASE_URL": f"{scheme}://postgres@{PG_HOST}:{PG_PORT}/{scratch_database}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "scripts.migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    conn = psycopg2.connect(f"{ADMIN_DSN.replace('dbname=postgres', '')} dbname={scratch_database}")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.jobs') IS NOT NULL")
            assert cur.fetchone()[0] is True
    finally:
        conn.close()


def test_an_unknown_environment_name_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="CONVEYOR_ENV"):
        Settings.from_env({"CONVEYOR_ENV": "staging"})
