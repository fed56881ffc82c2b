"""A job its owner cancelled, met by the task meant to run it: the task ends REVOKED in Celery too.

The API cancels in the database (the row says REVOKED); the task that meets
such a job skips it. Returning normally would make Celery record SUCCESS, so
Flower, task events, task metrics and the worker's log would count a
cancelled job as done. Celery marks a task REVOKED itself only when it was
revoked by id through remote control before it ran, which knows nothing of
our rows. So the task does what Celery's own revoke does for a request
(celery/worker/request.py `_announce_revoked`), through public API: the
`task-revoked` event, the result backend's REVOKED (when the task stores
results), the `task_revoked` signal; then raises Ignore, so the tracer records
nothing more and the message is acknowledged.
"""

from __future__ import annotations

import logging

from celery import Task, signals
from celery.exceptions import Ignore

log = logging.getLogger(__name__)

REASON = "cancelled by its owner"


def revoked(task: Task, job_id: str) -> Ignore:
    """Report the running task REVOKED (its job `job_id` was cancelled); the caller raises it."""
    request = task.request
    log.info("job %s was cancelled by its owner: the task ends REVOKED", job_id)
    # Stored only where Celery would store it: tasks that keep results.
    task.backend.mark_as_revoked(
        request.id,
        REASON,
        request=request,
        store_result=not task.ignore_result or task.store_errors_even_if_ignored,
    )
    try:
        # From the pool process, which cannot know whether a monitor turned
        # events on (the consumer does): one event per cancelled job, nobody
        # receives it when nobody watches.
        task.send_event("task-revoked", terminated=False, signum=None, expired=False)
    except Exception:
        log.warning("task-revoked event of job %s not sent", job_id, exc_info=True)
    signals.task_revoked.send(
        sender=task, request=request, terminated=False, signum=None, expired=False
    )
    return Ignore(REASON)
