"""What an AI provider is: one attempt at an `AIRequest`, turned into a result dict.

- text → `{"text": str}`
- presentation → `{"title": str, "cards": [{"title": str, "bullets": [str, ...]}]}`
- image → `{"url": str}` (https URL or `data:` URL)

The caller adds `provider`, `model` (from `provider.model_for(kind)`) and
`from_cache`; `shared.ai.generation.generate` does that, with the cache. A
provider may call `progress(percent, message)` with percent below 100; the
caller reports 100 when the job is done. Failures raise `AIError`; whether and
when to retry is the caller's choice (`error.retryable`, `retry_delay`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from shared.ai.request import AIRequest

ProgressCallback = Callable[[int, str], None]


@runtime_checkable
class Provider(Protocol):
    """Anything that can serve an `AIRequest`; see the module docstring for results."""

    name: str
    model: str

    def model_for(self, kind: str) -> str:
        """The model name that serves `kind` (cache keys and results carry it)."""
        ...

    def generate(self, request: AIRequest, progress: ProgressCallback | None = None) -> dict:
        """One attempt at `request`; raises `AIError` on failure."""
        ...

    def close(self) -> None:
        """Release any pooled resources."""
        ...
