"""The provider's circuit breaker as a state machine on a fake clock, and `Retry-After` as the upstreams send it."""

import asyncio
from collections.abc import AsyncGenerator

import pytest

from llm.base import ProviderError, ProviderTimeout, ProviderUnavailable, resilient_stream, retry_after_seconds
from llm.breaker import Admission, Breaker, provider_breaker, retry_after_header, unavailable_message
from moonborn_site import state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_breaker(failures: int = 3, cool_down: float = 30.0) -> tuple[Breaker, Clock]:
    clock = Clock()
    return Breaker(provider="openai", failures=failures, cool_down=cool_down, clock=clock), clock


def fail_calls(breaker: Breaker, n: int) -> None:
    for _ in range(n):
        assert breaker.admit() is Admission.CALL
        breaker.failed(probe=False)


def test_failures_in_a_row_open_it_and_a_success_between_starts_the_count_again() -> None:
    breaker, _ = make_breaker(failures=3)
    fail_calls(breaker, 2)
    assert breaker.admit() is Admission.CALL
    breaker.succeeded()
    fail_calls(breaker, 2)
    assert (breaker.state, breaker.failures, breaker.refusal()) == ("closed", 2, None)
    fail_calls(breaker, 1)
    assert (breaker.state, breaker.refusal(), breaker.admit()) == ("open", 30.0, 30.0)


def test_while_open_calls_are_refused_with_the_seconds_left() -> None:
    breaker, clock = make_breaker(failures=1, cool_down=30.0)
    fail_calls(breaker, 1)
    clock.now += 12.5
    assert breaker.admit() == 17.5
    assert breaker.refusal() == 17.5
    assert breaker.state == "open"


def test_after_the_cool_down_one_probe_goes_and_its_success_closes_it() -> None:
    breaker, clock = make_breaker(failures=1, cool_down=30.0)
    fail_calls(breaker, 1)
    clock.now += 30.0
    # A start may go: its call will be the probe.
    assert (breaker.state, breaker.refusal()) == ("half_open", None)
    assert breaker.admit() is Admission.PROBE
    # The probe is out: every other call waits a second for its verdict.
    assert (breaker.state, breaker.admit(), breaker.refusal()) == ("half_open", 1.0, 1.0)
    breaker.succeeded()
    assert (breaker.state, breaker.failures, breaker.refusal(), breaker.admit()) == (
        "closed",
        0,
        None,
        Admission.CALL,
    )


def test_a_failed_probe_opens_it_for_a_whole_cool_down_again() -> None:
    breaker, clock = make_breaker(failures=1, cool_down=30.0)
    fail_calls(breaker, 1)
    clock.now += 45.0
    assert breaker.admit() is Admission.PROBE
    clock.now += 2.0
    breaker.failed(probe=True)
    assert (breaker.state, breaker.admit()) == ("open", 30.0)
    clock.now += 30.0
    assert breaker.admit() is Admission.PROBE


def test_an_abandoned_probe_lets_the_next_call_probe() -> None:
    breaker, clock = make_breaker(failures=1, cool_down=30.0)
    fail_calls(breaker, 1)
    clock.now += 30.0
    assert breaker.admit() is Admission.PROBE
    breaker.abandoned(probe=True)
    assert (breaker.state, breaker.refusal()) == ("half_open", None)
    assert breaker.admit() is Admission.PROBE


def test_an_abandoned_call_counts_for_nothing() -> None:
    breaker, _ = make_breaker(failures=2)
    fail_calls(breaker, 1)
    assert breaker.admit() is Admission.CALL
    breaker.abandoned(probe=False)
    assert (breaker.state, breaker.failures) == ("closed", 1)


def test_late_failures_of_calls_let_through_before_it_opened_do_not_prolong_it() -> None:
    breaker, clock = make_breaker(failures=2, cool_down=30.0)
    for _ in range(4):
        assert breaker.admit() is Admission.CALL
    breaker.failed(probe=False)
    breaker.failed(probe=False)
    clock.now += 10.0
    breaker.failed(probe=False)
    breaker.failed(probe=False)
    assert breaker.admit() == 20.0


def test_zero_failures_turns_it_off() -> None:
    breaker, _ = make_breaker(failures=0)
    fail_calls(breaker, 100)
    assert (breaker.state, breaker.refusal(), breaker.admit()) == ("closed", None, Admission.CALL)


def test_one_breaker_per_provider_and_base_url_in_process_state() -> None:
    first = provider_breaker("openai", "http://a/v1", failures=10, cool_down=30.0)
    assert provider_breaker("openai", "http://a/v1", failures=1, cool_down=1.0) is first
    assert provider_breaker("openai", "http://b/v1", failures=10, cool_down=30.0) is not first
    assert provider_breaker("anthropic", "http://a/v1", failures=10, cool_down=30.0) is not first
    state.reset()
    assert provider_breaker("openai", "http://a/v1", failures=10, cool_down=30.0) is not first


@pytest.mark.parametrize(("wait", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (29.5, "30")])
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(wait: float, header: str) -> None:
    assert retry_after_header(wait) == header


def test_the_refusal_names_the_provider_and_the_wait() -> None:
    assert unavailable_message("anthropic", 12.2) == (
        "The anthropic model provider is unavailable after repeated failures; retry in 13 seconds."
    )


# -- resilient_stream reports each call's outcome once, for all its attempts ------------------------------------------


def scripted(*steps: str | ProviderError) -> AsyncGenerator[str, None]:
    async def gen() -> AsyncGenerator[str, None]:
        for step in steps:
            if isinstance(step, ProviderError):
                raise step
            await asyncio.sleep(0)
            yield step

    return gen()


async def drain(stream: AsyncGenerator[str, None]) -> list[str]:
    return [delta async for delta in stream]


async def test_a_call_whose_retries_fail_is_one_failure_and_a_refused_call_makes_no_attempt() -> None:
    breaker, _ = make_breaker(failures=2)
    attempts: list[int] = []

    def attempt() -> AsyncGenerator[str, None]:
        attempts.append(1)
        return scripted(ProviderError("HTTP 500", retryable=True))

    for failures in (1, 2):
        with pytest.raises(ProviderError):
            await drain(resilient_stream(attempt, limit_seconds=1.0, retries=2, backoff=0.001, breaker=breaker))
        assert breaker.failures == failures
    assert len(attempts) == 6
    assert breaker.state == "open"
    with pytest.raises(ProviderUnavailable) as caught:
        await drain(resilient_stream(attempt, limit_seconds=1.0, retries=2, breaker=breaker))
    assert (caught.value.code, caught.value.retryable, caught.value.retry_after) == ("provider_unavailable", True, 30.0)
    assert str(caught.value) == "The openai model provider is unavailable after repeated failures; retry in 30 seconds."
    assert len(attempts) == 6


async def test_a_retry_that_mends_the_call_is_a_success() -> None:
    breaker, _ = make_breaker(failures=2)
    fail_calls(breaker, 1)
    script = iter([scripted(ProviderError("HTTP 503", retryable=True)), scripted("a", "b")])
    stream = resilient_stream(lambda: next(script), limit_seconds=1.0, retries=1, backoff=0.001, breaker=breaker)
    assert await drain(stream) == ["a", "b"]
    assert (breaker.state, breaker.failures) == ("closed", 0)


@pytest.mark.parametrize(
    ("error", "failures"),
    [
        pytest.param(ProviderError("HTTP 401", retryable=False), 0, id="a 4xx is an answer"),
        pytest.param(ProviderError("HTTP 500", retryable=True), 2, id="5xx"),
        pytest.param(ProviderTimeout("no first token", retryable=True), 2, id="timeout"),
    ],
)
async def test_what_counts_as_a_failure(error: ProviderError, failures: int) -> None:
    breaker, _ = make_breaker(failures=3)
    fail_calls(breaker, 1)
    with pytest.raises(ProviderError):
        await drain(resilient_stream(lambda: scripted(error), limit_seconds=1.0, retries=0, breaker=breaker))
    assert breaker.failures == failures


async def test_a_failure_after_the_first_delta_counts_but_the_first_delta_closed_it_already() -> None:
    breaker, clock = make_breaker(failures=1, cool_down=30.0)
    fail_calls(breaker, 1)
    clock.now += 30.0
    stream = resilient_stream(
        lambda: scripted("a", ProviderError("dropped", retryable=True)), limit_seconds=1.0, retries=0, breaker=breaker
    )
    assert await anext(stream) == "a"
    # The probe's first delta: closed while the answer goes on.
    assert breaker.state == "closed"
    with pytest.raises(ProviderError):
        await anext(stream)
    # One failure in a row is the threshold here: open again, as after any call.
    assert breaker.state == "open"


async def test_a_cancelled_probe_says_nothing_of_the_upstream() -> None:
    breaker, clock = make_breaker(failures=1, cool_down=30.0)
    fail_calls(breaker, 1)
    clock.now += 30.0

    async def never() -> AsyncGenerator[str, None]:
        await asyncio.sleep(10)
        yield "late"

    task = asyncio.create_task(drain(resilient_stream(never, limit_seconds=5.0, retries=0, breaker=breaker)))
    await asyncio.sleep(0.05)
    assert breaker.admit() == 1.0  # the probe is out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (breaker.state, breaker.failures) == ("half_open", 1)
    assert breaker.admit() is Admission.PROBE


# -- Retry-After ------------------------------------------------------------------------------------------------------

NOW = 1_767_225_600.0  # Thu, 01 Jan 2026 00:00:00 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Thu, 01 Jan 2026 00:00:07 GMT", 7.0),
        ("Thursday, 01-Jan-26 00:00:07 GMT", 7.0),
        ("Thu Jan  1 00:00:07 2026", 7.0),
        ("Wed, 31 Dec 2025 23:59:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("²", None),
        ("Thu, 41 Jan 2026 00:00:07 GMT", None),
    ],
)
def test_retry_after_is_delay_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, now=NOW) == seconds
