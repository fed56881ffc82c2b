"""The benchmark's own stack: a throwaway database, a Redis key prefix, and child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import redis
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class BenchDatabase:
    """A PostgreSQL database created for one run and dropped at its end."""

    admin_dsn: str
    host: str
    name: str = field(default_factory=lambda: f"conveyor_bench_{uuid.uuid4().hex[:10]}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:5432/{self.name}"

    def _admin(self):
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        return conn

    def create(self) -> None:
        from scripts.migrate import upgrade

        conn = self._admin()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        conn.close()
        upgrade(self.url, configure_logging=False)

    def drop(self) -> None:
        conn = self._admin()
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (self.name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(self.name)))
        conn.close()

    def query(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Rows of one read-only statement (psycopg2 directly: no pool to keep)."""
        conn = psycopg2.connect(f"host={self.host} port=5432 user=postgres dbname={self.name}")
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        finally:
            conn.close()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its children (a gunicorn master and its workers)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after "(comm)": state, ppid, ..., utime (12th), stime (13th).
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def delete_prefixed_keys(client: redis.Redis, prefix: str) -> int:
    """Delete every key under `prefix` (only the run's own keys), returning how many."""
    deleted = 0
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        deleted += client.delete(key)
    return deleted


class Processes:
    """Child processes started by the benchmark, each stopped by its PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        # A new session per child: Ctrl-C in the terminal reaches only us, and
        # we stop each child (and, if it hangs, its own group) in order.
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._running[name] = process
        return process

    def stop(self, name: str, timeout: float = 20.0) -> None:
        process = self._running.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            # The group is the child's own (start_new_session): its pid is the group id.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def stop_all(self) -> None:
        for name in list(self._running):
            self.stop(name)

    def pid(self, name: str) -> int:
        return self._running[name].pid

    def check_alive(self, name: str) -> None:
        process = self._running[name]
        if process.poll() is not None:
            log = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log}")


def wait_http(url: str, timeout: float = 30.0, check=None) -> None:
    """Wait until `url` answers 200 (or `check()` raises because the server died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check:
            check()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def gunicorn_argv(app_spec: str, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The Procfile's web command, bound to loopback on `port` (`extra` options before the app)."""
    return [
        str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", *extra,
        app_spec,
    ]  # fmt: skip


def celery_worker_argv(pool: str, queues: str, concurrency: int, name: str) -> list[str]:
    """The Procfile's worker command with an explicit pool, queues and concurrency."""
    return [
        str(BIN / "celery"),
        "-A",
        "workers.app",
        "worker",
        "-P",
        pool,
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--loglevel=WARNING",
        "--without-mingle",
        "--without-gossip",
    ]


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` and its children (a gunicorn master and workers, a prefork pool)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(stat.parent.name) == pid or int(fields[1]) == pid:
                # statm's second field: resident pages.
                total += int((stat.parent / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return total


class PeakRss:
    """The largest tree_rss_bytes(pid) seen while the block runs (sampled every 0.25 s)."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak = tree_rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, tree_rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, tree_rss_bytes(self.pid))
