"""Request and response models of the failed-jobs routes (admin: list, replay, history)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from api.schemas import PageQuery, Strict
from shared.jobs import KIND_QUEUES

ErrorCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Kind = Literal[tuple(KIND_QUEUES)]  # type: ignore[valid-type]
# Task ids one replay names at most (a filter has no such bound).
MAX_REPLAY_IDS = 1000


class FailedJobFilter(Strict):
    """Failed jobs matching every criterion given (none: every failed job)."""

    kind: Kind | None = None
    error_code: ErrorCode | None = None
    user_id: int | None = Field(default=None, ge=1)
    since: AwareDatetime | None = Field(default=None, description="failed at or after (ISO 8601)")
    until: AwareDatetime | None = Field(default=None, description="failed before (ISO 8601)")

    @model_validator(mode="after")
    def _ordered(self) -> FailedJobFilter:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        return self


class FailedJobsQuery(PageQuery, FailedJobFilter):
    pass


class ReplayRequest(Strict):
    """Exactly one of `task_ids` or `filter`; `dry_run` says what would be replayed."""

    task_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=MAX_REPLAY_IDS)
    filter: FailedJobFilter | None = None
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> ReplayRequest:
        if (self.task_ids is None) == (self.filter is None):
            raise ValueError("give exactly one of task_ids or filter")
        return self


class FailedJobError(BaseModel):
    code: str | None
    message: str


class FailedJob(BaseModel):
    task_id: str
    kind: str
    user_id: int
    state: str
    error: FailedJobError
    created_at: str | None
    failed_at: str | None
    expires_at: str | None = Field(description="when the retention sweep removes it")
    attempts: int
    lost_runs: int = Field(description="runs its worker process died under")
    replays: int


class FailedJobPage(BaseModel):
    items: list[FailedJob]
    page: int
    limit: int
    total: int


class ReplayedJob(BaseModel):
    task_id: str
    state: str


class SkippedJob(BaseModel):
    task_id: str
    reason: Literal["not_failed", "broker_unavailable"]


class ReplayAccepted(BaseModel):
    """202: the jobs queued again (same task ids, a new attempt each)."""

    items: list[ReplayedJob]
    replayed: int
    replay_id: int | None
    skipped: list[SkippedJob]
    dry_run: Literal[False]


class ReplayPreview(BaseModel):
    """200: what the same request without dry_run would replay; nothing changed."""

    items: list[FailedJob]
    replayed: Literal[0]
    would_replay: int
    skipped: list[SkippedJob]
    dry_run: Literal[True]


class ReplayRecord(BaseModel):
    id: int
    replayed_at: str | None
    admin: dict[str, Any]
    selection: dict[str, Any] | None
    replayed: int
    jobs: list[dict[str, Any]]


class ReplayHistory(BaseModel):
    items: list[ReplayRecord]
    page: int
    limit: int
    total: int
