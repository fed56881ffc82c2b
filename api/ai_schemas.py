"""The request model of `POST /ai/generate`; per-kind options are checked by `AIRequest`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from api.schemas import Strict
from shared.ai.request import PROMPT_MAX_CHARS


class AIGenerateRequest(Strict):
    kind: Literal["text", "presentation", "image"]
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=PROMPT_MAX_CHARS)]
    # One model per kind would duplicate shared.ai.request's rules; it owns them.
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "text: operation (summarize|expand|rewrite|explain), max_tokens (1-4096); "
            "presentation: num_cards (1-30), style (1-64 chars); "
            "image: size (256x256|512x512|1024x1024|1792x1024|1024x1792)"
        ),
    )
