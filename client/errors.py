"""What the client raises."""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Base of every client error."""


class ApiError(ConveyorError):
    """The API answered an error: its status and the `error` object's code, message, details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def detail_lines(self) -> list[str]:
        """`field: message` for each field a 422 names; `name: value` for other details."""
        details = self.details
        if isinstance(details, list):
            return [
                f"{item.get('field', '?')}: {item.get('message', '')}"
                if isinstance(item, dict)
                else str(item)
                for item in details
            ]
        if isinstance(details, dict):
            return [f"{name}: {value}" for name, value in details.items()]
        return [] if details is None else [str(details)]


class Unreachable(ConveyorError):
    """Nothing answered at the API's URL: the connection was refused or timed out."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach Conveyor at {url} ({reason})")
        self.url = url
        self.reason = reason


class WaitTimeout(ConveyorError):
    """The job did not finish within the time `wait` was given; `last` is its latest status."""

    def __init__(self, task_id: str, timeout: float, last: dict[str, Any] | None) -> None:
        super().__init__(f"task {task_id} did not finish within {timeout:g}s")
        self.task_id = task_id
        self.last = last


class StreamUnavailable(ConveyorError):
    """The events endpoint cannot be used here (absent, or not answering); poll instead."""
