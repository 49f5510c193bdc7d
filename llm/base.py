"""The provider protocol: every model backend streams text deltas and reports usage."""

from collections.abc import AsyncIterator, Mapping
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
