"""Repair: leases on the Redis messages a worker holds; a dead worker's jobs come back in minutes.

Changes: a Celery consumer bootstep that reads the channel QoS's private
`_delivered` map (the messages this consumer holds) and, every quarter of the
visibility timeout, moves their scores in kombu's `unacked_index` to "now".

Why: kombu's Redis transport emulates acks: a delivered message sits in the
`unacked` hash, and any consumer puts back a message delivered longer ago
than the visibility timeout. With one timeout for every message, a short one
re-runs healthy long jobs and a long one (an hour was Celery's advice)
strands a dead worker's jobs for that hour (celery/celery#6229, #5306). With
leases the timeout is short (BROKER_VISIBILITY_TIMEOUT, 90 s): a worker that
dies in any way stops renewing, and its reserved, running and countdown
messages are restored within the timeout plus one restore scan; a healthy
job, however long, keeps its lease and never runs twice. The transport
options are set in infra/broker/config.py.

Written against: kombu 5.7.0 (`QoS._delivered`, `Channel.unacked_index_key`,
`conn_or_acquire`), celery 5.7.0 (consumer bootsteps, `c.timer`).
Breaks: tests/integration/test_broker_leases.py (real prefork workers SIGKILLed).
Off: `CONVEYOR_TUNING=-broker_leases` (a repair: `off` keeps it). Without it
the visibility timeout is kombu's hour, so a dead worker's messages come back
only after that.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)

# Renewals per visibility timeout: three may fail in a row (Redis blips)
# before a healthy worker's lease runs out.
RENEWALS_PER_TIMEOUT = 4


def renew_interval(visibility_timeout: float) -> float:
    """How often a worker renews the leases it holds."""
    return max(0.5, visibility_timeout / RENEWALS_PER_TIMEOUT)


def held_delivery_tags(channel: Any) -> list[str]:
    """Delivery tags of the messages this channel holds unacked (kombu's QoS map)."""
    qos = getattr(channel, "qos", None)
    delivered = getattr(qos, "_delivered", None)
    if not delivered:
        return []
    for _ in range(3):
        try:
            return list(delivered)
        except RuntimeError:  # changed size while copying (thread pool); try again
            continue
    return []


def renew(channel: Any, tags: list[str], *, now: float | None = None) -> int:
    """Move the lease of each held tag to `now`; returns how many were still unacked."""
    if not tags:
        return 0
    now = time.time() if now is None else now
    with channel.conn_or_acquire() as client:
        # XX: only messages still unacked; an ack that raced us stays acked.
        # CH: count what changed, i.e. the leases this call renewed.
        return int(
            client.zadd(channel.unacked_index_key, dict.fromkeys(tags, now), xx=True, ch=True)
        )


class LeaseRenewal(bootsteps.StartStopStep):
    """Consumer step: renew the leases of this worker's held messages on a timer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref = None

    def start(self, c: Any) -> None:
        channel = getattr(c.task_consumer, "channel", None)
        if channel is None or not hasattr(channel, "unacked_index_key"):
            return  # not the Redis transport: the broker tracks acks itself
        timeout = float(channel.visibility_timeout)
        self.tref = c.timer.call_repeatedly(renew_interval(timeout), self._renew, (c,), priority=10)

    def _renew(self, c: Any) -> None:
        channel = getattr(c.task_consumer, "channel", None)
        if channel is None:
            return
        try:
            renew(channel, held_delivery_tags(channel))
        except Exception:  # a timer callback must not kill the consumer
            log.warning("could not renew broker leases; retrying", exc_info=True)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop
