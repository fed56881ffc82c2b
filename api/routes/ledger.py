"""The wallet, its transactions, and the ledger jobs."""

from __future__ import annotations

import random

from flask import Blueprint, Response, jsonify

from api.dispatch import submit
from api.extensions import resources
from api.requests import parse_body, parse_query
from api.schemas import PageQuery, RandomTransactionsRequest, TransactionRequest
from api.security import current_identity, require_auth
from shared import ledger

bp = Blueprint("ledger", __name__, url_prefix="/api/v1")


@bp.get("/wallet")
@require_auth
def get_wallet() -> Response:
    with resources().sessions() as session:
        _, balance, currency = ledger.wallet_for_user(session, current_identity().user_id)
    return jsonify({"balance": balance, "currency": currency, "from_cache": False})


@bp.get("/transactions")
@require_auth
def list_transactions() -> Response:
    query = parse_query(PageQuery)
    with resources().sessions() as session:
        items, total = ledger.list_entries(
            session, current_identity().user_id, page=query.page, limit=query.limit
        )
    return jsonify({"items": items, "page": query.page, "limit": query.limit, "total": total})


@bp.post("/transactions")
@require_auth
def create_transaction() -> Response:
    body = parse_body(TransactionRequest)
    payload = body.model_dump()
    return submit("ledger.transaction", payload, payload)


@bp.post("/transactions/random")
@require_auth
def create_random_transactions() -> Response:
    body = parse_body(RandomTransactionsRequest, optional=True)
    # Chosen once, here, so a redelivered job posts the same number of entries.
    count = body.count or random.randint(1, 10)  # noqa: S311 - demo data
    return submit("ledger.random", {"count": count}, body.model_dump())
