"""Completion webhooks end to end: a real prefork worker on the webhooks queue, a real receiver.

The receiver is an HTTP server on loopback (so the stack allows private URLs),
the signatures are checked with the Standard Webhooks reference verifier, and
back-off is shortened through settings so retries take about a second.
"""

from __future__ import annotations

import itertools
import time
import uuid

import pytest
from standardwebhooks import Webhook

from infra.broker.publish import build_publisher
from shared.jobs.kinds import QUEUES
from tests.support.accounts import fund, register_and_login
from tests.support.polling import wait_for_state
from tests.support.receivers import running_receiver
from tests.support.stacks import private_stack

pytestmark = pytest.mark.integration

BASE_DELAY = 0.25


@pytest.fixture(scope="module")
def stack(settings, redis_client, tmp_path_factory):
    with private_stack(
        settings,
        redis_client,
        tmp_path_factory.mktemp("webhooks"),
        webhook_allow_private_urls=True,
        webhook_retry_base_seconds=BASE_DELAY,
        webhook_retry_max_seconds=5.0,
        webhook_retry_window_seconds=30,
        webhook_timeout_seconds=2.0,
    ) as private:
        private.start_worker("hooks", queues="ledger,webhooks", concurrency=2)
        yield private


def _register(stack, headers, url, events=("job.succeeded", "job.failed")) -> dict:
    answer = stack.client.post(
        "/api/v1/webhooks", json={"url": url, "events": list(events)}, headers=headers
    )
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def _deliveries(stack, headers, hook_id) -> list[dict]:
    answer = stack.client.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=headers)
    assert answer.status_code == 200
    return answer.get_json()["items"]


def _until(condition, what: str, bound: float = 30.0):
    deadline = time.monotonic() + bound
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} not within {bound:.0f}s"
        time.sleep(0.05)


def test_a_failing_receiver_is_retried_with_back_off_then_gets_it_exactly_once(stack):
    _, headers = register_and_login(stack.client, f"hook_{uuid.uuid4().hex[:8]}")
    with running_receiver(statuses=[500, 503, 500]) as receiver:
        hook = _register(stack, headers, receiver.url())
        task_id = stack.client.post(
            "/api/v1/transactions", json={"type": "credit", "amount": 500}, headers=headers
        ).get_json()["task_id"]
        wait_for_state(stack.client, headers, task_id)
        requests = receiver.wait_for(4)
        delivery = _until(
            lambda: [d for d in _deliveries(stack, headers, hook["id"]) if d["state"] != "pending"],
            "delivery recorded as succeeded",
        )[0]
        # Every attempt: the same webhook-id, a valid signature, the job's outcome.
        verifier = Webhook(hook["secret"])
        for request in requests:
            payload = verifier.verify(request.body, request.headers)
            assert request.headers["webhook-id"] == delivery["id"]
            assert payload["type"] == "job.succeeded"
            assert payload["data"]["task_id"] == task_id
            assert payload["data"]["state"] == "SUCCESS"
            assert payload["data"]["result"]["balance"] == 500
        assert [r.status for r in requests] == [500, 503, 500, 200]
        # Exponential back-off: each wait at least the (jittered) doubling delay.
        gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
        for attempt, gap in enumerate(gaps, start=1):
            assert gap >= 0.9 * BASE_DELAY * 2 ** (attempt - 1) - 0.05, gaps
        assert delivery["state"] == "succeeded" and delivery["attempts"] == 4
        assert delivery["last_status_code"] == 200 and delivery["delivered_at"]
        assert [a["status_code"] for a in delivery["log"]] == [200, 500, 503, 500]
        # A second copy of the message (a broker redelivery) finds it delivered.
        finished = stack.deliveries(delivery["id"], "succeeded")
        build_publisher(stack.settings, QUEUES).publish(
            "webhooks.deliver", delivery["id"], "webhooks", {}
        )
        _until(
            lambda: stack.deliveries(delivery["id"], "succeeded") > finished,
            "the duplicate message consumed",
        )
        assert len(receiver.requests) == 4


def test_a_failed_job_is_announced_only_to_endpoints_that_asked(stack):
    user_id, headers = register_and_login(stack.client, f"hookf_{uuid.uuid4().hex[:8]}")
    fund(stack.resources, user_id, 100)
    with running_receiver() as receiver:
        failed_only = _register(stack, headers, receiver.url("/failed"), ["job.failed"])
        succeeded_only = _register(stack, headers, receiver.url("/ok"), ["job.succeeded"])
        task_id = stack.client.post(
            "/api/v1/transactions", json={"type": "debit", "amount": 900}, headers=headers
        ).get_json()["task_id"]
        assert wait_for_state(stack.client, headers, task_id)["state"] == "FAILURE"
        (request,) = receiver.wait_for(1)
        payload = Webhook(failed_only["secret"]).verify(request.body, request.headers)
        assert request.path == "/failed" and payload["type"] == "job.failed"
        assert payload["data"]["error"]["code"] == "insufficient_funds"
        # Both endpoints' deliveries are recorded in one transaction: none for this one.
        assert _deliveries(stack, headers, succeeded_only["id"]) == []


def test_redirects_are_not_followed(stack):
    _, headers = register_and_login(stack.client, f"hookr_{uuid.uuid4().hex[:8]}")
    with running_receiver() as receiver:
        hook = _register(stack, headers, receiver.url("/redirect"))
        task_id = stack.client.post(
            "/api/v1/transactions", json={"type": "credit", "amount": 5}, headers=headers
        ).get_json()["task_id"]
        wait_for_state(stack.client, headers, task_id)
        delivery = _until(
            lambda: [d for d in _deliveries(stack, headers, hook["id"]) if d["log"]],
            "the first attempt recorded",
        )[0]
        assert delivery["log"][-1]["status_code"] == 302
        assert "not followed" in delivery["log"][-1]["error"]
        assert delivery["state"] == "pending"  # a 3xx is a failed attempt, retried later
        assert all(r.path == "/redirect" for r in receiver.requests)
