"""A private stack over real HTTP: gunicorn web, the events process, a prefork worker."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.jobs.kinds import QUEUES
from tests.support.events import running_events
from tests.support.processes import free_port, running_server
from tests.support.stacks import PrivateStack, private_stack

BIN = Path(sys.executable).parent


@contextmanager
def served_stack(
    settings: Any, redis_client: Any, log_dir: Path, **changes: Any
) -> Iterator[PrivateStack]:
    """A PrivateStack with `url` (gunicorn web, one process) and `events_url` (the Procfile's)."""
    with private_stack(settings, redis_client, log_dir, **changes) as stack:
        stack.start_worker("worker", queues=",".join(QUEUES), concurrency=2)
        port = free_port()
        env = {**stack.env, "PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_THREADS": "8"}
        # Stop within seconds at the end: gunicorn otherwise waits out idle
        # keep-alive connections (a browser's, a client's) for its 30 s grace.
        env["GUNICORN_CMD_ARGS"] = "--graceful-timeout 3"
        argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "api.wsgi:app"]
        with (
            running_server(
                argv, env=env, log_path=log_dir / "web.log", port=port, ready_path="/healthz"
            ),
            running_events(stack.env, log_dir / "events.log") as events,
        ):
            stack.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
            stack.events_url = f"http://127.0.0.1:{events.port}"  # type: ignore[attr-defined]
            yield stack
