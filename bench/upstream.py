"""The loopback fake OpenAI server (tests/fakes), answering every call after a fixed delay."""

from __future__ import annotations

from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest, Scripted


class SlowUpstream(FakeOpenAIServer):
    """Default answers only, each after `latency` seconds, and no request log."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency

    def _next(self, request: RecordedRequest) -> Scripted:
        # Thousands of calls per run and nobody reads them: keep no log.
        answer = self.default(request)
        answer.delay = self.latency
        return answer
