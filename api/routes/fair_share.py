"""Fair share for admins: a user's weight and running cap per fair queue (shared/jobs/fair.py).

The row in PostgreSQL is written first, then the cache the fair lines read;
a failed cache write is healed by the sweep, which re-syncs from the table.
"""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, jsonify

from api.errors import not_found
from api.extensions import resources
from api.fair_share_schemas import FairShareDeleteQuery, FairShareRequest, FairShares
from api.openapi import documented
from api.requests import parse_body, parse_query
from api.security import require_admin
from shared.jobs import fair_shares
from shared.jobs.fair import Policy

bp = Blueprint("fair_share", __name__, url_prefix="/api/v1/admin/users")
log = logging.getLogger(__name__)


def _user_id(text: str) -> int:
    """The path's user id; anything but a positive integer names no user (404)."""
    if not text.isdigit() or len(text) > 18:
        raise not_found("user")
    return int(text)


def _body(user_id: int) -> Response:
    with resources().sessions() as session:
        try:
            shares = fair_shares.shares_of(session, user_id)
        except fair_shares.UnknownUser:
            raise not_found("user") from None
    return jsonify(
        {
            "user_id": user_id,
            "shares": {
                q: {"weight": p.weight, "max_running": p.max_running} for q, p in shares.items()
            },
        }
    )


def _cache(queue: str, user_id: int, policy: Policy | None) -> None:
    try:
        resources().fair.set_policy(queue, user_id, policy)
    except redis.RedisError:
        log.warning("fair share of user %d not cached: Redis unavailable (the sweep will)", user_id)


@bp.get("/<user_id>/fair-share")
@require_admin
@documented(
    "A user's weight and running cap on each fair queue", auth="admin", responses={200: FairShares}
)
def get_fair_share(user_id: str) -> Response:
    return _body(_user_id(user_id))


@bp.put("/<user_id>/fair-share")
@require_admin
@documented(
    "Set a user's weight and running cap on one fair queue",
    auth="admin",
    body=FairShareRequest,
    responses={200: FairShares},
)
def put_fair_share(user_id: str) -> Response:
    body = parse_body(FairShareRequest)
    return _change(_user_id(user_id), body.queue, Policy(body.weight, body.max_running))


@bp.delete("/<user_id>/fair-share")
@require_admin
@documented(
    "Give a user the defaults again on one fair queue (?queue=ai)",
    auth="admin",
    query=FairShareDeleteQuery,
    responses={200: FairShares},
)
def delete_fair_share(user_id: str) -> Response:
    uid = _user_id(user_id)
    return _change(uid, parse_query(FairShareDeleteQuery).queue, None)


def _change(uid: int, queue: str, policy: Policy | None) -> Response:
    """Store `policy` (None: the defaults again) for the user on `queue`; the user's shares."""
    try:
        with resources().sessions.begin() as session:
            if policy is None:
                fair_shares.drop_share(session, uid, queue)
            else:
                fair_shares.put_share(session, uid, queue, policy)
    except fair_shares.UnknownUser:
        raise not_found("user") from None
    _cache(queue, uid, policy)
    return _body(uid)
