"""Celery's protocol-2 message for a job, exactly as kombu's Redis transport stores it.

A job message is always the same shape: one positional argument (the job
id), JSON, no ETA, no result. Building it here costs a few microseconds where
Celery's `send_task` costs about a millisecond of CPU; tests/test_publisher.py
compares this envelope with send_task's field by field and runs real workers
on it. Reading a stored message's task id is here too, for the sweeps.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

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


def task_id(raw: str | bytes) -> str | None:
    """The task id of a stored message, or None when it is not one."""
    try:
        return json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None


def unacked_task_id(raw: str | bytes) -> str | None:
    """The task id of an entry of kombu's unacked hash ([message, exchange, routing key])."""
    try:
        return json.loads(raw)[0]["headers"]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
