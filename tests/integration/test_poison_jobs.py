"""Poison jobs: a job whose runs keep killing their worker process is failed, not delivered again.

Real prefork workers (the Procfile's pool, two children) on a private broker
prefix. The poison job is caught mid-run (an AI job whose upstream call the
fake server holds; a ledger job whose posting waits on a wallet row the test
holds) and the test plays the OOM killer: it SIGKILLs the pool child running
it, three times. Meanwhile another user's jobs go through the other child.
The AI job's lost runs are counted by the worker's main process
(workers/poison.py); the ledger job's dead session still holds its job row
when the child dies, so there the next claim counts them (shared/jobs/claims.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select, text

from shared.models import Job, LedgerEntry
from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest, Scripted
from tests.support.accounts import PASSWORD
from tests.support.polling import wait_for_state
from tests.support.stacks import private_stack

MAX_LOST_RUNS = 3


class HoldingUpstream(FakeOpenAIServer):
    """Answers every prompt at once, except those saying "poison": those it holds."""

    holding = True

    def default(self, request: RecordedRequest) -> Scripted:
        if self.holding and "poison" in json.dumps(request.json):
            return Scripted(delay=300)
        return super().default(request)

    def held_ports(self) -> set[int]:
        """Client ports of the held calls (the fake answers each call on its own connection)."""
        return {r.peer_port for r in self.requests if "poison" in json.dumps(r.json)}


@pytest.fixture
def upstream():
    with HoldingUpstream(api_key="sk-poison-test") as server:
        yield server


@pytest.fixture
def stack(settings, redis_client, tmp_path: Path, upstream):
    with private_stack(
        settings,
        redis_client,
        tmp_path,
        ai_provider="openai",
        ai_base_url=upstream.base_url,
        ai_api_key="sk-poison-test",
        # No AI cache, so no single-flight lock: a killed run's lock would make
        # the next run wait out its lifetime (AI_TIMEOUT_SECONDS + 15 s) first.
        cache_enabled=False,
        admin_username="poison_admin",
        admin_password=PASSWORD,
    ) as private:
        yield private


def _user(client) -> tuple[int, dict[str, str]]:
    name = f"poison_{uuid.uuid4().hex[:10]}"
    created = client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    login = client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    return created.get_json()["id"], {"Authorization": f"Bearer {login.get_json()['access_token']}"}


def _submit(client, headers, path: str, body: dict) -> str:
    response = client.post(f"/api/v1{path}", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


@contextmanager
def _wallet_locked(res, user_id: int) -> Iterator[int]:
    """Hold the user's wallet row, so postings to it block inside the worker; the holder's pid."""
    with res.engine.connect() as conn:
        conn.execute(text("BEGIN"))
        # Held for minutes on purpose: not ended as an idle transaction.
        conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
        conn.execute(text("SELECT 1 FROM wallets WHERE user_id = :u FOR UPDATE"), {"u": user_id})
        yield conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        conn.execute(text("ROLLBACK"))


def _wait(predicate: Callable[[], object], bound: float, what: str) -> object:
    deadline = time.monotonic() + bound
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"{what} not within {bound:.0f}s"
        time.sleep(0.1)
    return found


def _children(pid: int) -> set[int]:
    """The worker's pool children (forked by any of its threads: replacements come from another)."""
    children: set[int] = set()
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as listing:
                children.update(int(child) for child in listing.read().split())
        except OSError:
            continue  # the thread ended meanwhile
    return children


def _blocked_client_ports(res, holder: int) -> set[int]:
    """Client ports of the sessions the wallet's holder blocks (the posting under test).

    Only those: the next run's claim also waits on a lock for a moment (the job
    row, which a killed run's session holds until its statement times out),
    and a child killed there never started the job, so it is no lost run.
    """
    with res.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT client_port FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND :holder = ANY(pg_blocking_pids(pid))"
            ),
            {"holder": holder},
        ).all()
    return {port for (port,) in rows if port}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _local_port_inodes(ports: set[int]) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rpartition(":")[2], 16) in ports:
                    inodes.add(fields[9])
    return inodes


def _child_owning(worker_pid: int, ports: set[int], seen: set[int]) -> int | None:
    """The pool child (not one of `seen`) with a socket on one of these local ports."""
    inodes = _local_port_inodes(ports)
    if not inodes:
        return None
    for child in _children(worker_pid) - seen:
        if _socket_inodes(child) & inodes:
            return child
    return None


def _job(res, task_id: str) -> Job:
    with res.sessions() as session:
        return session.get(Job, uuid.UUID(task_id))


def _entries(res, task_id: str) -> int:
    with res.sessions() as session:
        return len(
            session.scalars(select(LedgerEntry.id).where(LedgerEntry.job_id == task_id)).all()
        )


def _kill_three_runs(stack, worker, find_child, healthy_job: Callable[[int], str]) -> list[int]:
    """SIGKILL the child running the poison job, run after run; healthy jobs go through between."""
    killed: list[int] = []
    for run in range(1, MAX_LOST_RUNS + 1):
        child = _wait(
            lambda: find_child(set(killed)), 120, f"run {run} of the poison job in a pool child"
        )
        # Healthy jobs keep flowing through the other child meanwhile.
        task_id = healthy_job(run)
        assert wait_for_state(*stack.healthy, task_id, timeout=60)["state"] == "SUCCESS"
        os.kill(child, signal.SIGKILL)  # what the OOM killer does
        killed.append(child)
    return killed


def _quarantined(stack, worker, task_id: str, killed: list[int], healthy_job) -> Job:
    final = wait_for_state(*stack.poisoned, task_id, timeout=120)
    assert final["state"] == "FAILURE"
    assert final["error"]["code"] == "worker_lost"
    job = _job(stack.resources, task_id)
    assert (job.state, job.error_code, job.lost_runs) == ("FAILURE", "worker_lost", MAX_LOST_RUNS)
    assert len(set(killed)) == MAX_LOST_RUNS  # a new child each time: the worker came back itself
    assert worker.poll() is None
    # Not run again: a healthy job goes through after it, and the poison job
    # was started exactly once per killed run.
    after = healthy_job(MAX_LOST_RUNS + 1)
    assert wait_for_state(*stack.healthy, after, timeout=60)["state"] == "SUCCESS"
    assert stack.deliveries(task_id, "received") in (MAX_LOST_RUNS, MAX_LOST_RUNS + 1)
    assert len(_children(worker.pid)) == 2
    # The owner hears of it like of any failure.
    client, headers = stack.poisoned
    notifications = client.get("/api/v1/notifications", headers=headers).get_json()["items"]
    assert any(n["task_id"] == task_id and n["type"] == "job.failed" for n in notifications)
    return job


@pytest.mark.timeout(300)
def test_an_ai_job_that_kills_its_worker_child_three_times_is_quarantined(stack, upstream):
    client = stack.client
    _poisoned_user, poisoned = _user(client)
    _healthy_user, healthy = _user(client)
    stack.poisoned, stack.healthy = (client, poisoned), (client, healthy)
    worker = stack.start_worker("prefork", queues="ai", concurrency=2)

    def healthy_job(n: int) -> str:
        return _submit(client, healthy, "/ai/generate", {"kind": "text", "prompt": f"fine {n}"})

    task_id = _submit(client, poisoned, "/ai/generate", {"kind": "text", "prompt": "poison"})
    killed = _kill_three_runs(
        stack, worker, lambda seen: _child_owning(worker.pid, upstream.held_ports(), seen),
        healthy_job,
    )  # fmt: skip
    _quarantined(stack, worker, task_id, killed, healthy_job)
    # The main process counted each lost run as the child died, and acked the third.
    assert stack.deliveries(task_id, "received") == MAX_LOST_RUNS
    assert len([r for r in upstream.requests if "poison" in json.dumps(r.json)]) == MAX_LOST_RUNS
    # Once the cause is fixed (the upstream answers), a replay runs it like any failed job.
    upstream.holding = False
    login = client.post(
        "/api/v1/auth/login", json={"username": "poison_admin", "password": PASSWORD}
    )
    admin = {"Authorization": f"Bearer {login.get_json()['access_token']}"}
    listed = client.get(
        "/api/v1/system/failed-jobs", query_string={"error_code": "worker_lost"}, headers=admin
    ).get_json()
    assert [item["task_id"] for item in listed["items"]] == [task_id]
    assert listed["items"][0]["lost_runs"] == MAX_LOST_RUNS
    replayed = client.post(
        "/api/v1/system/failed-jobs/replay", json={"task_ids": [task_id]}, headers=admin
    )
    assert replayed.status_code == 202 and replayed.get_json()["replayed"] == 1
    assert wait_for_state(client, poisoned, task_id, timeout=60)["state"] == "SUCCESS"
    job = _job(stack.resources, task_id)
    assert (job.lost_runs, job.replays) == (0, 1)


@pytest.mark.timeout(400)
def test_a_ledger_job_that_kills_its_worker_child_three_times_is_quarantined(stack):
    client, res = stack.client, stack.resources
    poisoned_user, poisoned = _user(client)
    _healthy_user, healthy = _user(client)
    stack.poisoned, stack.healthy = (client, poisoned), (client, healthy)
    worker = stack.start_worker("prefork", concurrency=2)

    def healthy_job(n: int) -> str:
        return _submit(client, healthy, "/transactions", {"type": "credit", "amount": n})

    with _wallet_locked(res, poisoned_user) as holder:
        task_id = _submit(client, poisoned, "/transactions/random", {"count": 1})
        killed = _kill_three_runs(
            stack, worker,
            lambda seen: _child_owning(worker.pid, _blocked_client_ports(res, holder), seen),
            healthy_job,
        )  # fmt: skip
        _quarantined(stack, worker, task_id, killed, healthy_job)
    assert _entries(res, task_id) == 0
