"""Per-user daily quota of upstream AI calls, counted in Redis per UTC day.

Call `consume` immediately BEFORE each upstream call, i.e. inside the compute
step that runs only on a cache miss: cache hits cost the user nothing. A
retry is a new upstream call and consumes again. A limit of 0 or less
disables the quota.

Key: `<prefix>ai:quota:<user_id>:<YYYYMMDD>`, expiring two days after its
last use, so yesterday's counter lingers at most a day past midnight.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis

from shared.ai.errors import AIError

_KEY_TTL_SECONDS = 2 * 24 * 3600


def quota_key(prefix: str, user_id: object, now: datetime | None = None) -> str:
    """The counter key for `user_id` on the UTC day of `now`."""
    day = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{prefix}ai:quota:{user_id}:{day:%Y%m%d}"


def _seconds_until_reset(now: datetime) -> float:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


def consume(
    client: redis.Redis,
    prefix: str,
    user_id: object,
    limit: int,
    *,
    now: datetime | None = None,
) -> None:
    """Count one upstream call for `user_id`; raise `ai_quota_exceeded` past `limit`."""
    if limit <= 0:
        return
    now = (now or datetime.now(UTC)).astimezone(UTC)
    key = quota_key(prefix, user_id, now)
    # INCR first: check-then-increment would let concurrent tasks overshoot.
    pipe = client.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, _KEY_TTL_SECONDS)
    used, _ = pipe.execute()
    if used > limit:
        raise AIError(
            "ai_quota_exceeded",
            f"daily limit of {limit} AI generations reached; it resets at 00:00 UTC",
            retryable=False,
            retry_after=_seconds_until_reset(now),
        )


def remaining(
    client: redis.Redis,
    prefix: str,
    user_id: object,
    limit: int,
    *,
    now: datetime | None = None,
) -> int | None:
    """Upstream calls `user_id` has left today, or None when the quota is disabled."""
    if limit <= 0:
        return None
    used = int(client.get(quota_key(prefix, user_id, now)) or 0)
    return max(limit - used, 0)
