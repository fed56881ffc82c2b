"""Register and log in."""

from __future__ import annotations

import logging
import random

from flask import Blueprint, Response, g, jsonify

from api.dispatch import message_headers, record_enqueued
from api.errors import ApiError
from api.extensions import publisher, resources
from api.limits import auth_limited
from api.openapi import documented
from api.requests import parse_body
from api.responses import AccessToken, Registered
from api.schemas import Credentials, LoginRequest
from shared import accounts
from shared.jobs.submission import BrokerError
from shared.jobs.submission import submit as submit_job

bp = Blueprint("auth", __name__, url_prefix="/api/v1/auth")
log = logging.getLogger(__name__)


@bp.post("/register")
@auth_limited
@documented(
    "Create an account", auth="none", body=Credentials, responses={201: Registered}, errors=(409,)
)
def register() -> tuple[Response, int]:
    body = parse_body(Credentials)
    res = resources()
    try:
        with res.sessions.begin() as session:
            user = accounts.register(
                session, res.hasher, body.username, body.password, res.settings.default_currency
            )
    except accounts.UsernameTaken:
        raise ApiError(409, "username_taken", "that username is taken") from None
    return jsonify({"id": user.id, "username": user.username}), 201


@bp.post("/login")
@auth_limited
@documented(
    "Exchange credentials for a bearer token",
    auth="none",
    body=LoginRequest,
    responses={200: AccessToken},
    errors=(401,),
)
def login() -> Response:
    body = parse_body(LoginRequest)
    res = resources()
    with res.sessions.begin() as session:
        user = accounts.authenticate(session, res.hasher, body.username, body.password)
        if user is None:
            raise ApiError(401, "invalid_credentials", "wrong username or password")
        token = accounts.issue_token(res.settings.signing_key, user, res.settings.token_ttl_seconds)
    g.identity = accounts.Identity(user.id, user.username)
    task_id = _login_transactions(user.id) if res.settings.login_generates_transactions else None
    return jsonify(
        {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": res.settings.token_ttl_seconds,
            "task_id": task_id,
        }
    )


def _login_transactions(user_id: int) -> str | None:
    """Record and enqueue the login-triggered job; None (and no job) if the broker is down."""
    res = resources()
    count = random.randint(1, 10)  # noqa: S311 - demo data, not security
    with res.autocommit_engine.connect() as conn:
        try:
            submission = submit_job(
                conn,
                publisher(),
                res.settings,
                owner_id=user_id,
                kind="ledger.random",
                params={"count": count, "trigger": "login"},
                headers=message_headers(user_id),
                # The system starts this job; it never counts against the user's cap.
                admission=False,
            )
        except BrokerError:
            # Logging in must not fail because the demo job cannot be queued.
            log.warning("login job not queued: broker unavailable")
            return None
    record_enqueued(user_id, submission.status)
    return submission.status["task_id"]
