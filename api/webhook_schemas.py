"""Request and response models of the webhook routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from api.schemas import PageQuery, Strict
from shared.webhooks.urls import MAX_URL_LENGTH

Event = Literal["job.succeeded", "job.failed"]


class WebhookCreateRequest(Strict):
    url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_LENGTH)] = Field(
        description="http(s) URL; loopback, private and link-local targets are refused"
    )
    events: list[Event] = Field(
        default_factory=lambda: ["job.succeeded", "job.failed"], min_length=1, max_length=2
    )


class DeliveryQuery(PageQuery):
    limit: int = Field(default=20, ge=1, le=100)


class WebhookEndpointBody(BaseModel):
    id: str
    url: str
    events: list[Event]
    created_at: str | None


class WebhookCreated(WebhookEndpointBody):
    secret: str = Field(description="whsec_<base64> signing secret; shown only in this answer")


class WebhookList(BaseModel):
    items: list[WebhookEndpointBody]


class DeliveryAttempt(BaseModel):
    attempt: int
    status_code: int | None
    error: str | None
    at: str | None
    duration_ms: int


class Delivery(BaseModel):
    id: str = Field(description="the webhook-id header of every attempt")
    event: Event
    task_id: str
    state: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None
    log: list[DeliveryAttempt] = Field(description="attempts, newest first")


class DeliveryPage(BaseModel):
    items: list[Delivery]
    page: int
    limit: int
    total: int
