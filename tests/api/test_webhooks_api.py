"""The webhook routes: registration (secret shown once), per-user objects, refused URLs."""

from __future__ import annotations

import uuid

import pytest

from tests.support.accounts import register_and_login
from tests.support.apps import app_with, unique_name


def test_registration_shows_the_secret_once_and_lists_without_it(client, make_user):
    _, headers = make_user("hooks")
    url = "https://93.184.216.34/hook"
    created = client.post("/api/v1/webhooks", json={"url": url}, headers=headers)
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["secret"].startswith("whsec_") and body["url"] == url
    assert body["events"] == ["job.failed", "job.succeeded"]
    listed = client.get("/api/v1/webhooks", headers=headers).get_json()["items"]
    assert [item["id"] for item in listed] == [body["id"]]
    assert "secret" not in listed[0]
    deliveries = client.get(f"/api/v1/webhooks/{body['id']}/deliveries", headers=headers)
    assert deliveries.get_json() == {"items": [], "page": 1, "limit": 20, "total": 0}
    deleted = client.delete(f"/api/v1/webhooks/{body['id']}", headers=headers)
    assert deleted.status_code == 200 and deleted.get_json()["id"] == body["id"]
    assert client.get("/api/v1/webhooks", headers=headers).get_json()["items"] == []


def test_another_users_webhook_is_indistinguishable_from_an_unknown_one(client, make_user):
    _, owner = make_user("owner")
    _, other = make_user("other")
    hook = client.post(
        "/api/v1/webhooks", json={"url": "https://93.184.216.34/h"}, headers=owner
    ).get_json()
    unknown = str(uuid.uuid4())
    for path in ("/api/v1/webhooks/{}", "/api/v1/webhooks/{}/deliveries"):
        method = client.delete if path.endswith("{}") else client.get
        foreign = method(path.format(hook["id"]), headers=other)
        missing = method(path.format(unknown), headers=other)
        malformed = method(path.format("not-a-uuid"), headers=other)
        assert foreign.status_code == missing.status_code == malformed.status_code == 404
        assert foreign.get_data() == missing.get_data() == malformed.get_data()
    assert client.get("/api/v1/webhooks", headers=other).get_json()["items"] == []
    # Still there for its owner.
    assert len(client.get("/api/v1/webhooks", headers=owner).get_json()["items"]) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/",
        "file:///etc/passwd",
    ],
)
def test_private_and_odd_urls_are_refused_by_default(client, make_user, url):
    _, headers = make_user("ssrf")
    answer = client.post("/api/v1/webhooks", json={"url": url}, headers=headers)
    assert answer.status_code == 422, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "url_not_allowed" and error["details"][0]["field"] == "url"


def test_loopback_is_allowed_when_configured_but_metadata_never(settings, make_user):
    with app_with(settings, webhook_allow_private_urls=True) as app:
        client = app.test_client()
        _, headers = register_and_login(client, unique_name("allowed"))
        ok = client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}, headers=headers)
        assert ok.status_code == 201
        metadata = client.post(
            "/api/v1/webhooks", json={"url": "http://169.254.169.254/"}, headers=headers
        )
        assert metadata.status_code == 422


def test_unknown_events_and_fields_are_validation_errors(client, make_user):
    _, headers = make_user("badhook")
    for body in (
        {"url": "https://93.184.216.34/", "events": ["job.started"]},
        {"url": "https://93.184.216.34/", "events": []},
        {"url": "https://93.184.216.34/", "secret": "mine"},
        {},
    ):
        answer = client.post("/api/v1/webhooks", json=body, headers=headers)
        assert answer.status_code == 422, body
