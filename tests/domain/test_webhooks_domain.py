"""Webhook domain rules: the URL guard, Standard Webhooks signatures, back-off, fan-out."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update
from standardwebhooks import Webhook

from shared import jobs, maintenance, webhooks
from shared.jobs.model import utcnow
from shared.models import Job, WebhookDelivery
from shared.webhooks import signing as webhooks_signing
from shared.webhooks.sender import http_client, send
from shared.webhooks.urls import UnsafeWebhookUrl, check_url
from tests.support.accounts import register_and_login
from tests.support.apps import unique_name


def resolving_to(*addresses: str):
    return lambda _host, _port: list(addresses)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.10.10",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::5",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused_by_default(address):
    with pytest.raises(UnsafeWebhookUrl, match="loopback, private or link-local"):
        check_url(
            "https://hooks.example.test/x", allow_private=False, resolver=resolving_to(address)
        )


def test_one_private_address_among_public_ones_is_refused():
    resolver = resolving_to("93.184.216.34", "10.0.0.7")
    with pytest.raises(UnsafeWebhookUrl):
        check_url("https://hooks.example.test/x", allow_private=False, resolver=resolver)


def test_public_addresses_pass_and_are_returned_for_pinning():
    target = check_url(
        "https://hooks.example.test:8443/x?y=1",
        allow_private=False,
        resolver=resolving_to("93.184.216.34"),
    )
    assert (target.host, target.port, [str(a) for a in target.addresses]) == (
        "hooks.example.test",
        8443,
        ["93.184.216.34"],
    )


def test_allowing_private_urls_still_refuses_cloud_metadata():
    assert check_url("http://127.0.0.1:9/x", allow_private=True).addresses
    for address in ("169.254.169.254", "fd00:ec2::254"):
        with pytest.raises(UnsafeWebhookUrl, match="metadata"):
            check_url("http://meta.test/", allow_private=True, resolver=resolving_to(address))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.test/x", "http:// or https://"),
        ("https:///x", "no host"),
        ("https://user:pw@hooks.example.test/x", "credentials"),
        ("https://hooks.example.test/x#frag", "fragment"),
        ("https://hooks.example.test:99999/x", "cannot be parsed"),
    ],
)
def test_malformed_urls_are_refused(url, reason):
    with pytest.raises(UnsafeWebhookUrl, match=reason):
        check_url(url, allow_private=True, resolver=resolving_to("93.184.216.34"))


def test_a_host_that_does_not_resolve_is_refused():
    with pytest.raises(UnsafeWebhookUrl, match="does not resolve"):
        check_url("https://no-such-host.invalid/x", allow_private=False)


def test_delivery_rechecks_the_url_and_never_connects_to_a_now_private_address():
    # The name resolved to a public address at registration; now it says 10.x.
    calls = []
    transport = httpx.MockTransport(lambda request: calls.append(request) or httpx.Response(200))
    result = send(
        http_client(1.0, transport=transport),
        url="https://hooks.example.test/x",
        secret=webhooks_signing.new_secret(),
        msg_id="d1",
        body="{}",
        allow_private=False,
        resolver=resolving_to("10.0.0.1"),
    )
    assert not result.ok and result.error.startswith("refused:") and calls == []


def test_delivery_connects_to_the_approved_address_with_the_name_in_host_and_sni():
    seen = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(204))
    result = send(
        http_client(1.0, transport=transport),
        url="https://hooks.example.test:8443/x",
        secret=webhooks_signing.new_secret(),
        msg_id="d2",
        body='{"a":1}',
        allow_private=False,
        resolver=resolving_to("93.184.216.34"),
    )
    assert result.ok and result.status_code == 204
    (request,) = seen
    assert request.url.host == "93.184.216.34" and request.url.port == 8443
    assert request.headers["host"] == "hooks.example.test:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.test"


def test_signatures_verify_with_the_reference_implementation_and_by_hand():
    secret = webhooks_signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = '{"type":"job.succeeded","data":{"task_id":"t"}}'
    now = int(time.time())
    headers = webhooks_signing.headers(secret, "msg_1", now, body)
    assert Webhook(secret).verify(body, headers) == {
        "type": "job.succeeded",
        "data": {"task_id": "t"},
    }
    # The scheme written out independently: HMAC-SHA256 over "id.timestamp.body".
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"msg_1.{now}.{body}".encode(), hashlib.sha256).digest()
    version, signature = headers["webhook-signature"].split(",", 1)
    assert version == "v1" and base64.b64decode(signature) == expected
    with pytest.raises(Exception, match="signature"):
        Webhook(webhooks_signing.new_secret()).verify(body, headers)


def test_back_off_doubles_is_capped_and_retries_span_at_least_a_day():
    delays = [
        webhooks.retry_delay(attempt, base_seconds=5, max_seconds=3600) for attempt in range(1, 12)
    ]
    assert all(0.9 * 5 * 2 ** (n - 1) <= d <= 5 * 2 ** (n - 1) for n, d in enumerate(delays[:9], 1))
    assert max(delays) <= 3600
    # With the defaults, attempts go on until a day after the event, then stop.
    created = utcnow()
    planned = webhooks.PlannedAttempt("d", 1, "u", "s", "{}", created)
    moment, attempts = created, 1
    while True:
        nxt = webhooks.next_attempt(
            planned, base_seconds=5, max_seconds=3600, window_seconds=86400, now=moment
        )
        if nxt is None:
            break
        moment, attempts = nxt, attempts + 1
        planned = webhooks.PlannedAttempt("d", attempts, "u", "s", "{}", created)
    assert moment - created >= timedelta(hours=24)
    assert 20 <= attempts <= 40


def test_an_outcome_announced_twice_creates_each_delivery_once(resources, client):
    user_id, _ = register_and_login(client, unique_name("fanout"))
    with resources.sessions.begin() as session:
        both = webhooks.create_endpoint(
            session, user_id, "https://a.example.test/", webhooks.EVENTS
        )
        webhooks.create_endpoint(session, user_id, "https://b.example.test/", ["job.failed"])
    published: list[str] = []
    outbox = webhooks.WebhookOutbox(resources.sessions, published.append)
    status = {"task_id": str(uuid.uuid4()), "state": "SUCCESS", "kind": "ledger.transaction"}
    first = outbox.job_finished(user_id, status)
    again = outbox.job_finished(user_id, status)
    assert len(first) == 1 and again == [] and published == first
    assert outbox.job_finished(user_id, {**status, "state": "REVOKED"}) == []
    with resources.sessions() as session:
        items, total = webhooks.list_deliveries(
            session, user_id, uuid.UUID(both["id"]), page=1, limit=10
        )
    assert total == 1 and items[0]["id"] == first[0] and items[0]["state"] == "pending"


def test_a_claimed_delivery_is_not_claimed_again_until_its_lease_ends(resources, client):
    user_id, _ = register_and_login(client, unique_name("lease"))
    with resources.sessions.begin() as session:
        webhooks.create_endpoint(session, user_id, "https://a.example.test/", webhooks.EVENTS)
    outbox = webhooks.WebhookOutbox(resources.sessions, lambda _id: None)
    (delivery_id,) = outbox.job_finished(
        user_id, {"task_id": str(uuid.uuid4()), "state": "FAILURE"}
    )
    now = utcnow()
    with resources.sessions.begin() as session:
        first = webhooks.claim_attempt(session, uuid.UUID(delivery_id), lease_seconds=30, now=now)
    with resources.sessions.begin() as session:
        assert webhooks.claim_attempt(session, uuid.UUID(delivery_id), lease_seconds=30) is None
    later = now + timedelta(seconds=31)
    with resources.sessions.begin() as session:
        second = webhooks.claim_attempt(
            session, uuid.UUID(delivery_id), lease_seconds=30, now=later
        )
        webhooks.record_attempt(
            session,
            second,
            status_code=200,
            error=None,
            duration_ms=3,
            succeeded=True,
            next_attempt_at=None,
        )
    assert (first.attempt, second.attempt) == (1, 2)
    with resources.sessions.begin() as session:
        far_later = later + timedelta(hours=1)
        assert (
            webhooks.claim_attempt(session, uuid.UUID(delivery_id), lease_seconds=30, now=far_later)
            is None
        )


def test_a_job_the_reaper_fails_is_announced_to_webhooks_too(resources, client):
    user_id, _ = register_and_login(client, unique_name("reaped"))
    with resources.sessions.begin() as session:
        webhooks.create_endpoint(session, user_id, "https://a.example.test/", ["job.failed"])
    with resources.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        submission = jobs.create_job(
            conn, owner_id=user_id, kind="ai.text", params={"prompt": "x"}, ttl_seconds=3600
        )
    task_id = submission.status["task_id"]
    stuck_since = utcnow() - timedelta(hours=2)
    with resources.sessions.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(task_id))
            .values(state="STARTED", updated_at=stuck_since, started_at=stuck_since)
        )
    published: list[str] = []
    outcome = maintenance.reap_stuck(
        resources.sessions,
        resources.statuses,
        resources.notifications,
        lambda *_args: None,
        time_limits={"ai.text": 60},
        grace_seconds=0,
        idempotent_kinds=(),
        max_attempts=1,
        webhooks=webhooks.WebhookOutbox(resources.sessions, published.append),
    )
    assert task_id in outcome.failed and len(published) == 1
    with resources.sessions() as session:
        delivery = session.get(WebhookDelivery, uuid.UUID(published[0]))
        assert (delivery.event, str(delivery.task_id)) == ("job.failed", task_id)
        assert json.loads(delivery.payload)["data"]["error"]["code"] == "timeout"
