"""Request and response models of the fair-share admin routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas import Strict
from shared.jobs.fair import FAIR_QUEUES

FairQueue = Literal[tuple(FAIR_QUEUES)]  # type: ignore[valid-type]


class FairShareRequest(Strict):
    """A user's share of one fair queue."""

    queue: FairQueue  # type: ignore[valid-type]
    weight: int = Field(default=1, ge=1, le=1000, description="served weight times as often")
    max_running: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="jobs of this user running at once on the queue (null: the default, 0: none)",
    )


class FairShareDeleteQuery(Strict):
    queue: FairQueue  # type: ignore[valid-type]


class QueueShare(BaseModel):
    weight: int
    max_running: int | None


class FairShares(BaseModel):
    user_id: int
    shares: dict[str, QueueShare]
