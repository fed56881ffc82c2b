"""Reading a job's id out of a message as kombu's Redis transport stores it (for the sweeps)."""

from __future__ import annotations

import json


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
