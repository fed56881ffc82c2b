"""Alembic migrations: they match the models, and run on SQLite (the `make run` default)."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from scripts.migrate import alembic_config
from shared.models import Base


def test_migrated_postgres_schema_matches_the_models(resources):
    with resources.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrations_upgrade_and_downgrade_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    config = alembic_config(url, configure_logging=False)
    command.upgrade(config, "head")
    engine = create_engine(url)
    assert {"users", "wallets", "ledger_entries", "jobs"} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
