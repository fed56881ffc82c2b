"""A Redis Sentinel set of a test's own: three redis-server (master, two replicas), three sentinels.

Every process listens on a free loopback port, keeps its files in a temp
directory, and is stopped by its PID. Data nodes and sentinels each ask for a
password, as in production. Nothing is persisted: a test that kills the
master keeps what the replicas had received.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.support.processes import free_port

# A master that does not answer for this long is subjectively down; two of the
# three sentinels agreeing makes it objectively down and starts the failover.
DOWN_AFTER_MS = 1000
QUORUM = 2
# Bounds one failover attempt; a stalled one is retried after twice this.
FAILOVER_TIMEOUT_MS = 5000


class SentinelSet:
    """One master, two replicas and three sentinels monitoring them as `master_name`."""

    def __init__(
        self,
        directory: Path,
        *,
        master_name: str = "conveyor-test",
        password: str = "data-node-secret",
        sentinel_password: str = "sentinel-secret",
    ) -> None:
        self.directory = directory
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.data_ports = [free_port() for _ in range(3)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._processes: dict[int, subprocess.Popen] = {}

    @property
    def sentinels(self) -> str:
        """REDIS_SENTINELS for this set: `127.0.0.1:port,...`."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        first, *replicas = self.data_ports
        self._start_data(first)
        for port in replicas:
            self._start_data(port, "--replicaof", "127.0.0.1", str(first))
        for port in replicas:
            wait_until(lambda p=port: self._replica_of(p, first), 30, f"replica {port} in sync")
        for port in self.sentinel_ports:
            self._start_sentinel(port, first)
        wait_until(self._sentinels_agree, 30, "sentinels see the master, replicas and each other")

    def client(self, port: int, db: int = 0) -> redis.Redis:
        """A plain client of one data node (not through Sentinel)."""
        return redis.Redis(
            port=port, db=db, password=self.password, decode_responses=True, socket_timeout=5
        )

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers reports it."""
        for port in self.sentinel_ports:
            try:
                _host, master = self._sentinel(port).sentinel_get_master_addr_by_name(
                    self.master_name
                )
                return int(master)
            except (redis.RedisError, TypeError):
                continue
        raise AssertionError("no sentinel answers")

    def role(self, port: int) -> str:
        return self.client(port).execute_command("ROLE")[0]

    def failover(self) -> tuple[int, int]:
        """`SENTINEL FAILOVER` and wait until it is complete; (old, new) master ports."""
        old = self.master_port()
        self.start_failover()
        wait_until(lambda: self.failover_done(old), 60, "the failover complete")
        return old, self.master_port()

    def start_failover(self) -> None:
        """`SENTINEL FAILOVER`: promote a replica now, without waiting for the master to fail."""
        self._sentinel(self.sentinel_ports[0]).execute_command(
            "SENTINEL", "FAILOVER", self.master_name
        )

    def failover_done(self, old: int) -> bool:
        """Every sentinel names a new master, it serves, and `old` has become its replica.

        Sentinel demotes the old master a few seconds after the switch (a
        forced failover leaves it running) and closes its clients then.
        """
        new = self._agreed_master()
        return new not in (None, old) and self.role(new) == "master" and self._replica_of(old, new)

    def kill_master(self) -> int:
        """SIGKILL the master (no shutdown, nothing more replicated); its port."""
        port = self.master_port()
        process = self._processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        return port

    def wait_new_master(self, old: int, bound: float = 60) -> int:
        """Until the sentinels agree on a serving master other than `old`; its port."""
        wait_until(lambda: self._agreed_master() not in (None, old), bound, "a replica promoted")
        new = self.master_port()
        wait_until(lambda: self.role(new) == "master", bound, "the new master serving")
        return new

    def rejoin(self, port: int) -> None:
        """Start a killed data node again as a replica of the current master (an operator's job)."""
        master = self.wait_new_master(port)
        self._start_data(port, "--replicaof", "127.0.0.1", str(master))
        # The sentinels may move the master once more meanwhile (a loaded machine
        # misses a ping): in sync with whichever master they agree on then.
        wait_until(
            lambda: self._replica_of(port, self._agreed_master() or master),
            120,
            f"{port} in sync again",
        )
        wait_until(self._sentinels_agree, 60, "sentinels see it as a replica")

    def stop(self) -> None:
        """Stop every process this set started, sentinels first, by PID."""
        for port in [*self.sentinel_ports, *self.data_ports]:
            process = self._processes.pop(port, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def _start_data(self, port: int, *extra: str) -> None:
        directory = self.directory / f"redis-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
            "--save", "", "--appendonly", "no",
            "--requirepass", self.password, "--masterauth", self.password, *extra,
        ]  # fmt: skip
        self._spawn(port, argv, directory / "redis.log")
        wait_until(lambda: self.client(port).ping(), 30, f"redis-server {port} answering")

    def _start_sentinel(self, port: int, master: int) -> None:
        directory = self.directory / f"sentinel-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        # A sentinel rewrites its file with what it learns (replicas, peers, epochs).
        config = directory / "sentinel.conf"
        name = self.master_name
        config.write_text(
            f"bind 127.0.0.1\nport {port}\ndir {directory}\n"
            f"requirepass {self.sentinel_password}\n"
            f"sentinel sentinel-pass {self.sentinel_password}\n"
            f"sentinel monitor {name} 127.0.0.1 {master} {QUORUM}\n"
            f"sentinel auth-pass {name} {self.password}\n"
            f"sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        self._spawn(port, ["redis-server", str(config), "--sentinel"], directory / "sentinel.log")
        wait_until(lambda: self._sentinel(port).ping(), 30, f"sentinel {port} answering")

    def _spawn(self, port: int, argv: list[str], log_path: Path) -> None:
        with log_path.open("a") as log:
            self._processes[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, password=self.sentinel_password, decode_responses=True, socket_timeout=2
        )

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            state = self._sentinel(port).sentinel_master(self.master_name)
            if state["num-slaves"] < 2 or state["num-other-sentinels"] < 2:
                return False
            replicas = self._sentinel(port).sentinel_slaves(self.master_name)
            if any(r["is_sdown"] or r["master-link-status"] != "ok" for r in replicas):
                return False
        return True

    def _agreed_master(self) -> int | None:
        """The master port every sentinel reports, or None while they differ."""
        ports = set()
        for port in self.sentinel_ports:
            try:
                address = self._sentinel(port).sentinel_get_master_addr_by_name(self.master_name)
                ports.add(int(address[1]))
            except (redis.RedisError, TypeError):
                return None
        return ports.pop() if len(ports) == 1 else None

    def _replica_of(self, port: int, master: int) -> bool:
        try:
            info = self.client(port).info("replication")
        except redis.RedisError:
            return False
        return (
            info.get("role") == "slave"
            and int(info.get("master_port", 0)) == master
            and info.get("master_link_status") == "up"
        )


def wait_until(predicate: Callable[[], bool], bound: float, what: str) -> None:
    """Poll `predicate` (Redis errors mean "not yet") until true; AssertionError after `bound`."""
    deadline = time.monotonic() + bound
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"{what}: not within {bound:.0f}s"
        time.sleep(0.1)
