"""Celery beat's schedule: one dict of named entries; tasks are named by string.

Run exactly one beat process. Every task here is also safe if fired twice
(each takes a Redis lock or does idempotent work), should two beats run by mistake.
"""

from __future__ import annotations

beat_schedule: dict[str, dict] = {}
