"""AI generation jobs: `POST /ai/generate` records and enqueues `ai.<kind>`."""

from __future__ import annotations

from flask import Blueprint, Response

from api.ai_schemas import AIGenerateRequest
from api.dispatch import submit
from api.errors import ApiError
from api.limits import ai_limited
from api.openapi import documented
from api.requests import parse_body
from api.responses import JobAccepted
from api.security import require_auth
from shared.ai.request import AIRequest, AIRequestError

bp = Blueprint("ai", __name__, url_prefix="/api/v1")


@bp.post("/ai/generate")
@ai_limited
@require_auth
@documented(
    "Queue a text, presentation or image generation (jobs ai.text, ai.presentation, ai.image)",
    auth="user",
    body=AIGenerateRequest,
    responses={202: JobAccepted},
)
def generate() -> Response:
    body = parse_body(AIGenerateRequest)
    try:
        request = AIRequest(kind=body.kind, prompt=body.prompt, options=body.options)
    except AIRequestError as exc:
        raise ApiError(
            422,
            "validation_error",
            "the request is invalid",
            [{"field": exc.field, "message": exc.message}],
        ) from None
    # The normalised request is all a worker needs; credentials live in its settings.
    return submit(f"ai.{request.kind}", request.to_dict(), body.model_dump())
