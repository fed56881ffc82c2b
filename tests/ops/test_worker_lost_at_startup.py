"""A worker whose prefork child dies during start-up exits; under supervise.py it comes back.

Celery checks once, on the consumer's first start, that no pool process has
exited yet (`asynloop` -> billiard `Pool.did_start_ok()`), and raises
`WorkerLostError('Could not start worker processes')` otherwise; the worker
then stops. No setting turns that check off, so the answer is a restart: this
runs the Procfile's worker line under scripts/supervise.py, kills a pool child
before the worker is ready, and checks the queued jobs still run once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from shared.models import Job, LedgerEntry
from tests.support.accounts import PASSWORD
from tests.support.environment import process_environment
from tests.support.processes import running_server

BOUND = 90.0


def _wait(predicate: Callable[[], object], bound: float, what: str) -> object:
    deadline = time.monotonic() + bound
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {bound:.0f}s"
        time.sleep(0.01)
    return value


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_worker_whose_pool_child_dies_at_start_is_restarted_and_runs_the_queue(
    settings, redis_client, tmp_path: Path
):
    from api import create_app
    from shared.resources import Resources

    prefix = f"{settings.redis_key_prefix}startup-{uuid.uuid4().hex[:8]}:"
    private = dataclasses.replace(settings, redis_key_prefix=prefix)
    api = create_app(private)
    client = api.test_client()
    res = Resources.build(private)
    name = f"starter_{uuid.uuid4().hex[:10]}"
    client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    token = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    headers = {"Authorization": f"Bearer {token.get_json()['access_token']}"}
    ids = [
        client.post(
            "/api/v1/transactions", json={"type": "credit", "amount": 10 + n}, headers=headers
        ).get_json()["task_id"]
        for n in range(3)
    ]

    celery = str(Path(sys.executable).parent / "celery")
    worker_line = (
        f"exec {celery} -A workers.app worker -P prefork -Q ledger -c 2"
        f" -n starter-{uuid.uuid4().hex[:6]}@%h"
    )
    argv = [
        sys.executable, "-m", "scripts.supervise", "--name", "worker",
        "--initial-delay", "0.5", "--", worker_line,
    ]  # fmt: skip
    env = {**process_environment(), "CONVEYOR_REDIS_PREFIX": prefix, "LOG_LEVEL": "INFO"}
    log_path = tmp_path / "worker.log"
    try:
        with running_server(argv, env=env, log_path=log_path) as supervisor:

            def first_pool_child() -> list[int]:
                workers = _children(supervisor.pid)  # the celery main process (sh exec'd it)
                return _children(workers[0])[:1] if workers else []

            os.kill(_wait(first_pool_child, 30, "a pool child starting")[0], signal.SIGKILL)
            _wait(lambda: "restart #1" in log_path.read_text(), 60, "the worker restarted")
            log = log_path.read_text()
            assert "Could not start worker processes" in log, log[-3000:]

            def states() -> set[str]:
                with res.sessions() as session:
                    jobs = session.scalars(select(Job).where(Job.id.in_(map(uuid.UUID, ids))))
                    return {job.state for job in jobs}

            _wait(lambda: states() == {"SUCCESS"}, BOUND, "the queued jobs finishing")
            with res.sessions() as session:
                posted = session.scalars(
                    select(LedgerEntry.job_id).where(LedgerEntry.job_id.in_(map(uuid.UUID, ids)))
                ).all()
            assert sorted(map(str, posted)) == sorted(ids)  # each exactly once
            assert supervisor.poll() is None
    finally:
        res.close()
        api.extensions["conveyor"].close()
        for key in redis_client.scan_iter(match=f"{prefix}*", count=1000):
            redis_client.delete(key)
