"""Presentation outlines: the instructions we send and the strict check of what comes back."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shared.ai.errors import AIError
from shared.ai.request import AIRequest

if TYPE_CHECKING:
    from shared.ai.provider import ProgressCallback

MAX_BULLETS = 8
# The slice of the 0-100 progress bar that card validation fills; the caller
# owns 100 (it reports completion after caching the result).
_VALIDATION_START = 60
_VALIDATION_END = 95


def outline_messages(request: AIRequest) -> list[dict[str, str]]:
    """Chat messages asking for a JSON outline with exactly `num_cards` cards."""
    num_cards = request.options["num_cards"]
    style = request.options["style"]
    system = (
        "You write presentation outlines. Reply with one JSON object and nothing else, "
        'of the form {"title": string, "cards": [{"title": string, "bullets": [string, ...]}]}. '
        f"Return exactly {num_cards} cards, each with 2 to 5 short bullets. "
        f"Tone: {style}."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": request.prompt}]


def _bad(message: str) -> AIError:
    return AIError("ai_bad_response", f"presentation outline {message}")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{what} must be a non-empty string")
    return value.strip()


def _strip_fence(content: str) -> str:
    # Some OpenAI-compatible servers ignore response_format and wrap JSON in a
    # Markdown fence; the fence is packaging, not a shape error.
    stripped = content.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped[3:-3]
        if stripped.startswith("json"):
            stripped = stripped[4:]
    return stripped.strip()


def parse_outline(
    content: str, num_cards: int, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """`{"title", "cards": [{"title", "bullets"}]}` from model output, or `ai_bad_response`.

    Exactly `num_cards` cards, each with a title and 1-8 non-empty string
    bullets; unknown keys are dropped. Reports progress after each card.
    """
    try:
        outline = json.loads(_strip_fence(content))
    except (TypeError, ValueError):
        raise _bad("is not valid JSON") from None
    if not isinstance(outline, dict):
        raise _bad("must be a JSON object")
    title = _text(outline.get("title"), "title")
    cards = outline.get("cards")
    if not isinstance(cards, list):
        raise _bad("cards must be a list")
    if len(cards) != num_cards:
        raise _bad(f"has {len(cards)} cards, expected {num_cards}")
    clean_cards = []
    for number, card in enumerate(cards, start=1):
        if not isinstance(card, dict):
            raise _bad(f"card {number} must be an object")
        bullets = card.get("bullets")
        if not isinstance(bullets, list) or not 1 <= len(bullets) <= MAX_BULLETS:
            raise _bad(f"card {number} bullets must be a list of 1-{MAX_BULLETS} strings")
        clean_cards.append(
            {
                "title": _text(card.get("title"), f"card {number} title"),
                "bullets": [_text(b, f"card {number} bullet") for b in bullets],
            }
        )
        if progress is not None:
            span = _VALIDATION_END - _VALIDATION_START
            progress(
                _VALIDATION_START + span * number // num_cards,
                f"Validated card {number} of {num_cards}",
            )
    return {"title": title, "cards": clean_cards}
