"""One scenario's private stack: Redis with AOF, PostgreSQL, and Conveyor's own processes.

Processes are started as the Procfile starts them (its own command lines,
read from the Procfile at run time) and stopped by PID, newest first.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import redis

from bench.stack import BIN, ROOT, Processes, free_port, gunicorn_argv, wait_http
from chaos.netns import inside

# Debian installs each major version's server binaries side by side; take the newest.
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
# setpriv execs (no fork, unlike su/runuser), so the PID we hold is the server's own.
AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"]

# Variables a developer's shell may carry that would point the stack elsewhere.
_INHERITED = (
    "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
    "PROMETHEUS_MULTIPROC_DIR", "PORT", "CONVEYOR_REDIS_PREFIX", "WORKER_CONCURRENCY",
    "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD",
)  # fmt: skip


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.2):
    """Poll `predicate` (exceptions count as "not yet") until true; RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # a server still starting raises anything
            last = exc
        time.sleep(interval)
    raise RuntimeError(
        f"{what} not within {timeout:.0f} s" + (f" (last error: {last})" if last else "")
    )


def procfile_command(process_type: str) -> str:
    """The shell command of one Procfile process type, as a platform would run it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and not line.startswith("#") and name.strip() == process_type:
            return command.strip()
    raise KeyError(f"Procfile has no {process_type!r} line")


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (a prefork worker's pool processes), whichever thread forked them.

    /proc lists a child under the thread that forked it: Celery's pool grows
    replacements from its own threads, so every thread's list is read.
    """
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in children.read_text().split()]
        except OSError:
            continue
    return sorted(set(found))


def alive(pid: int) -> bool:
    """Whether `pid` runs and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ChildProcesses(Processes):
    """bench's process table, stopped newest first (servers outlive their clients)."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir)
        self.order: list[str] = []
        self._stop_signals: dict[str, tuple[subprocess.Popen, signal.Signals]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str],
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> subprocess.Popen:  # fmt: skip
        """Start `name`; `stop()` asks it to end with `stop_signal` before SIGTERM."""
        if name in self.order:
            self.order.remove(name)
        self.order.append(name)
        process = super().start(name, argv, env)
        if stop_signal != signal.SIGTERM:
            self._stop_signals[name] = (process, stop_signal)
        return process

    def stop(self, name: str, timeout: float = 20.0) -> None:
        process, stop_signal = self._stop_signals.pop(name, (None, None))
        if process is not None and process.poll() is None:
            process.send_signal(stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        super().stop(name, timeout)

    def stop_all(self) -> None:
        for name in reversed(self.order):
            self.stop(name)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class RedisServer:
    """A redis-server of our own with AOF (`appendfsync everysec`), restartable on its port."""

    def __init__(
        self, procs: ChildProcesses, data_dir: Path, *, host: str = "127.0.0.1",
        port: int | None = None, wrap: list[str] | None = None, netns: str | None = None,
    ) -> None:  # fmt: skip
        self.procs, self.data_dir, self.host = procs, data_dir, host
        self.port = port or free_port()
        self.wrap, self.netns = wrap or [], netns
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        argv = [
            *self.wrap, shutil.which("redis-server") or "redis-server",
            "--bind", self.host, "--port", str(self.port), "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.host != "127.0.0.1":
            # Protected mode refuses every non-loopback client without a
            # password; this address exists only on the namespaces' bridge.
            argv += ["--protected-mode", "no"]
        self.procs.start("redis", argv, dict(os.environ))
        with inside(self.netns):
            client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
            try:
                wait_for("redis answering", client.ping, 30)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync; AOF keeps what reached it (everysec)."""
        os.kill(self.procs.pid("redis"), signal.SIGKILL)
        self.procs.stop("redis")

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, decode_responses=True, socket_timeout=5)


class SentinelRedis:
    """Redis behind Sentinel: a master and two replicas (AOF each), three sentinels, on loopback.

    `down_after_ms`: how long the master may be silent before a sentinel calls
    it down; two of the three agreeing starts the failover.
    """

    MASTER = "conveyor"

    def __init__(self, procs: ChildProcesses, data_dir: Path, *, down_after_ms: int) -> None:
        self.procs, self.data_dir, self.down_after_ms = procs, data_dir, down_after_ms
        self.nodes = {f"redis-{n}": free_port() for n in (1, 2, 3)}
        self.sentinel_ports = {f"sentinel-{n}": free_port() for n in (1, 2, 3)}
        self.first_master = self.nodes["redis-1"]
        self._replicas: list[str] = []  # stopped by cut_replication

    @property
    def env(self) -> dict[str, str]:
        """What puts a stack behind it: REDIS_URL names only the database."""
        return {
            "REDIS_URL": "redis://found-through-sentinel/0",
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports.values()),
            "REDIS_SENTINEL_MASTER": self.MASTER,
        }

    def start(self) -> None:
        for name in self.nodes:
            self.start_node(name)
        for name, port in self.sentinel_ports.items():
            directory = self.data_dir / name
            directory.mkdir(parents=True, exist_ok=True)
            config = directory / "sentinel.conf"  # the sentinel rewrites it as it learns
            config.write_text(
                f"bind 127.0.0.1\nport {port}\ndir {directory}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.first_master} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
            )
            argv = [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"]
            self.procs.start(name, argv, dict(os.environ))
        wait_for("the sentinels seeing both replicas and each other", self._settled, 60)

    def start_node(self, name: str) -> None:
        """Start (or restart, with its AOF) one data node; the first master's replicas follow it.

        A restarted old master comes up with the command line it had, as a
        container's restart policy brings it back; Sentinel turns it into a
        replica of the new master.
        """
        port = self.nodes[name]
        directory = self.data_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
            "--port", str(port), "--dir", str(directory), "--appendonly", "yes",
            "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
        ]  # fmt: skip
        if port != self.first_master:
            argv += ["--replicaof", "127.0.0.1", str(self.first_master)]
        self.procs.start(name, argv, dict(os.environ))
        wait_for(f"{name} answering", lambda: self._node(port).ping(), 30)

    def master(self) -> tuple[str, int] | None:
        """(name, port) of the master every sentinel names, or None while they disagree."""
        ports = set()
        for port in self.sentinel_ports.values():
            try:
                answer = self._node(port).sentinel_get_master_addr_by_name(self.MASTER)
            except redis.RedisError:
                return None
            ports.add(int(answer[1]) if answer else None)
        if len(ports) != 1 or None in ports:
            return None
        port = ports.pop()
        return next(name for name, p in self.nodes.items() if p == port), port

    def kill_master(self) -> str:
        """SIGKILL the master (no shutdown, no final fsync); its name."""
        name, _port = self.master() or (None, None)
        assert name is not None, "no agreed master to kill"
        os.kill(self.procs.pid(name), signal.SIGKILL)
        self.procs.stop(name)
        return name

    def cut_replication(self) -> None:
        """The master's link to every replica breaks: from now on its writes reach none.

        Each replica is stopped (SIGSTOP, so it cannot reconnect) and the
        master closes their connections; what it had already sent stays
        theirs. `resume_replicas` lets them run again.
        """
        current = self.master()
        assert current is not None, "no agreed master"
        self._replicas = [name for name in self.nodes if name != current[0]]
        for name in self._replicas:
            os.kill(self.procs.pid(name), signal.SIGSTOP)
        self._node(current[1]).client_kill_filter(_type="replica")

    def resume_replicas(self) -> None:
        for name in self._replicas:
            os.kill(self.procs.pid(name), signal.SIGCONT)
        self._replicas = []

    def wait_promoted(self, old: str, timeout: float) -> str:
        """Until every sentinel names another master and it serves as one; its name."""

        def promoted() -> bool:
            current = self.master()
            return current is not None and current[0] != old and self.role(current[1]) == "master"

        wait_for("a replica promoted", promoted, timeout, interval=0.05)
        return self.master()[0]

    def role(self, port: int) -> str:
        return self._node(port).execute_command("ROLE")[0]

    def client(self) -> redis.Redis:
        """A plain client of the current master, in database 0."""
        current = self.master()
        assert current is not None, "no agreed master"
        return redis.Redis(port=current[1], decode_responses=True, socket_timeout=5)

    def replicas_in_sync(self) -> int:
        """Replicas the current master reports connected."""
        return int(self.client().info("replication")["connected_slaves"])

    def _settled(self) -> bool:
        for port in self.sentinel_ports.values():
            state = self._node(port).sentinel_master(self.MASTER)
            if state["num-slaves"] < 2 or state["num-other-sentinels"] < 2:
                return False
        return True

    @staticmethod
    def _node(port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2)


class PostgresCluster:
    """A throwaway PostgreSQL cluster: initdb into a temp dir, run as the postgres user."""

    def __init__(
        self, procs: ChildProcesses, *, host: str = "127.0.0.1", port: int | None = None,
        wrap: list[str] | None = None, netns: str | None = None,
    ) -> None:  # fmt: skip
        self.procs, self.host = procs, host
        self.port = port or free_port()
        self.wrap, self.netns = wrap or [], netns
        self.root: Path | None = None
        self.process: subprocess.Popen | None = None

    def init(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="conveyor-chaos-pg-"))
        owner = pwd.getpwnam("postgres")
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [
                *AS_POSTGRES, str(PG_BIN / "initdb"), "-D", str(self.root / "data"),
                "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # initdb trusts loopback only; on its own host the server is reached
        # over the namespaces' private subnet.
        with (self.root / "data" / "pg_hba.conf").open("a") as hba:
            hba.write("host all all samenet trust\n")

    def start(self) -> None:
        assert self.root is not None, "init() first"
        argv = [
            *self.wrap, *AS_POSTGRES, str(PG_BIN / "postgres"), "-D", str(self.root / "data"),
            "-p", str(self.port), "-c", f"listen_addresses={self.host}",
            "-c", f"unix_socket_directories={self.root}", "-c", "max_connections=200",
            # fsync only matters when the machine itself crashes; every fault
            # here kills processes, and the OS keeps what they wrote.
            "-c", "fsync=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        # Fast shutdown (SIGINT) at the end: SIGTERM's "smart" one waits for
        # every session, including those of a host that was cut off.
        self.process = self.procs.start("postgres", argv, dict(os.environ), signal.SIGINT)
        wait_for("postgres accepting connections", self._answers, 60)

    def _answers(self) -> bool:
        self._connect("postgres").close()
        return True

    def stop(self, *, immediate: bool = True) -> None:
        """Immediate (SIGQUIT: no checkpoint, crash recovery on the next start) or fast shutdown."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
        self.process.wait(60)
        self.procs.stop("postgres")

    def _connect(self, dbname: str):
        with inside(self.netns):
            conn = psycopg2.connect(
                host=self.host, port=self.port, user="postgres", dbname=dbname, connect_timeout=3
            )
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> ClusterDatabase:
        """A new, migrated database in this cluster."""
        from scripts.migrate import upgrade

        conn = self._connect("postgres")
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        database = ClusterDatabase(self, name)
        with inside(self.netns):
            upgrade(database.url, configure_logging=False)
        return database

    def destroy(self) -> None:
        self.stop(immediate=False)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


class ClusterDatabase:
    """One database of a PostgresCluster, read like bench's BenchDatabase."""

    def __init__(self, cluster: PostgresCluster, name: str) -> None:
        self.cluster, self.name = cluster, name

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.cluster.host}:{self.cluster.port}/{self.name}"

    def query(self, statement: str, params: tuple = ()) -> list[tuple]:
        conn = self.cluster._connect(self.name)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        finally:
            conn.close()


def conveyor_env(database_url: str, redis_url: str, work_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of every Conveyor process of one stack."""
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    env.update(
        {
            # The Procfile's lines call `gunicorn` and `celery` by name.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "CONVEYOR_ENV": "development",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": secrets.token_hex(32),
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            # Faults, not limits, are under test: users submit thousands of jobs.
            "RATELIMIT_ENABLED": "false",
            "LOGIN_GENERATES_TRANSACTIONS": "false",
            "MAX_INFLIGHT_JOBS": "1000000",
            "QUEUE_MAX_DEPTH": "1000000",
            "AI_PROVIDER": "offline",
            # Time compressed so a scenario takes minutes: a dead worker's
            # messages come back after 20 s, a lost publish after 30 s (plus
            # beat's one-minute sweep interval).
            "BROKER_VISIBILITY_TIMEOUT": "20",
            "REDISPATCH_AFTER_SECONDS": "30",
            # A job STARTED past its hard time limit is re-run after this
            # grace (60 s by default): how a job whose retries ran out during
            # an outage gets done.
            "STUCK_GRACE_SECONDS": "15",
            "WEB_CONCURRENCY": "2",
            "WORKER_METRICS_PORT": "0",
            "BEAT_SCHEDULE_FILE": str(work_dir / "celerybeat-schedule"),
        }
    )
    env.update(extra)
    return env


class Conveyor:
    """web, worker and beat of one stack, each started from its Procfile line."""

    def __init__(self, procs: ChildProcesses, env: dict[str, str]) -> None:
        self.procs, self.env = procs, env

    def start_web(self, *, host: str = "127.0.0.1", wrap: list[str] | None = None,
                  netns: str | None = None) -> str:  # fmt: skip
        """Start gunicorn (gunicorn.conf.py, api.wsgi:app); its base URL once /healthz answers."""
        if wrap:
            # On its own host the Procfile line binds 0.0.0.0:$PORT: that host's addresses only.
            port = 8000
            argv = [*wrap, "/bin/sh", "-c", procfile_command("web")]
        else:
            port = free_port()
            argv = gunicorn_argv("api.wsgi:app", port)  # the same command, bound to loopback
        env = {**self.env, "PORT": str(port), "LOG_LEVEL": "WARNING"}
        self.procs.start("web", argv, env)
        base = f"http://{host}:{port}"
        with inside(netns):
            wait_http(base + "/healthz", timeout=60, check=lambda: self.procs.check_alive("web"))
        return base

    def start_worker(
        self, name: str, *, wrap: list[str] | None = None, hostname: str | None = None,
        process_type: str = "worker",
    ) -> None:  # fmt: skip
        """The Procfile's `worker` (or `worker_ai`) line under scripts/supervise.py, as `make run`.

        The supervisor restarts the worker after any exit, as compose's restart
        policy does in production; `restarts()` counts how often it had to.
        """
        script = procfile_command(process_type)
        if hostname:
            script = f"hostname {hostname} && {script}"
        supervised = [str(BIN / "python"), "-m", "scripts.supervise", "--name", name, "--", script]
        if hostname:
            # Its own UTS namespace, so `-n worker@%h` names the host, as on a real machine.
            supervised = ["unshare", "--uts", *supervised]
        self.procs.start(name, [*(wrap or []), *supervised], self.env)

    def start_events(self) -> str:
        """The Procfile's `events` gunicorn (gevent, one process) on loopback; its base URL."""
        port = free_port()
        extra = ("--worker-class", "gevent", "--workers", "1", "--graceful-timeout", "5",
                 "--max-requests", "0", "--name", "conveyor-events")  # fmt: skip
        env = {**self.env, "EVENTS_PORT": str(port), "LOG_LEVEL": "WARNING"}
        self.procs.start("events", gunicorn_argv("api.events_wsgi:app", port, extra), env)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", timeout=60, check=lambda: self.procs.check_alive("events"))
        return base

    def worker_pid(self, name: str) -> int | None:
        """PID of the worker's main process (the supervisor's child), if one runs."""
        children = child_pids(self.procs.pid(name))
        return children[0] if children else None

    def restarts(self, name: str) -> list[str]:
        """The supervisor's restart lines: one per unexpected exit of the worker."""
        return re.findall(
            rf"supervise\[{re.escape(name)}\]: (.+?); restart #", self.procs.log_tail(name, 10**8)
        )

    def worker_survived(self, name: str, pid: int | None) -> list[str]:
        """A violation unless worker `name` still runs as `pid`, never restarted."""
        exits = self.restarts(name)
        if not exits and pid is not None and self.worker_pid(name) == pid and alive(pid):
            return []
        return [
            f"{name} did not outlive the fault (exits: {exits or 'none'}):\n"
            + self.procs.log_tail(name)
        ]

    def start_beat(self, *, wrap: list[str] | None = None) -> None:
        self.procs.start(
            "beat", [*(wrap or []), "/bin/sh", "-c", procfile_command("beat")], self.env
        )

    def wait_worker_ready(self, name: str, timeout: float = 60) -> None:
        """Until the worker logs that it consumes (Celery's "ready" line)."""

        def ready() -> bool:
            self.procs.check_alive(name)
            if self.restarts(name):
                raise RuntimeError(f"{name} exited at start:\n{self.procs.log_tail(name)}")
            return " ready." in self.procs.log_tail(name, 10**8)

        wait_for(f"{name} ready", ready, timeout, interval=0.3)
