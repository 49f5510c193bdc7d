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
    # What the call is for ("soul_draft", …, "chat_reply", "drift_calibration"): real providers ignore it; the offline
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


class _DeltaDeadline:
    """The deadline of the next delta: moved at every delta for the cost of a float, not of a timer.

    `asyncio.timeout_at` around each wait arms and disarms a loop timer and builds a context manager per delta:
    5–10 µs of event loop per token (bench/provider_deadline.py), about what the rest of a bare stream costs. Here
    one timer per stream stands; when it fires before the deadline (the deadline moved on), it sets itself again
    for the deadline. It cancels the task only when the deadline has passed while that task waits on the upstream
    (between `wait_until` and `stop_waiting`), never while the consumer has the delta, and `expired()` tells that
    cancellation apart from any other, as `asyncio.Timeout` does.
    """

    __slots__ = ("_loop", "_task", "_handle", "_cancelling", "_when", "_waiting", "_fired")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self._when = 0.0
        self._waiting = False
        self._fired = False

    def wait_until(self, when: float) -> None:
        """Note that the current task waits for the upstream until `when`."""
        task = self._task = asyncio.current_task()
        self._cancelling = task.cancelling() if task is not None else 0
        self._when = when
        self._waiting = True
        if self._handle is None:
            self._handle = self._loop.call_at(when, self._check)

    def stop_waiting(self) -> None:
        """Note that the wait is over: a delta, the end or an error came."""
        self._waiting = False
        if self._fired:
            # The upstream's generator swallowed the cancellation: take it back all the same.
            self.expired()

    def _check(self) -> None:
        self._handle = None
        if not self._waiting or self._task is None:
            return  # the consumer has a delta: `wait_until` sets the timer again at the next wait
        if self._loop.time() < self._when:
            self._handle = self._loop.call_at(self._when, self._check)
            return
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """After a CancelledError out of the wait: whether it was this deadline's (then it is spent)."""
        if not self._fired:
            return False
        self._fired = False
        assert self._task is not None
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        self._waiting = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


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
    deadline = _DeltaDeadline(loop)
    first_by = loop.time() + limit_seconds
    attempt = 0
    started = False
    try:
        while True:
            gen = open_attempt()
            try:
                while True:
                    deadline.wait_until(loop.time() + limit_seconds if started else first_by)
                    try:
                        delta = await anext(gen)
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        if not deadline.expired():
                            raise
                        waited = "its first token" if not started else "the next token"
                        raise ProviderTimeout(
                            f"The model provider did not send {waited} within {limit_seconds:g} seconds.",
                            retryable=True,
                        ) from None
                    finally:
                        deadline.stop_waiting()
                    started = True
                    yield delta
            except ProviderError as exc:
                if started or not exc.retryable or isinstance(exc, ProviderTimeout) or attempt >= retries:
                    raise
                pause = backoff * 2**attempt
                if loop.time() + pause >= first_by:
                    # No time left for another try: this error says more than a timeout would.
                    raise
            finally:
                await gen.aclose()
            attempt += 1
            await asyncio.sleep(pause)
    finally:
        deadline.close()
