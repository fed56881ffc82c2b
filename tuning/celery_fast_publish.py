"""A job message written as Celery's own protocol-2 envelope and pushed with one LPUSH.

Changes: with a Redis broker, the API (and the sweeps) put a job message on
kombu's queue list themselves instead of calling Celery's `send_task`: the
envelope is filled into a template of its fixed parts (`job_message`), and a
batch of submissions goes out in one pipeline on connections of their own
(tuning/redis_pipelines.py), so the flush's status writes can ride along.

Why: `send_task` costs about 1 ms of CPU per call (signature, routing, the
producer pool, a new redis-py client per publish inside kombu), most of a
submit's web CPU (docs/benchmarks.md, "submit").

Written against: celery 5.7.0 (protocol 2), kombu 5.7.0 (its Redis list and
message layout, infra/broker/keys.py).
Breaks: tests/tuning/test_celery_fast_publish.py (the template against
the serialized envelope, byte for byte) and tests/integration/test_publisher.py
(field by field against send_task's, run by real workers).
Off: `CONVEYOR_TUNING=-fast_publish` (or `off`, or BROKER_FAST_PUBLISH=false):
every publish goes through Celery's `send_task` (infra/broker/publish.py).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from infra.broker import keys
from infra.broker.messages import BrokerError, JobMessage, PipelineExtra
from tuning.redis_pipelines import LeanPipelines

# Celery's protocol-2 "embed" part of a plain task call.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def job_message(task: str, job_id: str, queue: str, headers: dict[str, Any], *, origin: str) -> str:
    """The serialized message that runs `task(job_id)` from `queue`.

    Every submission builds one, so it is filled into a template of the fixed
    parts (each value still JSON-encoded): byte for byte what serializing the
    whole envelope gives (`_job_message_built`, which tests compare it with).
    """
    if not _HEADER_NAMES.isdisjoint(headers):  # a header replacing one of Celery's
        return _job_message_built(task, job_id, queue, headers, origin=origin)
    jid = _dumps(job_id)
    body = base64.b64encode(f"[[{jid}], {{}}, {_EMBED_JSON}]".encode()).decode()
    extra = "".join([f", {_dumps(name)}: {_dumps(value)}" for name, value in headers.items()])
    return (
        f'{{"body": "{body}", {_ENCODING}, "headers": {{"lang": "py", "task": {_dumps(task)}, '
        f'"id": {jid}, {_NO_SCHEDULE}, "root_id": {jid}, "parent_id": null, '
        f'"argsrepr": {_dumps(repr([job_id]))}, "kwargsrepr": "{{}}", "origin": {_dumps(origin)}, '
        f'{_NO_RESULT}, "sent_at": {_dumps(time.time())}{extra}}}, '
        f'"properties": {{"correlation_id": {jid}, "reply_to": null, "delivery_mode": 2, '
        f'"delivery_info": {{"exchange": "", "routing_key": {_dumps(queue)}}}, "priority": 0, '
        f'"body_encoding": "base64", "delivery_tag": "{uuid.uuid4()}"}}}}'
    )


_dumps = json.dumps
_EMBED_JSON = json.dumps(_EMBED, separators=(", ", ": "))
_ENCODING = '"content-encoding": "utf-8", "content-type": "application/json"'
_NO_SCHEDULE = (
    '"shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, '
    '"retries": 0, "timelimit": [null, null]'
)
_NO_RESULT = (
    '"ignore_result": true, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}'
)


def _job_message_built(
    task: str, job_id: str, queue: str, headers: dict[str, Any], *, origin: str
) -> str:
    """job_message, built as a dict and serialized: the reference the template must equal."""
    body = json.dumps([[job_id], {}, _EMBED], separators=(", ", ": "))
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": job_id,
            "parent_id": None,
            "argsrepr": repr([job_id]),
            "kwargsrepr": "{}",
            "origin": origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            # Same stamp the before_task_publish hook adds: queue-wait metrics.
            "sent_at": time.time(),
            **headers,
        },
        "properties": {
            "correlation_id": job_id,
            "reply_to": None,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)


# Celery's own header names: a job header of the same name takes the slow path.
_HEADER_NAMES = frozenset(json.loads(_job_message_built("t", "i", "q", {}, origin="o"))["headers"])


class RedisListPublisher:
    """Writes job messages straight onto the Redis broker's queue lists."""

    def __init__(self, client: redis.Redis, key_prefix: str, url: str = "") -> None:
        self._redis = client
        # Each batch of submissions is one pipeline on connections of its own.
        self._pipelines = LeanPipelines(client)
        self._prefix = key_prefix
        self._url = url
        self._origin = f"{os.getpid()}@{socket.gethostname()}"

    def message(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> str:
        """The serialized message, as kombu's Redis transport stores it."""
        return job_message(task, job_id, queue, headers, origin=self._origin)

    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        message = self.message(task, job_id, queue, headers)
        try:
            self._redis.lpush(keys.queue_list(self._prefix, queue), message)
        except redis.RedisError as exc:
            raise BrokerError(f"broker unavailable: {exc.__class__.__name__}") from exc

    def publish_many(
        self, messages: Sequence[JobMessage], extra: PipelineExtra | None = None
    ) -> tuple[list[BrokerError | None], list[Any]]:
        """All messages in one pipelined round trip: one LPUSH per queue, in submission order.

        LPUSH k m1 m2 leaves m1 nearest the tail, where workers BRPOP: first in,
        first out, as separate publishes would be.
        """
        by_queue: dict[str, list[str]] = {}
        for message in messages:
            by_queue.setdefault(message.queue, []).append(self.message(*message))
        pipe = self._pipelines.pipeline()
        for queue, serialized in by_queue.items():
            pipe.lpush(keys.queue_list(self._prefix, queue), *serialized)
        if extra is not None:
            extra(pipe)
        try:
            answers = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            failed = BrokerError(f"broker unavailable: {exc.__class__.__name__}")
            failed.__cause__ = exc
            return [failed] * len(messages), []
        pushed = dict(zip(by_queue, answers, strict=False))
        errors: list[BrokerError | None] = []
        for message in messages:
            answer = pushed[message.queue]
            if isinstance(answer, Exception):
                errors.append(BrokerError(f"broker refused the message: {answer}"))
            else:
                errors.append(None)
        return errors, answers[len(by_queue) :]

    def shares_redis(self, url: str) -> bool:
        """Whether this publisher's broker is the Redis at `url` (one pipeline can serve both)."""
        return url == self._url

    def close(self) -> None:
        self._pipelines.close()
        self._redis.close()
