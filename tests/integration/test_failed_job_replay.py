"""Failed jobs listed by cause and replayed: an AI upstream outage mended, a ledger job posted once.

A private stack with a real prefork worker (ai, ledger and webhooks queues)
whose AI provider is a real HTTP server on loopback that fails, then recovers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server

from shared.jobs import utcnow
from shared.jobs.events import EventLog, StreamKeys
from shared.models import FailedJobReplay, Job, LedgerEntry
from tests.fakes.openai_server import FakeOpenAIServer, Scripted
from tests.support.accounts import register_and_login
from tests.support.environment import process_environment
from tests.support.polling import wait_for_state
from tests.support.receivers import running_receiver
from tests.support.stacks import private_stack

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
ADMIN = "replay_admin"
ADMIN_PASSWORD = "replay-admin-password"


@pytest.fixture(scope="module")
def upstream():
    with FakeOpenAIServer(api_key="sk-replay-test") as server:
        yield server


@pytest.fixture(scope="module")
def stack(settings, redis_client, tmp_path_factory, upstream):
    with private_stack(
        settings,
        redis_client,
        Path(tmp_path_factory.mktemp("replay")),
        ai_provider="openai",
        ai_base_url=upstream.base_url,
        ai_api_key="sk-replay-test",
        ai_max_retries=0,
        admin_username=ADMIN,
        admin_password=ADMIN_PASSWORD,
        webhook_allow_private_urls=True,
    ) as private:
        private.start_worker("prefork", queues="ai,ledger,webhooks", concurrency=2)
        yield private


@pytest.fixture(scope="module")
def admin(stack) -> dict[str, str]:
    login = stack.client.post(
        "/api/v1/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD}
    )
    return {"Authorization": f"Bearer {login.get_json()['access_token']}"}


def _user(stack) -> tuple[int, dict[str, str]]:
    return register_and_login(stack.client, f"replay_{uuid.uuid4().hex[:10]}")


def _submit(stack, headers, path: str, body: dict) -> str:
    response = stack.client.post(f"/api/v1{path}", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


def _failed(stack, admin, **query) -> dict:
    response = stack.client.get("/api/v1/system/failed-jobs", query_string=query, headers=admin)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _replay(stack, admin, body: dict):
    return stack.client.post("/api/v1/system/failed-jobs/replay", json=body, headers=admin)


def _job(stack, task_id: str) -> Job:
    with stack.resources.sessions() as session:
        return session.get(Job, uuid.UUID(task_id))


def test_an_upstream_outage_is_listed_by_cause_and_mended_by_a_replay(stack, admin, upstream):
    user_id, headers = _user(stack)
    other_id, other = _user(stack)
    started = utcnow()
    with running_receiver() as receiver:
        hook = {"url": receiver.url(), "events": ["job.succeeded", "job.failed"]}
        assert stack.client.post("/api/v1/webhooks", json=hook, headers=headers).status_code == 201
        # The outage: every call fails, so each job fails with the upstream's code.
        upstream.push(*[Scripted(status=503) for _ in range(3)])
        outage = [
            _submit(stack, headers, "/ai/generate", {"kind": "text", "prompt": f"outage {n}"})
            for n in range(3)
        ]
        for task_id in outage:
            failed = wait_for_state(stack.client, headers, task_id, timeout=60)
            assert (failed["state"], failed["error"]["code"]) == ("FAILURE", "ai_unavailable")
        # Another cause, another user: a debit the wallet cannot cover.
        overdraft = _submit(stack, other, "/transactions", {"type": "debit", "amount": 10})
        assert wait_for_state(stack.client, other, overdraft, timeout=60)["state"] == "FAILURE"
        receiver.wait_for(3)  # job.failed for each AI job

        listed = _failed(stack, admin, error_code="ai_unavailable", user_id=user_id)
        assert {item["task_id"] for item in listed["items"]} == set(outage)
        assert listed["total"] == 3
        assert all(item["error"]["code"] == "ai_unavailable" for item in listed["items"])
        by_kind = _failed(stack, admin, kind="ledger.transaction", user_id=other_id)
        assert [item["task_id"] for item in by_kind["items"]] == [overdraft]
        window = {"since": started.isoformat(), "until": (utcnow() + timedelta(1)).isoformat()}
        assert _failed(stack, admin, user_id=user_id, **window)["total"] == 3
        assert _failed(stack, admin, user_id=user_id, until=started.isoformat())["total"] == 0

        # A dry run says what the filter would replay and changes nothing.
        flt = {"error_code": "ai_unavailable", "user_id": user_id}
        preview = _replay(stack, admin, {"filter": flt, "dry_run": True})
        assert preview.status_code == 200
        assert preview.get_json()["would_replay"] == 3
        assert all(_job(stack, t).state == "FAILURE" for t in outage)

        # The upstream recovers (its default answer); the replay runs the same jobs again.
        replayed = _replay(stack, admin, {"filter": flt})
        assert replayed.status_code == 202, replayed.get_json()
        body = replayed.get_json()
        assert body["replayed"] == 3
        assert {item["task_id"] for item in body["items"]} == set(outage)
        for task_id in outage:
            done = wait_for_state(stack.client, headers, task_id, timeout=60)
            assert done["state"] == "SUCCESS", done
            assert done["result"]["text"]
            job = _job(stack, task_id)
            assert (job.replays, job.attempts, job.error_code) == (1, 2, None)
        # The same webhook endpoint hears of the replay's outcome (a delivery of its own).
        events = [json.loads(r.body)["type"] for r in receiver.wait_for(6)]
        assert sorted(events) == ["job.failed"] * 3 + ["job.succeeded"] * 3
    # The job's stream tells the whole story and ends with the replay's outcome.
    log = EventLog(stack.resources.redis, StreamKeys(stack.settings.redis_key_prefix))
    states = [json.loads(e.data)["state"] for e in log.job_events(outage[0]) if e.type == "state"]
    assert states[states.index("FAILURE") :][:2] == ["FAILURE", "PENDING"]
    assert states[-1] == "SUCCESS"
    stream = stack.client.get(f"/api/v1/tasks/{outage[0]}/events", headers=headers)
    assert stream.status_code == 200
    frames = stream.get_data(as_text=True)
    assert frames.rstrip().endswith("}") and '"state":"SUCCESS"' in frames.split("event: state")[-1]
    # The owner is notified of the replay's outcome too.
    notes = stack.client.get("/api/v1/notifications", headers=headers).get_json()["items"]
    assert sum(n["task_id"] == outage[0] and n["type"] == "job.succeeded" for n in notes) == 1
    # The replay is recorded: who, when, which jobs and what they had failed with.
    history = stack.client.get("/api/v1/system/failed-jobs/replays", headers=admin).get_json()
    record = next(r for r in history["items"] if r["id"] == body["replay_id"])
    assert record["admin"]["username"] == ADMIN
    assert record["selection"] == {"filter": flt}
    assert {(j["task_id"], j["error"]["code"]) for j in record["jobs"]} == {
        (t, "ai_unavailable") for t in outage
    }


def test_a_ledger_job_replayed_twice_at_once_posts_once(stack, admin):
    _user_id, headers = _user(stack)
    debit = _submit(stack, headers, "/transactions", {"type": "debit", "amount": 500})
    failed = wait_for_state(stack.client, headers, debit, timeout=60)
    assert failed["error"]["code"] == "insufficient_funds"
    credit = _submit(stack, headers, "/transactions", {"type": "credit", "amount": 800})
    assert wait_for_state(stack.client, headers, credit, timeout=60)["state"] == "SUCCESS"

    answers: list = []
    barrier = threading.Barrier(2)

    def replay_it() -> None:
        client = stack.client.application.test_client()
        barrier.wait()
        answers.append(_replay_with(client, admin, {"task_ids": [debit]}))

    threads = [threading.Thread(target=replay_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(status for status, _ in answers) == [202, 202]
    assert sorted(body["replayed"] for _, body in answers) == [0, 1]
    loser = next(body for _, body in answers if body["replayed"] == 0)
    assert loser["skipped"] == [{"task_id": debit, "reason": "not_failed"}]
    assert wait_for_state(stack.client, headers, debit, timeout=60)["state"] == "SUCCESS"
    # Once more, now that it succeeded: nothing to replay.
    again = _replay(stack, admin, {"task_ids": [debit]}).get_json()
    assert (again["replayed"], again["skipped"][0]["reason"]) == (0, "not_failed")
    with stack.resources.sessions() as session:
        entries = session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.job_id == debit)
        )
        recorded = session.scalar(
            select(func.count())
            .select_from(FailedJobReplay)
            .where(FailedJobReplay.selection == {"task_ids": [debit]})
        )
    assert entries == 1
    assert recorded == 1  # the replay that queued nothing left no record
    wallet = stack.client.get("/api/v1/wallet", headers=headers).get_json()
    assert wallet["balance"] == 300


def _replay_with(client, admin, body: dict) -> tuple[int, dict]:
    response = client.post("/api/v1/system/failed-jobs/replay", json=body, headers=admin)
    return response.status_code, response.get_json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "(body)"),
        ({"task_ids": [], "filter": None}, "task_ids"),
        ({"task_ids": ["not-a-uuid"]}, "task_ids.0"),
        ({"filter": {"error_code": "Not A Code"}}, "filter.error_code"),
        ({"filter": {"kind": "no.such.kind"}}, "filter.kind"),
        ({"filter": {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}}, "filter"),
        ({"filter": {"since": "2026-01-01T00:00:00"}}, "filter.since"),  # no time zone
        ({"task_ids": [str(uuid.uuid4())], "filter": {}}, "(body)"),
        ({"filter": {}, "surprise": 1}, "surprise"),
    ],
)
def test_bad_replay_requests_are_422_and_change_nothing(stack, admin, body, field):
    before = _failed(stack, admin)["total"]
    response = _replay(stack, admin, body)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert any(detail["field"].startswith(field) for detail in error["details"]), error
    assert _failed(stack, admin)["total"] == before


def test_failed_jobs_are_for_admins_only(stack):
    _user_id, headers = _user(stack)
    assert stack.client.get("/api/v1/system/failed-jobs").status_code == 401
    assert stack.client.get("/api/v1/system/failed-jobs", headers=headers).status_code == 403
    refused = _replay(stack, headers, {"filter": {}})
    assert refused.status_code == 403
    bad = stack.client.get(
        "/api/v1/system/failed-jobs", query_string={"user_id": "x"}, headers=headers
    )
    assert bad.status_code == 403  # who asks is checked before what is asked


@pytest.fixture
def served_stack(stack):
    """The stack's app behind a real HTTP server on loopback, for the CLI."""
    server = make_server("127.0.0.1", 0, stack.client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _cli(url: str, token: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **process_environment(),
        "CONVEYOR_URL": url,
        "CONVEYOR_TOKEN": token,
        "XDG_CONFIG_HOME": str(tmp_path),  # nothing of the user's is read
    }
    return subprocess.run(
        [CONVEYOR, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_cli_lists_and_replays_failed_jobs(stack, admin, served_stack, tmp_path):
    user_id, headers = _user(stack)
    debit = _submit(stack, headers, "/transactions", {"type": "debit", "amount": 70})
    assert wait_for_state(stack.client, headers, debit, timeout=60)["state"] == "FAILURE"
    credit = _submit(stack, headers, "/transactions", {"type": "credit", "amount": 100})
    assert wait_for_state(stack.client, headers, credit, timeout=60)["state"] == "SUCCESS"
    token = admin["Authorization"].removeprefix("Bearer ")
    mine = ("--error-code", "insufficient_funds", "--user-id", str(user_id))

    listed = _cli(served_stack, token, tmp_path, "admin", "failed", "list", *mine, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [item["task_id"] for item in json.loads(listed.stdout)["items"]] == [debit]

    dry = _cli(served_stack, token, tmp_path, "admin", "failed", "replay", "--all-matching", *mine,
               "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "would replay 1 job(s)" in dry.stdout and debit in dry.stdout
    assert _job(stack, debit).state == "FAILURE"

    replayed = _cli(served_stack, token, tmp_path, "admin", "failed", "replay", debit)
    assert replayed.returncode == 0, replayed.stderr
    assert f"{debit} PENDING" in replayed.stdout and "replayed 1 job(s)" in replayed.stdout
    assert wait_for_state(stack.client, headers, debit, timeout=60)["state"] == "SUCCESS"

    usage = _cli(served_stack, token, tmp_path, "admin", "failed", "replay", debit, "--kind",
                 "ai.text")  # fmt: skip
    assert usage.returncode == 2  # ids and filters together: a usage error, nothing sent
    user_token = headers["Authorization"].removeprefix("Bearer ")
    refused = _cli(served_stack, user_token, tmp_path, "admin", "failed", "list")
    assert refused.returncode == 5 and "administrators" in refused.stderr
