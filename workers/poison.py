"""A prefork worker's main process counts the runs it loses, and stops redelivering poison jobs.

Every task's request is a `LostRunRequest` (the app's task class, `JobTask`;
Celery's documented custom-request extension point). When a pool child dies
while running a job (WorkerLostError: SIGKILL, the OOM killer, a segfault),
Celery would reject and requeue the message (`task_reject_on_worker_lost`),
and the job would kill the next child. Here the main process first records
the lost run (shared/jobs/poison.py); at POISON_MAX_LOST_RUNS the job ends
FAILURE `worker_lost`, announced like any outcome, and its message is acked.
Otherwise Celery's own handling follows (requeue). A failure to record
(the database down) is logged and Celery's path runs: the next claim counts
the run then.
"""

from __future__ import annotations

import logging

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.worker.request import Request
from celery.worker.state import task_ready

from shared import jobs
from shared.jobs import poison
from shared.jobs import status as job_status
from shared.jobs.lifecycle import announce_outcome
from workers import fair_gate
from workers.runtime import resources

log = logging.getLogger(__name__)


class LostRunRequest(Request):
    """Celery's request, counting a run its pool child died under (see the module docstring)."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if (
            isinstance(exc, WorkerLostError)
            and self.task.acks_late
            and quarantined(self.task, self.id)
        ):
            # Failed for good: its message is done with, not requeued.
            task_ready(self)
            self.acknowledge()
            fair_gate.finished(self.task.app, _queue_of(self.task), [self.id])
            return None
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )


def _queue_of(task: Task) -> str:
    return jobs.KIND_QUEUES.get(task.name, "")


class JobTask(Task):
    """The app's task class: every task's requests count lost runs."""

    Request = "workers.poison:LostRunRequest"


def quarantined(task: Task, task_id: str) -> bool:
    """Record a lost run of job `task_id`; True when it is now FAILURE `worker_lost`."""
    job_id = jobs.parse_job_id(task_id)
    if job_id is None:
        return False
    res = resources(task.app)
    try:
        with res.autocommit_engine.connect() as conn:
            lost = poison.record_lost_run(conn, job_id, res.settings.poison_max_lost_runs)
    except Exception:
        log.exception("lost run of job %s not recorded; the next claim counts it", task_id)
        return False
    if lost is None:
        return False  # not a job's message, or the job already ended
    if not lost.quarantined:
        log.warning(
            "job %s: its worker process died while running it (%d of %d); requeued",
            task_id, lost.lost_runs, res.settings.poison_max_lost_runs,
        )  # fmt: skip
        job_status.publish(res.statuses, lost.owner_id, lost.status)
        return False
    log.error("job %s quarantined: %s", task_id, lost.status["error"]["message"])
    from workers.tasks.webhooks import outbox

    announce_outcome(
        res.statuses,
        res.notifications,
        lost.owner_id,
        lost.status,
        lost.status["error"]["message"],
        webhooks=outbox(task.app) if lost.has_webhooks else None,
    )
    return True
