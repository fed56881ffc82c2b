"""A private stack on the shared servers: its own broker key prefix, web app and prefork workers.

Jobs submitted through its app land on queues only its own workers consume,
so no other test's worker can take them and none of them leaks into later
tests: the prefix's keys are deleted at the end.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.settings import ROOT, Settings
from tests.support.environment import process_environment


@dataclass
class PrivateStack:
    """What a test drives: settings, a Flask test client, resources, and its workers."""

    settings: Settings
    client: Any
    resources: Any
    log_dir: Path
    env: dict[str, str]
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(
        self, name: str, *, queues: str = "ledger", concurrency: int = 1, prefetch: int = 1
    ) -> subprocess.Popen:
        """The Procfile's `worker` (prefork), in its own process group, logging to `name`.log."""
        argv = [
            str(Path(sys.executable).parent / "celery"),
            "-A",
            "workers.app",
            "worker",
            "-P",
            "prefork",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "--prefetch-multiplier",
            str(prefetch),
            "-n",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
        with (self.log_dir / f"{name}.log").open("w") as log:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(process)
        return process

    def deliveries(self, task_id: str, outcome: str = "received") -> int:
        """How many times this stack's workers logged `task_id` as received (or succeeded)."""
        needle = f"[{task_id}] {outcome}"
        return sum(log.read_text().count(needle) for log in self.log_dir.glob("*.log"))

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        self.workers.clear()


@contextmanager
def private_stack(
    settings: Settings, redis_client: Any, log_dir: Path, **changes: Any
) -> Iterator[PrivateStack]:
    """A PrivateStack under a fresh key prefix; `changes` adjust its Settings (and workers' env)."""
    from api import create_app
    from shared.resources import Resources

    prefix = f"{settings.redis_key_prefix}p{uuid.uuid4().hex[:8]}:"
    private = dataclasses.replace(settings, redis_key_prefix=prefix, **changes)
    env = {**process_environment(), "CONVEYOR_REDIS_PREFIX": prefix, "LOG_LEVEL": "INFO"}
    for name, value in changes.items():
        env[Settings.__dataclass_fields__[name].metadata["env"]] = str(value)
    app = create_app(private)
    res = Resources.build(private)
    stack = PrivateStack(private, app.test_client(), res, log_dir, env)
    try:
        yield stack
    finally:
        stack.stop_workers()
        res.close()
        app.extensions["conveyor"].close()
        for key in redis_client.scan_iter(match=f"{prefix}*", count=1000):
            redis_client.delete(key)
