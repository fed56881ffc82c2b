"""1,000 concurrent streams on one `events` process (the Procfile's line), one Redis reader.

200 jobs, 5 streams each, all opened while the jobs wait in the queue; then a
real worker runs them and every stream must get its job's events live, end
with SUCCESS and be closed by the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from bench.streams import open_many
from tests.support.accounts import register_and_login
from tests.support.events import running_events
from tests.support.workers import running_worker

pytestmark = pytest.mark.integration

USERS, JOBS_PER_USER, STREAMS_PER_JOB = 5, 40, 5
BOUND = 90.0


def test_a_thousand_streams_on_one_events_process_all_see_their_job_end(
    app, celery_app, process_env, redis_client, tmp_path: Path
):
    client = app.test_client()
    jobs: list[tuple[str, dict[str, str]]] = []
    for _ in range(USERS):
        _, headers = register_and_login(client, f"crowd_{uuid.uuid4().hex[:10]}")
        for _ in range(JOBS_PER_USER):
            accepted = client.post(
                "/api/v1/transactions", json={"type": "credit", "amount": 3}, headers=headers
            )
            assert accepted.status_code == 202, accepted.get_json()
            jobs.append((accepted.get_json()["task_id"], headers))

    with running_events(process_env, tmp_path / "events.log") as events:
        loop = asyncio.new_event_loop()
        opened: dict[str, object] = {}

        async def follow() -> None:
            groups = []
            for task_id, headers in jobs:
                paths = [f"/api/v1/tasks/{task_id}/events"] * STREAMS_PER_JOB
                groups.append(open_many("127.0.0.1", events.port, paths, headers))
            started = await asyncio.gather(*groups)
            opened["results"] = [r for results, _tasks in started for r in results]
            tasks = [t for _results, running in started for t in running]
            opened["ready"] = True
            await asyncio.wait(tasks, timeout=BOUND)

        runner = threading.Thread(target=lambda: loop.run_until_complete(follow()))
        runner.start()
        try:
            deadline = time.monotonic() + 60
            while not (opened.get("ready") and all(r.events for r in opened["results"])):
                assert runner.is_alive() and time.monotonic() < deadline, "streams not all open"
                time.sleep(0.1)
            results = opened["results"]
            assert len(results) == USERS * JOBS_PER_USER * STREAMS_PER_JOB == 1000
            # Every stream is open and has its job's PENDING event; the process
            # reads Redis with one blocking XREAD for all of them.
            assert _blocking_readers(events.process.pid, redis_client) == 1
            worker_started = time.time()
            with running_worker(celery_app, concurrency=8, queues="ledger"):
                runner.join(timeout=BOUND)
            assert not runner.is_alive(), "streams still open after their jobs ended"
        finally:
            runner.join(timeout=BOUND)
            loop.close()

    failed = [r for r in results if not (r.status == 200 and r.terminal and r.closed_by_server)]
    assert not failed, f"{len(failed)} streams failed, e.g. {failed[0]}"
    for result in results:
        # PENDING replayed at connect (no worker yet), SUCCESS pushed live after.
        assert result.states[0] == "PENDING" and result.states[-1] == "SUCCESS"
        assert result.arrivals[0] < worker_started <= result.arrivals[-1]
        ids = [event_id for event_id, _kind, _data in result.events]
        assert len(set(ids)) == len(ids)


def _blocking_readers(server_pid: int, redis_client) -> int:
    """Redis clients of the events process (master and worker) blocked in XREAD."""
    ports = set()
    for proc in [psutil.Process(server_pid), *psutil.Process(server_pid).children(recursive=True)]:
        for conn in proc.net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == redis_client.connection_pool.connection_kwargs.get(
                "port", 6379
            ):
                ports.add(conn.laddr.port)
    clients = redis_client.client_list()
    return sum(
        1 for c in clients if c.get("cmd") == "xread" and int(c["addr"].rsplit(":", 1)[1]) in ports
    )
