"""What a job is: its states, errors, the documents clients see, and time and id helpers."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

UNFINISHED = ("PENDING", "STARTED", "PROGRESS", "RETRY")
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
STATES = UNFINISHED + TERMINAL
# The unfinished states as SQL literals, for statements that spell them into
# their text (constants, no input), so the planner matches the partial index
# of unfinished jobs.
UNFINISHED_SQL = ", ".join(f"'{state}'" for state in UNFINISHED)


class JobError(Exception):
    """A job failed for a reason the client should see, with a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was used before with a different request body."""


class TooManyInflightJobs(Exception):
    """The owner already has the maximum number of unfinished jobs."""


class JobNotFound(Exception):
    """No such job for this owner (another owner's job counts as not found)."""


class JobAlreadyFinished(Exception):
    """The job reached a terminal state and cannot be cancelled."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status["state"])
        self.status = status


@dataclass(frozen=True)
class Submission:
    """The outcome of submitting a job: its status and whether it was a replay."""

    status: dict[str, Any]
    replayed: bool


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job it has claimed."""

    id: uuid.UUID
    owner_id: int
    kind: str
    params: dict[str, Any]
    attempts: int
    created_at: datetime
    expires_at: datetime
    # Earlier runs its worker process died under (jobs.lost_runs, this claim's count included).
    lost_runs: int = 0


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z; SQLite hands back naive datetimes, which are UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def request_hash(kind: str, payload: Mapping[str, Any]) -> str:
    """A stable fingerprint of a validated request, for Idempotency-Key comparison."""
    canonical = json.dumps([kind, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_job_id(value: str) -> uuid.UUID | None:
    """The UUID in `value`, or None when it is not one (so the caller answers 404)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


# The canonical form of a task id: where its dashes are (8-4-4-4-12 hex digits).
_ID_TEMPLATE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
_HEX = frozenset("0123456789abcdef")


def id_prefix_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The lowest and highest task ids that start with `prefix`; None when no id can.

    `prefix` is the start of an id as printed (`5a62313e`, `5a62313e-84`), in
    either case; the range lets the database use its index on the id.
    """
    text = prefix.lower()
    if not text or len(text) > len(_ID_TEMPLATE):
        return None
    for char, slot in zip(text, _ID_TEMPLATE, strict=False):
        if (char == "-") != (slot == "-") or (slot == "x" and char not in _HEX):
            return None
    digits = text.replace("-", "")
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def status_from_row(row: Any) -> dict[str, Any]:
    """The public status document of a job row (or any row with the status columns)."""
    error = None
    if row.error_code:
        error = {"code": row.error_code, "message": row.error_message or ""}
    return {
        "task_id": str(row.id),
        "kind": row.kind,
        "state": row.state,
        "progress": row.progress,
        "message": row.message,
        "created_at": isoformat(row.created_at),
        "updated_at": isoformat(row.updated_at),
        "expires_at": isoformat(row.expires_at),
        "result": row.result,
        "error": error,
    }
