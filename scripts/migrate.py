"""Apply database migrations to the configured database (`make migrate`)."""

from __future__ import annotations

import sys

from alembic import command
from alembic.config import Config

from infra.settings import ROOT, VAR_DIR, Settings


def alembic_config(url: str | None = None, *, configure_logging: bool = True) -> Config:
    """Alembic's configuration for this repository, optionally for an explicit URL."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["url"] = url
    config.attributes["configure_logging"] = configure_logging
    return config


def upgrade(url: str | None = None, *, configure_logging: bool = True) -> None:
    """Bring the database at `url` (default: the configured one) to the newest revision."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url, configure_logging=configure_logging), "head")


def main() -> int:
    settings = Settings.from_env()
    upgrade(settings.resolved_database_url)
    print("database migrated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
