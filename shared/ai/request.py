"""`AIRequest`: one normalised generation request, the unit the cache keys on.

Constructing an `AIRequest` normalises and validates it, so two requests that
mean the same thing compare equal and share a cache entry:

- `prompt`: Unicode NFC, surrounding whitespace stripped, inner runs of
  whitespace (newlines included) collapsed to one space; 1-4000 characters.
- `options`: only the keys the kind knows, defaults filled in:
  text → `operation` (summarize|expand|rewrite|explain, default summarize),
  `max_tokens` (1-4096, default 512); presentation → `num_cards` (1-30,
  default 5), `style` (1-64 characters, default "professional"); image →
  `size` (256x256|512x512|1024x1024|1792x1024|1024x1792, default 1024x1024).

Invalid input raises `AIRequestError` (a `ValueError`) naming the field, so
the API can turn it into a 422 whose details name that field.

Tasks receive requests as plain JSON: `AIRequest.from_dict(payload)` and
`request.to_dict()` round-trip.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

KINDS = ("text", "presentation", "image")
TEXT_OPERATIONS = ("summarize", "expand", "rewrite", "explain")
IMAGE_SIZES = ("256x256", "512x512", "1024x1024", "1792x1024", "1024x1792")
PROMPT_MAX_CHARS = 4000
MAX_TOKENS_LIMIT = 4096
NUM_CARDS_LIMIT = 30
STYLE_MAX_CHARS = 64


class AIRequestError(ValueError):
    """A generation request that cannot be served; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _collapse(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _int_option(options: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    # bool is an int subclass; `true` cards is a client bug, not 1 card.
    if isinstance(value, bool) or not isinstance(value, int):
        raise AIRequestError(f"options.{name}", "must be an integer")
    if not low <= value <= high:
        raise AIRequestError(f"options.{name}", f"must be between {low} and {high}")
    return value


def _choice_option(options: dict[str, Any], name: str, default: str, allowed: tuple) -> str:
    value = options.get(name, default)
    if value not in allowed:
        raise AIRequestError(f"options.{name}", f"must be one of {', '.join(allowed)}")
    return value


def _text_options(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "operation": _choice_option(options, "operation", "summarize", TEXT_OPERATIONS),
        "max_tokens": _int_option(options, "max_tokens", 512, 1, MAX_TOKENS_LIMIT),
    }


def _presentation_options(options: dict[str, Any]) -> dict[str, Any]:
    style = options.get("style", "professional")
    if not isinstance(style, str) or not 1 <= len(_collapse(style)) <= STYLE_MAX_CHARS:
        raise AIRequestError("options.style", f"must be 1-{STYLE_MAX_CHARS} characters")
    return {
        "num_cards": _int_option(options, "num_cards", 5, 1, NUM_CARDS_LIMIT),
        "style": _collapse(style),
    }


def _image_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"size": _choice_option(options, "size", "1024x1024", IMAGE_SIZES)}


_OPTION_NORMALISERS = {
    "text": _text_options,
    "presentation": _presentation_options,
    "image": _image_options,
}
_OPTION_NAMES = {
    "text": {"operation", "max_tokens"},
    "presentation": {"num_cards", "style"},
    "image": {"size"},
}


@dataclass(frozen=True)
class AIRequest:
    """A normalised generation request; treat `options` as read-only."""

    kind: str
    prompt: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AIRequestError("kind", f"must be one of {', '.join(KINDS)}")
        if not isinstance(self.prompt, str):
            raise AIRequestError("prompt", "must be a string")
        prompt = _collapse(self.prompt)
        if not 1 <= len(prompt) <= PROMPT_MAX_CHARS:
            raise AIRequestError("prompt", f"must be 1-{PROMPT_MAX_CHARS} characters")
        if any(unicodedata.category(ch) == "Cc" for ch in prompt):
            raise AIRequestError("prompt", "must not contain control characters")
        options = self.options if self.options is not None else {}
        if not isinstance(options, dict):
            raise AIRequestError("options", "must be an object")
        unknown = sorted(set(options) - _OPTION_NAMES[self.kind])
        if unknown:
            raise AIRequestError(f"options.{unknown[0]}", f"is not an option of {self.kind}")
        # Frozen dataclass: normalised values are written through object.__setattr__.
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "options", _OPTION_NORMALISERS[self.kind](options))

    def __hash__(self) -> int:
        return hash(self.canonical_json())

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form a task receives and `from_dict` reads back."""
        return {"kind": self.kind, "prompt": self.prompt, "options": dict(self.options)}

    def canonical_json(self) -> str:
        """One spelling per meaning: sorted keys, no spaces; cache keys hash this."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> AIRequest:
        """Rebuild (and re-validate) a request from `to_dict` output or an API body."""
        if not isinstance(payload, dict):
            raise AIRequestError("body", "must be an object")
        return cls(
            kind=payload.get("kind"),
            prompt=payload.get("prompt"),
            options=payload.get("options") or {},
        )
