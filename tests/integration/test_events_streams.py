"""Event streams on a real `events` process (the Procfile's line) fed by a real worker."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.events import EventsServer, read_events, running_events
from tests.support.polling import wait_for_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def events_server(process_env, tmp_path_factory) -> EventsServer:
    log_path = Path(tmp_path_factory.mktemp("events")) / "events.log"
    with running_events(process_env, log_path, EVENTS_KEEPALIVE_SECONDS="1") as server:
        yield server


@pytest.fixture(scope="module")
def finished_job(worker, app, events_server):
    """A ledger.random job of 4 postings followed live from submit to SUCCESS."""
    from tests.support.accounts import register_and_login

    client = app.test_client()
    _, headers = register_and_login(client, f"follower_{uuid.uuid4().hex[:10]}")
    accepted = client.post("/api/v1/transactions/random", json={"count": 4}, headers=headers)
    assert accepted.status_code == 202
    task_id = accepted.get_json()["task_id"]
    received = read_events(events_server.connection(), f"/api/v1/tasks/{task_id}/events", headers)
    return headers, task_id, received


def test_a_stream_follows_a_random_batch_to_success_and_closes(finished_job):
    _headers, task_id, received = finished_job
    assert received.status == 200
    assert received.headers["Content-Type"].startswith("text/event-stream")
    assert received.ended  # the server closed it after the terminal event
    states = received.states
    assert states[-1] == "SUCCESS" and states.count("SUCCESS") == 1
    # Every transition in order: PENDING (submit), STARTED (claim), one PROGRESS
    # per posting but the last (25, 50, 75: the last commits with SUCCESS).
    assert states == ["PENDING", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    progress = [data["progress"] for _id, kind, data in received.events if kind == "progress"]
    assert progress == [25, 50, 75]
    assert all(data["task_id"] == task_id for _id, _kind, data in received.events)
    assert received.events[-1][2]["result"]["count"] == 4
    ids = received.ids
    assert all(ids) and len(set(ids)) == len(ids)


def test_last_event_id_replays_exactly_the_missed_events(finished_job, events_server):
    headers, task_id, received = finished_job
    path = f"/api/v1/tasks/{task_id}/events"
    for seen in (1, 3, len(received.events) - 1):
        resumed = read_events(
            events_server.connection(), path, {**headers, "Last-Event-ID": received.ids[seen - 1]}
        )
        assert resumed.events == received.events[seen:]
        assert resumed.ended
    by_query = read_events(
        events_server.connection(), f"{path}?last_event_id={received.ids[1]}", headers
    )
    assert by_query.events == received.events[2:]
    # After the terminal event there is nothing more: 204 tells EventSource to stop.
    done = read_events(
        events_server.connection(), path, {**headers, "Last-Event-ID": received.ids[-1]}
    )
    assert done.status == 204


def test_web_serves_the_same_replay_and_closes(finished_job, client):
    headers, task_id, received = finished_job
    response = client.get(f"/api/v1/tasks/{task_id}/events", headers=headers)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert body.startswith("retry: ")
    assert [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("id: ")] == (
        received.ids
    )


def test_user_stream_has_job_events_then_the_notification(finished_job, client, events_server):
    headers, task_id, received = finished_job
    replay = client.get("/api/v1/events", headers=headers).get_data(as_text=True)
    kinds = [line.split(": ", 1)[1] for line in replay.splitlines() if line.startswith("event: ")]
    assert kinds == ["state", "state", "progress", "progress", "progress", "state", "notification"]
    # Live on the events process, resumed after the job's terminal event.
    after_success = read_events(
        events_server.connection(),
        "/api/v1/events",
        {**headers, "Last-Event-ID": received.ids[-1]},
        stop_after=1,
    )
    (_id, kind, data), = after_success.events  # fmt: skip
    assert kind == "notification" and data["task_id"] == task_id
    assert data["type"] == "job.succeeded"


def test_another_users_stream_is_the_status_endpoints_404(finished_job, client, events_server):
    from tests.support.accounts import register_and_login

    _headers, task_id, _received = finished_job
    _, stranger = register_and_login(client, f"stranger_{uuid.uuid4().hex[:10]}")
    status_404 = client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=stranger)
    assert status_404.status_code == 404
    for target in (task_id, str(uuid.uuid4()), "not-a-uuid"):
        conn = events_server.connection()
        conn.request("GET", f"/api/v1/tasks/{target}/events", headers=stranger)
        answer = conn.getresponse()
        assert answer.status == 404
        assert answer.read() == status_404.data
        conn.close()


def test_a_ticket_opens_streams_only_and_expires(finished_job, client, settings, events_server):
    from tests.support.apps import app_with

    headers, task_id, received = finished_job
    issued = client.post("/api/v1/events/ticket", headers=headers)
    assert issued.status_code == 200
    ticket = issued.get_json()["ticket"]
    assert issued.get_json()["expires_in"] == settings.events_ticket_ttl_seconds
    path = f"/api/v1/tasks/{task_id}/events"
    by_ticket = read_events(events_server.connection(), f"{path}?ticket={ticket}", {})
    assert by_ticket.status == 200 and by_ticket.events == received.events
    # Nothing else accepts it: not as a bearer token, not in any other route's URL.
    assert client.get(f"/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {ticket}"})\
        .status_code == 401  # fmt: skip
    assert client.get(f"/api/v1/tasks/{task_id}?ticket={ticket}").status_code == 401
    assert client.get(f"/api/v1/wallet?ticket={ticket}").status_code == 401
    # A bearer token is never read from a URL, under any name.
    token = headers["Authorization"].removeprefix("Bearer ")
    for query in (f"ticket={token}", f"access_token={token}"):
        assert read_events(events_server.connection(), f"{path}?{query}", {}).status == 401

    # A ticket of a 1 s lifetime (same signing key) opens a stream, then stops opening them.
    with app_with(settings, events_ticket_ttl_seconds=1) as short_lived:
        brief = short_lived.test_client().post("/api/v1/events/ticket", headers=headers)
    assert brief.get_json()["expires_in"] == 1
    url = f"{path}?ticket={brief.get_json()['ticket']}"
    statuses = [read_events(events_server.connection(), url, {}).status]
    import time

    deadline = time.monotonic() + 5
    while statuses[-1] != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
        statuses.append(read_events(events_server.connection(), url, {}).status)
    assert statuses[0] == 200 and statuses[-1] == 401


def test_a_poll_of_a_running_or_queued_job_carries_retry_after(finished_job, client):
    headers, task_id, _received = finished_job
    done = wait_for_state(client, headers, task_id)
    finished = client.get(f"/api/v1/tasks/{task_id}", headers=headers)
    assert done["state"] == "SUCCESS" and "Retry-After" not in finished.headers
    assert done["queue_position"] is None and done["eta_seconds"] is None


def test_a_quiet_stream_ends_from_the_row_when_the_jobs_last_event_was_lost(
    process_env, tmp_path, app, resources
):
    """A job finished with no event in its log (Redis lost it): the stream asks the row and ends."""
    from shared import jobs
    from tests.support.accounts import register_and_login

    user_id, headers = register_and_login(app.test_client(), f"quiet_{uuid.uuid4().hex[:10]}")
    # Recorded as a submission records it (row, PENDING document and event), never
    # published, so no worker of this module takes it.
    with resources.autocommit_engine.connect() as conn:
        created = jobs.create_job(
            conn, owner_id=user_id, kind="ledger.transaction",
            params={"type": "credit", "amount": 7}, ttl_seconds=3600,
        )  # fmt: skip
    resources.statuses.record_enqueued(user_id, created.status)
    task_id = created.status["task_id"]
    # The row finishes behind Redis's back: the log keeps only the PENDING event.
    with resources.sessions.begin() as session:
        assert jobs.finish(session, uuid.UUID(task_id), state="SUCCESS", result={"balance": 7})
    quiet = {"EVENTS_KEEPALIVE_SECONDS": "0.2", "EVENTS_ROW_CHECK_SECONDS": "0.5"}
    with running_events(process_env, tmp_path / "events.log", **quiet) as server:
        received = read_events(server.connection(), f"/api/v1/tasks/{task_id}/events", headers)
    assert received.ended
    assert received.states == ["PENDING", "SUCCESS"]
    assert received.ids[-1] is None  # the ending came from the row: nothing to resume after
    assert received.events[-1][2]["result"] == {"balance": 7}
