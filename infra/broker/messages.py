"""What a publisher is: a job message, the Publisher interface and the error a down broker raises.

Nothing here imports Celery: the domain (shared/jobs/submission.py) takes a
Publisher as an argument and only needs these types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from kombu.exceptions import OperationalError as BrokerError

__all__ = ["BrokerError", "JobMessage", "PipelineExtra", "Publisher"]

# Queues more commands on the publisher's own pipeline (same Redis server;
# redis-py's Pipeline or a LeanPipeline, which has evalsha and execute_command);
# publish_many hands back their answers.
PipelineExtra = Callable[[Any], None]


class JobMessage(NamedTuple):
    """One job message to publish: `task(job_id)` on `queue`, with `headers`."""

    task: str
    job_id: str
    queue: str
    headers: dict[str, Any]


class Publisher(Protocol):
    def publish(self, task: str, job_id: str, queue: str, headers: dict[str, Any]) -> None:
        """Put `task(job_id)` on `queue`; raises BrokerError when the broker is down."""
        ...

    def publish_many(
        self, messages: Sequence[JobMessage], extra: PipelineExtra | None = None
    ) -> tuple[list[BrokerError | None], list[Any]]:
        """Publish each message; per message None (on the broker) or the BrokerError it met.

        `extra` (only for a Redis publisher, see `shares_redis`) queues more
        commands behind the messages in the same round trip; their answers
        (exceptions included) come second.
        """
        ...

    def shares_redis(self, url: str) -> bool:
        """Whether the broker is the Redis at `url`, so `extra` commands may ride along."""
        ...

    def close(self) -> None:
        """Release the broker connections this publisher opened."""
        ...
