"""The caller's completion webhooks: register, list, delete, and read the delivery log."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.errors import ApiError
from api.extensions import resources
from api.openapi import documented
from api.requests import parse_body, parse_query
from api.security import current_identity, require_auth
from api.webhook_schemas import (
    DeliveryPage,
    DeliveryQuery,
    WebhookCreated,
    WebhookCreateRequest,
    WebhookEndpointBody,
    WebhookList,
)
from shared import webhooks
from shared.webhooks.urls import UnsafeWebhookUrl, check_url

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks")


def _not_found() -> ApiError:
    # Unknown and another user's endpoint get the same answer.
    return ApiError(404, "not_found", "no such webhook")


@bp.post("")
@require_auth
@documented(
    "Register a completion webhook (its secret is shown once)",
    auth="user",
    body=WebhookCreateRequest,
    responses={201: WebhookCreated},
    errors=(409,),
)
def create_webhook() -> tuple[Response, int]:
    body = parse_body(WebhookCreateRequest)
    allow_private = resources().settings.webhook_allow_private_urls
    try:
        check_url(body.url, allow_private=allow_private)
    except UnsafeWebhookUrl as exc:
        raise ApiError(
            422,
            "url_not_allowed",
            "this URL may not receive webhooks",
            [{"field": "url", "message": exc.reason}],
        ) from None
    try:
        with resources().sessions.begin() as session:
            created = webhooks.create_endpoint(
                session, current_identity().user_id, body.url, body.events
            )
    except webhooks.TooManyEndpoints:
        raise ApiError(
            409,
            "too_many_webhooks",
            f"at most {webhooks.MAX_ENDPOINTS_PER_USER} webhooks per user; delete one first",
        ) from None
    return jsonify(created), 201


@bp.get("")
@require_auth
@documented("The caller's webhooks, newest first", auth="user", responses={200: WebhookList})
def list_webhooks() -> Response:
    with resources().sessions() as session:
        items = webhooks.list_endpoints(session, current_identity().user_id)
    return jsonify({"items": items})


@bp.delete("/<webhook_id>")
@require_auth
@documented(
    "Delete a webhook and its delivery log", auth="user", responses={200: WebhookEndpointBody}
)
def delete_webhook(webhook_id: str) -> Response:
    parsed = webhooks.parse_id(webhook_id)
    if parsed is None:
        raise _not_found()
    with resources().sessions.begin() as session:
        deleted = webhooks.delete_endpoint(session, current_identity().user_id, parsed)
    if deleted is None:
        raise _not_found()
    return jsonify(deleted)


@bp.get("/<webhook_id>/deliveries")
@require_auth
@documented(
    "A webhook's deliveries with their attempts, newest first",
    auth="user",
    query=DeliveryQuery,
    responses={200: DeliveryPage},
)
def list_deliveries(webhook_id: str) -> Response:
    query = parse_query(DeliveryQuery)
    parsed = webhooks.parse_id(webhook_id)
    if parsed is None:
        raise _not_found()
    with resources().sessions() as session:
        found = webhooks.list_deliveries(
            session, current_identity().user_id, parsed, page=query.page, limit=query.limit
        )
    if found is None:
        raise _not_found()
    items, total = found
    return jsonify({"items": items, "page": query.page, "limit": query.limit, "total": total})
