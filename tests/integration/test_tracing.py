"""One job, one trace: web -> publish -> worker -> SQL, Redis and the AI upstream, on both brokers.

Real processes as deployed (gunicorn web, a prefork worker recycling its
child after every task, a gevent AI worker) export to a real OTLP/HTTP
receiver on loopback (tests/support/otlp_receiver.py), which decodes what
they send with opentelemetry-proto. The test process itself never traces.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from infra.broker import keys
from infra.broker.inflight import broker_in_flight
from shared import maintenance
from shared.jobs import utcnow
from shared.models import Job
from tests.fakes.openai_server import FakeOpenAIServer, Scripted
from tests.support.accounts import PASSWORD
from tests.support.otlp_receiver import Span, running_receiver
from tests.support.processes import free_port, running_server
from tests.support.rabbitmq import private_vhost
from tests.support.stacks import private_stack
from tuning import registry as tuning

BIN = Path(sys.executable).parent
AI_KEY = "sk-tracing-test"


@pytest.fixture(scope="module")
def receiver():
    with running_receiver() as server:
        yield server


@pytest.fixture(scope="module")
def upstream():
    with FakeOpenAIServer(api_key=AI_KEY) as server:
        yield server


def _worker(stack, name: str, *args: str) -> None:
    node = f"{name}-{uuid.uuid4().hex[:6]}@%h"
    argv = [str(BIN / "celery"), "-A", "workers.app", "worker", *args, "-n", node,
            "--without-mingle", "--without-gossip"]  # fmt: skip
    with (stack.log_dir / f"{name}.log").open("w") as log:
        stack.workers.append(
            subprocess.Popen(
                argv, env=stack.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )


@contextmanager
def _traced_stack(settings, redis_client, log_dir: Path, receiver, upstream, broker: str):
    with ExitStack() as stack_of:
        changes = {"ai_provider": "openai", "ai_base_url": upstream.base_url, "ai_api_key": AI_KEY}
        if broker == "rabbitmq":
            changes["celery_broker_url"] = stack_of.enter_context(
                private_vhost(f"conveyor_trace_{uuid.uuid4().hex[:8]}")
            )
        stack = stack_of.enter_context(private_stack(settings, redis_client, log_dir, **changes))
        # Only the processes started here trace (this test process does not).
        stack.env.update(
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            }
        )
        # Prefork, its child recycled after every task: spans must leave before it exits.
        _worker(stack, "worker", "-P", "prefork", "-c", "1", "--max-tasks-per-child", "1",
                "-Q", "ledger,maintenance,webhooks")  # fmt: skip
        port = free_port()
        env = {**stack.env, "PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_THREADS": "4"}
        argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "api.wsgi:app"]
        stack_of.enter_context(
            running_server(
                argv, env=env, log_path=log_dir / "web.log", port=port, ready_path="/healthz"
            )
        )
        stack.url = f"http://127.0.0.1:{port}"
        stack.ai_started = False
        yield stack


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def stack(request, settings, redis_client, tmp_path_factory, receiver, upstream):
    log_dir = Path(tmp_path_factory.mktemp(f"tracing_{request.param}"))
    with _traced_stack(settings, redis_client, log_dir, receiver, upstream, request.param) as s:
        s.broker = request.param
        yield s


def _start_ai_worker(stack) -> None:
    if not stack.ai_started:
        _worker(stack, "worker_ai", "-P", "gevent", "-c", "8", "-Q", "ai")
        stack.ai_started = True


@pytest.fixture(scope="module")
def user(stack) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        name = f"trace_{uuid.uuid4().hex[:10]}"
        client.post("/api/v1/auth/register", json={"username": name, "password": PASSWORD})
        token = client.post(
            "/api/v1/auth/login", json={"username": name, "password": PASSWORD}
        ).json()["access_token"]
        yield client, {"Authorization": f"Bearer {token}"}


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _wait_state(client, headers, task_id: str, bound: float = 90.0) -> dict:
    import time

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/tasks/{task_id}", headers=headers).json()
        if body["state"] in ("SUCCESS", "FAILURE"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{task_id} still {body['state']}")


def _roots(spans: list[Span]) -> list[Span]:
    ids = {span.span_id for span in spans}
    return [span for span in spans if span.parent_id not in ids]


def _settled(spans: list[Span]) -> bool:
    """Every process has exported its part: one root left (each exports on its own clock)."""
    return len(_roots(spans)) == 1 and _roots(spans)[0].kind == "server"


def _one_trace(spans: list[Span], client_span: str | None) -> None:
    """Every span's parent is in the trace, except the web's server span (the client's child)."""
    ids = {span.span_id for span in spans}
    roots = [span for span in spans if span.parent_id not in ids]
    assert len(roots) == 1, [(s.service, s.name, s.parent_id) for s in roots]
    assert roots[0].kind == "server" and roots[0].service == "conveyor-web"
    if client_span is not None:
        assert roots[0].parent_id == client_span


def _descends(spans: list[Span], child: Span, ancestor: Span) -> bool:
    by_id = {span.span_id: span for span in spans}
    node = child
    while node is not None:
        if node.span_id == ancestor.span_id:
            return True
        node = by_id.get(node.parent_id)
    return False


def _submit(client, headers, path: str, body: dict, traceparent: str | None = None):
    extra = {"traceparent": traceparent} if traceparent else {}
    response = client.post(f"/api/v1{path}", json=body, headers={**headers, **extra})
    assert response.status_code == 202, response.text
    return response


def test_a_ledger_job_is_one_trace_continuing_the_clients(stack, user, receiver):
    client, headers = user
    traceparent, trace_id, client_span = _traceparent()
    accepted = _submit(client, headers, "/transactions", {"type": "credit", "amount": 5},
                       traceparent)  # fmt: skip
    assert accepted.headers["X-Trace-Id"] == trace_id
    task_id = accepted.json()["task_id"]
    done = _wait_state(client, headers, task_id)
    assert done["state"] == "SUCCESS" and done["trace_id"] == trace_id

    def complete(_all: list[Span]) -> list[Span] | None:
        spans = receiver.trace(trace_id)
        worker = [s for s in spans if s.service == "conveyor-worker"]  # the prefork worker
        has_sql = any(s.attributes.get("db.system") == "postgresql" for s in worker)
        has_redis = any(s.attributes.get("db.system") == "redis" for s in worker)
        return spans if worker and has_sql and has_redis and _settled(spans) else None

    spans = receiver.wait_for(complete)
    _one_trace(spans, client_span)
    publish = next(s for s in spans if s.name == "publish ledger.transaction")
    assert publish.kind == "producer" and publish.service == "conveyor-web"
    run = next(s for s in spans if s.name == "run/ledger.transaction")
    assert run.kind == "consumer" and run.parent_id == publish.span_id
    for span in spans:
        if span.service == "conveyor-worker" and span is not run:
            assert _descends(spans, span, run), (span.name, span.parent_id)
    # The web's own SQL (the submit's INSERT) and the group commit's flush are in it too.
    assert any(s.name == "submit flush" and s.service == "conveyor-web" for s in spans)


# A lost message is staged by deleting it from its Redis list: on Redis only.
@pytest.mark.parametrize("stack", ["redis"], indirect=True)
def test_a_job_re_published_by_the_sweep_stays_in_its_trace(stack, user, receiver):
    from workers.factory import create_celery_app
    from workers.tasks.maintenance import republish

    client, headers = user
    traceparent, trace_id, _client_span = _traceparent()
    ai_started = stack.ai_started
    if ai_started:
        pytest.skip("the AI worker already runs: its queue cannot hold a message to lose")
    accepted = _submit(client, headers, "/ai/generate", {"kind": "text", "prompt": "sweep me"},
                       traceparent)  # fmt: skip
    task_id = accepted.json()["task_id"]
    queue = keys.queue_list(stack.settings.redis_key_prefix, "ai")
    res = stack.resources
    assert res.redis.delete(queue) == 1  # the message is lost
    with res.sessions.begin() as session:
        session.execute(
            update(Job).where(Job.id == uuid.UUID(task_id))
            .values(updated_at=utcnow() - timedelta(minutes=5))
        )  # fmt: skip
    app = create_celery_app(stack.settings)
    in_flight = broker_in_flight(stack.settings, res.redis)
    try:
        again = maintenance.redispatch_lost(
            res.sessions, in_flight, republish(app), older_than_seconds=60
        )
    finally:
        in_flight.close()
        app.close()
    assert again == [task_id]
    _start_ai_worker(stack)
    done = _wait_state(client, headers, task_id)
    assert done["state"] == "SUCCESS" and done["trace_id"] == trace_id
    spans = receiver.wait_for(
        lambda _all: (
            (s := receiver.trace(trace_id)) and any(x.name == "run/ai.text" for x in s) and s
        )
    )
    publish = next(s for s in spans if s.name == "publish ai.text")
    run = next(s for s in spans if s.name == "run/ai.text")
    assert run.parent_id == publish.span_id  # the row kept the submit's context


def _upstream_call(span: Span) -> bool:
    """The AI call's client span: the provider's own ("POST /chat/completions") on the
    plain-HTTP path, httpx's instrumentation ("POST") with the tuning off."""
    url = span.attributes.get("url.full") or span.attributes.get("http.url") or ""
    return span.kind == "client" and str(url).endswith("/chat/completions")


def test_an_ai_job_on_the_gevent_worker_is_one_trace_down_to_the_upstream(
    stack, user, receiver, upstream
):
    _start_ai_worker(stack)
    client, headers = user
    traceparent, trace_id, client_span = _traceparent()
    prompt = f"trace me {uuid.uuid4().hex}"
    accepted = _submit(client, headers, "/ai/generate", {"kind": "text", "prompt": prompt},
                       traceparent)  # fmt: skip
    task_id = accepted.json()["task_id"]
    done = _wait_state(client, headers, task_id)
    assert done["state"] == "SUCCESS" and done["trace_id"] == trace_id

    def complete(_all: list[Span]) -> list[Span] | None:
        spans = receiver.trace(trace_id)
        upstream_calls = [s for s in spans if _upstream_call(s)]
        sql = [s for s in spans if s.service != "conveyor-web" and "db.system" in s.attributes]
        return spans if upstream_calls and sql and _settled(spans) else None

    spans = receiver.wait_for(complete)
    _one_trace(spans, client_span)
    run = next(s for s in spans if s.name == "run/ai.text")
    publish = next(s for s in spans if s.name == "publish ai.text")
    assert run.parent_id == publish.span_id
    call = next(s for s in spans if _upstream_call(s))
    assert call.kind == "client" and _descends(spans, call, run)
    for span in spans:
        if span.service == run.service and span is not run:
            assert _descends(spans, span, run), (span.name, span.parent_id)  # no null parents
    # The upstream got the trace context too.
    asked = next(r for r in upstream.requests if prompt in r.body.decode())
    assert asked.headers["traceparent"].split("-")[1] == trace_id


def test_without_a_traceparent_a_trace_starts_and_the_job_carries_it(stack, user, receiver):
    client, headers = user
    accepted = _submit(client, headers, "/transactions", {"type": "credit", "amount": 3})
    trace_id = accepted.headers["X-Trace-Id"]
    assert len(trace_id) == 32
    assert _wait_state(client, headers, accepted.json()["task_id"])["trace_id"] == trace_id
    spans = receiver.wait_for(
        lambda _all: (
            (s := receiver.trace(trace_id))
            and any(x.name == "run/ledger.transaction" for x in s)
            # The web exports its part on its own clock: wait for the server span too.
            and _settled(s)
            and s
        )
    )
    _one_trace(spans, None)
    assert next(s for s in spans if s.kind == "server").parent_id == ""


def test_a_retried_ai_job_stays_one_trace_across_its_attempts(stack, user, receiver, upstream):
    _start_ai_worker(stack)
    client, headers = user
    traceparent, trace_id, client_span = _traceparent()
    upstream.push(Scripted(status=503))  # the first attempt fails; the retry succeeds
    prompt = f"retry me {uuid.uuid4().hex}"
    accepted = _submit(client, headers, "/ai/generate", {"kind": "text", "prompt": prompt},
                       traceparent)  # fmt: skip
    done = _wait_state(client, headers, accepted.json()["task_id"])
    assert done["state"] == "SUCCESS" and done["trace_id"] == trace_id

    def both_runs(_all: list[Span]) -> list[Span] | None:
        spans = receiver.trace(trace_id)
        runs = [s for s in spans if s.name == "run/ai.text"]
        return spans if len(runs) == 2 and _settled(spans) else None

    spans = receiver.wait_for(both_runs)
    _one_trace(spans, client_span)
    first, second = sorted((s for s in spans if s.name == "run/ai.text"), key=lambda s: s.start)
    # The retry was published from inside the first run (Celery's publish, instrumented).
    assert _descends(spans, second, first)


def test_an_unsampled_request_is_not_instrumented_yet_keeps_its_trace_id(stack, user, receiver):
    client, headers = user
    # The caller decided not to sample (flags 00): parent-based, neither does Conveyor.
    _sampled, unsampled_id, client_span = _traceparent()
    accepted = _submit(client, headers, "/transactions", {"type": "credit", "amount": 2},
                       f"00-{unsampled_id}-{client_span}-00")  # fmt: skip
    assert accepted.headers["X-Trace-Id"] == unsampled_id  # the linkage docs/tracing.md promises
    done = _wait_state(client, headers, accepted.json()["task_id"])
    assert done["state"] == "SUCCESS" and done["trace_id"] == unsampled_id
    # A sampled job after it: once its whole trace has arrived, each process has
    # exported what it buffered before, and nothing of the unsampled one is there.
    traceparent, trace_id, _client_span = _traceparent()
    later = _submit(client, headers, "/transactions", {"type": "credit", "amount": 1}, traceparent)
    assert _wait_state(client, headers, later.json()["task_id"])["state"] == "SUCCESS"
    spans = receiver.wait_for(
        lambda _all: (
            (s := receiver.trace(trace_id))
            and any(x.name == "run/ledger.transaction" for x in s)
            and _settled(s)
            and s
        )
    )
    assert any(s.name == "submit flush" for s in spans)
    assert receiver.trace(unsampled_id) == []


def test_a_sampled_job_batched_behind_unsampled_ones_keeps_its_whole_trace(stack, user, receiver):
    client, headers = user
    worker = stack.workers[0]  # the prefork ledger worker
    # Held stopped while the jobs are queued: once it runs, the first goes out alone and
    # the rest wait for its slot, then run as one batch (tuning/celery_ledger_batches.py).
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        parents = [f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00" for _ in range(5)]
        credit = {"type": "credit", "amount": 1}
        unsampled = [_submit(client, headers, "/transactions", credit, p) for p in parents]
        traceparent, trace_id, _client_span = _traceparent()
        sampled = _submit(client, headers, "/transactions", credit, traceparent)
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    for accepted in [*unsampled, sampled]:
        assert _wait_state(client, headers, accepted.json()["task_id"])["state"] == "SUCCESS"

    def complete(_all: list[Span]) -> list[Span] | None:
        spans = receiver.trace(trace_id)
        sql = [s for s in spans if s.service == "conveyor-worker"
               and s.attributes.get("db.system") == "postgresql"]  # fmt: skip
        return spans if sql and _settled(spans) else None

    spans = receiver.wait_for(complete)
    _one_trace(spans, _client_span)
    run = next(s for s in spans if s.name == "run/ledger.transaction")
    # The fair gate may have released the job from a worker, when another job ended
    # (Celery's publish, with the tuning off): that publish is in the job's trace too.
    releases = [s for s in spans if s.name == "apply_async/ledger.transaction"]
    # The batch's SQL and Redis spans are the sampled job's, whatever its place in the batch.
    for span in spans:
        if span.service == "conveyor-worker" and span is not run:
            assert any(_descends(spans, span, top) for top in [run, *releases]), (
                span.name, span.parent_id,
            )  # fmt: skip
    # On Redis the held messages reach the consumer at once and form the batch; RabbitMQ
    # delivers them as the raised prefetch lets it, and the batch may not form.
    if stack.broker == "redis" and tuning.enabled(stack.resources.settings, "ledger_batches"):
        assert run.attributes["conveyor.batch_size"] >= 2  # batched with unsampled ones
        assert any(s.name == "batch/ledger.transaction" for s in spans)
    for accepted in unsampled:
        assert receiver.trace(accepted.headers["X-Trace-Id"]) == []
