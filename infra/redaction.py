"""Scrubbing secrets (tokens, passwords, API keys) out of anything that gets logged."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

# A field whose name contains one of these holds a secret, whatever its value looks like.
_SECRET_NAME = re.compile(
    r"pass(word|wd)?|secret|token|authorization|api[_-]?key|cookie|credential|signature",
    re.IGNORECASE,
)

# Secrets embedded in free text: bearer tokens, key=value pairs, URL passwords.
_TEXT_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (
        re.compile(
            r"(?i)([\"']?\b[\w-]*(?:password|passwd|secret|token|api[_-]?key)[\"']?\s*[:=]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;&}]+)"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(://[^:/@\s]*:)[^@\s]+@"), r"\1" + REDACTED + "@"),
    # OpenAI-style keys and JWTs, wherever they appear.
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"), REDACTED),
)


def is_secret_name(name: str) -> bool:
    """True when a field called `name` must never be logged."""
    return bool(_SECRET_NAME.search(name))


def redact_text(text: str) -> str:
    """`text` with embedded secrets replaced by [REDACTED]."""
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with secret-named fields and embedded secrets replaced."""
    if depth > 6:  # deep enough for any log payload; stops runaway recursion
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if is_secret_name(str(key)) else redact(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, depth + 1) for item in value)
    return value
