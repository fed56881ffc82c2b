"""Alembic environment: the URL comes from Conveyor's settings, the metadata from the models."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from infra.db import create_db_engine
from infra.settings import Settings, normalize_database_url
from shared.models import Base

config = context.config
if config.config_file_name and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    url = config.attributes.get("url") or Settings.from_env().resolved_database_url
    context.configure(
        url=normalize_database_url(url), target_metadata=target_metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.attributes.get("url")
    settings = Settings.from_env()
    engine = create_db_engine(settings, url=url or settings.resolved_database_url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
