"""The offline demo provider: deterministic, word-sized tokens, usage, and an immediate stop."""

import asyncio
import time

import pytest

from llm.base import ChatMessage, CompletionRequest, ProviderError, Usage, complete
from llm.demo import DemoProvider, chat_reply

PERSONA = {
    "id": "per_test",
    "name": "Agnes Toll",
    "lines": ["*looks up* Oh. A visitor. I'm Agnes.", "The lamp never sleeps, and neither do I."],
    "catchphrases": ["Mind the rocks, dear."],
}


def reply_request(text: str = "Tell me about the storm") -> CompletionRequest:
    return CompletionRequest(
        messages=(ChatMessage("system", "You are Agnes."), ChatMessage("user", text)),
        purpose="chat_reply",
        context={"persona": PERSONA, "user_message": text, "turn": 0},
    )


def test_chat_reply_has_exactly_n_word_tokens_and_is_deterministic():
    tokens = chat_reply({"persona": PERSONA, "user_message": "Tell me about the storm", "turn": 0}, 30)
    assert len(tokens) == 30
    assert not tokens[0].startswith(" ")
    assert all(t.startswith(" ") and " " not in t[1:] for t in tokens[1:])
    assert tokens == chat_reply({"persona": PERSONA, "user_message": "Tell me about the storm", "turn": 0}, 30)
    assert tokens != chat_reply({"persona": PERSONA, "user_message": "Something else entirely", "turn": 0}, 30)


def test_chat_reply_speaks_from_the_personas_own_lines():
    text = "".join(chat_reply({"persona": PERSONA, "user_message": "Tell me about the storm", "turn": 0}, 60))
    assert "The lamp never sleeps, and neither do I." in text
    assert "Mind the rocks, dear." in text


async def test_stream_reports_usage():
    provider = DemoProvider(delay_ms=0, reply_tokens=12)
    usage = Usage()
    text = await complete(provider, reply_request(), usage)
    assert len(text.split()) == 12
    assert usage.completion_tokens == 12
    assert usage.prompt_tokens > 0


async def test_stream_stops_at_once_when_cancelled():
    provider = DemoProvider(delay_ms=50, reply_tokens=1000)
    usage = Usage()
    received: list[str] = []

    async def consume() -> None:
        async for delta in provider.stream(reply_request(), usage):
            received.append(delta)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.28)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.05
    assert 3 <= len(received) <= 6
    frozen = usage.completion_tokens
    assert frozen == len(received)
    await asyncio.sleep(0.12)
    assert usage.completion_tokens == frozen


async def test_fault_injection_fails_after_n_tokens():
    provider = DemoProvider(delay_ms=0, reply_tokens=20, fail_after_tokens=3)
    usage = Usage()
    received: list[str] = []

    async def consume() -> None:
        async for delta in provider.stream(reply_request(), usage):
            received.append(delta)

    with pytest.raises(ProviderError, match="failed on purpose"):
        await consume()
    assert len(received) == 3
    assert usage.completion_tokens == 3


async def test_unknown_purpose_is_a_provider_error():
    provider = DemoProvider(delay_ms=0)
    request = CompletionRequest(messages=(ChatMessage("user", "x"),), purpose="poetry")
    with pytest.raises(ProviderError):
        await complete(provider, request, Usage())
