"""Parsing request bodies and query strings into models, with SPEC's 400/413/415/422."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError

Model = TypeVar("Model", bound=BaseModel)

MAX_BODY_BYTES = 1024 * 1024


def parse_body(model: type[Model], *, optional: bool = False) -> Model:
    """The JSON body validated against `model`; an absent body is `{}` when optional."""
    raw = request.get_data(cache=True)  # Flask enforces MAX_CONTENT_LENGTH (413) here
    if request.content_length is None and len(raw) >= MAX_BODY_BYTES:
        # A chunked body has no length: werkzeug stops at the limit without
        # complaint, and only a read past it raises the 413 (not a 400 later).
        request.stream.read(1)
    if not raw.strip() and optional:
        return validate(model, {})
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(
            422,
            "validation_error",
            "the body must be a JSON object",
            [{"field": "(body)", "message": "expected an object"}],
        )
    return validate(model, payload)


def parse_query(model: type[Model]) -> Model:
    """The query string validated against `model` (repeated keys: the first wins)."""
    return validate(model, {key: request.args.get(key) for key in request.args})


def validate(model: type[Model], payload: dict[str, Any]) -> Model:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "(body)",
                "message": error["msg"],
            }
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise ApiError(422, "validation_error", "the request is invalid", details) from None
