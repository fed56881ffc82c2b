"""The `conveyor` CLI as a new user meets it, against a real gunicorn web and a real worker.

The API's field messages printed; nothing listening is reported at once,
naming the URL; no progress bar before the API has answered; ids copied from
`conveyor jobs` (or any unique start of one) work in `watch` and `cancel`;
`--help` lists every exit code; Ctrl-C exits 130; and `watch` on web's port
sees the job's end on the one stream it opened, as the worker writes it.
"""

from __future__ import annotations

import json
import re
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest

from client import ConveyorClient, Unreachable
from client import cli as conveyor_cli
from shared.jobs import create_job, isoformat, utcnow
from tests.support.accounts import PASSWORD
from tests.support.cli import cli_environment, run_cli, start_cli
from tests.support.processes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def server(served):
    return served


def _user(server) -> tuple[int, str]:
    with ConveyorClient(server.url) as api:
        name = f"hour_{uuid.uuid4().hex[:8]}"
        created = api.register(name, PASSWORD)
        return created["id"], api.login(name, PASSWORD)["access_token"]


def _started_job(server, owner_id: int) -> dict:
    """A job a worker has claimed and not finished (no message: only the test moves it)."""
    res = server.resources
    with res.autocommit_engine.connect() as conn:
        submission = create_job(
            conn, owner_id=owner_id, kind="ledger.random", params={"count": 1}, ttl_seconds=3600
        )
    status = {**submission.status, "state": "STARTED", "message": "started"}
    res.statuses.write(owner_id, status)
    return status


def _finish(server, owner_id: int, status: dict) -> None:
    done = {**status, "state": "SUCCESS", "progress": 100, "message": "done",
            "result": {"count": 1}, "updated_at": isoformat(utcnow())}  # fmt: skip
    assert server.resources.statuses.write(owner_id, done)


def _read_until(stream, needle: str) -> list[str]:
    """Lines of `stream` up to and including the first that contains `needle`."""
    lines = []
    for line in stream:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never came: {lines}")


def test_the_apis_field_messages_are_printed(server, tmp_path):
    _, token = _user(server)
    env = cli_environment(server.url, tmp_path, token=token)
    bogus = run_cli("submit", "ai", "--kind", "text", "--prompt", "hi", "--option", "bogus=1",
                    env=env)  # fmt: skip
    assert bogus.returncode == 5
    assert "error: 422 validation_error: the request is invalid" in bogus.stderr
    assert "  options.bogus: is not an option of text" in bogus.stderr
    short = run_cli(
        "login", "--register", "--username", f"short_{uuid.uuid4().hex[:6]}", "--password", "short",
        env=cli_environment(server.url, tmp_path),
    )  # fmt: skip
    assert short.returncode == 5
    assert "  password: String should have at least 8 characters" in short.stderr
    kind = run_cli("jobs", "--kind", "bogus", env=env)
    assert kind.returncode == 5 and re.search(
        r"^  kind: Input should be 'ledger\.transaction', .+'cache\.warm'$", kind.stderr, re.M
    )


def test_nothing_listening_is_reported_at_once_naming_the_url_and_make_run(tmp_path):
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = cli_environment(nowhere, tmp_path, token="not-a-token")
    for args in (
        ("watch", str(uuid.uuid4())),
        ("jobs",),
        ("submit", "transaction", "--type", "credit", "--amount", "5", "--wait"),
    ):
        done = run_cli(*args, env=env)
        assert done.returncode == 5, args
        assert f"error: cannot reach Conveyor at {nowhere} (connection refused)" in done.stderr
        assert "Start it with `make run`" in done.stderr
        assert "PENDING" not in done.stderr and "%" not in done.stderr  # no bar without an answer


def test_the_client_stops_trying_to_connect_after_about_two_seconds():
    nowhere = f"http://127.0.0.1:{free_port()}"
    pauses: list[float] = []
    with ConveyorClient(nowhere, "t", sleep=pauses.append) as api:
        with pytest.raises(Unreachable) as caught:
            api.status(str(uuid.uuid4()))
        assert caught.value.url == nowhere and caught.value.reason == "connection refused"
        assert len(pauses) == 3 and sum(pauses) < 2.0
        # A submission too: the request never left, so trying again cannot duplicate it.
        pauses.clear()
        with pytest.raises(Unreachable):
            api.submit("transaction", {"type": "credit", "amount": 5})
        assert len(pauses) == 3


def test_watch_draws_no_bar_before_the_api_answered(server, tmp_path):
    _, token = _user(server)
    env = cli_environment(server.url, tmp_path, token=token)
    unknown = run_cli("watch", str(uuid.uuid4()), env=env)
    assert unknown.returncode == 5 and "404 not_found: no such task" in unknown.stderr
    not_an_id = run_cli("watch", "not-a-uuid", env=env)
    assert not_an_id.returncode == 5
    assert "  id_prefix: must be the start of a task id" in not_an_id.stderr
    for done in (unknown, not_an_id):
        assert "PENDING" not in done.stderr and "%" not in done.stderr


def test_watch_and_cancel_take_any_unique_start_of_one_of_your_ids(server, tmp_path):
    owner_id, token = _user(server)
    _, stranger_token = _user(server)
    env = cli_environment(server.url, tmp_path, token=token)
    with ConveyorClient(server.url, token) as api:
        # Seventeen ids: at least two of them share their first hex digit.
        ids = [api.submit("transaction", {"type": "credit", "amount": 1})["task_id"]
               for _ in range(17)]  # fmt: skip
        api.wait(ids[-1], timeout=60)
    with ConveyorClient(server.url, stranger_token) as api:
        foreign = api.submit("transaction", {"type": "credit", "amount": 1})["task_id"]

    watched = run_cli("watch", ids[0][:8], "--json", env=env)
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["task_id"] == ids[0]
    shared, count = Counter(task_id[0] for task_id in ids).most_common(1)[0]
    ambiguous = run_cli("watch", shared, env=env)
    assert ambiguous.returncode == 2
    assert f"{count} of your jobs have ids starting with {shared!r}" in ambiguous.stderr
    not_mine = run_cli("watch", foreign[:13], env=env)
    assert not_mine.returncode == 5
    assert f"no job of yours has an id starting with {foreign[:13]!r}" in not_mine.stderr

    queued = _started_job(server, owner_id)
    cancelled = run_cli("cancel", queued["task_id"][:8].upper(), env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split() == [queued["task_id"], "REVOKED"]


def test_jobs_shows_ids_that_can_be_copied_at_80_columns(server, tmp_path):
    _, token = _user(server)
    env = cli_environment(server.url, tmp_path, token=token, COLUMNS="80")
    with ConveyorClient(server.url, token) as api:
        ids = [api.submit("random", {"count": 1})["task_id"] for _ in range(3)]
    table = run_cli("jobs", env=env)
    assert table.returncode == 0
    # The table fits (its footer is one line the terminal may wrap, never broken by us).
    assert max(len(line) for line in table.stdout.splitlines() if line[0] in "┏┃┡│└") <= 80
    shown = re.findall(r"^│ ([0-9a-f-]+) +│", table.stdout, re.M)
    assert len(shown) == 3 and all(len(short) >= 8 for short in shown)
    assert [next(i for i in ids if i.startswith(short)) for short in shown] == ids[::-1]
    assert run_cli("watch", shown[0], "--json", env=env).returncode == 0
    wide = run_cli("jobs", "--wide", env=env)
    assert all(task_id in wide.stdout for task_id in ids)
    plain = run_cli("jobs", "--plain", env=env)
    rows = [line.split("\t") for line in plain.stdout.splitlines()]
    assert [row[0] for row in rows] == ids[::-1] and {row[1] for row in rows} == {"ledger.random"}


def test_help_lists_every_exit_code_the_cli_uses():
    used = {value for name, value in vars(conveyor_cli).items() if name.startswith("EXIT_")}
    used |= set(conveyor_cli.STATE_EXIT.values())
    shown = run_cli("--help", env=cli_environment("http://127.0.0.1:1", Path("/nonexistent")))
    listed = {int(code) for code in re.findall(r"^\s+(\d+)\s{2,}\S", shown.stdout, re.M)}
    assert listed == used == {0, 1, 2, 3, 4, 5, 130}


def test_ctrl_c_while_watching_exits_130(server, tmp_path):
    owner_id, token = _user(server)
    status = _started_job(server, owner_id)
    watching = start_cli("watch", status["task_id"], env=cli_environment(server.url, tmp_path,
                                                                         token=token))  # fmt: skip
    try:
        _read_until(watching.stderr, "STARTED")
        watching.send_signal(signal.SIGINT)
        assert watching.wait(timeout=30) == 130
        assert "interrupted" in watching.stderr.read()
    finally:
        watching.kill()
        watching.wait()


def test_watch_on_webs_port_sees_the_end_on_the_one_stream_it_opened(server, tmp_path):
    owner_id, token = _user(server)
    status = _started_job(server, owner_id)
    env = cli_environment(server.url, tmp_path, token=token)  # no CONVEYOR_EVENTS_URL: web
    watching = start_cli("watch", status["task_id"], "--json", env=env)
    try:
        seen = _read_until(watching.stderr, "STARTED")
        _finish(server, owner_id, status)  # the worker's terminal write, while the CLI waits
        seen += _read_until(watching.stderr, "SUCCESS")
        out, _ = watching.communicate(timeout=30)
    finally:
        watching.kill()
        watching.wait()
    assert watching.returncode == 0
    assert [line.split()[1] for line in seen] == ["STARTED", "SUCCESS"]
    assert json.loads(out)["result"] == {"count": 1}
    # Live, not replay-and-reconnect: one stream request, then one read of the stored result.
    log = (server.log_dir / "web.log").read_text()
    path = f"/api/v1/tasks/{status['task_id']}"
    assert log.count(f'"path": "{path}/events"') == 1
    assert log.count(f'"path": "{path}"') == 1
