"""Users, password hashing, bearer tokens and the admin bootstrap."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import jwt
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from shared.jobs import utcnow
from shared.ledger import create_wallet
from shared.models import User

TOKEN_ALGORITHM = "HS256"  # noqa: S105 - an algorithm name, not a secret


class UsernameTaken(Exception):
    """Registration with a username that already exists."""


class InvalidToken(Exception):
    """A bearer token that is missing, malformed, badly signed or expired."""


@dataclass(frozen=True)
class Identity:
    """Who a valid bearer token speaks for."""

    user_id: int
    username: str


class PasswordHasher:
    """A slow KDF (werkzeug's scrypt by default) with constant-time verification."""

    def __init__(self, method: str = "scrypt") -> None:
        self._method = method
        # Verifying against this when the user does not exist keeps the time
        # of a failed login independent of whether the username is real.
        self._decoy = generate_password_hash("decoy-password", method=method)

    def hash(self, password: str) -> str:
        return generate_password_hash(password, method=self._method)

    def verify(self, password_hash: str | None, password: str) -> bool:
        return check_password_hash(password_hash or self._decoy, password) and bool(password_hash)


def register(
    session: Session, hasher: PasswordHasher, username: str, password: str, currency: str
) -> User:
    """Create a user and their wallet; raises UsernameTaken."""
    user = User(
        username=username,
        password_hash=hasher.hash(password),
        is_admin=False,
        created_at=utcnow(),
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise UsernameTaken(username) from None
    create_wallet(session, user.id, currency)
    return user


def authenticate(
    session: Session, hasher: PasswordHasher, username: str, password: str
) -> User | None:
    """The user when the password matches, else None (same work either way)."""
    user = session.scalar(select(User).where(User.username == username))
    if not hasher.verify(user.password_hash if user else None, password):
        return None
    user.last_login_at = utcnow()
    return user


def ensure_admin(
    session: Session, hasher: PasswordHasher, username: str, password: str, currency: str
) -> User:
    """Create the configured admin, or update their password and admin flag."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = register(session, hasher, username, password, currency)
    elif not hasher.verify(user.password_hash, password):
        user.password_hash = hasher.hash(password)
    user.is_admin = True
    return user


def is_admin(session: Session, user_id: int) -> bool:
    """Checked against the database, so revoking admin takes effect at once."""
    return bool(session.scalar(select(User.is_admin).where(User.id == user_id)))


def set_admin(session: Session, user_id: int, value: bool) -> None:
    session.execute(update(User).where(User.id == user_id).values(is_admin=value))


def issue_token(key: str, user: User, ttl_seconds: int) -> str:
    """A signed, expiring bearer token naming the user."""
    now = utcnow()
    claims = {
        "sub": str(user.id),
        "name": user.username,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds),
    }
    return jwt.encode(claims, key, algorithm=TOKEN_ALGORITHM)


def verify_token(key: str, token: str) -> Identity:
    """The identity in a valid token; raises InvalidToken otherwise (alg none included)."""
    return _decode(key, token)[0]


def _decode(key: str, token: str) -> tuple[Identity, float]:
    try:
        claims = jwt.decode(
            token, key, algorithms=[TOKEN_ALGORITHM], options={"require": ["exp", "sub"]}
        )
        identity = Identity(user_id=int(claims["sub"]), username=str(claims.get("name", "")))
        return identity, float(claims["exp"])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidToken(str(exc)) from None


class TokenVerifier:
    """Verifies bearer tokens, remembering recently verified ones until they expire.

    A token is immutable and its signature is checked once; after that only its
    expiry can change its validity, and that is re-checked on every use. Clients
    poll with the same token many times a second, and a PyJWT decode is about a
    fifth of a poll's CPU. Only valid tokens are remembered, at most `size`.
    """

    def __init__(self, key: str, size: int = 4096) -> None:
        self._key = key
        self._size = size
        self._verified: dict[str, tuple[Identity, float]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> Identity:
        """The token's identity; raises InvalidToken when it is invalid or expired."""
        known = self._verified.get(token)
        if known is None:
            known = _decode(self._key, token)
            with self._lock:
                if len(self._verified) >= self._size:
                    self._verified.clear()  # cheap bound; the next uses re-verify
                self._verified[token] = known
        identity, expires_at = known
        if time.time() >= expires_at:
            self._verified.pop(token, None)
            raise InvalidToken("token expired")
        return identity
