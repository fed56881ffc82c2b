"""The wallet, its transactions, and the ledger jobs."""

from __future__ import annotations

import random

from flask import Blueprint, Response, jsonify

from api.dispatch import submit
from api.extensions import resources
from api.openapi import documented
from api.requests import parse_body, parse_query
from api.responses import JobAccepted, LedgerPage, Wallet
from api.schemas import PageQuery, RandomTransactionsRequest, TransactionRequest
from api.security import current_identity, require_auth
from shared.ledger import wallet_cache

bp = Blueprint("ledger", __name__, url_prefix="/api/v1")


@bp.get("/wallet")
@require_auth
@documented("The caller's balance", auth="user", responses={200: Wallet})
def get_wallet() -> Response:
    res = resources()
    value, from_cache = wallet_cache.wallet(res.cache, res.sessions, current_identity().user_id)
    return jsonify({**value, "from_cache": from_cache})


@bp.get("/transactions")
@require_auth
@documented(
    "The caller's ledger entries, newest first",
    auth="user",
    query=PageQuery,
    responses={200: LedgerPage},
)
def list_transactions() -> Response:
    query = parse_query(PageQuery)
    res = resources()
    value, _ = wallet_cache.transactions_page(
        res.cache,
        res.sessions,
        current_identity().user_id,
        page=query.page,
        limit=query.limit,
        max_cached_page=res.settings.cache_transactions_pages,
    )
    return jsonify(
        {"items": value["items"], "page": query.page, "limit": query.limit, "total": value["total"]}
    )


@bp.post("/transactions")
@require_auth
@documented(
    "Queue a credit or debit (job ledger.transaction)",
    auth="user",
    body=TransactionRequest,
    responses={202: JobAccepted},
)
def create_transaction() -> Response:
    body = parse_body(TransactionRequest)
    payload = body.model_dump()
    return submit("ledger.transaction", payload, payload)


@bp.post("/transactions/random")
@require_auth
@documented(
    "Queue 1-10 random transactions (job ledger.random)",
    auth="user",
    body=RandomTransactionsRequest,
    body_optional=True,
    responses={202: JobAccepted},
)
def create_random_transactions() -> Response:
    body = parse_body(RandomTransactionsRequest, optional=True)
    # Chosen once, here, so a redelivered job posts the same number of entries.
    count = body.count or random.randint(1, 10)  # noqa: S311 - demo data
    return submit("ledger.random", {"count": count}, body.model_dump())
