"""Many benchmark users at once, created through the domain (no HTTP, a cheap KDF)."""

from __future__ import annotations

from infra.db import create_db_engine, create_session_factory
from infra.settings import Settings
from shared import accounts

# The same scrypt code path at a tiny cost: these passwords are never used to log in.
CHEAP_HASH = "scrypt:1024:8:1"


def create_users(env: dict[str, str], prefix: str, count: int) -> list[str]:
    """Register `count` users with wallets and return a bearer token for each."""
    settings = Settings.from_env(env)
    engine = create_db_engine(settings)
    hasher = accounts.PasswordHasher(CHEAP_HASH)
    try:
        with create_session_factory(engine).begin() as session:
            users = [
                accounts.register(session, hasher, f"{prefix}{n}", "bench-password", "USD")
                for n in range(count)
            ]
        return [
            accounts.issue_token(settings.signing_key, user, settings.token_ttl_seconds)
            for user in users
        ]
    finally:
        engine.dispose()
