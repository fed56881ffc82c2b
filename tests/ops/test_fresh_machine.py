"""`make test` where nothing runs: embedded PostgreSQL and Redis for the run, RabbitMQ skipped.

A real pytest run in a subprocess, pointed at ports where nothing listens
(as on a fresh machine), runs database and Redis tests against the servers
tests/support/services.py starts, says so, skips the RabbitMQ tests with the
reason (and fails instead under CONVEYOR_TEST_REQUIRE_ALL=1), and leaves no
server running behind it.
"""

from __future__ import annotations

import re
import subprocess
import sys

import psutil

from tests.support.environment import process_environment
from tests.support.processes import ROOT, free_port

# A domain test on PostgreSQL and Redis, and a broker test that needs RabbitMQ.
SELECTION = [
    "tests/domain/test_ledger_paths_agree.py",
    "tests/integration/test_rabbitmq.py::test_cancelled_before_start_never_runs",
]


def _run(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    nobody = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"
    nothing_there = {
        "TEST_POSTGRES_ADMIN_DSN": nobody,
        "TEST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/11",
        "TEST_RABBITMQ_HOST": f"127.0.0.1:{free_port()}",
    }
    env = {**process_environment(), **nothing_there, **extra_env}
    if "CONVEYOR_TEST_REQUIRE_ALL" not in extra_env:  # CI's, not this run's
        env.pop("CONVEYOR_TEST_REQUIRE_ALL", None)
    for name in ("TEST_POSTGRES_HOST", "TEST_POSTGRES_PORT", "PYTEST_XDIST_WORKER"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *SELECTION],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _servers_of(output: str) -> list[int]:
    return [
        int(port) for port in re.findall(r"started an embedded one on 127\.0\.0\.1:(\d+)", output)
    ]


def _listening(port: int) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == port
        for c in psutil.net_connections("tcp")
    )


def test_a_run_with_nothing_running_starts_its_own_servers_and_skips_rabbitmq():
    result = _run({})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "no PostgreSQL answered; started an embedded one" in output
    assert "no Redis answered; started an embedded one" in output
    assert re.search(r"\b3 passed, 1 skipped\b", output), output[-2000:]
    assert "SKIPPED" in output and "no RabbitMQ answers on 127.0.0.1:" in output
    ports = _servers_of(output)
    assert len(ports) == 2
    assert not any(_listening(port) for port in ports), "a server of the run outlived it"


def test_with_every_service_required_a_skip_fails_the_run():
    result = _run({"CONVEYOR_TEST_REQUIRE_ALL": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "CONVEYOR_TEST_REQUIRE_ALL=1: 1 test(s) skipped" in output
