"""AI providers against a real loopback server: results, error mapping, secrecy."""

from __future__ import annotations

import base64
import json
import pickle
import random
import socket
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from infra.settings import Settings
from shared.ai.errors import AIError, redact
from shared.ai.providers import (
    OfflineProvider,
    Provider,
    build_provider,
    retry_delay,
)
from shared.ai.providers import OpenAIProvider as _OpenAIProvider
from shared.ai.request import AIRequest, AIRequestError
from shared.ai.retry import parse_retry_after
from tests.fakes import fixtures
from tests.fakes.openai_server import (
    FakeOpenAIServer,
    Scripted,
    error_body,
    outline_json,
)
from tuning.ai_plain_http import KeepAliveConnections

# Until a conftest provides it, the fixture is made visible to this module here.
openai_server = fixtures.openai_server

# Every test here runs on both of the provider's ways to the upstream: httpx (the
# stock path) and the plain keep-alive connections of tuning/ai_plain_http.py.
PATHS = {"httpx": None, "plain": KeepAliveConnections}
PLAIN_HTTP = None


@pytest.fixture(params=sorted(PATHS), autouse=True)
def upstream_path(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "PLAIN_HTTP", PATHS[request.param])
    return request.param


def OpenAIProvider(*args, **kwargs):
    return _OpenAIProvider(*args, plain_http=PLAIN_HTTP, **kwargs)


API_KEY = f"sk-test-{uuid.uuid4().hex}"
TEXT = AIRequest("text", "Explain   how Celery\n routes tasks to queues.", {})
DECK = AIRequest("presentation", "Roman aqueducts", {"num_cards": 3})
IMAGE = AIRequest("image", "a lighthouse at dusk", {"size": "512x512"})


@pytest.fixture
def provider(openai_server: FakeOpenAIServer):
    with OpenAIProvider(openai_server.base_url, API_KEY, "gpt-test", "img-test", 2.0) as p:
        yield p


def _error(provider: Provider, request: AIRequest) -> AIError:
    with pytest.raises(AIError) as caught:
        provider.generate(request)
    return caught.value


def _assert_no_key(error: BaseException) -> None:
    rendered = [
        str(error),
        repr(error),
        getattr(error, "message", ""),
        "".join(traceback.format_exception(error)),
    ]
    assert all(API_KEY not in text for text in rendered)


# Requests


def test_request_normalises_prompt_and_fills_defaults():
    request = AIRequest("presentation", "  Roman \n\t aqueducts  ", {"num_cards": 3})
    assert request.prompt == "Roman aqueducts"
    assert request.options == {"num_cards": 3, "style": "professional"}
    assert request == AIRequest("presentation", "Roman aqueducts", {"num_cards": 3})
    assert AIRequest("text", "x", {}).options == {"operation": "summarize", "max_tokens": 512}
    assert AIRequest("image", "x", {}).options == {"size": "1024x1024"}
    assert AIRequest.from_dict(request.to_dict()) == request


@pytest.mark.parametrize(
    ("kind", "prompt", "options", "field"),
    [
        ("video", "x", {}, "kind"),
        ("text", "   ", {}, "prompt"),
        ("text", "x" * 4001, {}, "prompt"),
        ("text", "x", {"operation": "translate"}, "options.operation"),
        ("text", "x", {"max_tokens": True}, "options.max_tokens"),
        ("presentation", "x", {"num_cards": 31}, "options.num_cards"),
        ("presentation", "x", {"num_cards": 0}, "options.num_cards"),
        ("presentation", "x", {"colour": "red"}, "options.colour"),
        ("image", "x", {"size": "100x100"}, "options.size"),
    ],
)
def test_request_rejects_invalid_input_naming_the_field(kind, prompt, options, field):
    with pytest.raises(AIRequestError) as caught:
        AIRequest(kind, prompt, options)
    assert caught.value.field == field


# OpenAI provider: success


def test_text_success_sends_model_prompt_and_key(provider, openai_server):
    openai_server.push(Scripted(content="  Celery routes by queue name.  "))
    assert provider.generate(TEXT) == {"text": "Celery routes by queue name."}
    assert openai_server.calls == 1
    sent = openai_server.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.json["model"] == "gpt-test"
    assert sent.json["max_tokens"] == 512
    assert sent.json["messages"][-1] == {"role": "user", "content": TEXT.prompt}


def test_presentation_success_validates_cards_and_reports_progress(provider, openai_server):
    openai_server.push(Scripted(content=outline_json(3, title="Aqueducts")))
    progress: list[tuple[int, str]] = []
    result = provider.generate(DECK, lambda pct, msg: progress.append((pct, msg)))
    assert result["title"] == "Aqueducts"
    assert [card["title"] for card in result["cards"]] == ["Card 1", "Card 2", "Card 3"]
    assert all(card["bullets"] == [f"Point {i}.1", f"Point {i}.2", f"Point {i}.3"]
               for i, card in enumerate(result["cards"], start=1))  # fmt: skip
    assert openai_server.requests[0].json["response_format"] == {"type": "json_object"}
    percents = [pct for pct, _ in progress]
    assert percents == sorted(percents) and all(0 < pct < 100 for pct in percents)
    assert sum("card" in msg for _, msg in progress) == 3


def test_presentation_from_the_fakes_default_reply(provider, openai_server):
    result = provider.generate(AIRequest("presentation", "Ports", {"num_cards": 7}))
    assert len(result["cards"]) == 7


def test_image_success_returns_url(provider, openai_server):
    openai_server.push(Scripted(image_url="https://cdn.example/lighthouse.png"))
    assert provider.generate(IMAGE) == {"url": "https://cdn.example/lighthouse.png"}
    sent = openai_server.requests[0]
    assert sent.path == "/v1/images/generations"
    assert sent.json == {"model": "img-test", "prompt": IMAGE.prompt, "n": 1, "size": "512x512"}


def test_image_b64_becomes_a_data_url(provider, openai_server):
    payload = base64.b64encode(b"\x89PNG fake").decode()
    openai_server.push(Scripted(b64_json=payload))
    assert provider.generate(IMAGE) == {"url": f"data:image/png;base64,{payload}"}


def test_injected_transport_needs_no_server():
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        return httpx.Response(200, json={"choices": [{"message": {"content": "hi"}}]})

    transport = httpx.MockTransport(answer)
    with OpenAIProvider(
        "https://upstream.invalid/v1", API_KEY, "m", "i", 1, transport=transport
    ) as p:
        assert p.generate(TEXT) == {"text": "hi"}


# OpenAI provider: failures


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_unavailable_and_retryable(provider, openai_server, status):
    openai_server.push(Scripted(status=status))
    error = _error(provider, TEXT)
    assert (error.code, error.retryable) == ("ai_unavailable", True)


def test_429_is_rate_limited_with_retry_after_seconds(provider, openai_server):
    openai_server.push(Scripted(status=429, headers={"Retry-After": "7"}))
    error = _error(provider, TEXT)
    assert (error.code, error.retryable, error.retry_after) == ("ai_rate_limited", True, 7.0)


def test_429_retry_after_as_http_date(provider, openai_server):
    when = datetime.now(UTC) + timedelta(seconds=30)
    openai_server.push(Scripted(status=429, headers={"Retry-After": format_datetime(when, True)}))
    error = _error(provider, TEXT)
    assert error.code == "ai_rate_limited"
    assert 20 <= error.retry_after <= 31


def test_429_insufficient_quota_is_not_retryable(provider, openai_server):
    body = error_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    openai_server.push(Scripted(status=429, body=body))
    error = _error(provider, TEXT)
    assert (error.code, error.retryable) == ("ai_rejected", False)


def test_400_is_rejected_and_not_retryable(provider, openai_server):
    openai_server.push(Scripted(status=400, body=error_body("Invalid size for this model")))
    error = _error(provider, IMAGE)
    assert (error.code, error.retryable) == ("ai_rejected", False)
    assert "Invalid size for this model" in error.message


def test_slow_upstream_times_out_within_bound(openai_server):
    openai_server.push(Scripted(delay=5, content="too late"))
    with OpenAIProvider(openai_server.base_url, API_KEY, "m", "i", 0.5) as fast:
        started = time.monotonic()
        error = _error(fast, TEXT)
        elapsed = time.monotonic() - started
    assert (error.code, error.retryable) == ("ai_timeout", True)
    assert elapsed < 4


def test_connection_refused_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nobody listens
    with OpenAIProvider(f"http://127.0.0.1:{port}/v1", API_KEY, "m", "i", 2) as p:
        error = _error(p, TEXT)
    assert (error.code, error.retryable) == ("ai_unavailable", True)


def test_dropped_connection_is_unavailable(provider, openai_server):
    openai_server.push(Scripted(drop=True))
    assert _error(provider, TEXT).code == "ai_unavailable"


@pytest.mark.parametrize(
    "scripted",
    [
        Scripted(raw=b'{"choices": [{"message": '),  # truncated JSON body
        Scripted(body={"choices": []}),
        Scripted(body=["not", "an", "object"]),
        Scripted(content="   "),
    ],
)
def test_malformed_chat_response_is_bad_response(provider, openai_server, scripted):
    openai_server.push(scripted)
    error = _error(provider, TEXT)
    assert (error.code, error.retryable) == ("ai_bad_response", True)


@pytest.mark.parametrize(
    "content",
    [
        '{"title": "Deck", "cards": [',  # invalid JSON
        '["a list"]',
        '{"cards": []}',
        '{"title": "Deck", "cards": [{"title": "A", "bullets": ["x"]}, '
        '{"title": "B", "bullets": []}, {"title": "C", "bullets": ["z"]}]}',
        '{"title": "Deck", "cards": [{"title": "A", "bullets": ["x"]}, '
        '{"title": "B", "bullets": [3]}, {"title": "C", "bullets": ["z"]}]}',
        '{"title": "Deck", "cards": [{"bullets": ["x"]}, '
        '{"title": "B", "bullets": ["y"]}, {"title": "C", "bullets": ["z"]}]}',
    ],
)
def test_malformed_presentation_is_bad_response(provider, openai_server, content):
    openai_server.push(Scripted(content=content))
    assert _error(provider, DECK).code == "ai_bad_response"


@pytest.mark.parametrize("cards", [2, 4])
def test_wrong_card_count_is_bad_response(provider, openai_server, cards):
    openai_server.push(Scripted(content=outline_json(cards)))
    error = _error(provider, DECK)
    assert error.code == "ai_bad_response"
    assert f"has {cards} cards, expected 3" in error.message


def test_fenced_outline_is_accepted(provider, openai_server):
    openai_server.push(Scripted(content=f"```json\n{outline_json(3)}\n```"))
    assert len(provider.generate(DECK)["cards"]) == 3


def test_image_without_url_is_bad_response(provider, openai_server):
    openai_server.push(Scripted(body={"data": [{"revised_prompt": "no image"}]}))
    assert _error(provider, IMAGE).code == "ai_bad_response"


def test_api_key_never_in_errors_even_when_upstream_echoes_it(openai_server):
    openai_server.api_key = "sk-the-right-key-that-we-do-not-have"
    with OpenAIProvider(openai_server.base_url, API_KEY, "m", "i", 2) as p:
        error = _error(p, TEXT)
    assert (error.code, error.retryable) == ("ai_rejected", False)
    # The fake's 401 message quotes the key we sent, as OpenAI's does.
    assert "Incorrect API key provided" in error.message
    _assert_no_key(error)


@pytest.mark.parametrize(
    "scripted",
    [
        Scripted(status=500, body=error_body(f"boom for key {API_KEY}")),
        Scripted(status=429, body=error_body(f"slow down, Bearer {API_KEY}")),
        Scripted(status=400, body=error_body(f"bad request from {API_KEY[:20]}")),
        Scripted(raw=API_KEY.encode()),
        Scripted(drop=True),
        Scripted(delay=3),
    ],
)
def test_api_key_never_in_any_error(openai_server, scripted):
    openai_server.push(scripted)
    with OpenAIProvider(openai_server.base_url, API_KEY, "m", "i", 0.5) as p:
        error = _error(p, TEXT)
    _assert_no_key(error)
    assert API_KEY[:20] not in error.message
    assert API_KEY not in repr(p)


def test_ai_error_survives_pickling():
    error = pickle.loads(pickle.dumps(AIError("ai_rate_limited", "wait", retry_after=3.0)))
    assert (error.code, error.message, error.retryable, error.retry_after) == (
        "ai_rate_limited",
        "wait",
        True,
        3.0,
    )
    assert error.to_dict() == {"code": "ai_rate_limited", "message": "wait"}


def test_redact_removes_given_secret_and_key_shapes():
    assert redact(f"key {API_KEY}!", [API_KEY]) == "key [redacted]!"
    assert "sk-abcdef123456" not in redact("leaked sk-abcdef123456 here")


# Offline provider


@pytest.mark.parametrize("request_", [TEXT, DECK, IMAGE], ids=["text", "presentation", "image"])
def test_offline_is_deterministic(request_):
    assert OfflineProvider().generate(request_) == OfflineProvider().generate(request_)


@pytest.mark.parametrize("operation", ["summarize", "expand", "rewrite", "explain"])
def test_offline_text_shape(operation):
    request = AIRequest("text", TEXT.prompt, {"operation": operation, "max_tokens": 12})
    result = OfflineProvider().generate(request)
    assert set(result) == {"text"} and result["text"]
    assert len(result["text"].split()) <= 12


@pytest.mark.parametrize("num_cards", [1, 2, 5, 30])
def test_offline_presentation_shape(num_cards):
    request = AIRequest(
        "presentation", "Roman aqueducts and water engineering", {"num_cards": num_cards}
    )
    progress: list[int] = []
    result = OfflineProvider().generate(request, lambda pct, msg: progress.append(pct))
    assert set(result) == {"title", "cards"} and result["title"]
    assert len(result["cards"]) == num_cards
    for card in result["cards"]:
        assert set(card) == {"title", "bullets"} and card["title"]
        assert card["bullets"] and all(isinstance(b, str) and b for b in card["bullets"])
    assert len(progress) == num_cards and max(progress) < 100


def test_offline_image_is_an_svg_data_url_of_the_requested_size():
    url = OfflineProvider().generate(IMAGE)["url"]
    prefix = "data:image/svg+xml;base64,"
    assert url.startswith(prefix)
    svg = base64.b64decode(url.removeprefix(prefix)).decode()
    assert 'width="512"' in svg and 'height="512"' in svg
    other = AIRequest("image", "a lighthouse at dawn", {"size": "512x512"})
    assert OfflineProvider().generate(other)["url"] != url


def test_offline_provider_names_itself():
    provider = OfflineProvider()
    assert isinstance(provider, Provider)
    assert (provider.name, provider.model, provider.model_for("image")) == (
        "offline",
        "offline-1",
        "offline-1",
    )


# Retry timing


class _MaxRandom(random.Random):
    """Always the top of the jitter range, so the ceiling is observable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_retry_delay_grows_exponentially_up_to_the_cap():
    rng = _MaxRandom()
    delays = [retry_delay(attempt, 1.0, None, cap=10, rng=rng) for attempt in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_retry_delay_jitters_within_the_ceiling():
    rng = random.Random(42)
    delays = [retry_delay(3, 1.0, None, rng=rng) for _ in range(200)]
    assert all(0 <= d <= 8 for d in delays)
    assert len(set(delays)) > 100


def test_retry_delay_honours_retry_after():
    rng = random.Random(7)
    assert all(retry_delay(0, 1.0, 30.0, rng=rng) >= 30.0 for _ in range(50))
    # A server's wait beats our cap: retrying sooner only earns another 429.
    assert retry_delay(0, 1.0, 120.0, cap=60) >= 120.0


def test_parse_retry_after_forms():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    in_a_minute = format_datetime(now + timedelta(seconds=60), usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": "12"}), now) == 12.0
    assert parse_retry_after(httpx.Headers({"Retry-After": in_a_minute}), now) == 60.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500"}), now) == 1.5
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"}), now) is None
    assert parse_retry_after(httpx.Headers({}), now) is None


# Wiring


def test_build_provider_offline_by_default():
    provider = build_provider(Settings.from_env({}))
    assert isinstance(provider, OfflineProvider)


def test_build_provider_openai_from_settings(openai_server):
    settings = Settings.from_env(
        {
            "AI_API_KEY": API_KEY,
            "AI_BASE_URL": openai_server.base_url,
            "AI_MODEL": "gpt-configured",
            "AI_IMAGE_MODEL": "img-configured",
            "AI_TIMEOUT_SECONDS": "3",
        }
    )
    provider = build_provider(settings)
    try:
        assert isinstance(provider, _OpenAIProvider)
        assert (provider.model_for("text"), provider.model_for("image")) == (
            "gpt-configured",
            "img-configured",
        )
        provider.generate(TEXT)
        assert json.loads(openai_server.requests[0].body)["model"] == "gpt-configured"
    finally:
        provider.close()
