"""The provider protocol: every model backend streams text deltas and reports usage."""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from runs.events import RunError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    messages: tuple[ChatMessage, ...]
    # What the call is for ("soul_draft", …, "chat_reply"): real providers ignore it; the offline
    # demo provider uses it with `context` to write a sensible answer without a model.
    purpose: str
    context: Mapping[str, Any] = field(default_factory=dict)
    # A JSON schema the answer should follow, where the provider supports structured output.
    json_schema: Mapping[str, Any] | None = None
    max_tokens: int = 1024
    temperature: float = 0.8


@dataclass(slots=True)
class Usage:
    """Token counts, updated while the call streams, so a cancel freezes what was produced."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The model name the upstream reported for the latest call ("" until it says).
    model: str = ""


class ProviderError(RunError):
    code = "provider_error"
    retryable = True


class ProviderTimeout(ProviderError):
    code = "provider_timeout"


class Provider(Protocol):
    name: str
    model: str

    def stream(self, request: CompletionRequest, usage: Usage) -> AsyncIterator[str]:
        """Yield text deltas in order. Closing the iterator must close the upstream request."""
        ...


async def complete(provider: Provider, request: CompletionRequest, usage: Usage) -> str:
    """Collect a whole answer from a streaming provider."""
    parts: list[str] = []
    stream = provider.stream(request, usage)
    try:
        async for delta in stream:
            parts.append(delta)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return "".join(parts)


def count_tokens(text: str) -> int:
    """Approximate a tokenizer where the upstream reports no usage (about 4 characters a token)."""
    return max(1, (len(text) + 3) // 4) if text else 0


async def resilient_stream(
    open_attempt: Callable[[], AsyncGenerator[str, None]],
    *,
    limit_seconds: float,
    retries: int,
    backoff: float = 0.25,
) -> AsyncGenerator[str, None]:
    """Yield the deltas of `open_attempt()`, retrying before the first delta only.

    The first delta must come within `limit_seconds` seconds of the call, all attempts included, and each
    later one within `limit_seconds` of the one before; otherwise `ProviderTimeout`. A retryable
    `ProviderError` before the first delta starts a new attempt (at most `retries` more), never after:
    the client has already seen those tokens. Every attempt is closed on the way out, so a cancel or
    an `aclose()` closes the upstream response at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_seconds
    attempt = 0
    started = False
    while True:
        gen = open_attempt()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline if not started else loop.time() + limit_seconds):
                        delta = await anext(gen)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    waited = "its first token" if not started else "the next token"
                    raise ProviderTimeout(
                        f"The model provider did not send {waited} within {limit_seconds:g} seconds.", retryable=True
                    ) from None
                started = True
                yield delta
        except ProviderError as exc:
            if started or not exc.retryable or isinstance(exc, ProviderTimeout) or attempt >= retries:
                raise
            pause = backoff * 2**attempt
            if loop.time() + pause >= deadline:
                # No time left for another try: this error says more than a timeout would.
                raise
        finally:
            await gen.aclose()
        attempt += 1
        await asyncio.sleep(pause)
