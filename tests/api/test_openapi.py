"""The generated OpenAPI 3.1 document: complete, consistent, and true of the live app."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import checks

from api.openapi import undocumented_routes
from tests.support.accounts import register_and_login
from tests.support.apps import unique_name

# Everything but positive_data_acceptance: a few validators (e.g. "no control
# characters in a prompt") are stricter than JSON Schema can say, and a 422
# there is the API working as intended.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
    checks.ignored_auth,
]
# Bounded so the whole run stays well under two minutes.
EXAMPLES_PER_OPERATION = 40

# Every family SPEC names; routes other engineers add are covered by the
# url_map check below as soon as they exist.
EXPECTED_PATHS = {
    "/api/v1/auth/register",
    "/api/v1/auth/login",
    "/api/v1/transactions",
    "/api/v1/transactions/random",
    "/api/v1/tasks",
    "/api/v1/tasks/{task_id}",
    "/api/v1/wallet",
    "/api/v1/notifications",
    "/api/v1/notifications/pending",
    "/api/v1/notifications/read",
    "/api/v1/openapi.json",
    "/healthz",
    "/readyz",
}


def test_every_route_is_documented(app):
    assert undocumented_routes(app) == []


def test_document_covers_the_url_map(client, app):
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    assert set(paths) >= EXPECTED_PATHS
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], f"{method} {path}"


def test_request_models_come_from_the_same_pydantic_models(client):
    from api.schemas import TransactionRequest

    document = client.get("/api/v1/openapi.json").get_json()
    body = document["paths"]["/api/v1/transactions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    schema = document["components"]["schemas"][ref]
    assert schema["additionalProperties"] is False
    generated = TransactionRequest.model_json_schema()
    assert schema["properties"]["amount"] == generated["properties"]["amount"]


def test_declared_security_is_enforced(client):
    """Every operation that declares bearer auth answers 401 without a token."""
    document = client.get("/api/v1/openapi.json").get_json()
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not operation.get("security"):
                continue
            url = path.replace("{task_id}", "00000000-0000-4000-8000-000000000000")
            response = client.open(url, method=method.upper(), json={})
            assert response.status_code == 401, f"{method} {path}"
            checked += 1
    assert checked >= 8


@pytest.fixture(scope="module")
def bearer(app):
    _, headers = register_and_login(app.test_client(), unique_name("schemathesis"))
    return headers


def test_api_conforms_to_its_schema(app, bearer):
    """Schemathesis against the live app: no 5xx, every response matches the document."""
    api = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    tested = []
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def exercise(case):
            # identity: the WSGI test transport does not undo our gzip.
            case.call_and_validate(headers={**bearer, "Accept-Encoding": "identity"}, checks=CHECKS)

        exercise()
        tested.append(operation.label)
    assert len(tested) >= len(EXPECTED_PATHS)
