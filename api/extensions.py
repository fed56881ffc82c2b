"""Request code's access to the per-process resources, broker publisher and submit batcher."""

from __future__ import annotations

import time
from collections.abc import Sequence

from flask import Flask, current_app

from infra import tracing
from infra.broker.messages import Publisher
from shared.jobs.group_commit import GroupCommit
from shared.jobs.submission import Outcome, PreparedJob, submit_many
from shared.resources import Resources

# Jobs one flush records and publishes at most. gunicorn.conf.py lets 64
# requests into a worker's app at once, so a flush can take all that wait.
MAX_SUBMIT_BATCH = 64

_BATCHER = "conveyor.submit_batcher"


def resources() -> Resources:
    return current_app.extensions["conveyor"]


def publisher() -> Publisher:
    return current_app.extensions["conveyor.publisher"]


def submit_batcher(app: Flask | None = None) -> GroupCommit[PreparedJob, Outcome]:
    """This process's group commit for submissions, built on first use (after gunicorn forks)."""
    extensions = (app or current_app).extensions
    batcher = extensions.get(_BATCHER)
    if batcher is None:
        # setdefault: two first requests at once still share one batcher.
        batcher = extensions.setdefault(
            _BATCHER, _build_batcher(extensions["conveyor"], extensions["conveyor.publisher"])
        )
    return batcher


def _let_ready_requests_run() -> None:
    # time.sleep(0): under gunicorn's gevent worker (patched) one pass of the hub,
    # which runs the greenlets whose requests have arrived, so they join this
    # flush (in `make bench`, about 12 submits a flush instead of 9, and 4% more
    # of them a second); under gthread it lets the other threads take the GIL.
    # An idle process comes straight back.
    time.sleep(0)


def _build_batcher(res: Resources, jobs_publisher: Publisher) -> GroupCommit[PreparedJob, Outcome]:
    def flush(jobs: Sequence[PreparedJob]) -> list[Outcome]:
        # One pool checkout for the whole batch; its one INSERT is atomic on
        # its own, so an autocommit connection spares BEGIN and COMMIT.
        with (
            tracing.span(
                "submit flush",
                attributes={"conveyor.batch_size": len(jobs)},
                links=[job.headers for job in jobs],
            ),
            res.autocommit_engine.connect() as conn,
        ):
            return submit_many(conn, jobs_publisher, res.statuses, res.settings, jobs)

    return GroupCommit(flush, max_batch=MAX_SUBMIT_BATCH, gather=_let_ready_requests_run)
