"""The `anthropic` provider: Claude through the official `anthropic` SDK's Messages API, streamed.

Anthropic has no structured output for every model, so the pipeline's prompts ask for JSON in words
and the parsers of `personas.steps` accept whatever shape comes back.
"""

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anthropic
import httpx2
from anthropic import AsyncAnthropic

from .base import (
    ChatMessage,
    CompletionRequest,
    ProviderError,
    ProviderTimeout,
    Upstream,
    Usage,
    count_tokens,
    retry_after_seconds,
)
from .openai_provider import log_upstream_text, status_error

DEFAULT_MODEL = "claude-sonnet-4-5"


def upstream_error(exc: BaseException) -> ProviderError:
    """Map an SDK or transport error to the api.md codes."""
    if isinstance(exc, (anthropic.APITimeoutError, httpx2.TimeoutException)):
        return ProviderTimeout("The anthropic model provider timed out.", retryable=True)
    if isinstance(exc, anthropic.APIStatusError):
        kind, detail = _error_detail(exc.body)
        if exc.status_code < 400:
            # An `error` event inside a 200 stream (overloaded, say).
            retryable = kind in ("overloaded_error", "api_error", "rate_limit_error", "")
            log_upstream_text("anthropic", "failed mid-answer", f"{kind}: {detail}" if detail else kind)
            return ProviderError("The anthropic model provider failed mid-answer.", retryable=retryable)
        return status_error(
            exc.status_code,
            detail,
            provider="anthropic",
            retry_after=retry_after_seconds(exc.response.headers.get("retry-after")),
        )
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.TransportError)):
        return ProviderError("The connection to the anthropic model provider failed or was dropped.", retryable=True)
    return ProviderError(f"The anthropic model provider failed ({type(exc).__name__}).", retryable=True)


def _error_detail(body: object) -> tuple[str, str]:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            return str(inner.get("type") or ""), str(inner.get("message") or "")
    return "", ""


def to_anthropic(messages: tuple[ChatMessage, ...]) -> tuple[str, list[dict[str, Any]]]:
    """Split messages into Anthropic's `system` and alternating user/assistant turns.

    Leading system messages become `system`. A later system message (the post-history instructions)
    has no place of its own in the Messages API: it joins the user turn next to it, so it still
    comes after the history. Consecutive turns of one role are merged; the first turn is a user's.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system" and not turns:
            system.append(message.content)
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": role, "content": message.content})
    if not turns or turns[0]["role"] != "user":
        # The API wants a user turn first (a chat that opens with the persona's greeting).
        turns.insert(0, {"role": "user", "content": "(The conversation begins.)"})
    return "\n\n".join(system), turns


class AnthropicProvider(Upstream):
    """Stream Claude's answers over the Messages API."""

    name = "anthropic"

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str = "",
        timeout: float = 120.0,
        retries: int = 2,
        breaker_failures: int = 10,
        breaker_seconds: float = 30.0,
    ):
        self.model = model or DEFAULT_MODEL
        self.timeout = timeout
        self.retries = retries
        self.base_url = base_url
        self.breaker_failures = breaker_failures
        self.breaker_seconds = breaker_seconds
        self.client = AsyncAnthropic(
            api_key=api_key,
            base_url=base_url or None,
            # A backstop: resilient_stream enforces MOONBORN_LLM_TIMEOUT_SECONDS.
            timeout=timeout + 5,
            max_retries=0,
        )

    async def _attempt(
        self, request: CompletionRequest, usage: Usage, base: tuple[int, int]
    ) -> AsyncGenerator[str, None]:
        """One upstream call: its deltas in order; closing this generator closes the HTTP response."""
        base_prompt, base_completion = base
        usage.prompt_tokens = base_prompt + sum(count_tokens(m.content) for m in request.messages)
        usage.completion_tokens = base_completion
        system, turns = to_anthropic(request.messages)
        arguments: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": turns,
            "stream": True,
        }
        if system:
            arguments["system"] = system
        try:
            upstream = await self.client.messages.create(**arguments)
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            raise upstream_error(exc) from None
        finished = False
        counted = 0
        try:
            async for event in upstream:
                if event.type == "message_start":
                    usage.model = event.message.model or usage.model
                    usage.prompt_tokens = base_prompt + event.message.usage.input_tokens
                elif event.type == "content_block_delta":
                    text = getattr(event.delta, "text", None) if event.delta.type == "text_delta" else None
                    if text:
                        # A running count while the answer streams (a cancel keeps it);
                        # message_delta's output_tokens replaces it at the end.
                        counted += 1
                        usage.completion_tokens = base_completion + counted
                        yield text
                elif event.type == "message_delta":
                    usage.completion_tokens = base_completion + event.usage.output_tokens
                elif event.type == "message_stop":
                    finished = True
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            raise upstream_error(exc) from None
        finally:
            await upstream.close()
        if not finished:
            raise ProviderError("The anthropic model provider's stream ended before the answer did.")
