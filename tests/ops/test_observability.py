"""JSON logs, request ids carried into the worker, access lines, query counts, slow SQL."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from infra import logging_setup
from infra.slow_queries import SlowQueryLog, fingerprint
from shared import accounts
from tests.support.polling import wait_for_state


class CapturedLines:
    """JSON lines written by a Conveyor handler attached to the root logger."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]


@pytest.fixture
def captured(settings) -> Iterator[CapturedLines]:
    """Every log line (INFO and up) from any thread, formatted exactly as production does."""
    stream = io.StringIO()
    handler = logging_setup.build_handler(dataclasses.replace(settings, log_format="json"), stream)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield CapturedLines(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_request_id_reaches_every_worker_log_line_for_the_job(
    client, make_user, resources, worker, captured
):
    user_id, headers = make_user("obs")
    request_id = f"req-{uuid.uuid4().hex}"
    response = client.post(
        "/api/v1/transactions",
        json={"type": "credit", "amount": 500, "description": "observed"},
        headers={**headers, "X-Request-ID": request_id},
    )
    assert response.status_code == 202
    assert response.headers["X-Request-ID"] == request_id
    task_id = response.get_json()["task_id"]
    assert wait_for_state(client, headers, task_id)["state"] == "SUCCESS"

    # The worker logs "task finished" once the run has returned, just after
    # the run wrote SUCCESS, which the poll above may read first.
    deadline = time.monotonic() + 10
    while True:
        job_lines = [r for r in captured.records() if r.get("task_id") == task_id]
        messages = {r["message"] for r in job_lines}
        if {"task started", "task finished"} <= messages or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {"task started", "task finished"} <= messages, messages
    for line in job_lines:
        assert line["request_id"] == request_id
        assert line["job_kind"] == "ledger.transaction"
        assert line["user_id"] == user_id
    finished = next(r for r in job_lines if r["message"] == "task finished")
    assert finished["state"] == "SUCCESS" and finished["duration_ms"] > 0
    # The access line of the submitting request names the same id and the caller.
    access = [r for r in captured.records() if r["logger"] == "conveyor.access"]
    submit = next(r for r in access if r["request_id"] == request_id)
    assert submit["route"] == "/api/v1/transactions"
    assert submit["method"] == "POST" and submit["status"] == 202
    assert submit["user_id"] == user_id


def test_log_lines_are_json_objects_with_secrets_redacted(captured):
    log = logging.getLogger("conveyor.test")
    with logging_setup.bound(request_id="r-1"):
        log.warning(
            "calling upstream with password=hunter2 and Bearer abc.def.ghi",
            extra={
                "api_key": "sk-live-1234567890",
                "upstream": {"Authorization": "Bearer xyz", "url": "https://u:pw@host/x"},
            },
        )
    (line,) = [r for r in captured.records() if r["logger"] == "conveyor.test"]
    assert {"timestamp", "level", "logger", "message"} <= line.keys()
    assert line["level"] == "WARNING" and line["request_id"] == "r-1"
    dumped = json.dumps(line)
    for secret in ("hunter2", "abc.def.ghi", "sk-live-1234567890", "xyz", ":pw@"):
        assert secret not in dumped
    assert line["api_key"] == "[REDACTED]"
    assert line["upstream"]["Authorization"] == "[REDACTED]"


def test_access_line_and_timing_headers(client, make_user, captured):
    user_id, headers = make_user("acc")
    response = client.get("/api/v1/wallet", headers={**headers, "X-Request-ID": "acc-1"})
    assert response.status_code == 200
    assert float(response.headers["X-Process-Time"]) > 0
    # Outside production every response counts its SQL statements (N+1 detector):
    # a fresh user's first wallet read is one SELECT (the next is served from cache).
    assert int(response.headers["X-Query-Count"]) == 1
    (line,) = [r for r in captured.records() if r.get("request_id") == "acc-1"]
    assert line["logger"] == "conveyor.access" and line["level"] == "INFO"
    assert line["route"] == "/api/v1/wallet" and line["status"] == 200
    assert line["user_id"] == user_id and line["duration_ms"] > 0
    assert line["query_count"] == int(response.headers["X-Query-Count"])


def test_query_count_counts_statements(client, make_user):
    _user_id, headers = make_user("qc")
    response = client.get("/api/v1/transactions", headers=headers)
    assert response.status_code == 200
    # The wallet, the page and its total: three statements, then none from the cache.
    assert int(response.headers["X-Query-Count"]) == 3
    again = client.get("/api/v1/transactions", headers=headers)
    assert int(again.headers["X-Query-Count"]) == 0
    assert client.get("/healthz").headers["X-Query-Count"] == "0"


def test_slow_requests_are_logged_at_warning_with_their_route(settings, captured):
    from api import create_app

    slow_app = create_app(dataclasses.replace(settings, slow_request_seconds=0.0))
    try:
        slow_app.test_client().get("/healthz", headers={"X-Request-ID": "slow-1"})
    finally:
        slow_app.extensions["conveyor"].close()
    (line,) = [r for r in captured.records() if r.get("request_id") == "slow-1"]
    assert line["level"] == "WARNING" and line["route"] == "/healthz"
    assert line["message"].startswith("slow request")


def test_fingerprint_groups_statements_by_shape():
    a = fingerprint("SELECT * FROM t WHERE id = 5 AND name = 'x''y' AND k IN (1, 2, 3)")
    b = fingerprint("select_shape_marker")  # unrelated statements stay apart
    assert a == "SELECT * FROM t WHERE id = ? AND name = ? AND k IN (?)"
    assert fingerprint("SELECT  *\nFROM t WHERE id = %(id_1)s") == "SELECT * FROM t WHERE id = ?"
    assert fingerprint("SELECT x::text FROM t") == "SELECT x::text FROM t"
    assert a != b


def _make_admin(resources, user_id: int) -> None:
    with resources.sessions.begin() as session:
        accounts.set_admin(session, user_id, True)


def test_slow_sql_is_recorded_and_shown_to_admins(client, resources, make_user, captured):
    admin_id, admin = make_user("admin")
    _make_admin(resources, admin_id)
    _user_id, plain = make_user("plain")
    assert client.post("/api/v1/system/slow-queries/reset", headers=admin).status_code == 200

    with resources.engine.connect() as conn:
        for seconds in (0.2, 0.25):  # two executions, one shape
            conn.execute(text(f"SELECT pg_sleep({seconds})"))
        conn.execute(text("SELECT 1"))  # fast: never recorded

    assert client.get("/api/v1/system/slow-queries", headers=plain).status_code == 403
    response = client.get("/api/v1/system/slow-queries", headers=admin)
    assert response.status_code == 200
    body = response.get_json()
    assert body["threshold_ms"] == resources.settings.slow_query_ms
    (item,) = [i for i in body["items"] if "pg_sleep" in (i["statement"] or "")]
    assert item["statement"] == "SELECT pg_sleep(?)"
    assert item["count"] == 2
    assert item["max_ms"] >= 250 and item["total_ms"] >= 450
    assert not any(i["statement"] == "SELECT ?" for i in body["items"])
    warnings = [r for r in captured.records() if r["message"] == "slow query"]
    assert any(r["statement"] == "SELECT pg_sleep(?)" for r in warnings)

    reset = client.post("/api/v1/system/slow-queries/reset", headers=admin)
    assert reset.status_code == 200 and reset.get_json()["cleared"] >= 1
    assert SlowQueryLog(resources.redis, resources.keys).top() == []
