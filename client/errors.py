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


class WaitTimeout(ConveyorError):
    """The job did not finish within the time `wait` was given; `last` is its latest status."""

    def __init__(self, task_id: str, timeout: float, last: dict[str, Any] | None) -> None:
        super().__init__(f"task {task_id} did not finish within {timeout:g}s")
        self.task_id = task_id
        self.last = last


class StreamUnavailable(ConveyorError):
    """The events endpoint cannot be used here (absent, or not answering); poll instead."""
