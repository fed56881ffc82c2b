"""The fair-share admin API and CLI: stored durably, cached for the lines, refused when wrong."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from shared.jobs import fair_shares
from shared.jobs.fair import Policy
from shared.models import FairShare
from tests.support.accounts import register_and_login
from tests.support.cli import cli_environment, run_cli
from tests.support.stacks import private_stack

ADMIN = "fair_admin"
ADMIN_PASSWORD = "fair-admin-password"


@pytest.fixture(scope="module")
def stack(settings, redis_client, tmp_path_factory):
    with private_stack(
        settings,
        redis_client,
        Path(tmp_path_factory.mktemp("fair_api")),
        admin_username=ADMIN,
        admin_password=ADMIN_PASSWORD,
        login_generates_transactions=False,
    ) as private:
        yield private


@pytest.fixture(scope="module")
def admin(stack) -> dict[str, str]:
    login = stack.client.post(
        "/api/v1/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD}
    )
    return {"Authorization": f"Bearer {login.get_json()['access_token']}"}


def _user(stack) -> tuple[int, dict[str, str]]:
    return register_and_login(stack.client, f"fair_{uuid.uuid4().hex[:10]}")


def _path(user_id: int) -> str:
    return f"/api/v1/admin/users/{user_id}/fair-share"


def _row(stack, user_id: int, queue: str) -> FairShare | None:
    with stack.resources.sessions() as session:
        return session.scalar(
            select(FairShare).where(FairShare.user_id == user_id, FairShare.queue == queue)
        )


def test_an_admin_sets_reads_and_resets_a_users_share(stack, admin):
    user_id, _ = _user(stack)
    defaults = stack.client.get(_path(user_id), headers=admin)
    assert defaults.status_code == 200
    assert defaults.get_json()["shares"] == {
        "ai": {"weight": 1, "max_running": None},
        "ledger": {"weight": 1, "max_running": None},
    }
    put = stack.client.put(
        _path(user_id), json={"queue": "ai", "weight": 3, "max_running": 10}, headers=admin
    )
    assert put.status_code == 200, put.get_json()
    assert put.get_json()["shares"]["ai"] == {"weight": 3, "max_running": 10}
    row = _row(stack, user_id, "ai")
    assert (row.weight, row.max_running) == (3, 10)
    # The lines read the cache in Redis.
    cached = stack.resources.redis.hget(stack.resources.fair.key("ai", "policy"), str(user_id))
    assert cached == "3|10"
    reset = stack.client.delete(_path(user_id), query_string={"queue": "ai"}, headers=admin)
    assert reset.status_code == 200
    assert reset.get_json()["shares"]["ai"] == {"weight": 1, "max_running": None}
    assert _row(stack, user_id, "ai") is None
    assert (
        stack.resources.redis.hget(stack.resources.fair.key("ai", "policy"), str(user_id)) is None
    )


@pytest.mark.parametrize(
    "body",
    [
        {"queue": "maintenance", "weight": 2},
        {"queue": "ai", "weight": 0},
        {"queue": "ai", "max_running": -1},
        {"queue": "ai", "weight": "heavy"},
        {"queue": "ai", "weight": 2, "priority": 9},
        {"weight": 2},
    ],
)
def test_bad_input_is_refused_and_changes_nothing(stack, admin, body):
    user_id, _ = _user(stack)
    answer = stack.client.put(_path(user_id), json=body, headers=admin)
    assert 400 <= answer.status_code < 500 and answer.status_code != 404
    assert _row(stack, user_id, "ai") is None and _row(stack, user_id, "maintenance") is None


def test_unknown_users_and_non_admins_are_refused(stack, admin):
    user_id, user_headers = _user(stack)
    unknown = stack.client.put(_path(10**9), json={"queue": "ai", "weight": 2}, headers=admin)
    assert unknown.status_code == 404
    assert unknown.get_json()["error"]["message"] == "no such user"
    assert stack.client.get(_path(10**9), headers=admin).status_code == 404
    mine = stack.client.put(_path(user_id), json={"queue": "ai", "weight": 9}, headers=user_headers)
    assert mine.status_code == 403
    assert stack.client.get(_path(user_id)).status_code == 401
    assert _row(stack, user_id, "ai") is None


def test_the_sweep_heals_a_lost_cache_from_the_table(stack, admin):
    user_id, _ = _user(stack)
    stack.client.put(_path(user_id), json={"queue": "ledger", "weight": 5}, headers=admin)
    key = stack.resources.fair.key("ledger", "policy")
    stack.resources.redis.delete(key)  # Redis restarted without its data
    with stack.resources.sessions() as session:
        fair_shares.sync(session, stack.resources.fair)
    assert Policy.decoded(stack.resources.redis.hget(key, str(user_id))) == Policy(5, None)


def test_the_cli_shows_sets_and_resets_a_share(stack, admin, tmp_path):
    user_id, _ = _user(stack)
    server = make_server("127.0.0.1", 0, stack.client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = cli_environment(
            f"http://127.0.0.1:{server.server_port}",
            tmp_path,
            token=admin["Authorization"].removeprefix("Bearer "),
        )
        run = run_cli(
            "admin", "fair-share", "set", str(user_id), "--queue", "ai", "--weight", "4",
            "--max-running", "2", "--json", env=env,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["shares"]["ai"] == {"weight": 4, "max_running": 2}
        shown = run_cli("admin", "fair-share", "show", str(user_id), env=env)
        assert shown.returncode == 0 and "ai" in shown.stdout and "4" in shown.stdout
        reset = run_cli("admin", "fair-share", "reset", str(user_id), "--queue", "ai", env=env)
        assert reset.returncode == 0, reset.stderr
        refused = run_cli("admin", "fair-share", "set", "999999999", "--queue", "ai", env=env)
        assert refused.returncode == 5
        assert "404 not_found: no such user" in refused.stderr
        # The API's field message, as every other command prints it, and nothing changed.
        invalid = run_cli(
            "admin", "fair-share", "set", str(user_id), "--queue", "ai", "--weight", "0", env=env
        )  # fmt: skip
        assert invalid.returncode == 5
        assert "422 validation_error" in invalid.stderr
        assert "weight: Input should be greater than or equal to 1" in invalid.stderr
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert _row(stack, user_id, "ai") is None
