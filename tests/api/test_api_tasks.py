"""Polling, listing and cancelling jobs through the API (no worker consumes here)."""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import func, select

from shared.models import Job


def _submit(client, headers, amount=5, key=None):
    extra = {"Idempotency-Key": key} if key else {}
    return client.post(
        "/api/v1/transactions",
        json={"type": "credit", "amount": amount},
        headers={**headers, **extra},
    )


def test_the_status_url_is_the_poll_route_under_the_mount_point(app, client, make_user):
    # The 202 spells the poll URL out (api/dispatch.py); it must stay what
    # url_for builds, also when the app is mounted below a prefix (SCRIPT_NAME).
    from flask import url_for

    _, headers = make_user()
    for mount in ("", "/conveyor"):
        response = client.post(
            "/api/v1/transactions",
            json={"type": "credit", "amount": 5},
            headers=headers,
            environ_overrides={"SCRIPT_NAME": mount},
        )
        body = response.get_json()
        assert response.status_code == 202
        with app.test_request_context(environ_overrides={"SCRIPT_NAME": mount}):
            expected = url_for("tasks.get_task", task_id=body["task_id"])
        assert expected.startswith(f"{mount}/api/v1/tasks/")
        assert body["status_url"] == response.headers["Location"] == expected
        assert response.headers["Retry-After"] == "1"


def test_the_202_is_what_flask_would_write_for_any_mount_point(app, client, make_user):
    # The 202's body and Location are written from templates (api/dispatch.py):
    # byte for byte what app.json.response and werkzeug's Location handling give.
    from werkzeug.urls import iri_to_uri

    _, headers = make_user()
    for mount in ("", "/conveyor", '/m\u00fcnt "q"\\'):
        response = client.post(
            "/api/v1/transactions",
            json={"type": "credit", "amount": 5},
            headers=headers,
            environ_overrides={"SCRIPT_NAME": mount.encode().decode("latin-1")},
        )
        assert response.status_code == 202
        task_id = response.get_json()["task_id"]
        status_url = f"{mount}/api/v1/tasks/{task_id}"
        expected = {"task_id": task_id, "kind": "ledger.transaction", "state": "PENDING"}
        with app.app_context():
            body = app.json.response({**expected, "status_url": status_url}).get_data()
        assert response.data == body
        assert response.mimetype == "application/json"
        assert response.headers["Location"] == iri_to_uri(status_url)
    # A provider set up otherwise (indented, as in debug) writes the body itself.
    app.json.compact = False
    try:
        response = _submit(client, headers)
        assert response.status_code == 202
        assert response.data.startswith(b"{\n")
        assert response.headers["Location"] == response.get_json()["status_url"]
    finally:
        app.json.compact = None


def test_submit_answers_202_with_location_and_pending_status(client, make_user):
    _, headers = make_user()
    response = _submit(client, headers)
    body = response.get_json()
    assert response.status_code == 202
    assert body["kind"] == "ledger.transaction" and body["state"] == "PENDING"
    assert response.headers["Location"] == body["status_url"] == f"/api/v1/tasks/{body['task_id']}"
    polled = client.get(body["status_url"], headers=headers).get_json()
    assert polled["state"] == "PENDING" and polled["task_id"] == body["task_id"]
    assert set(polled) == {
        "task_id",
        "kind",
        "state",
        "progress",
        "message",
        "created_at",
        "updated_at",
        "expires_at",
        "result",
        "error",
        "queue_position",
        "eta_seconds",
        "waiting_for",
    }


def test_another_users_task_is_indistinguishable_from_an_unknown_one(client, make_user):
    _, alice = make_user("alice")
    _, bob = make_user("bob")
    task_id = _submit(client, alice).get_json()["task_id"]
    client.get(f"/api/v1/tasks/{task_id}", headers=alice)  # caches the live document
    theirs = client.get(f"/api/v1/tasks/{task_id}", headers=bob)
    unknown = client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=bob)
    garbage = client.get("/api/v1/tasks/not-a-uuid", headers=bob)
    assert theirs.status_code == unknown.status_code == garbage.status_code == 404
    assert theirs.data == unknown.data == garbage.data
    assert client.delete(f"/api/v1/tasks/{task_id}", headers=bob).data == unknown.data


def test_same_idempotency_key_replays_the_same_task(client, make_user):
    _, headers = make_user()
    first = _submit(client, headers, key="pay-1")
    again = _submit(client, headers, key="pay-1")
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    reused = _submit(client, headers, amount=6, key="pay-1")
    assert reused.status_code == 422
    assert reused.get_json()["error"]["code"] == "idempotency_key_reused"


def test_sixteen_concurrent_posts_with_one_key_make_one_job(app, make_user, resources):
    user_id, headers = make_user()
    barrier = threading.Barrier(16)
    answers = []
    lock = threading.Lock()

    def post():
        local = app.test_client()
        barrier.wait()
        response = _submit(local, headers, amount=9, key="burst")
        with lock:
            answers.append((response.status_code, response.get_json()["task_id"]))

    threads = [threading.Thread(target=post) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status for status, _ in answers} == {202}
    assert len({task_id for _, task_id in answers}) == 1
    with resources.sessions() as session:
        count = session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == user_id))
    assert count == 1


def test_list_is_the_callers_jobs_newest_first_with_filters(client, make_user):
    _, alice = make_user("alice")
    _, bob = make_user("bob")
    ids = [_submit(client, alice, amount=n + 1).get_json()["task_id"] for n in range(3)]
    client.post("/api/v1/transactions/random", json={"count": 2}, headers=alice)
    _submit(client, bob)
    listed = client.get("/api/v1/tasks?kind=ledger.transaction&limit=2", headers=alice).get_json()
    assert listed["total"] == 3 and listed["limit"] == 2 and listed["page"] == 1
    assert [item["task_id"] for item in listed["items"]] == ids[::-1][:2]
    page2 = client.get(
        "/api/v1/tasks?kind=ledger.transaction&limit=2&page=2", headers=alice
    ).get_json()
    assert [item["task_id"] for item in page2["items"]] == ids[:1]
    assert client.get("/api/v1/tasks?state=PENDING", headers=alice).get_json()["total"] == 4
    assert client.get("/api/v1/tasks?state=SUCCESS", headers=alice).get_json()["total"] == 0


def test_cancel_pending_then_cancel_again_is_409(client, make_user):
    _, headers = make_user()
    task_id = _submit(client, headers).get_json()["task_id"]
    cancelled = client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
    assert cancelled.status_code == 202 and cancelled.get_json()["state"] == "REVOKED"
    assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()["state"] == "REVOKED"
    again = client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "already_finished"


def test_notifications_require_ids_or_all(client, make_user):
    _, headers = make_user()
    for body in ({}, {"ids": ["a"], "all": True}, {"all": False}):
        response = client.post("/api/v1/notifications/read", json=body, headers=headers)
        assert response.status_code == 422, body
    ok = client.post("/api/v1/notifications/read", json={"all": True}, headers=headers)
    assert ok.get_json() == {"updated": 0}


def test_a_live_document_silent_for_a_minute_is_confirmed_against_the_row(
    client, make_user, resources
):
    """A worker's last Redis write may be lost: after 60 s unchanged, the row answers."""
    from datetime import timedelta

    from shared import jobs

    user_id, headers = make_user("stale")
    task_id = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 3}, headers=headers
    ).get_json()["task_id"]
    with resources.sessions.begin() as session:
        job_id = jobs.parse_job_id(task_id)
        jobs.claim(session, job_id)
        jobs.finish(session, job_id, state="SUCCESS", result={"balance": 3})
    # The worker's STARTED write landed; its SUCCESS write was lost.
    live = {**client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()}
    live.update(state="STARTED", progress=0, result=None)
    recent = {**live, "updated_at": jobs.isoformat(jobs.utcnow() - timedelta(seconds=5))}
    resources.redis.delete(resources.keys.job_status(task_id))
    assert resources.statuses.write(user_id, recent)
    # Fresh enough: the live document is the answer (one Redis read per poll).
    assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()["state"] == "STARTED"
    stale = {**live, "updated_at": jobs.isoformat(jobs.utcnow() - timedelta(seconds=61))}
    assert resources.statuses.write(user_id, stale)
    confirmed = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
    assert confirmed["state"] == "SUCCESS" and confirmed["result"] == {"balance": 3}


def test_list_by_id_prefix_is_the_callers_own_and_a_bad_prefix_is_a_422(client, make_user):
    _, alice = make_user("alice")
    _, bob = make_user("bob")
    mine = _submit(client, alice).get_json()["task_id"]
    theirs = _submit(client, bob).get_json()["task_id"]
    for prefix in (mine[:8], mine[:8].upper(), mine[:13], mine):
        listed = client.get(f"/api/v1/tasks?id_prefix={prefix}", headers=alice).get_json()
        assert mine in [item["task_id"] for item in listed["items"]], prefix
    assert client.get(f"/api/v1/tasks?id_prefix={theirs}", headers=alice).get_json()["total"] == 0
    for bad in ("not-a-uuid", "5a62-", "x" * 37):
        refused = client.get(f"/api/v1/tasks?id_prefix={bad}", headers=alice)
        assert refused.status_code == 422, bad
        (detail,) = refused.get_json()["error"]["details"]
        assert detail["field"] == "id_prefix" and "start of a task id" in detail["message"]
