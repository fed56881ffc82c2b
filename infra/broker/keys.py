"""Where kombu's Redis transport keeps things, under Conveyor's key prefix (its global_keyprefix).

- `{prefix}{queue}`: the queue's list of waiting messages (LPUSH in, BRPOP out);
  messages of priority p > 0 wait in `{prefix}{queue}\\x06\\x16{p}`.
- `{prefix}unacked`: delivery tag → [message, exchange, routing key] of every
  message delivered and not yet acked; `{prefix}unacked_index` scores each tag
  with its delivery (or, with leases, last renewal) time.
"""

from __future__ import annotations

# kombu.transport.redis: the priority separator and the priority steps it uses.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


def queue_list(prefix: str, queue: str) -> str:
    """The list holding `queue`'s waiting messages of the default priority."""
    return f"{prefix}{queue}"


def queue_lists(prefix: str, queue: str) -> list[str]:
    """Every list that may hold `queue`'s waiting messages, one per priority."""
    base = queue_list(prefix, queue)
    return [base] + [f"{base}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def unacked(prefix: str) -> str:
    """The hash of delivered, unacked messages."""
    return f"{prefix}unacked"


def unacked_index(prefix: str) -> str:
    """The sorted set of unacked delivery tags by delivery (lease) time."""
    return f"{prefix}unacked_index"
