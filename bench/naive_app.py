"""The naive baseline: the textbook Flask endpoint that calls `.delay()`, and an AsyncResult poll.

Served by the same gunicorn settings as Conveyor (`gunicorn -c gunicorn.conf.py
'bench.naive_app:create_app()'`), so the comparison isolates what each app does
per request.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.result import AsyncResult
from flask import Flask, jsonify


def create_celery(redis_url: str, prefix: str) -> Celery:
    """A default-configured Celery app (Redis broker and result backend) under `prefix`."""
    celery = Celery("naive", broker=redis_url, backend=redis_url)
    celery.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        task_default_queue="naive",
    )

    @celery.task(name="naive.add")
    def add(x: int, y: int) -> int:
        return x + y

    return celery


def create_app() -> Flask:
    """The baseline app; its Redis comes from BENCH_NAIVE_REDIS_URL and BENCH_NAIVE_PREFIX."""
    celery = create_celery(os.environ["BENCH_NAIVE_REDIS_URL"], os.environ["BENCH_NAIVE_PREFIX"])
    add = celery.tasks["naive.add"]
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    @app.post("/submit")
    def submit():
        result = add.delay(1, 2)
        return jsonify({"task_id": result.id}), 202

    @app.get("/tasks/<task_id>")
    def poll(task_id: str):
        result = AsyncResult(task_id, app=celery)
        state = result.state
        return jsonify({"task_id": task_id, "state": state, "result": result.result})

    return app
