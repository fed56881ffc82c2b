"""Fixtures of the integration tests that share one served stack (the client, CLI and pages)."""

from __future__ import annotations

import pytest

from tests.support.webstack import served_stack


@pytest.fixture(scope="session")
def served(settings, redis_client, tmp_path_factory):
    """gunicorn web, the events process and a prefork worker on a private prefix, started once."""
    with served_stack(settings, redis_client, tmp_path_factory.mktemp("served")) as stack:
        yield stack
