"""Pytest fixtures for the fakes; import them into a conftest or a test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openai_server import FakeOpenAIServer


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A started `FakeOpenAIServer`, closed after the test."""
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.close()
