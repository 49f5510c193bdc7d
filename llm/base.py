"""The provider protocol: every model backend streams text deltas and reports usage."""

import asyncio
import datetime
import email.utils
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from runs.events import RunError

from .breaker import Admission, Breaker, provider_breaker, unavailable_message

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

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, retryable=retryable)
        # The seconds the upstream asked for before another try (its `Retry-After` on a 429 or 503).
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    code = "provider_timeout"


class ProviderUnavailable(ProviderError):
    """The provider's breaker refuses the call: it failed too many calls in a row lately (llm.breaker)."""

    code = "provider_unavailable"


class Provider(Protocol):
    name: str
    model: str

    def stream(self, request: CompletionRequest, usage: Usage) -> AsyncIterator[str]:
        """Yield text deltas in order. Closing the iterator must close the upstream request."""
        ...

    def unavailable_for(self) -> float | None:
        """While the provider's breaker refuses calls, the seconds until it lets one through; otherwise None."""
        ...


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """The pause an HTTP `Retry-After` asks for, in seconds: delay-seconds or an HTTP date (RFC 9110, 10.2.3), 0 for a
    date already past; None when it is absent or unreadable. `now` is the wall clock's (`time.time()`)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # An HTTP date is in GMT; `-0000` reads as "no zone".
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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


# How a call ended, for its breaker: the upstream answered (whatever it said), or failed to.
Outcome = Literal["answered", "outage"]


async def resilient_stream(
    open_attempt: Callable[[], AsyncGenerator[str, None]],
    *,
    limit_seconds: float,
    retries: int,
    backoff: float = 0.25,
    breaker: Breaker | None = None,
) -> AsyncGenerator[str, None]:
    """Yield the deltas of `open_attempt()`, retrying before the first delta only.

    The first delta must come within `limit_seconds` seconds of the call, all attempts included, and each
    later one within `limit_seconds` of the one before; otherwise `ProviderTimeout`. A retryable
    `ProviderError` before the first delta starts a new attempt (at most `retries` more), never after:
    the client has already seen those tokens. The pause before it is the upstream's `Retry-After` when it
    sent one, else the backoff; a pause that would end past the first-token deadline is no retry (the error
    goes out at once). Every attempt is one upstream call, closed on the way out, so a cancel or an
    `aclose()` closes the upstream response at once.

    With a `breaker`, the call asks it first (`ProviderUnavailable` while it refuses, with no upstream
    call) and tells it how the call went, once for all its attempts: the first delta or an empty answer is
    a success; the error it ends with is a failure when it is an outage (a timeout, or a retryable error:
    5xx, 429, a broken connection, once retries are spent) and a success otherwise (a 4xx is an answer);
    a cancel before any of these says nothing of the upstream.
    """
    probe = False
    if breaker is not None:
        admission = breaker.admit()
        if not isinstance(admission, Admission):
            raise ProviderUnavailable(unavailable_message(breaker.provider, admission), retry_after=admission)
        probe = admission is Admission.PROBE
    loop = asyncio.get_running_loop()
    deadline = _DeltaDeadline(loop)
    first_by = loop.time() + limit_seconds
    attempt = 0
    started = False
    # How the call ended, for the breaker: None while it goes, or when its consumer left first.
    outcome: Outcome | None = None
    try:
        while True:
            gen = open_attempt()
            try:
                while True:
                    deadline.wait_until(loop.time() + limit_seconds if started else first_by)
                    try:
                        delta = await anext(gen)
                    except StopAsyncIteration:
                        outcome = "answered"
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
                    if not started:
                        started = True
                        if breaker is not None:
                            # Told now, not at the end: a probe's long answer does not hold every other call back.
                            breaker.succeeded()
                    yield delta
            except ProviderError as exc:
                pause = None if started else _retry_pause(exc, attempt, retries, backoff)
                if pause is None or loop.time() + pause >= first_by:
                    # No retry, or no time left for one: this error says more than a timeout would.
                    outage = exc.retryable or isinstance(exc, ProviderTimeout)
                    outcome = "outage" if outage else "answered"
                    raise
            finally:
                await gen.aclose()
            attempt += 1
            await asyncio.sleep(pause)
    finally:
        deadline.close()
        if breaker is not None:
            _report(breaker, outcome, probe=probe, started=started)


def _report(breaker: Breaker, outcome: Outcome | None, *, probe: bool, started: bool) -> None:
    """Tell the breaker how a call ended (its first delta, a success, is told when it comes)."""
    if outcome == "outage":
        breaker.failed(probe=probe and not started)
    elif started:
        pass
    elif outcome == "answered":
        breaker.succeeded()
    else:
        breaker.abandoned(probe=probe)


def _retry_pause(exc: ProviderError, attempt: int, retries: int, backoff: float) -> float | None:
    """The pause before attempt `attempt + 1` after `exc`, or None when `exc` is not retried."""
    if not exc.retryable or isinstance(exc, ProviderTimeout) or attempt >= retries:
        return None
    if exc.retry_after:
        return exc.retry_after
    # No Retry-After, or one of 0 (as the SDKs read it): the backoff, so that retries are never instant.
    return backoff * 2**attempt


class Upstream(ABC):
    """What the providers with a remote upstream share: a stream is one `resilient_stream` of `_attempt`s within the
    deadline, through the breaker of their upstream (its name and base URL)."""

    name: str
    base_url: str
    timeout: float
    retries: int
    breaker_failures: int
    breaker_seconds: float

    @abstractmethod
    def _attempt(self, request: CompletionRequest, usage: Usage, base: tuple[int, int]) -> AsyncGenerator[str, None]:
        """One upstream call: its deltas in order (`base`: the usage counted before this call)."""

    def stream(self, request: CompletionRequest, usage: Usage) -> AsyncGenerator[str, None]:
        # Usage may carry earlier calls (a pipeline's steps): each attempt starts again from here.
        base = (usage.prompt_tokens, usage.completion_tokens)
        attempt = functools.partial(self._attempt, request, usage, base)
        return resilient_stream(attempt, limit_seconds=self.timeout, retries=self.retries, breaker=self.breaker())

    def breaker(self) -> Breaker:
        return provider_breaker(
            self.name, self.base_url, failures=self.breaker_failures, cool_down=self.breaker_seconds
        )

    def unavailable_for(self) -> float | None:
        return self.breaker().refusal()
