"""`resilient_stream`'s deadlines, on scripted upstream generators (no network: the timing is the subject)."""

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence

import pytest

from llm.base import ProviderError, ProviderTimeout, resilient_stream

LIMIT = 0.3


def upstream(pauses: Sequence[float], *, closed: list[str] | None = None) -> AsyncGenerator[str, None]:
    """Deltas "d0", "d1", … each after its pause; a pause of None never ends."""

    async def gen() -> AsyncGenerator[str, None]:
        try:
            for number, pause in enumerate(pauses):
                await asyncio.sleep(pause)
                yield f"d{number}"
        finally:
            if closed is not None:
                closed.append("closed")

    return gen()


async def test_deltas_under_the_limit_each_stream_past_it_in_total() -> None:
    # Six gaps of 0.2 s: 1.2 s in all, four times the limit, and no gap reaches it.
    stream = resilient_stream(lambda: upstream([0.2] * 6), limit_seconds=LIMIT, retries=0)
    assert [delta async for delta in stream] == [f"d{n}" for n in range(6)]


async def test_a_stall_after_deltas_times_out_a_limit_after_the_last_delta() -> None:
    closed: list[str] = []
    stream = resilient_stream(lambda: upstream([0.01, 0.2, 0.2, 5.0], closed=closed), limit_seconds=LIMIT, retries=0)
    received: list[str] = []
    last = 0.0

    async def consume() -> None:
        nonlocal last
        async for delta in stream:
            received.append(delta)
            last = time.monotonic()

    with pytest.raises(ProviderTimeout) as caught:
        await consume()
    waited = time.monotonic() - last
    assert received == ["d0", "d1", "d2"]
    assert str(caught.value) == "The model provider did not send the next token within 0.3 seconds."
    assert caught.value.retryable is True
    assert LIMIT <= waited < LIMIT + 0.15
    assert closed == ["closed"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_the_first_token_deadline_covers_every_attempt() -> None:
    attempts: list[float] = []
    began = time.monotonic()

    def attempt() -> AsyncGenerator[str, None]:
        attempts.append(time.monotonic() - began)
        if len(attempts) == 1:

            async def failing() -> AsyncGenerator[str, None]:
                await asyncio.sleep(0.05)
                raise ProviderError("upstream hiccup", retryable=True)
                yield ""  # pragma: no cover - makes this an async generator

            return failing()
        return upstream([5.0])

    with pytest.raises(ProviderTimeout) as caught:
        [delta async for delta in resilient_stream(attempt, limit_seconds=LIMIT, retries=3, backoff=0.05)]
    elapsed = time.monotonic() - began
    assert len(attempts) == 2
    assert str(caught.value) == "The model provider did not send its first token within 0.3 seconds."
    # One deadline from the call, not a fresh one for the second attempt.
    assert LIMIT <= elapsed < LIMIT + 0.15


async def test_a_slow_consumer_is_not_the_upstream_stalling() -> None:
    stream = resilient_stream(lambda: upstream([0.01, 0.01, 0.01]), limit_seconds=LIMIT, retries=0)
    received: list[str] = []
    async for delta in stream:
        received.append(delta)
        # The consumer holds each delta longer than the limit (a slow client, a database write).
        await asyncio.sleep(LIMIT * 1.5)
    assert received == ["d0", "d1", "d2"]


async def test_no_deadline_outlives_the_stream() -> None:
    stream = resilient_stream(lambda: upstream([0.01, 0.01]), limit_seconds=LIMIT, retries=0)
    assert await anext(stream) == "d0"
    await stream.aclose()
    # A deadline left armed would cancel this task while it sleeps.
    await asyncio.sleep(LIMIT * 2)
    done = resilient_stream(lambda: upstream([0.01]), limit_seconds=LIMIT, retries=0)
    assert [delta async for delta in done] == ["d0"]
    await asyncio.sleep(LIMIT * 2)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_an_outside_cancel_stays_a_cancel() -> None:
    closed: list[str] = []
    received: list[str] = []

    async def consume() -> None:
        async for delta in resilient_stream(
            lambda: upstream([0.01, 5.0], closed=closed), limit_seconds=LIMIT, retries=0
        ):
            received.append(delta)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert received == ["d0"]
    assert closed == ["closed"]


async def test_a_cancel_that_meets_the_deadline_stays_a_cancel() -> None:
    received: list[str] = []

    async def consume() -> None:
        async for delta in resilient_stream(lambda: upstream([0.01, 5.0]), limit_seconds=LIMIT, retries=0):
            received.append(delta)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    # Cancelled in the same turn of the loop as the deadline passes (0.01 + LIMIT after the start).
    loop.call_at(loop.time() + LIMIT - 0.09, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert received == ["d0"]


async def test_an_outer_timeout_around_the_consumer_is_the_consumers() -> None:
    stream = resilient_stream(lambda: upstream([0.01, 5.0]), limit_seconds=10.0, retries=0)
    received: list[str] = []

    async def consume() -> None:
        async with asyncio.timeout(0.2):
            async for delta in stream:
                received.append(delta)

    with pytest.raises(TimeoutError) as caught:
        await consume()
    assert not isinstance(caught.value, ProviderTimeout)
    assert received == ["d0"]
    await stream.aclose()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
