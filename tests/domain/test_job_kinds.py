"""Every job kind is declared once (shared/jobs/kinds.py) and the rest of Conveyor follows it."""

from __future__ import annotations

import dataclasses

import pytest

import celeryconfig
from api.schemas import TaskListQuery
from shared.jobs.kinds import KIND_QUEUES, KINDS, QUEUES, hard_time_limits, rerunnable_kinds
from workers.factory import create_celery_app

# Tasks that are not job kinds: they have no job row (beat's and the canary).
NOT_JOBS = {"cache.warm_scheduled", "system.ping", "webhooks.deliver"} | {
    f"maintenance.{name}"
    for name in ("expire_jobs", "expire_notifications", "redispatch_lost", "reap_stuck")
}


@pytest.fixture(scope="module")
def app(settings):
    celery = create_celery_app(dataclasses.replace(settings, ai_timeout_seconds=40.0))
    celery.loader.import_default_modules()
    yield celery
    celery.close()


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_declared_kind_has_its_task_route_and_limits(app, name):
    kind = KINDS[name]
    task = app.tasks[name]
    assert (task.soft_time_limit, task.time_limit) == kind.limits(40.0)
    assert celeryconfig.task_routes[name] == {"queue": kind.queue}
    assert app.amqp.router.route({}, name)["queue"].name == kind.queue
    assert kind.queue in QUEUES
    assert KIND_QUEUES[name] == kind.queue
    assert hard_time_limits(40.0)[name] == task.time_limit


def test_every_job_task_is_declared(app):
    tasks = {name for name in app.tasks if not name.startswith("celery.")}
    assert tasks - NOT_JOBS == set(KINDS)


def test_the_task_list_filter_accepts_exactly_the_declared_kinds():
    field = TaskListQuery.model_fields["kind"]
    allowed = set(field.annotation.__args__[0].__args__)
    assert allowed == set(KINDS)


def test_only_idempotent_kinds_rerun_when_stuck():
    assert set(rerunnable_kinds()) == {"ledger.transaction", "ledger.random"}
