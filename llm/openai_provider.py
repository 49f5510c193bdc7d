"""The `openai` provider: OpenAI and every OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio).

Built on the official `openai` SDK (async, streaming). The SDK's own retries are off: `resilient_stream`
retries before the first token only, and holds the call to `MOONBORN_LLM_TIMEOUT_SECONDS`.
"""

import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

from moonborn_site.logtext import loggable

from .base import (
    CompletionRequest,
    ProviderError,
    ProviderTimeout,
    Upstream,
    Usage,
    count_tokens,
    retry_after_seconds,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
OPENAI_URL = "https://api.openai.com/v1"


def upstream_error(exc: BaseException, *, provider: str) -> ProviderError:
    """Map an SDK or transport error to the api.md codes, with a sentence that leaks no credential."""
    if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)):
        return ProviderTimeout(f"The {provider} model provider timed out.", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        return status_error(
            exc.status_code,
            _error_message(exc.body),
            provider=provider,
            retry_after=retry_after_seconds(exc.response.headers.get("retry-after")),
        )
    if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
        return ProviderError(f"The connection to the {provider} model provider failed or was dropped.", retryable=True)
    if isinstance(exc, openai.APIError):
        log_upstream_text(provider, "reported an error", _error_message(exc.body) or str(exc))
        return ProviderError(f"The {provider} model provider reported an error.", retryable=True)
    return ProviderError(f"The {provider} model provider failed ({type(exc).__name__}).", retryable=True)


def log_upstream_text(provider: str, what: str, detail: str) -> None:
    """Write an upstream's own error text to the server log, escaped and bounded.

    The client's error names the provider and the status only: the upstream's text is a third party's, can say
    anything (the account, the deployment, the prompt), and is for the operator.
    """
    if detail:
        logger.warning("the %s model provider %s: %s", provider, what, loggable(detail))


def status_error(status: int, detail: str, *, provider: str, retry_after: float | None = None) -> ProviderError:
    """The error for an upstream HTTP status: 408, 409, 429 and 5xx are worth another try, after the upstream's
    `Retry-After` (`retry_after` seconds) when it is a 429 or a 503."""
    retryable = status in (408, 409, 429) or status >= 500
    if status in (401, 403):
        # The upstream's message may quote part of the key (which is never logged): say what to fix instead.
        return ProviderError(
            f"The {provider} model provider refused the credentials (HTTP {status}); check MOONBORN_LLM_API_KEY.",
            retryable=False,
        )
    log_upstream_text(provider, f"answered HTTP {status}", detail)
    wait = retry_after if status in (429, 503) else None
    if status == 429:
        return ProviderError(
            f"The {provider} model provider is rate limiting requests (HTTP 429).", retryable=True, retry_after=wait
        )
    return ProviderError(
        f"The {provider} model provider answered HTTP {status}.", retryable=retryable, retry_after=wait
    )


def _is_openai_itself(base_url: str) -> bool:
    return not base_url or base_url.rstrip("/") == OPENAI_URL


def _error_message(body: object) -> str:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return ""


class OpenAIProvider(Upstream):
    """Stream chat completions from an OpenAI-compatible server."""

    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str = "",
        timeout: float = 120.0,
        retries: int = 2,
        structured_output: bool = True,
        breaker_failures: int = 10,
        breaker_seconds: float = 30.0,
    ) -> None:
        self.model = model or DEFAULT_MODEL
        self.timeout = timeout
        self.retries = retries
        self.base_url = base_url or OPENAI_URL
        self.breaker_failures = breaker_failures
        self.breaker_seconds = breaker_seconds
        # Cleared for good the first time the server rejects `response_format`: prose from then on.
        self.structured_output = structured_output
        self.max_tokens_field = "max_completion_tokens" if _is_openai_itself(base_url) else "max_tokens"
        self.client = AsyncOpenAI(
            # A local server needs no key, but the SDK insists on one.
            api_key=api_key or "not-needed",
            base_url=self.base_url,
            # The SDK's timeout is a backstop; resilient_stream enforces MOONBORN_LLM_TIMEOUT_SECONDS.
            timeout=timeout + 5,
            max_retries=0,
        )

    def _arguments(self, request: CompletionRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            # OpenAI's newer models take only max_completion_tokens; compatible servers know max_tokens.
            self.max_tokens_field: request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.json_schema is not None and self.structured_output:
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.purpose or "answer", "schema": dict(request.json_schema)},
            }
        return arguments

    async def _open(self, arguments: dict[str, Any]) -> Any:
        """Send the request; the answer's headers have arrived when this returns."""
        try:
            try:
                return await self.client.chat.completions.create(**arguments)
            except (openai.BadRequestError, openai.UnprocessableEntityError):
                if "response_format" not in arguments:
                    raise
                # This server has no structured output: ask again for prose (the parsers cope),
                # and from now on ask for prose straight away.
                logger.warning("the model server rejected response_format; asking for prose from now on")
                self.structured_output = False
                arguments.pop("response_format")
                return await self.client.chat.completions.create(**arguments)
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise upstream_error(exc, provider=self.name) from None

    async def _attempt(
        self, request: CompletionRequest, usage: Usage, base: tuple[int, int]
    ) -> AsyncGenerator[str, None]:
        """One upstream call: its deltas in order; closing this generator closes the HTTP response."""
        arguments = self._arguments(request)
        base_prompt, base_completion = base
        # Estimated until the upstream reports its own figures.
        usage.prompt_tokens = base_prompt + sum(count_tokens(m.content) for m in request.messages)
        usage.completion_tokens = base_completion
        upstream = await self._open(arguments)
        finished = False
        counted = 0
        try:
            async for chunk in upstream:
                if chunk.model:
                    usage.model = chunk.model
                if chunk.usage is not None:
                    # The upstream's own figures replace the estimate.
                    usage.prompt_tokens = base_prompt + chunk.usage.prompt_tokens
                    usage.completion_tokens = base_completion + chunk.usage.completion_tokens
                    counted = -1
                for choice in chunk.choices:
                    if choice.finish_reason:
                        finished = True
                    delta = choice.delta.content if choice.delta is not None else None
                    if delta:
                        if counted >= 0:
                            # One chunk is one token on every OpenAI-compatible server; the usage
                            # chunk at the end corrects it. A cancel keeps this running count.
                            counted += 1
                            usage.completion_tokens = base_completion + counted
                        yield delta
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise upstream_error(exc, provider=self.name) from None
        finally:
            await upstream.close()
        if not finished:
            raise ProviderError(f"The {self.name} model provider's stream ended before the answer did.")
