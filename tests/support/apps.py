"""Building extra apps with hardened settings for tests, each under its own Redis prefix."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from infra.settings import Settings


@contextmanager
def app_with(settings: Settings, **changes) -> Iterator:
    """A fresh app for `settings` with `changes`, under a private key prefix; closed on exit."""
    from api import create_app

    changes.setdefault("redis_key_prefix", f"{settings.redis_key_prefix}t{uuid.uuid4().hex[:8]}:")
    flask_app = create_app(dataclasses.replace(settings, **changes))
    flask_app.config["TESTING"] = True
    try:
        yield flask_app
    finally:
        flask_app.extensions["conveyor"].close()


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
