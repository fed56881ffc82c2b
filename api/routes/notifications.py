"""The caller's notifications, written by workers when jobs finish."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.errors import ApiError
from api.extensions import resources
from api.openapi import documented
from api.requests import parse_body
from api.responses import MarkedRead, NotificationList
from api.schemas import MarkReadRequest
from api.security import current_identity, require_auth

bp = Blueprint("notifications", __name__, url_prefix="/api/v1/notifications")


@bp.get("/pending")
@require_auth
@documented("Unread notifications", auth="user", responses={200: NotificationList})
def pending() -> Response:
    items = resources().notifications.recent(current_identity().user_id, unread_only=True)
    return jsonify({"items": items})


@bp.get("")
@require_auth
@documented("Recent notifications, read or not", auth="user", responses={200: NotificationList})
def recent() -> Response:
    return jsonify({"items": resources().notifications.recent(current_identity().user_id)})


@bp.post("/read")
@require_auth
@documented(
    "Mark notifications read", auth="user", body=MarkReadRequest, responses={200: MarkedRead}
)
def mark_read() -> Response:
    body = parse_body(MarkReadRequest)
    if (body.ids is None) == (not body.all):
        raise ApiError(
            422,
            "validation_error",
            'send either {"ids": [...]} or {"all": true}',
            [{"field": "ids", "message": "give ids or all=true, not both"}],
        )
    ids = None if body.all else body.ids
    updated = resources().notifications.mark_read(current_identity().user_id, ids)
    return jsonify({"updated": updated})
