"""`OfflineProvider`: deterministic, network-free results for development and demos.

The same request always yields the same result, built from the prompt's key
words, so demos look plausible and tests can compare exact values.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from shared.ai.request import AIRequest

if TYPE_CHECKING:
    from shared.ai.provider import ProgressCallback

_WORD = re.compile(r"[^\W\d_][\w'-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words too common to name a topic; kept as prose so the list stays readable.
_STOPWORD_TEXT = """a about above after again against all also am an and any are as at be
    because been before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers him his how i if in into is
    it its itself just let me more most my no nor not now of off on once only or other
    our ours out over own please same she should so some such than that the their them
    then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def key_words(prompt: str, limit: int = 8) -> list[str]:
    """The prompt's most frequent non-trivial words, ties broken by first appearance."""
    words = [w.lower() for w in _WORD.findall(prompt)]
    candidates = [w for w in words if len(w) > 2 and w not in _STOPWORDS] or words
    counts = Counter(candidates)
    first_seen = {w: i for i, w in reversed(list(enumerate(candidates)))}
    ranked = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
    return ranked[:limit] or ["topic"]


def _limit_words(text: str, max_words: int) -> str:
    words = text.split()
    if len(words) <= max_words:
        return text
    return " ".join(words[:max_words]).rstrip(",;:") + "…"


def _sentences(prompt: str) -> list[str]:
    return [s[0].upper() + s[1:] for s in _SENTENCE_END.split(prompt) if s]


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _text(request: AIRequest) -> dict[str, Any]:
    prompt = request.prompt
    words = key_words(prompt, 5)
    operation = request.options["operation"]
    if operation == "summarize":
        text = f"{_sentences(prompt)[0]} Key points: {_join(words)}."
    elif operation == "expand":
        details = " ".join(
            f"Consider {word}: it shapes the outcome and deserves a closer look." for word in words
        )
        text = f"{prompt} {details}"
    elif operation == "rewrite":
        text = " ".join(_sentences(prompt))
        text = text if text.endswith((".", "!", "?")) else text + "."
    else:
        text = f"In plain terms, this is about {_join(words)}. {_sentences(prompt)[0]}"
    # Words approximate tokens well enough for a fake that must respect max_tokens.
    return {"text": _limit_words(text, request.options["max_tokens"])}


def _presentation(request: AIRequest, progress: ProgressCallback | None) -> dict[str, Any]:
    num_cards = request.options["num_cards"]
    words = key_words(request.prompt)
    topic = _limit_words(request.prompt, 8).rstrip(".!?…")
    cards = []
    for index in range(num_cards):
        word = words[index % len(words)]
        other = words[(index + 1) % len(words)]
        part = index // len(words)
        title = word.capitalize() + (f" (part {part + 1})" if part else "")
        if index == 0 and num_cards > 2:
            title = "Overview"
        elif index == num_cards - 1 and num_cards > 2:
            title = "Summary"
        cards.append(
            {
                "title": title,
                "bullets": [
                    f"What {word} means for {topic.lower()}",
                    f"Key facts about {word}",
                    f"How {word} connects to {other}",
                ],
            }
        )
        if progress is not None:
            progress(10 + 85 * (index + 1) // num_cards, f"Drafted card {index + 1} of {num_cards}")
    return {"title": topic[0].upper() + topic[1:], "cards": cards}


def _image(request: AIRequest) -> dict[str, Any]:
    width, height = request.options["size"].split("x")
    digest = hashlib.sha256(request.canonical_json().encode()).hexdigest()
    caption = escape(_limit_words(request.prompt, 6))
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect width="100%" height="100%" fill="#{digest[:6]}"/>'
        f'<text x="50%" y="50%" fill="#{digest[6:12]}" font-size="24" text-anchor="middle">'
        f"{caption}</text></svg>"
    )
    return {"url": "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()}


class OfflineProvider:
    """A `Provider` that needs no network: name "offline", model "offline-1"."""

    name = "offline"
    model = "offline-1"

    def model_for(self, kind: str) -> str:
        """The model that serves `kind`; offline has one for everything."""
        return self.model

    def generate(self, request: AIRequest, progress: ProgressCallback | None = None) -> dict:
        """The deterministic result for `request` (see `Provider.generate`)."""
        if request.kind == "presentation":
            return _presentation(request, progress)
        if progress is not None:
            progress(50, "Generating offline")
        if request.kind == "text":
            return _text(request)
        return _image(request)

    def close(self) -> None:
        """Nothing to release; present so every provider can be closed alike."""
