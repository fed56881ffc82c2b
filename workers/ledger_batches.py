"""A batch of `ledger.transaction` jobs in a pool process: one posting call, one Redis trip.

The worker's consumer gathers the messages (tuning/celery_ledger_batches.py);
here, in the pool process, `run_batch` posts them in one transaction, each
job with its own outcome (shared/ledger/job_posting.py `post_jobs`), and one
pipelined Redis trip announces every outcome (each owner's cached reads
dropped first, so a read after SUCCESS is fresh). It never raises: a failure
hands the whole batch back to Celery's own path.
"""

from __future__ import annotations

import logging
import time
import uuid

import redis
from celery import Task, current_app

from infra import tracing
from shared import jobs
from shared.jobs.claims import cancelled_among
from shared.jobs.lifecycle import queue_outcome, queue_webhooks
from shared.ledger import job_posting
from shared.ledger.wallet_cache import user_scope
from tuning.celery_ledger_batches import Item
from workers import fair_gate
from workers.runtime import resources

log = logging.getLogger(__name__)


def run_batch_by_name(task_name: str, items: list[Item]) -> list[int]:
    """`run_batch` in a prefork child, where the worker's app is the current one."""
    return run_batch(current_app.tasks[task_name], items)


def run_batch(task: Task, items: list[Item]) -> list[int]:
    """Post `items` in one call and announce them; the indexes to hand back to Celery.

    Never raises: a failure hands the whole batch back, untouched. Traced,
    each sampled job's run is a consumer span of its own trace, and the
    batch's call (its SQL and Redis spans) a child of the first sampled job's,
    linked to the other traced ones. An unsampled job gets no span (nothing
    of it would be exported); its status still names its trace.
    """
    if not tracing.ACTIVE:
        return _run_batch(task, items)
    traced = [i for i, item in enumerate(items) if _traced(item.traceparent)]
    contexts = [{"traceparent": item.traceparent} for item in items]
    if not traced:
        # Micro-optimization: nothing of this batch would be exported: no span, none for
        # its SQL and Redis either.
        with tracing.suppressed():
            return _run_batch(task, items, contexts)
    runs = {
        i: tracing.start_span(
            f"run/{task.name}",
            kind="consumer",
            parent={"traceparent": items[i].traceparent} if items[i].traceparent else {},
            attributes={
                "celery.task_name": task.name,
                "messaging.message.id": items[i].task_id,
                "conveyor.batch_size": len(items),
            },
        )
        for i in traced
    }
    for i, run in runs.items():
        contexts[i] = tracing.context_of(run)
    # The batch's spans under a run that is exported (a job without a context may not be).
    lead, *others = sorted(traced, key=lambda i: not runs[i].is_recording())
    with tracing.span(
        f"batch/{task.name}",
        parent=contexts[lead],
        links=[contexts[i] for i in others],
        attributes={"conveyor.batch_size": len(items)},
    ):
        handed_back = _run_batch(task, items, contexts)
    back = set(handed_back)
    for index, run in runs.items():
        run.set_attribute("conveyor.handed_back", index in back)
        tracing.end_span(run)
    return handed_back


def _traced(traceparent: str | None) -> bool:
    # A job without a trace context starts its own (the sampler decides); an unsampled one's
    # spans would all be dropped.
    return not traceparent or tracing.is_sampled(traceparent)


def _run_batch(task: Task, items: list[Item], contexts: list[dict] | None = None) -> list[int]:
    started = time.perf_counter()
    parsed = [jobs.parse_job_id(item.job_id) for item in items]
    valid = [job_id for job_id in parsed if job_id is not None]
    traces = (
        {str(job_id): ctx.get("traceparent") for job_id, ctx in zip(parsed, contexts, strict=True)}
        if contexts
        else {}
    )
    try:
        outcomes = _post(task, valid, traces) if valid else {}
    except Exception:
        log.warning(
            "ledger batch of %d not posted; each job runs on its own", len(items), exc_info=True
        )
        return list(range(len(items)))
    # Cancelled ones go back too: Celery's path ends their tasks REVOKED
    # (workers/revocation.py) where the batch would count them succeeded.
    cancelled = _cancelled(task, [job_id for job_id in valid if outcomes[job_id].skipped])
    handed_back = [
        i
        for i, job_id in enumerate(parsed)
        # Celery's path logs, fails or revokes these.
        if job_id is None or outcomes[job_id].refused or job_id in cancelled
    ]
    _record(task, items, handed_back, time.perf_counter() - started)
    back = set(handed_back)
    # The batch ended these jobs outside Celery's task run: free their fair slots.
    fair_gate.finished(
        task.app, "ledger", [item.job_id for i, item in enumerate(items) if i not in back]
    )
    return handed_back


def _post(
    task: Task, job_ids: list[uuid.UUID], traces: dict
) -> dict[uuid.UUID, job_posting.PostOutcome]:
    res = resources(task.app)
    with res.autocommit_engine.connect() as conn:
        outcomes = job_posting.post_jobs(conn, job_ids, now=jobs.utcnow())
    posted = [o for o in outcomes.values() if o.status is not None]
    if not posted:
        return outcomes
    # Committed. The webhook deliveries first (a client that sees SUCCESS can
    # find them), then one Redis trip: the owners' cached reads dropped, then
    # each job's SUCCESS document, notification and events.
    with_webhooks = [o for o in posted if o.has_webhooks]
    if with_webhooks:
        from workers.tasks.webhooks import outbox

        webhooks = outbox(task.app)
        for o in with_webhooks:
            queue_webhooks(webhooks, o.owner_id, o.status)
    try:
        pipe = res.statuses.pipeline()
        for owner_id in {o.owner_id for o in posted}:
            res.cache.invalidate(user_scope(owner_id), pipe=pipe)
        for o in posted:
            traced = traces.get(o.status["task_id"]) if traces else None
            status = tracing.with_trace_id(o.status, traced) if traced else o.status
            queue_outcome(pipe, res.statuses, res.notifications, o.owner_id, status, o.summary)
        pipe.execute()
    except redis.RedisError:
        log.warning("outcomes of %d ledger jobs not published: Redis unavailable", len(posted))
    return outcomes


def _cancelled(task: Task, skipped: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which skipped jobs were cancelled; none when that cannot be read (they count as done)."""
    if not skipped:
        return set()
    try:
        with resources(task.app).autocommit_engine.connect() as conn:
            return cancelled_among(conn, skipped)
    except Exception:
        log.warning("cancelled jobs of a ledger batch not told apart", exc_info=True)
        return set()


def _record(task: Task, items: list[Item], handed_back: list[int], seconds: float) -> None:
    """Per-job task metrics for the jobs this batch finished, and the batch's size."""
    from workers.observability import batch_metrics, task_metrics

    done = len(items) - len(handed_back)
    batch_metrics()["size"].observe(len(items))
    if not done:
        return
    metrics = task_metrics()
    metrics["started"].labels(task.name).inc(done)
    metrics["succeeded"].labels(task.name).inc(done)
    runtime = metrics["runtime"].labels(task.name)
    queue_wait = metrics["queue_wait"].labels(task.name)
    started_at = time.time() - seconds
    back = set(handed_back)
    for index, item in enumerate(items):
        if index in back:
            continue
        runtime.observe(seconds)
        if item.sent_at is not None:
            queue_wait.observe(max(0.0, started_at - item.sent_at))
