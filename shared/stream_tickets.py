"""Stream tickets: short-lived tokens that open event streams and nothing else.

Browsers' EventSource cannot send an Authorization header, so a client trades
its bearer token for a ticket and passes it as `?ticket=`. A ticket is a JWT
signed with a key derived from the signing key (never the key itself) and
carrying its own audience, so the bearer check refuses it on two counts; and
only the stream views read `?ticket=`, so a bearer token in a URL opens nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt

from shared.accounts import Identity, InvalidToken

AUDIENCE = "conveyor:stream"
_ALGORITHM = "HS256"


class StreamTickets:
    """Issue and verify stream tickets for one signing key."""

    def __init__(self, signing_key: str, ttl_seconds: int) -> None:
        # A separate key: a leaked ticket can never be replayed as a bearer token.
        self._key = hmac.new(signing_key.encode(), b"stream-ticket", hashlib.sha256).hexdigest()
        self.ttl_seconds = ttl_seconds

    def issue(self, identity: Identity) -> str:
        """A ticket for `identity`, valid for `ttl_seconds`."""
        now = int(time.time())
        claims = {"sub": str(identity.user_id), "name": identity.username, "aud": AUDIENCE,
                  "iat": now, "exp": now + self.ttl_seconds}  # fmt: skip
        return jwt.encode(claims, self._key, algorithm=_ALGORITHM)

    def verify(self, ticket: str) -> Identity:
        """The ticket's identity; raises InvalidToken when it is not a valid, unexpired ticket."""
        try:
            claims = jwt.decode(
                ticket, self._key, algorithms=[_ALGORITHM], audience=AUDIENCE,
                options={"require": ["exp", "sub", "aud"]},
            )  # fmt: skip
            return Identity(user_id=int(claims["sub"]), username=str(claims.get("name", "")))
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from None
