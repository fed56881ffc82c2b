"""Celery beat's schedule: one dict of named entries; tasks are named by string.

Run exactly one beat process. Every task here is also safe if fired twice
(each takes a Redis lock or does idempotent work), should two beats run by mistake.
Each entry's message expires after one interval, so a backlog of missed runs
(workers down for an hour) does not all execute when the workers come back.
"""

from __future__ import annotations


def _every(seconds: int, task: str) -> dict:
    return {
        "task": task,
        "schedule": float(seconds),
        "options": {"queue": "maintenance", "expires": seconds},
    }


beat_schedule: dict[str, dict] = {
    # Balances and first transaction pages of active users, and hot AI prompts.
    "cache-warm": _every(300, "cache.warm_scheduled"),
    # PENDING past REDISPATCH_AFTER_SECONDS with no broker message: publish again.
    "redispatch-lost-jobs": _every(60, "maintenance.redispatch_lost"),
    # STARTED past the task's hard time limit: fail it, or re-run ledger jobs.
    "reap-stuck-jobs": _every(60, "maintenance.reap_stuck"),
    # Job records past expires_at; Idempotency-Keys past their 24 h.
    "expire-jobs": _every(3600, "maintenance.expire_jobs"),
    # Notifications older than NOTIFICATIONS_TTL_SECONDS.
    "expire-notifications": _every(3600, "maintenance.expire_notifications"),
}
