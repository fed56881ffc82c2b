"""AI jobs end to end: HTTP submit, a real worker, a real OpenAI-compatible server on loopback.

The worker here is this module's own gevent worker process (the Procfile's
`worker_ai` options), configured for the fake upstream (`openai`, a
distinctive key, a 1 s per-call timeout, quick backoff).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared import webhooks
from shared.ai.quota import quota_key
from shared.jobs.events import EventLog, StreamKeys
from shared.models import Job, WebhookDelivery
from tests.fakes.openai_server import FakeOpenAIServer, Scripted
from tests.support.environment import process_environment
from tests.support.polling import wait_for_state
from tests.support.processes import running_server

pytestmark = pytest.mark.integration

API_KEY = f"sk-conveyor-test-{uuid.uuid4().hex}"
DAILY_LIMIT = 50


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def ai_worker(settings, upstream, tmp_path_factory):
    """The Procfile's `worker_ai` (gevent) on the `ai` queue, its provider the fake upstream.

    Its own process, as in production: retries, time limits and acks run on
    the gevent pool. Its log is kept for the tests that read it.
    """
    log_path = tmp_path_factory.mktemp("ai_worker") / "worker_ai.log"
    env = {
        **process_environment(),
        "AI_PROVIDER": "openai",
        "AI_BASE_URL": upstream.base_url,
        "AI_API_KEY": API_KEY,
        "AI_MODEL": "gpt-test",
        "AI_IMAGE_MODEL": "img-test",
        "AI_TIMEOUT_SECONDS": "1.0",
        "AI_MAX_RETRIES": "2",
        "AI_RETRY_BACKOFF_SECONDS": "0.05",
        "AI_DAILY_CALL_LIMIT": str(DAILY_LIMIT),
        "LOG_LEVEL": "DEBUG",
    }
    argv = [
        str(Path(sys.executable).parent / "celery"),
        "-A",
        "workers.app",
        "worker",
        "-P",
        "gevent",
        "-Q",
        "ai",
        "-c",
        "8",
        "--prefetch-multiplier",
        "4",
        "-n",
        f"ai-test-{uuid.uuid4().hex[:6]}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    with running_server(argv, env=env, log_path=log_path) as process:
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        yield log_path


@pytest.fixture
def fake(upstream, ai_worker) -> Iterator[FakeOpenAIServer]:
    """The upstream with an empty script and request log, the worker running."""
    upstream.reset()
    upstream.api_key = None
    yield upstream
    upstream.reset()
    upstream.api_key = None


def _submit(client, headers, kind: str, prompt: str, **options) -> str:
    response = client.post(
        "/api/v1/ai/generate",
        json={"kind": kind, "prompt": prompt, "options": options},
        headers=headers,
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


def _unique(prompt: str) -> str:
    return f"{prompt} {uuid.uuid4().hex}"


def _job_row(resources, task_id: str) -> Job:
    with resources.sessions() as session:
        return session.scalars(select(Job).where(Job.id == uuid.UUID(task_id))).one()


# --- the endpoint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "video", "prompt": "x"}, "kind"),
        ({"kind": "text", "prompt": ""}, "prompt"),
        ({"kind": "text", "prompt": "x" * 4001}, "prompt"),
        ({"kind": "text", "prompt": "   \n\t "}, "prompt"),
        (
            {"kind": "text", "prompt": "x", "options": {"operation": "translate"}},
            "options.operation",
        ),
        ({"kind": "text", "prompt": "x", "options": {"max_tokens": 0}}, "options.max_tokens"),
        (
            {"kind": "presentation", "prompt": "x", "options": {"num_cards": 31}},
            "options.num_cards",
        ),
        (
            {"kind": "presentation", "prompt": "x", "options": {"num_cards": True}},
            "options.num_cards",
        ),
        ({"kind": "presentation", "prompt": "x", "options": {"style": ""}}, "options.style"),
        ({"kind": "image", "prompt": "x", "options": {"size": "10x10"}}, "options.size"),
        ({"kind": "image", "prompt": "x", "options": {"num_cards": 3}}, "options.num_cards"),
        ({"kind": "text", "prompt": "x", "extra": 1}, "extra"),
    ],
)
def test_invalid_generation_requests_are_422_naming_the_field(client, make_user, body, field):
    _, headers = make_user()
    response = client.post("/api/v1/ai/generate", json=body, headers=headers)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert field in [detail["field"] for detail in error["details"]]


def test_generation_needs_a_bearer_token(client):
    response = client.post("/api/v1/ai/generate", json={"kind": "text", "prompt": "hello"})
    assert response.status_code == 401


def test_accepted_job_records_the_normalised_request_and_no_credentials(
    client, make_user, resources, fake
):
    _, headers = make_user()
    response = client.post(
        "/api/v1/ai/generate",
        json={"kind": "presentation", "prompt": "  Quarterly\n\n results  ", "options": {}},
        headers=headers,
    )
    assert response.status_code == 202
    body = response.get_json()
    assert body["kind"] == "ai.presentation" and body["state"] == "PENDING"
    assert response.headers["Location"] == body["status_url"]
    row = _job_row(resources, body["task_id"])
    assert row.queue == "ai"
    assert row.params == {
        "kind": "presentation",
        "prompt": "Quarterly results",
        "options": {"num_cards": 5, "style": "professional"},
    }
    assert wait_for_state(client, headers, body["task_id"])["state"] == "SUCCESS"


# --- the worker -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ai.text", "ai.presentation", "ai.image"])
def test_ai_tasks_are_late_acked_and_time_limited(settings, name):
    from shared.jobs.kinds import ai_time_limits as time_limits
    from workers.factory import create_celery_app
    from workers.tasks.ai import MAX_COUNTDOWN_SECONDS

    # A fresh app: its limits come from AI_TIMEOUT_SECONDS through the kind's declaration.
    slow = dataclasses.replace(settings, ai_timeout_seconds=75.0)
    app = create_celery_app(slow)
    app.loader.import_default_modules()
    task = app.tasks[name]
    timeout = slow.ai_timeout_seconds
    assert task.acks_late is True
    assert (task.soft_time_limit, task.time_limit) == time_limits(timeout)
    # Room for a wait on another worker's identical call, then our own call.
    assert 2 * timeout < task.soft_time_limit < task.time_limit
    assert MAX_COUNTDOWN_SECONDS <= 300
    app.close()


def test_each_kind_succeeds_with_its_shape_provider_model_and_cache_flag(client, make_user, fake):
    _, headers = make_user()
    text_id = _submit(client, headers, "text", _unique("Summarize this"), operation="explain")
    deck_id = _submit(client, headers, "presentation", _unique("Deck"), num_cards=4)
    image_id = _submit(client, headers, "image", _unique("A lighthouse"), size="512x512")

    text = wait_for_state(client, headers, text_id)
    assert text["state"] == "SUCCESS" and text["progress"] == 100
    assert text["result"]["text"].startswith("Fake completion: Summarize this")
    assert text["result"] | {"text": None} == {
        "text": None,
        "provider": "openai",
        "model": "gpt-test",
        "from_cache": False,
    }

    deck = wait_for_state(client, headers, deck_id)["result"]
    assert deck["provider"] == "openai" and deck["model"] == "gpt-test"
    assert deck["from_cache"] is False and deck["title"] == "Fake deck"
    assert [card["title"] for card in deck["cards"]] == ["Card 1", "Card 2", "Card 3", "Card 4"]
    assert all(card["bullets"] for card in deck["cards"])

    image = wait_for_state(client, headers, image_id)["result"]
    assert image["url"].startswith("https://images.fake.invalid/")
    assert (image["provider"], image["model"], image["from_cache"]) == ("openai", "img-test", False)

    paths = sorted(request.path for request in fake.requests)
    assert paths == ["/v1/chat/completions", "/v1/chat/completions", "/v1/images/generations"]
    sizes = [r.json["size"] for r in fake.requests if r.path == "/v1/images/generations"]
    assert sizes == ["512x512"]


def test_identical_request_is_answered_from_the_cache(client, make_user, fake, resources):
    _, first_headers = make_user()
    _, second_headers = make_user()
    prompt = _unique("Explain   caching")
    before = resources.cache.stats().get("ai", {"hits": 0, "misses": 0})
    first = wait_for_state(client, first_headers, _submit(client, first_headers, "text", prompt))
    # Same meaning, different spelling: the normalised request is the cache key.
    again = _submit(client, second_headers, "text", prompt.replace("   ", " ") + "  ")
    second = wait_for_state(client, second_headers, again)
    assert first["result"]["from_cache"] is False
    assert second["state"] == "SUCCESS" and second["result"]["from_cache"] is True
    assert second["result"]["text"] == first["result"]["text"]
    assert fake.calls == 1
    # Counted with every other namespace, so GET /system/cache-stats shows them.
    after = resources.cache.stats()["ai"]
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (1, 1)


def test_two_server_errors_then_success_takes_three_attempts(client, make_user, resources, fake):
    _, headers = make_user()
    fake.push(Scripted(status=500), Scripted(status=503))
    task_id = _submit(client, headers, "text", _unique("flaky upstream"))
    done = wait_for_state(client, headers, task_id)
    assert done["state"] == "SUCCESS", done
    assert fake.calls == 3
    assert _job_row(resources, task_id).attempts == 3


def test_persistent_server_errors_fail_after_two_retries_with_a_notification(
    client, make_user, fake
):
    _, headers = make_user()
    # A fourth answer would succeed, so a third retry would show up as SUCCESS.
    fake.push(Scripted(status=500), Scripted(status=502), Scripted(status=500))
    task_id = _submit(client, headers, "text", _unique("down upstream"))
    done = wait_for_state(client, headers, task_id)
    assert done["state"] == "FAILURE", done
    assert done["error"]["code"] == "ai_unavailable"
    assert fake.calls == 3
    pending = client.get("/api/v1/notifications/pending", headers=headers).get_json()["items"]
    assert [(n["type"], n["task_id"]) for n in pending] == [("job.failed", task_id)]


def test_rejected_request_is_not_retried(client, make_user, fake):
    _, headers = make_user()
    fake.push(Scripted(status=400))
    done = wait_for_state(client, headers, _submit(client, headers, "text", _unique("refused")))
    assert done["state"] == "FAILURE"
    assert done["error"]["code"] == "ai_rejected"
    assert "HTTP 400" in done["error"]["message"]
    assert fake.calls == 1


def test_upstream_that_never_answers_fails_with_ai_timeout_in_bounded_time(client, make_user, fake):
    _, headers = make_user()
    fake.push(*[Scripted(delay=10, content="too late")] * 3)
    started = time.monotonic()
    task_id = _submit(client, headers, "text", _unique("slow upstream"))
    # Three 1 s attempts plus sub-second backoff; far below the 3 x 10 s of the upstream.
    done = wait_for_state(client, headers, task_id, timeout=20)
    assert done["state"] == "FAILURE"
    assert done["error"]["code"] == "ai_timeout"
    assert fake.calls == 3
    assert time.monotonic() - started < 20


def test_rate_limited_retry_shows_retry_and_waits_for_retry_after(client, make_user, fake):
    _, headers = make_user()
    fake.push(Scripted(status=429, headers={"Retry-After": "2"}))
    task_id = _submit(client, headers, "image", _unique("popular"))
    waiting = wait_for_state(client, headers, task_id, states=("RETRY",), timeout=10)
    assert waiting["message"].startswith("ai_rate_limited")
    done = wait_for_state(client, headers, task_id)
    assert done["state"] == "SUCCESS"
    first, second = fake.requests
    # The server's Retry-After is a floor on the wait (small slack for clock rounding).
    assert second.received_at - first.received_at >= 1.95


def test_malformed_presentation_fails_with_ai_bad_response_after_its_retries(
    client, make_user, fake
):
    _, headers = make_user()
    # Retried like other transient failures: a model that once answered badly
    # usually answers well the next time.
    fake.push(*[Scripted(content='{"title": "Deck", "cards": [')] * 3)
    task_id = _submit(client, headers, "presentation", _unique("broken deck"), num_cards=3)
    done = wait_for_state(client, headers, task_id)
    assert done["state"] == "FAILURE"
    assert done["error"]["code"] == "ai_bad_response"
    assert fake.calls == 3


def test_concurrent_identical_requests_make_one_upstream_call(client, make_user, fake):
    fake.push(Scripted(delay=0.5, content="one shared answer"))
    prompt = _unique("everyone asks this")
    users = [make_user()[1] for _ in range(5)]
    # Submitted back to back, well inside the upstream's half second.
    submitted = [(headers, _submit(client, headers, "text", prompt)) for headers in users]
    results = [wait_for_state(client, h, task_id) for h, task_id in submitted]
    assert [r["state"] for r in results] == ["SUCCESS"] * 5
    assert {r["result"]["text"] for r in results} == {"one shared answer"}
    assert sorted(r["result"]["from_cache"] for r in results) == [False] + [True] * 4
    assert fake.calls == 1


def test_spent_daily_quota_fails_with_ai_quota_exceeded_without_calling_upstream(
    client, make_user, settings, redis_client, fake
):
    user_id, headers = make_user()
    redis_client.set(quota_key(settings.redis_key_prefix, user_id), DAILY_LIMIT)
    done = wait_for_state(client, headers, _submit(client, headers, "text", _unique("one more")))
    assert done["state"] == "FAILURE"
    assert done["error"]["code"] == "ai_quota_exceeded"
    assert fake.calls == 0


def test_quota_counts_each_upstream_call_and_stops_at_the_limit(
    client, make_user, settings, redis_client, fake
):
    user_id, headers = make_user()
    key = quota_key(settings.redis_key_prefix, user_id)
    redis_client.set(key, DAILY_LIMIT - 2)
    fake.push(Scripted(status=500))  # first attempt fails, its retry succeeds: 2 calls
    first = wait_for_state(client, headers, _submit(client, headers, "text", _unique("a")))
    assert first["state"] == "SUCCESS"
    assert int(redis_client.get(key)) == DAILY_LIMIT
    second = wait_for_state(client, headers, _submit(client, headers, "text", _unique("b")))
    assert second["error"]["code"] == "ai_quota_exceeded"
    assert fake.calls == 2


def test_api_key_never_reaches_status_errors_notifications_rows_or_logs(
    client, make_user, resources, fake, ai_worker
):
    _, headers = make_user()
    # An upstream that wants another key answers 401 and echoes ours, as OpenAI does.
    fake.api_key = "sk-some-other-key-000000"
    refused_id = _submit(client, headers, "text", _unique("who am I"))
    refused = wait_for_state(client, headers, refused_id)
    fake.api_key = None
    served_id = _submit(client, headers, "presentation", _unique("secret deck"))
    served = wait_for_state(client, headers, served_id)
    assert refused["error"]["code"] == "ai_rejected"
    assert "[redacted]" in refused["error"]["message"]
    assert served["state"] == "SUCCESS"
    # The key did go upstream, so its absence everywhere else means something.
    assert fake.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    notifications = client.get("/api/v1/notifications", headers=headers).get_json()
    rows = [_job_row(resources, task_id) for task_id in (refused_id, served_id)]
    stored = json.dumps(
        [refused, served, notifications]
        + [[row.params, row.result, row.error_message, row.message] for row in rows]
    )
    assert API_KEY not in stored
    # The worker's own output at DEBUG, every line of it.
    lines = ai_worker.read_text().splitlines()
    assert [line for line in lines if refused_id in line], "the log check would prove nothing"
    assert not [line for line in lines if API_KEY in line]


def test_the_job_log_reads_started_progress_success_and_webhooks_are_recorded(
    client, make_user, fake, resources, settings
):
    # The claim's STARTED document travels with the first progress write and
    # the finish is one statement that also tells whether webhooks apply: the
    # log keeps its order, and an owner with an endpoint still gets a delivery.
    user_id, headers = make_user()
    with resources.sessions.begin() as session:
        webhooks.create_endpoint(
            session, user_id, "https://hooks.example.invalid/", ["job.succeeded"]
        )
    _, others = make_user()
    task_id = _submit(client, headers, "text", _unique("Log order"))
    other_id = _submit(client, others, "text", _unique("No endpoint"))
    assert wait_for_state(client, headers, task_id)["state"] == "SUCCESS"
    assert wait_for_state(client, others, other_id)["state"] == "SUCCESS"

    log = EventLog(resources.redis, StreamKeys(settings.redis_key_prefix))
    events = [json.loads(event.data) for event in log.job_events(task_id)]
    states = [event["state"] for event in events]
    assert states[:3] == ["PENDING", "STARTED", "PROGRESS"] and states[-1] == "SUCCESS"
    assert set(states[2:-1]) == {"PROGRESS"}
    progress = [event["progress"] for event in events if event["state"] == "PROGRESS"]
    assert progress == sorted(progress) and progress[0] == 5
    with resources.sessions() as session:
        hooked = session.scalars(
            select(WebhookDelivery.event).where(WebhookDelivery.task_id == uuid.UUID(task_id))
        ).all()
        unhooked = session.scalars(
            select(WebhookDelivery.id).where(WebhookDelivery.task_id == uuid.UUID(other_id))
        ).all()
    assert hooked == ["job.succeeded"] and unhooked == []
