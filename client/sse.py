"""Reading a Server-Sent Events body line by line (the WHATWG event-stream format)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RawEvent:
    id: str | None
    event: str
    data: str


@dataclass
class StreamState:
    """What a stream told the reader besides events: its last id and reconnect delay."""

    last_id: str | None = None
    retry_ms: int | None = None
    # The server said there is nothing more to send (204: the job is over).
    ended: bool = False


def parse(lines: Iterable[str], state: StreamState) -> Iterator[RawEvent]:
    """The events in `lines`; `state` keeps the last event id and `retry:` as they arrive."""
    event_id: str | None = None
    event_type = ""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                if event_id is not None:
                    state.last_id = event_id
                yield RawEvent(event_id, event_type or "message", "\n".join(data))
            event_id, event_type, data = None, "", []
            continue
        if line.startswith(":"):
            continue  # a keep-alive comment
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event_type = value
        elif field == "id":
            event_id = value
        elif field == "retry" and value.isdigit():
            state.retry_ms = int(value)
