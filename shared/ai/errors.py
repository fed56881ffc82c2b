"""The one exception the AI layer raises, with a stable code and a retry hint.

Codes (stable; they reach clients as the task's `error.code`):

| code                | meaning                                        | retryable |
| ------------------- | ---------------------------------------------- | --------- |
| `ai_timeout`        | the upstream did not answer in time            | yes       |
| `ai_unavailable`    | connection failed, or the upstream sent a 5xx  | yes       |
| `ai_rate_limited`   | 429; `retry_after` carries the server's wait   | yes       |
| `ai_bad_response`   | invalid JSON, or JSON of the wrong shape       | yes       |
| `ai_rejected`       | any other 4xx: the request itself is refused   | no        |
| `ai_quota_exceeded` | the user's daily upstream-call quota is spent  | no        |

`ai_bad_response` is retryable because a language model that once returned
malformed output usually returns valid output on the next attempt.

Messages are built by this package, never copied from a request, and any text
taken from an upstream body goes through `redact` first, so no message ever
contains the API key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

RETRYABLE_BY_CODE: dict[str, bool] = {
    "ai_timeout": True,
    "ai_unavailable": True,
    "ai_rate_limited": True,
    "ai_bad_response": True,
    "ai_rejected": False,
    "ai_quota_exceeded": False,
}

# OpenAI-style secret keys and bearer tokens, in case an upstream echoes one
# that is not the key we were configured with (e.g. a proxy's own token).
_SECRET_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-*]{6,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9_\-.~+/=*]+"),
)
_REDACTED = "[redacted]"


class AIError(Exception):
    """An AI generation failure with a stable `code` and a retry hint for the caller."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        if code not in RETRYABLE_BY_CODE:
            raise ValueError(f"unknown AI error code {code!r}")
        # args stays (code, message) so pickling and Celery's exception
        # serialisation rebuild the error; the rest travels in __dict__.
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.retryable = RETRYABLE_BY_CODE[code] if retryable is None else retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """The `{"code", "message"}` shape a job record's `error` field holds."""
        return {"code": self.code, "message": self.message}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every given secret and anything shaped like an API key replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_REDACTED, text)
    return text
