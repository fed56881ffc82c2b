"""Request models: every body and query string is parsed through one of these."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from shared.jobs import KIND_QUEUES, STATES, id_prefix_range


class Strict(BaseModel):
    """Unknown fields are rejected (422 naming them), never assigned."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


Username = Annotated[
    str, StringConstraints(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]


class Credentials(Strict):
    username: Username
    password: Password


class LoginRequest(Strict):
    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class TransactionRequest(Strict):
    type: Literal["credit", "debit"]
    # strict: 10.5 or "100" is refused rather than coerced (money is integers).
    amount: int = Field(ge=1, le=10**12, strict=True)
    description: Annotated[str, StringConstraints(max_length=255)] = ""


class RandomTransactionsRequest(Strict):
    count: int | None = Field(default=None, ge=1, le=10, strict=True)


class PageQuery(Strict):
    page: int = Field(default=1, ge=1, le=100_000)
    limit: int = Field(default=50, ge=1, le=100)


class TaskListQuery(PageQuery):
    state: Literal[STATES] | None = None  # type: ignore[valid-type]
    kind: Literal[tuple(KIND_QUEUES)] | None = None  # type: ignore[valid-type]
    id_prefix: str | None = Field(
        default=None,
        description="only the tasks whose id starts with this (e.g. 5a62313e), any case",
    )

    @field_validator("id_prefix")
    @classmethod
    def _an_id_can_start_so(cls, value: str | None) -> str | None:
        if value is not None and id_prefix_range(value) is None:
            raise PydanticCustomError(
                "id_prefix", "must be the start of a task id, such as 5a62313e or 5a62313e-84"
            )
        return value


class MarkReadRequest(Strict):
    ids: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=1000
    )
    all: bool | None = None


class CacheWarmRequest(Strict):
    # Absent or null: every target.
    targets: list[Literal["balances", "transactions", "ai"]] | None = Field(
        default=None, min_length=1, max_length=3
    )
