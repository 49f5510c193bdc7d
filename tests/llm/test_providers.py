"""The openai and anthropic providers against fake upstreams that are real HTTP servers on loopback."""

import asyncio
import logging
import time
from collections.abc import Iterator

import anthropic
import httpx
import numpy as np
import pytest
from django.test import override_settings

from llm.anthropic_provider import AnthropicProvider, to_anthropic
from llm.anthropic_provider import upstream_error as anthropic_upstream_error
from llm.base import ChatMessage, CompletionRequest, ProviderError, ProviderTimeout, ProviderUnavailable, Usage
from llm.embeddings import MiniLMEmbedder, OpenAIEmbedder, get_embedder
from llm.openai_provider import OpenAIProvider
from llm.providers import configuration_error
from tests.fakes.upstream import (
    MODEL_SUFFIX,
    Answer,
    Drop,
    Fail,
    FakeUpstream,
    Hang,
    fake_vector,
    prompt_tokens,
    words,
)

REQUEST = CompletionRequest(
    messages=(ChatMessage("system", "You are Maren."), ChatMessage("user", "Tell me of the storm.")),
    purpose="chat_reply",
)
REPLY = words("*pulls the shutters* The storm came in low over the skerries, and the lamp held.")


@pytest.fixture(scope="module", params=["openai", "anthropic"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(request.param).start()
    yield upstream
    upstream.stop()


def provider_for(
    fake: FakeUpstream, *, timeout: float = 2.0, retries: int = 2, failures: int = 10, cool_down: float = 30.0
) -> OpenAIProvider | AnthropicProvider:
    kind = OpenAIProvider if fake.flavour == "openai" else AnthropicProvider
    return kind(
        model="fake-model",
        api_key="test",
        base_url=fake.url,
        timeout=timeout,
        retries=retries,
        breaker_failures=failures,
        breaker_seconds=cool_down,
    )


async def collect(provider: OpenAIProvider | AnthropicProvider, usage: Usage) -> list[str]:
    return [delta async for delta in provider.stream(REQUEST, usage)]


async def test_deltas_usage_and_model_are_the_upstreams(fake: FakeUpstream) -> None:
    fake.reset(None, Answer(REPLY))
    usage = Usage()
    assert await collect(provider_for(fake), usage) == list(REPLY)
    assert usage == Usage(
        prompt_tokens=prompt_tokens(fake.calls[0].body), completion_tokens=len(REPLY), model="fake-model" + MODEL_SUFFIX
    )
    assert len(fake.calls) == 1
    if fake.flavour == "anthropic":
        assert fake.calls[0].body["system"] == "You are Maren."
        assert fake.calls[0].body["messages"] == [{"role": "user", "content": "Tell me of the storm."}]
    else:
        assert fake.calls[0].body["stream_options"] == {"include_usage": True}
        assert (fake.calls[0].body["max_tokens"], "max_completion_tokens" in fake.calls[0].body) == (1024, False)


async def test_a_failure_before_the_first_token_is_retried(fake: FakeUpstream) -> None:
    fake.reset(None, Fail(500), Fail(429), Answer(REPLY))
    assert await collect(provider_for(fake, retries=2), Usage()) == list(REPLY)
    assert len(fake.calls) == 3


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_waited_out_with_one_upstream_call_per_try(fake: FakeUpstream, status: int) -> None:
    fake.reset(None, Fail(status, retry_after="1"), Answer(REPLY))
    assert await collect(provider_for(fake, retries=2), Usage()) == list(REPLY)
    assert len(fake.calls) == 2
    assert 1.0 <= fake.calls[1].opened_at - fake.calls[0].opened_at < 1.3


async def test_a_retry_after_past_the_first_token_deadline_fails_at_once(fake: FakeUpstream) -> None:
    fake.reset(None, Fail(429, retry_after="5"), Answer(REPLY))
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        await collect(provider_for(fake, timeout=2.0, retries=2), Usage())
    assert time.monotonic() - started < 0.5
    assert (type(caught.value), caught.value.retry_after) == (ProviderError, 5.0)
    assert str(caught.value) == f"The {fake.flavour} model provider is rate limiting requests (HTTP 429)."
    assert len(fake.calls) == 1


async def test_a_retry_after_on_a_500_is_not_the_upstreams_to_ask(fake: FakeUpstream) -> None:
    # Only 429 and 503 say when to come back; a 500's header leaves the backoff (0.25 s) in charge.
    fake.reset(None, Fail(500, retry_after="5"), Answer(REPLY))
    assert await collect(provider_for(fake, timeout=2.0, retries=2), Usage()) == list(REPLY)
    assert 0.25 <= fake.calls[1].opened_at - fake.calls[0].opened_at < 0.5


async def test_failed_calls_open_the_breaker_until_a_probe_succeeds(fake: FakeUpstream) -> None:
    provider = provider_for(fake, retries=1, failures=2, cool_down=0.5)
    fake.reset(lambda body: Fail(500))
    for _ in range(2):
        assert provider.unavailable_for() is None
        with pytest.raises(ProviderError) as caught:
            await collect(provider, Usage())
        assert type(caught.value) is ProviderError
    # Two calls, each with its retry.
    assert len(fake.calls) == 4
    wait = provider.unavailable_for()
    assert wait is not None and 0.4 < wait <= 0.5
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as refused:
        await collect(provider, Usage())
    assert time.monotonic() - started < 0.05
    assert (refused.value.code, refused.value.retryable) == ("provider_unavailable", True)
    assert str(refused.value) == (
        f"The {fake.flavour} model provider is unavailable after repeated failures; retry in 1 seconds."
    )
    assert len(fake.calls) == 4
    # After the cool-down one probe goes; it fails, and the breaker opens again.
    await asyncio.sleep(0.5)
    assert provider.unavailable_for() is None
    with pytest.raises(ProviderError) as caught:
        await collect(provider, Usage())
    assert type(caught.value) is ProviderError
    assert len(fake.calls) == 6
    with pytest.raises(ProviderUnavailable):
        await collect(provider, Usage())
    assert len(fake.calls) == 6
    # The next probe succeeds: calls go through again.
    await asyncio.sleep(0.5)
    fake.reset(None, Answer(REPLY), Answer(REPLY))
    assert await collect(provider, Usage()) == list(REPLY)
    assert provider.unavailable_for() is None
    assert await collect(provider, Usage()) == list(REPLY)
    assert len(fake.calls) == 2


async def test_client_cancels_and_bad_credentials_do_not_open_the_breaker(fake: FakeUpstream) -> None:
    provider = provider_for(fake, retries=0, failures=1)
    fake.reset(None, Hang())
    task = asyncio.create_task(collect(provider, Usage()))
    while not fake.calls:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    provider.client.api_key = "wrong"
    fake.reset()
    with pytest.raises(ProviderError) as caught:
        await collect(provider, Usage())
    assert caught.value.retryable is False
    assert provider.unavailable_for() is None
    provider.client.api_key = "test"
    fake.reset(None, Answer(REPLY))
    assert await collect(provider, Usage()) == list(REPLY)


async def test_providers_behind_different_base_urls_have_breakers_of_their_own(fake: FakeUpstream) -> None:
    provider = provider_for(fake, retries=0, failures=1)
    fake.reset(None, Fail(500))
    with pytest.raises(ProviderError):
        await collect(provider, Usage())
    assert provider.unavailable_for() is not None
    other = FakeUpstream(fake.flavour).start()
    try:
        other.reset(None, Answer(REPLY))
        assert provider_for(other, retries=0, failures=1).unavailable_for() is None
        assert await collect(provider_for(other, retries=0, failures=1), Usage()) == list(REPLY)
    finally:
        other.stop()


@pytest.mark.parametrize(
    ("status", "sentence"),
    [
        (500, "The {} model provider answered HTTP 500."),
        (429, "The {} model provider is rate limiting requests (HTTP 429)."),
    ],
)
async def test_retries_are_bounded_and_end_in_a_provider_error(fake: FakeUpstream, status: int, sentence: str) -> None:
    fake.reset(None, Fail(status), Fail(status), Fail(status), Answer(REPLY))
    with pytest.raises(ProviderError) as caught:
        await collect(provider_for(fake, retries=1), Usage())
    assert type(caught.value) is ProviderError
    assert caught.value.code == "provider_error"
    assert caught.value.retryable is True
    assert str(caught.value) == sentence.format(fake.flavour)
    assert len(fake.calls) == 2


async def test_the_upstreams_error_text_goes_to_the_log_escaped_and_never_to_the_client(
    fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    head = "quota of org-7f3a exhausted\r\nINFO forged line "
    fake.reset(None, Fail(500, head + "x" * 300))
    with caplog.at_level(logging.WARNING, logger="llm.openai_provider"), pytest.raises(ProviderError) as caught:
        await collect(provider_for(fake, retries=0), Usage())
    assert str(caught.value) == f"The {fake.flavour} model provider answered HTTP 500."
    # The first 200 characters, CR and LF written as escapes: one log line, whatever the upstream sent.
    assert [r.getMessage() for r in caplog.records if r.name == "llm.openai_provider"] == [
        f"the {fake.flavour} model provider answered HTTP 500: quota of org-7f3a exhausted\\r\\nINFO forged line "
        + "x" * (200 - len(head))
        + "…"
    ]


def test_an_anthropic_error_mid_answer_reaches_the_client_without_the_upstreams_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = httpx.Response(200, request=httpx.Request("POST", "https://api.anthropic.com/v1/messages"))
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded\r\nINFO forged line"}}
    with caplog.at_level(logging.WARNING, logger="llm.openai_provider"):
        error = anthropic_upstream_error(anthropic.APIStatusError("Overloaded", response=response, body=body))
    assert (type(error), str(error), error.code, error.retryable) == (
        ProviderError,
        "The anthropic model provider failed mid-answer.",
        "provider_error",
        True,
    )
    assert [r.getMessage() for r in caplog.records] == [
        "the anthropic model provider failed mid-answer: overloaded_error: Overloaded\\r\\nINFO forged line"
    ]


async def test_bad_credentials_are_not_retried_and_not_echoed(fake: FakeUpstream) -> None:
    fake.reset()
    provider = provider_for(fake)
    provider.client.api_key = "wrong"
    with pytest.raises(ProviderError) as caught:
        await collect(provider, Usage())
    assert caught.value.retryable is False
    assert str(caught.value) == (
        f"The {fake.flavour} model provider refused the credentials (HTTP 401); check MOONBORN_LLM_API_KEY."
    )
    assert len(fake.calls) == 1


async def test_a_connection_dropped_mid_stream_is_an_error_after_the_tokens_and_not_retried(fake: FakeUpstream) -> None:
    fake.reset(None, Drop(REPLY[:4]), Answer(REPLY))
    seen: list[str] = []

    async def consume() -> None:
        async for delta in provider_for(fake).stream(REQUEST, Usage()):
            seen.append(delta)

    with pytest.raises(ProviderError) as caught:
        await consume()
    assert seen == list(REPLY[:4])
    assert type(caught.value) is ProviderError
    assert str(caught.value) == f"The connection to the {fake.flavour} model provider failed or was dropped."
    assert len(fake.calls) == 1


async def test_a_hung_upstream_times_out_and_its_connection_is_closed(fake: FakeUpstream) -> None:
    fake.reset(None, Hang())
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        await collect(provider_for(fake, timeout=1.0), Usage())
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.5
    assert caught.value.code == "provider_timeout"
    assert str(caught.value) == "The model provider did not send its first token within 1 seconds."
    await asyncio.to_thread(fake.wait_over, fake.calls[0], 1.0)
    assert fake.calls[0].closed_at is not None


async def test_closing_the_stream_closes_the_upstream_at_once_and_freezes_usage(fake: FakeUpstream) -> None:
    fake.reset(None, Answer(REPLY, delay=0.1))
    usage = Usage()
    stream = provider_for(fake).stream(REQUEST, usage)
    first = [await anext(stream) for _ in range(3)]
    await stream.aclose()  # type: ignore[attr-defined]
    closed = time.monotonic()
    await asyncio.to_thread(fake.wait_over, fake.calls[0], 1.0)
    assert first == list(REPLY[:3])
    assert fake.calls[0].closed_at is not None
    assert fake.calls[0].closed_at - closed < 0.2
    assert fake.calls[0].finished_at is None
    assert usage.completion_tokens == 3
    assert len(fake.calls[0].sent) <= 4


async def test_cancelling_the_consumer_closes_the_upstream(fake: FakeUpstream) -> None:
    fake.reset(None, Answer(REPLY, delay=0.1))
    received: list[str] = []

    async def consume() -> None:
        async for delta in provider_for(fake).stream(REQUEST, Usage()):
            received.append(delta)

    task = asyncio.create_task(consume())
    while len(received) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(fake.wait_over, fake.calls[0], 1.0)
    assert fake.calls[0].closed_at is not None
    assert fake.calls[0].finished_at is None


async def test_openai_asks_for_a_json_schema_and_falls_back_to_prose_when_rejected() -> None:
    fake = FakeUpstream("openai").start()
    try:
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        request = CompletionRequest(messages=REQUEST.messages, purpose="soul_draft", json_schema=schema)
        provider = OpenAIProvider(model="m", api_key="test", base_url=fake.url, timeout=2, retries=0)
        fake.reset(None, Answer(words('{"name": "Maren"}')))
        assert "".join([d async for d in provider.stream(request, Usage())]) == '{"name": "Maren"}'
        assert fake.calls[0].body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "soul_draft", "schema": schema},
        }
        fake.reset(None, Answer(words("Name: Maren")))
        fake.reject_response_format = True
        assert "".join([d async for d in provider.stream(request, Usage())]) == "Name: Maren"
        assert ["response_format" in c.body for c in fake.calls] == [True, False]
        # Remembered: the next step asks for prose straight away.
        fake.reset(None, Answer(words("Name: Maren")))
        fake.reject_response_format = True
        assert "".join([d async for d in provider.stream(request, Usage())]) == "Name: Maren"
        assert ["response_format" in c.body for c in fake.calls] == [False]
    finally:
        fake.stop()


def test_anthropic_messages_put_late_system_text_after_the_history() -> None:
    system, turns = to_anthropic(
        (
            ChatMessage("system", "You are Maren."),
            ChatMessage("assistant", "Evening."),
            ChatMessage("user", "Hello"),
            ChatMessage("assistant", "Well met."),
            ChatMessage("user", "Storm tonight?"),
            ChatMessage("system", "Reply as Maren."),
        )
    )
    assert system == "You are Maren."
    assert turns == [
        {"role": "user", "content": "(The conversation begins.)"},
        {"role": "assistant", "content": "Evening."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Well met."},
        {"role": "user", "content": "Storm tonight?\n\nReply as Maren."},
    ]


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        (
            {"MOONBORN_LLM_PROVIDER": "gpt"},
            "MOONBORN_LLM_PROVIDER='gpt' is not a provider Moonborn knows; use one of: demo, openai, anthropic.",
        ),
        (
            {"MOONBORN_LLM_PROVIDER": "openai"},
            "MOONBORN_LLM_PROVIDER=openai needs an API key: set MOONBORN_LLM_API_KEY (or OPENAI_API_KEY), "
            "or set MOONBORN_LLM_BASE_URL to a local OpenAI-compatible server.",
        ),
        (
            {"MOONBORN_LLM_PROVIDER": "anthropic", "MOONBORN_LLM_BASE_URL": "http://127.0.0.1:9/"},
            "MOONBORN_LLM_PROVIDER=anthropic needs an API key: set MOONBORN_LLM_API_KEY (or ANTHROPIC_API_KEY).",
        ),
        (
            {"MOONBORN_LLM_PROVIDER": "openai", "MOONBORN_LLM_API_KEY": "k", "MOONBORN_LLM_TIMEOUT_SECONDS": 0},
            "MOONBORN_LLM_TIMEOUT_SECONDS must be a positive number of seconds.",
        ),
        (
            {"MOONBORN_LLM_BREAKER_FAILURES": -1},
            "MOONBORN_LLM_BREAKER_FAILURES must be a number of calls, or 0 to turn the breaker off.",
        ),
        (
            {"MOONBORN_LLM_BREAKER_SECONDS": 0},
            "MOONBORN_LLM_BREAKER_SECONDS must be a positive number of seconds.",
        ),
        ({"MOONBORN_LLM_BREAKER_FAILURES": 0}, None),
        (
            {"MOONBORN_EMBEDDINGS": "bert"},
            "MOONBORN_EMBEDDINGS='bert' is not an embedder Moonborn knows; use one of: local, openai.",
        ),
        ({"MOONBORN_LLM_PROVIDER": "openai", "MOONBORN_LLM_BASE_URL": "http://127.0.0.1:11434/v1"}, None),
        ({"MOONBORN_LLM_PROVIDER": "anthropic", "MOONBORN_ANTHROPIC_API_KEY": "k"}, None),
        ({"MOONBORN_LLM_PROVIDER": "demo"}, None),
    ],
)
def test_configuration_errors_are_one_sentence(overrides: dict[str, object], sentence: str | None) -> None:
    base = {
        "MOONBORN_LLM_API_KEY": "",
        "MOONBORN_OPENAI_API_KEY": "",
        "MOONBORN_ANTHROPIC_API_KEY": "",
        "MOONBORN_LLM_BASE_URL": "",
        "MOONBORN_EMBEDDINGS": "local",
    }
    with override_settings(**{**base, **overrides}):
        assert configuration_error() == sentence


def test_openai_embedder_embeds_through_the_server_in_order_and_normalised() -> None:
    fake = FakeUpstream("openai").start()
    try:
        embedder = OpenAIEmbedder(model="fake-embed", api_key="test", base_url=fake.url)
        embedder.batch_size = 2
        texts = ["salt", "wind", "the lamp at dusk"]
        vectors = embedder.embed(texts)
        expected = np.asarray([fake_vector(t) for t in texts], dtype=np.float32)
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
        assert [c.body["input"] for c in fake.calls] == [["salt", "wind"], ["the lamp at dusk"]]
        assert (embedder.dim, embedder.model_id) == (384, "openai:fake-embed")
        embedder._client.api_key = "wrong"
        with pytest.raises(ProviderError, match=r"^The embeddings server failed \(AuthenticationError\)\.$"):
            embedder.embed(["x"])
    finally:
        fake.stop()


def test_get_embedder_follows_moonborn_embeddings() -> None:
    with override_settings(
        MOONBORN_EMBEDDINGS="openai",
        MOONBORN_LLM_PROVIDER="openai",
        MOONBORN_LLM_BASE_URL="http://127.0.0.1:9/v1",
        MOONBORN_EMBEDDINGS_BASE_URL="",
        MOONBORN_EMBEDDINGS_MODEL="nomic-embed-text",
    ):
        embedder = get_embedder.__wrapped__()
        assert isinstance(embedder, OpenAIEmbedder)
        assert str(embedder._client.base_url) == "http://127.0.0.1:9/v1/"
        assert embedder.model_id == "openai:nomic-embed-text"
    with override_settings(MOONBORN_EMBEDDINGS="local"):
        assert isinstance(get_embedder.__wrapped__(), MiniLMEmbedder)
