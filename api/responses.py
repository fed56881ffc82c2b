"""Response models: what each endpoint answers, as the OpenAPI document describes it.

Views build plain dicts; these models exist so the document is generated from
types, and schemathesis checks every real response against them. Extra fields
are allowed (additive changes never break a client).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.jobs import STATES

State = Literal[STATES]  # type: ignore[valid-type]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable snake_case error code")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every error, for every status."""

    error: ErrorDetail


class Registered(BaseModel):
    id: int
    username: str


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(description="seconds until the token expires")
    task_id: str | None = Field(description="the login-triggered random-transactions job")


class JobAccepted(BaseModel):
    task_id: str
    kind: str
    state: Literal["PENDING"]
    status_url: str


class TaskError(BaseModel):
    code: str
    message: str


class TaskStatus(BaseModel):
    task_id: str
    kind: str
    state: State
    progress: int = Field(ge=0, le=100)
    message: str | None
    created_at: str | None
    updated_at: str | None
    expires_at: str | None
    result: dict[str, Any] | None
    error: TaskError | None


class TaskPage(BaseModel):
    items: list[TaskStatus]
    page: int
    limit: int
    total: int


class Wallet(BaseModel):
    balance: int = Field(description="minor units (cents)")
    currency: str
    from_cache: bool


class LedgerEntry(BaseModel):
    id: int
    type: Literal["credit", "debit"]
    amount: int
    balance_after: int
    description: str
    created_at: str | None
    task_id: str | None


class LedgerPage(BaseModel):
    items: list[LedgerEntry]
    page: int
    limit: int
    total: int


class Notification(BaseModel):
    id: str
    type: str
    title: str
    message: str
    task_id: str | None = None
    created_at: str
    read: bool


class NotificationList(BaseModel):
    items: list[Notification]


class MarkedRead(BaseModel):
    updated: int


class Health(BaseModel):
    status: Literal["ok"]


class DependencyCheck(BaseModel):
    ok: bool
    latency_ms: float
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, DependencyCheck]
    error: ErrorDetail | None = None


class OpenApiDocument(BaseModel):
    """This document."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


class AnyObject(BaseModel):
    """A JSON object whose fields the endpoint defines (admin and diagnostics)."""
