"""`make run` leaves DATABASE_URL unset (SQLite): the Procfile worker still starts and consumes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import uuid
from pathlib import Path

from infra.broker.publish import build_publisher
from infra.settings import ROOT
from shared.jobs.kinds import QUEUES
from tests.support.environment import process_environment


def test_the_ledger_worker_starts_and_consumes_without_a_database_url(settings, redis_client):
    prefix = f"{settings.redis_key_prefix}devdb{uuid.uuid4().hex[:6]}:"
    env = {**process_environment(), "CONVEYOR_REDIS_PREFIX": prefix}
    env.pop("DATABASE_URL", None)  # as `make run` with no database configured
    # A message naming no job: the worker drops it without touching the database.
    build_publisher(dataclasses.replace(settings, redis_key_prefix=prefix), QUEUES).publish(
        "ledger.transaction", "not-a-job-id", "ledger", {}
    )
    queue = f"{prefix}ledger"
    assert redis_client.llen(queue) == 1
    argv = [
        str(Path(sys.executable).parent / "celery"), "-A", "workers.app", "worker",
        "-P", "prefork", "-Q", "ledger", "-c", "1", "-n", f"devdb-{uuid.uuid4().hex[:6]}@%h",
        "--without-mingle", "--without-gossip", "--loglevel=INFO",
    ]  # fmt: skip
    worker = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while redis_client.llen(queue) or redis_client.hlen(f"{prefix}unacked"):
            assert worker.poll() is None, f"the worker exited: {worker.communicate()[0][-2000:]}"
            assert time.monotonic() < deadline, "the worker never consumed its message"
            time.sleep(0.2)
        assert worker.poll() is None
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        for key in redis_client.scan_iter(match=f"{prefix}*"):
            redis_client.delete(key)
