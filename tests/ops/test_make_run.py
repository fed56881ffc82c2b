"""`make run` as a newcomer meets it: a fresh copy of the checkout, nothing but the machine's Redis.

The real scripts/devstack.py runs from a copy of the source tree (so its
./var is the copy's), with DATABASE_URL and REDIS_URL unset: it takes SQLite
and the Redis on 127.0.0.1:6379, under a key prefix of the copy's own. The
whole stack starts; the test waits for Flower to report both workers, then
checks the output holds no warning, every port listens on 127.0.0.1 only,
Ctrl-C ends it with exit 0, the Flower login survives a second run, and
`--clean` (what `make clean` runs) deletes exactly the prefix's keys.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from infra.settings import ROOT, environment_names
from scripts.devstack import checkout_prefix
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

BOUND = 180  # seconds the whole stack may take to come up on a busy machine
MACHINE_REDIS = "redis://127.0.0.1:6379/0"
PORTS = ("PORT", "EVENTS_PORT", "FLOWER_PORT", "WORKER_METRICS_PORT", "AI_WORKER_METRICS_PORT")
# What a newcomer must not have to learn to ignore.
NOISE = re.compile(
    r"Warning|Traceback|Inspect method|Error 130|\"level\": \"(WARNING|ERROR|CRITICAL)\"|"
    r"Editable installation"
)


def _copy_of_the_checkout(target: Path) -> Path:
    """The checkout's files (tracked, and new ones not ignored), as a fresh clone would have."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc shows them) listening on TCP `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def _flower_workers(port: int, login: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")
    request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return {}


def _running_in(root: Path) -> list[int]:
    """PIDs of the processes whose working directory is `root` (every process of a stack)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == root:
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile, or not ours to look at
    return found


def _kill_what_runs_in(root: Path) -> None:
    """Whatever a failed run left in `root`: only processes this test started work there."""
    for pid in _running_in(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class DevStack:
    """`python -m scripts.devstack` in `root`, its merged output in a file."""

    def __init__(self, root: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.output = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scripts.devstack"], cwd=root, env=env,
            stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + BOUND
        while not (found := re.search(pattern, self.text())):
            assert self.process.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, f"{pattern!r} not seen:\n{self.text()[-3000:]}"
            time.sleep(0.2)
        return found

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it to the foreground process; its exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # our own session: only what we started
            self.process.wait(timeout=30)
        self.output.close()


def test_make_run_starts_quietly_on_loopback_and_cleans_up_after_itself(tmp_path):
    try:
        redis.Redis.from_url(MACHINE_REDIS, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379: make run would start its embedded one")
    root = _copy_of_the_checkout(tmp_path / "checkout")
    ports = {name: free_port() for name in PORTS}
    env = {k: v for k, v in os.environ.items() if k not in environment_names()}
    for name in ("WEB_BIND_HOST", "FLOWER_ADDRESS", "PYTHONWARNINGS", "WORKER_METRICS_HOST"):
        env.pop(name, None)
    env.update({name: str(port) for name, port in ports.items()})
    env.update({"WEB_CONCURRENCY": "1", "WORKER_CONCURRENCY": "1", "AI_WORKER_CONCURRENCY": "4"})
    prefix = checkout_prefix(root)
    machine = redis.Redis.from_url(MACHINE_REDIS, decode_responses=True)
    first = DevStack(root, env, tmp_path / "first.log")
    try:
        login = first.wait_for(r"flower: +\S+ login (\S+) \(kept in var/devstack.json\)").group(1)
        assert f"keys under {prefix}" in first.text()
        # Flower up, and it has heard from both workers: everything has started.
        deadline = time.monotonic() + BOUND
        while len(_flower_workers(ports["FLOWER_PORT"], login)) < 2:
            assert time.monotonic() < deadline, first.text()[-3000:]
            time.sleep(0.5)
        # The workers' exporters bind where WORKER_METRICS_HOST says once Settings reads
        # it (devstack passes 127.0.0.1 either way); until then they are not checked.
        exporters_follow = "WORKER_METRICS_HOST" in environment_names()
        for name, port in ports.items():
            if name.endswith("METRICS_PORT") and not exporters_follow:
                continue
            assert _listening(port) == {"0100007F"}, (name, _listening(port))  # 127.0.0.1 only
        assert any(machine.scan_iter(match=f"{prefix}*", count=1000))  # its keys, its prefix
        assert first.interrupt() == 0
        assert _running_in(root) == []  # every process of the stack stopped with it
        text = first.text()
        assert text.rstrip().endswith("devstack | stopped")
        assert not NOISE.search(text), NOISE.search(text).group(0)
    finally:
        first.close()
        _kill_what_runs_in(root)

    second = DevStack(root, env, tmp_path / "second.log")
    try:
        assert second.wait_for(r"flower: +\S+ login (\S+) ").group(1) == login
        second.wait_for(r"web: ")
        assert second.interrupt() == 0  # early: while it migrates or starts
        assert _running_in(root) == []  # nothing left running on its own
        assert not NOISE.search(second.text()), second.text()[-2000:]
    finally:
        second.close()
        _kill_what_runs_in(root)

    machine.set("conveyor-unrelated-key-of-someone-else", "kept")
    try:
        cleaned = subprocess.run(
            [sys.executable, "-m", "scripts.devstack", "--clean"],
            cwd=root, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert re.search(rf"deleted \d+ Redis keys under {re.escape(prefix)}", cleaned.stdout)
        assert not any(machine.scan_iter(match=f"{prefix}*", count=1000))
        assert machine.get("conveyor-unrelated-key-of-someone-else") == "kept"
    finally:
        machine.delete("conveyor-unrelated-key-of-someone-else")
        for key in machine.scan_iter(match=f"{prefix}*", count=1000):
            machine.delete(key)
        machine.close()
