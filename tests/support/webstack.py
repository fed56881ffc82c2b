"""A private stack over real HTTP: gunicorn for web, one prefork worker on every queue."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.jobs.kinds import QUEUES
from tests.support.processes import free_port, running_server
from tests.support.stacks import PrivateStack, private_stack

BIN = Path(sys.executable).parent


@contextmanager
def served_stack(
    settings: Any, redis_client: Any, log_dir: Path, **changes: Any
) -> Iterator[PrivateStack]:
    """A PrivateStack whose `url` is its gunicorn (one process, 8 threads) on a free port."""
    with private_stack(settings, redis_client, log_dir, **changes) as stack:
        stack.start_worker("worker", queues=",".join(QUEUES), concurrency=2)
        port = free_port()
        env = {**stack.env, "PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_THREADS": "8"}
        argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "api.wsgi:app"]
        with running_server(argv, env=env, log_path=log_dir / "web.log", port=port):
            stack.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
            yield stack
