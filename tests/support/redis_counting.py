"""A redis-py connection that counts its sends: one per command or pipeline, one per trip."""

from __future__ import annotations

import redis


class CountingConnection(redis.Connection):
    """Counts what goes to Redis: one send per command or pipeline, so one per round trip."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        type(self).sends += 1
        return super().send_packed_command(command, check_health)
