"""The worker entry point (`celery -A workers.app`): the one place that reads the environment.

Everything else is built by `workers.factory.create_celery_app(settings)`;
tests and tools call that with explicit settings instead of importing this.
"""

from __future__ import annotations

from infra.settings import Settings
from workers.factory import create_celery_app, wire_process

app = create_celery_app(Settings.from_env())
# The process's app for code that names none (Celery's logging signal).
app.set_current()
app.set_default()
wire_process(app.conf.conveyor_settings)
