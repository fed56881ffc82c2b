"""Bearer-token verification, including the per-process cache of verified tokens."""

from __future__ import annotations

import time

import jwt
import pytest

from shared.accounts import InvalidToken, TokenVerifier, issue_token, verify_token
from shared.models import User

KEY = "k" * 40


def _token(ttl: int = 60, user_id: int = 7) -> str:
    return issue_token(KEY, User(id=user_id, username="ada"), ttl)


def test_a_cached_token_still_expires():
    verifier = TokenVerifier(KEY)
    token = _token(ttl=1)
    assert verifier.verify(token).user_id == 7
    assert verifier.verify(token).user_id == 7  # answered from the cache
    time.sleep(1.1)
    with pytest.raises(InvalidToken):
        verifier.verify(token)


def test_invalid_tokens_are_never_remembered():
    verifier = TokenVerifier(KEY)
    forged = jwt.encode({"sub": "7", "exp": time.time() + 60}, "x" * 40, algorithm="HS256")
    unsigned = jwt.encode({"sub": "7", "exp": time.time() + 60}, None, algorithm="none")
    for token in (forged, unsigned, "not-a-token"):
        for _ in range(2):
            with pytest.raises(InvalidToken):
                verifier.verify(token)


def test_cache_is_bounded():
    verifier = TokenVerifier(KEY, size=3)
    tokens = [_token(user_id=n) for n in range(10)]
    assert [verifier.verify(t).user_id for t in tokens] == list(range(10))
    assert len(verifier._verified) <= 3


def test_expired_token_is_rejected_by_both_paths():
    token = issue_token(KEY, User(id=1, username="x"), -1)
    with pytest.raises(InvalidToken):
        verify_token(KEY, token)
    with pytest.raises(InvalidToken):
        TokenVerifier(KEY).verify(token)
