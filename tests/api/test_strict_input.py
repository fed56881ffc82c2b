"""Strict input: 400/413/415/422 in the error shape, no mass assignment, fuzzing never 5xx."""

from __future__ import annotations

import http.client
import json
import os
import sys

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from shared.models import Job
from tests.support.accounts import PASSWORD
from tests.support.environment import process_environment
from tests.support.processes import free_port, running_server

ONE_MIB = 1024 * 1024
POST_ROUTES = ["/api/v1/transactions", "/api/v1/transactions/random", "/api/v1/notifications/read"]


def _error(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def test_malformed_json_is_400(client, make_user):
    _, headers = make_user()
    response = client.post(
        "/api/v1/transactions",
        data='{"type": "credit",',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert _error(response)["code"] == "malformed_json"


def test_non_json_is_415(client, make_user):
    _, headers = make_user()
    response = client.post(
        "/api/v1/transactions",
        data="type=credit&amount=5",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert _error(response)["code"] == "unsupported_media_type"


def test_body_over_one_mib_is_413_json_and_records_nothing(client, make_user, resources):
    user_id, headers = make_user()
    body = json.dumps({"type": "credit", "amount": 1, "description": "x" * ONE_MIB}).encode()
    response = client.post(
        "/api/v1/transactions", data=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"
    with resources.sessions() as session:
        assert session.scalar(select(func.count()).where(Job.owner_id == user_id)) == 0


def test_large_body_is_413_even_where_the_view_reads_none(client):
    response = client.get("/healthz", data=b"x" * (ONE_MIB + 1))
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "document",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        '{"type": "credit", "amount": 1, "description": ' + "[" * 5_000 + "]" * 5_000 + "}",
    ],
)
def test_deeply_nested_json_is_400_not_a_crash(client, make_user, document):
    _, headers = make_user()
    response = client.post(
        "/api/v1/transactions",
        data=document,
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 422)
    assert _error(response)["code"] in ("malformed_json", "validation_error")


def test_flask_404_and_405_use_the_error_shape(client):
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert _error(missing)["code"] == "not_found"
    wrong = client.delete("/api/v1/wallet")
    assert wrong.status_code == 405
    assert _error(wrong)["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]


def test_validation_errors_name_the_fields(client, make_user):
    _, headers = make_user()
    response = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": "100"}, headers=headers
    )
    assert response.status_code == 422
    assert [d["field"] for d in _error(response)["details"]] == ["amount"]


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/v1/transactions", "limit=1000"),
        ("/api/v1/transactions", "page=0"),
        ("/api/v1/transactions", "owner_id=1"),
        ("/api/v1/tasks", "state=BOGUS"),
        ("/api/v1/tasks", "kind=rm%20-rf"),
    ],
)
def test_query_strings_are_validated(client, make_user, path, query):
    _, headers = make_user()
    response = client.get(f"{path}?{query}", headers=headers)
    assert response.status_code == 422
    assert _error(response)["code"] == "validation_error"


def test_mass_assignment_is_refused(client, resources, make_user):
    name = f"mass_{os.urandom(4).hex()}"
    sneaky = client.post(
        "/api/v1/auth/register", json={"username": name, "password": PASSWORD, "is_admin": True}
    )
    assert sneaky.status_code == 422
    assert "is_admin" in json.dumps(_error(sneaky)["details"])
    # Nothing was created with or without the flag.
    retry = client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
    assert retry.status_code == 201
    from shared import accounts

    with resources.sessions() as session:
        assert not accounts.is_admin(session, retry.get_json()["id"])

    victim_id, _ = make_user("victim")
    _, headers = make_user("attacker")
    for field, value in [
        ("owner_id", victim_id),
        ("user_id", victim_id),
        ("balance", 10**9),
        ("state", "SUCCESS"),
    ]:
        response = client.post(
            "/api/v1/transactions",
            json={"type": "credit", "amount": 1, field: value},
            headers=headers,
        )
        assert response.status_code == 422, field
        assert field in json.dumps(_error(response)["details"])


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    ["type", "amount", "description", "count", "ids", "all", "username", "password"]
)
_bodies = st.one_of(
    _json.map(json.dumps),
    st.dictionaries(_field_names, _json, max_size=4).map(json.dumps),
    st.binary(max_size=64).map(lambda raw: raw.decode("latin-1")),
)


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from([*POST_ROUTES, "/api/v1/auth/login", "/api/v1/auth/register"]),
    body=_bodies,
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/json; charset=latin-1", ""]
    ),
)
def test_fuzzed_bodies_never_5xx(client, fuzz_headers, path, body, content_type):
    headers = dict(fuzz_headers)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post(path, data=body.encode("utf-8", "surrogatepass"), headers=headers)
    assert response.status_code < 500, (path, body, response.get_data(as_text=True))
    assert response.status_code in (200, 201, 202, 400, 401, 409, 415, 422), response.status_code
    if response.status_code >= 400:
        _error(response)


@pytest.fixture(scope="module")
def fuzz_headers(app):
    from tests.support.accounts import register_and_login

    _, headers = register_and_login(app.test_client(), f"fuzz_{os.urandom(4).hex()}")
    return headers


@pytest.fixture(scope="module")
def gunicorn_server(settings, tmp_path_factory):
    """The production web server (gunicorn, gunicorn.conf.py) on a free loopback port."""
    port = free_port()
    env = {**process_environment(), "PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_THREADS": "2"}
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", "api.wsgi:app"]  # fmt: skip
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with running_server(argv, env=env, log_path=log_path, port=port, ready_path="/healthz"):
        yield port


def _post_raw(
    port: int, body: bytes, headers: dict[str, str], *, chunked: bool = False
) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        if chunked:  # no Content-Length: the limit must hold while reading the stream
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            connection.request(
                "POST", "/api/v1/auth/login", body=chunks, headers=headers, encode_chunked=True
            )
        else:
            connection.request("POST", "/api/v1/auth/login", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("size", "chunked"), [(ONE_MIB + 1, False), (8 * ONE_MIB, False), (2 * ONE_MIB, True)]
)
def test_413_through_a_real_gunicorn_server(gunicorn_server, size, chunked):
    body = b'{"username": "' + b"a" * size + b'", "password": "x"}'
    status, payload = _post_raw(
        gunicorn_server, body, {"Content-Type": "application/json"}, chunked=chunked
    )
    assert status == 413
    assert payload["error"]["code"] == "payload_too_large"
    # The server is still healthy for the next client.
    status, payload = _post_raw(gunicorn_server, b"{", {"Content-Type": "application/json"})
    assert status == 400
    assert payload["error"]["code"] == "malformed_json"
